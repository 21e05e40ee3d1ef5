"""The one place where boards read run records.

Boards see a record only through :func:`record_metrics`, which reads it through
:func:`fmr_bench.results.record.load_record`: version-2 records of every kind (FMR, static,
fine-tuning) and version-1 records (the FMR runner's and the static evaluators' before the
typed record), which come back upgraded. The protocol version a board compares is the
schema the record was written with (``"1"`` or ``"2"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..results.record import KIND_FINETUNE, READABLE_SCHEMAS, Record, RecordError
from ..results.scan import RECORD_FILE, iter_record_files
from .schema import BoardError

__all__ = ["READABLE_SCHEMAS", "read_records", "record_metrics"]


def record_metrics(record: dict[str, Any] | Record) -> dict[str, Any]:
    """What a board needs from one run record.

    Returns:
        ``model`` (spec), ``evaluator``, ``dataset`` (spec), ``protocol_version``
        (``"<schema the record was written with>"``), ``settings`` (the run's settings, flat),
        ``metrics`` (name -> number or None), ``n`` (samples), ``weights`` (hash), ``run``
        (folder name), ``reliability`` (calibration bins, when present), ``kind``,
        ``provenance`` (the record's, as a dict), ``method`` (fine-tuning records: the
        method of ``finetune:<method>``, whose ``evaluator`` reads ``finetune``; else None),
        ``generator`` and ``oracle`` (FMR records: their specs), ``data`` and ``ood`` (static
        records: the specs of the evaluated and the shifted sets).

    Raises:
        BoardError: not a run record, or one of a schema this reader does not know.
    """
    try:
        rec = record if isinstance(record, Record) else Record.from_dict(record)
    except RecordError as e:
        raise BoardError(str(e)) from None
    metrics = {k: v for k, v in rec.metrics.items() if v is None or isinstance(v, (int, float))}
    settings = dict(rec.settings)
    options = settings.pop("options", None) or {}
    evaluator, _, method = rec.evaluator.partition(":") if rec.kind == KIND_FINETUNE else (rec.evaluator, "", "")
    return {
        "model": rec.model_spec,
        "evaluator": evaluator,
        "method": method or None,
        "kind": rec.kind,
        "dataset": rec.dataset_spec,
        "protocol_version": str(rec.upgraded_from or rec.schema_version),
        "settings": {**settings, **{f"option.{k}": v for k, v in options.items()}},
        "metrics": metrics,
        "n": rec.n,
        "weights": rec.model.get("weights_sha256_16"),
        "run": rec.run,
        "reliability": rec.sections.get("reliability"),
        "intervals": rec.sections.get("intervals") or {},  # 95 % intervals (records written before: none)
        "provenance": rec.provenance.to_dict(),
        "generator": (rec.sections.get("generator") or {}).get("spec"),
        "oracle": (rec.sections.get("oracle") or {}).get("spec"),
        "data": _specs(rec.sections.get("datasets")) or [rec.dataset_spec],
        "ood": _specs(rec.sections.get("ood")),
    }


def _specs(section: Any) -> list[str]:
    return [d.get("spec") for d in section if isinstance(d, dict)] if isinstance(section, list) else []


def read_records(folder: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``record.json`` under ``folder`` as (path, :func:`record_metrics` output), found by the
    one scanner (:func:`~fmr_bench.results.scan.iter_record_files`: set-aside runs and shard parts left out).

    A file that is not a run record of a known schema stops the build with its name: a
    board is published, so it must not silently drop a run.
    """
    out = []
    for path in iter_record_files([folder], names=(RECORD_FILE,)):
        try:
            record = json.loads(path.read_text())
            out.append((path, record_metrics(record)))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise BoardError(f"{path} is not a readable run record ({type(e).__name__}: {e}); "
                             "delete it or re-run the board") from None
        except BoardError as e:
            raise BoardError(f"{path}: {e}") from None
    return out
