"""The one place where boards read run records.

Boards see a record only through :func:`record_metrics`, so the switch to the typed
record (schema version 2) changes this file alone. Today it reads version-1 records: the
FMR runner's (``evaluator == "fmr"``, :mod:`fmr_bench.results`) and the static
evaluators' (:func:`fmr_bench.evaluators.run_evaluator`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .schema import BoardError

READABLE_SCHEMAS = (1,)


def record_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """What a board needs from one run record.

    Returns:
        ``model`` (spec), ``evaluator``, ``dataset`` (spec), ``protocol_version``
        (``"<schema>"``), ``settings`` (the run's settings, flat), ``metrics`` (name ->
        number or None), ``n`` (samples), ``weights`` (hash), ``run`` (folder name),
        ``reliability`` (calibration bins, when present).

    Raises:
        BoardError: a record of a schema this reader does not know.
    """
    version = record.get("schema_version")
    try:
        version = int(version)
    except (TypeError, ValueError):
        version = None
    if version not in READABLE_SCHEMAS:
        raise BoardError(f"record of schema version {record.get('schema_version')!r} is not readable by this "
                         f"fmr_bench (reads {', '.join(map(str, READABLE_SCHEMAS))}); upgrade fmr_bench")
    metrics = {k: v for k, v in (record.get("metrics") or {}).items() if v is None or isinstance(v, (int, float))}
    settings = dict(record.get("settings") or {})
    options = settings.pop("options", None) or {}
    n = metrics.get("n", metrics.get("id/n"))
    return {
        "model": record["model"]["spec"],
        "evaluator": record.get("evaluator", "fmr"),
        "dataset": record["dataset"]["spec"],
        "protocol_version": str(version),
        "settings": {**settings, **{f"option.{k}": v for k, v in options.items()}},
        "metrics": metrics,
        "n": n,
        "weights": record["model"].get("weights_sha256_16"),
        "run": record.get("run"),
        "reliability": record.get("reliability"),
    }


def read_records(folder: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``record.json`` under ``folder`` as (path, :func:`record_metrics` output).

    A file that is not a run record of a known schema stops the build with its name: a
    board is published, so it must not silently drop a run.
    """
    out = []
    for path in sorted(Path(folder).rglob("record.json")):
        try:
            record = json.loads(path.read_text())
            out.append((path, record_metrics(record)))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise BoardError(f"{path} is not a readable run record ({type(e).__name__}: {e}); "
                             "delete it or re-run the board") from None
        except BoardError as e:
            raise BoardError(f"{path}: {e}") from None
    return out
