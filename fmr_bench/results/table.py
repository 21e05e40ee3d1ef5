"""Every run record under some folders as one pandas DataFrame (``fmr results``, ``fmr_bench.load_results``).

One row per (run, metric set). A record's metrics split into sets by their prefix:
``digits-shift:rotated/acc`` is metric ``acc`` of set ``digits-shift:rotated``; metrics
without a prefix (``sa``, ``fmr``, ``id_acc``…) form the set ``main``. Columns: what names
the run (model, evaluator, kind, dataset), the settings that tell runs apart (limit, init,
precision, seed, budget, step size, generator, oracle, accept rule, audit judge, static
evaluator options as ``option.NAME``), then one column per metric name, and ``NAME_lo`` /
``NAME_hi`` for a metric the record holds an interval of (its ``intervals`` section; records
written before intervals have none, and those columns stay empty).

Records are found by :func:`fmr_bench.results.scan.iter_record_files` (``record.json`` and
``finetune.json`` under each folder, runs set aside by ``--fresh`` never, shard parts only on
request), and any JSON file named directly. A file that is not a readable run record is
skipped and reported by name; it never stops the load.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .record import KIND_FMR, Record, RecordError, load_record
from .rundir import seal_problem
from .scan import RECORD_NAMES, STUDY_FILES, iter_record_files
from .study import is_study, study_rows

MAIN_SET = "main"
#: Columns before the metrics, in order.
ID_COLUMNS = ("model", "evaluator", "kind", "dataset", "metric_set", "n", "seed", "limit", "init", "fgsm_eps",
              "precision", "budget", "step_size", "optimizer", "generator", "oracle", "accept", "judge", "shard")
#: Recorded settings that do not change a run's outcomes (not part of its identity): no column.
RUNTIME_SETTINGS = ("device", "batch_size", "workers", "num_workers", "checkpoint_every", "cache")
#: Prefix of the columns of the other identity settings (fine-tuning's method, lr, epochs...).
SETTING_PREFIX = "setting."
TAIL_COLUMNS = ("seal", "weights", "schema", "timestamp", "run", "path")
#: Characters that make a filter a glob (``?`` is not one: model specs use it for options).
GLOB_CHARS = ("*", "[")
#: Suffixes of a metric's interval columns (``fmr_lo``, ``fmr_hi``): the record's ``intervals``.
LO, HI = "_lo", "_hi"


@dataclass(frozen=True)
class Skipped:
    """A file that was not loaded, and why (one line)."""

    path: Path
    reason: str


def matches(value: str | None, patterns: Sequence[str] | None) -> bool:
    """Whether ``value`` matches any pattern: a glob (with ``*`` or ``[``, whole value) or else a substring."""
    if not patterns:
        return True
    value = value or ""
    return any(fnmatch.fnmatchcase(value, p) if any(c in p for c in GLOB_CHARS) else p in value for p in patterns)


def record_rows(rec: Record, path: Path | None = None) -> list[dict[str, Any]]:
    """The rows of one record: its identifying columns plus one metric set each."""
    s, sec = rec.settings, rec.sections
    base: dict[str, Any] = {
        "model": rec.model_spec, "evaluator": rec.evaluator, "kind": rec.kind, "dataset": rec.dataset_spec,
        "n": rec.n, "seed": rec.seed, "limit": s.get("limit"), "init": s.get("init"),
        "fgsm_eps": s.get("fgsm_eps") if s.get("init") == "fgsm" else None,  # read only by an FGSM start
        "precision": s.get("precision"),
        "budget": s.get("budget") if rec.kind == KIND_FMR else None,
        "step_size": s.get("step_size") if rec.kind == KIND_FMR else None,
        "optimizer": s.get("optimizer") if rec.kind == KIND_FMR else None,
        "generator": (sec.get("generator") or {}).get("spec"), "oracle": (sec.get("oracle") or {}).get("spec"),
        "accept": s.get("accept") or (sec.get("oracle") or {}).get("accept"),
        "judge": ((sec.get("audit") or {}).get("judge") or {}).get("spec"),
        # a shard's record covers part of a run (``fmr merge`` makes the whole one)
        "shard": f"{sec['shard']['index']}/{sec['shard']['count']}" if isinstance(sec.get("shard"), dict) else None,
        **{f"option.{k}": v for k, v in (s.get("options") or {}).items()},
        "weights": rec.model.get("weights_sha256_16"), "schema": rec.upgraded_from or rec.schema_version,
        "timestamp": rec.provenance.timestamp, "run": rec.run, "path": str(path) if path is not None else None,
    }
    named = set(base) | {"options", "accept", *RUNTIME_SETTINGS}
    base.update({f"{SETTING_PREFIX}{k}": v for k, v in s.items()  # every other setting of the run's identity
                 if k not in named and (v is None or isinstance(v, (str, int, float, bool)))})
    sets: dict[str, dict[str, Any]] = {}
    for key, value in rec.metrics.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            continue  # text or nested values are not table cells
        prefix, _, name = key.rpartition("/")
        sets.setdefault(prefix or MAIN_SET, {})[name] = value
    for key, iv in (sec.get("intervals") or {}).items():  # none in a record written before intervals
        prefix, _, name = key.rpartition("/")
        if (prefix or MAIN_SET) in sets and isinstance(iv, (list, tuple)) and len(iv) == 2:
            sets[prefix or MAIN_SET].update({f"{name}{LO}": iv[0], f"{name}{HI}": iv[1]})
    return [{**base, "metric_set": name, **metrics} for name, metrics in (sets or {MAIN_SET: {}}).items()]


def load_results(*paths: str | Path, model: str | Sequence[str] | None = None,
                 evaluator: str | Sequence[str] | None = None, data: str | Sequence[str] | None = None,
                 on_skip: Callable[[Skipped], None] | None = None, shards: bool = False,
                 on_broken_seal: Callable[[Path, str], None] | None = None):
    """Every run record under ``paths`` as one DataFrame, one row per (run, metric set).

    Args:
        paths: run folders, folders of run folders, or record files.
        model, evaluator, data: keep records whose model spec / evaluator / (main) dataset
            spec match: a pattern with ``*`` or ``[`` is a glob on the whole value, any other
            pattern a substring. Several patterns: any may match.
        on_skip: called for each file that is not a readable run record (default: nothing;
            the list is also in ``frame.attrs["skipped"]`` as (path, reason) pairs).
        shards: also the records of a sharded run's parts (:mod:`fmr_bench.results.scan`);
            by default a merged run is one row and unmerged parts are left out.
        on_broken_seal: called as ``(record path, why)`` for a record whose ``samples.jsonl`` no
            longer matches its seal; the row stays, with ``seal`` = ``"broken"`` (else ``"ok"``,
            or ``"none"`` for records without a seal: static, fine-tuning, or written before seals).

    Raises:
        DataError: a path that does not exist.
    """
    import pandas as pd

    def keep(m: str | None, e: str | None, d: str | None) -> bool:
        return matches(m, _as_list(model)) and matches(e, _as_list(evaluator)) and matches(d, _as_list(data))

    rows: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    for path in iter_record_files(paths, shards=shards):
        try:
            rows += _file_rows(path, keep, on_broken_seal)
        except RecordError as e:
            skip = Skipped(path, str(e).removeprefix(f"{path}: "))
            skipped.append(skip)
            if on_skip is not None:
                on_skip(skip)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        extra = ("option.", SETTING_PREFIX)
        metric_cols = [c for c in frame.columns if c not in ID_COLUMNS and c not in TAIL_COLUMNS
                       and not c.startswith(extra)]
        options = sorted(c for c in frame.columns if c.startswith("option."))
        other = sorted(c for c in frame.columns if c.startswith(SETTING_PREFIX))
        # study rows lack some of the columns: they stay empty there
        frame = frame.reindex(columns=[*ID_COLUMNS, *options, *other, *metric_cols, *TAIL_COLUMNS])
    frame.attrs["skipped"] = [(str(s.path), s.reason) for s in skipped]
    return frame


def _file_rows(path: Path, keep: Callable[..., bool],
               on_broken_seal: Callable[[Path, str], None] | None) -> list[dict[str, Any]]:
    """The rows of one record file (a study's output: one per run or cell) that ``keep`` keeps.

    Raises:
        RecordError: not a run record or study output (the caller reports and skips it).
    """
    if path.name in STUDY_FILES:
        doc = _read(path)
        if not is_study(doc):
            raise RecordError(f"{path}: not a study output of fmr_bench (no study, rows)")
        return [r for r in study_rows(doc, path) if keep(r["model"], r["evaluator"], r["dataset"])]
    rec = load_record(path)
    if not keep(rec.model_spec, rec.evaluator, rec.dataset_spec):
        return []
    problem = seal_problem(path.parent, rec)
    if problem and on_broken_seal is not None:
        on_broken_seal(path, problem)
    seal = "broken" if problem else ("ok" if rec.sections.get("seal") else "none")
    return [{**row, "seal": seal} for row in record_rows(rec, path)]


def _read(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _as_list(v: str | Sequence[str] | None) -> list[str]:
    return [v] if isinstance(v, str) else list(v or [])


__all__ = ["HI", "LO", "RECORD_NAMES", "Skipped", "load_results", "matches", "record_rows"]
