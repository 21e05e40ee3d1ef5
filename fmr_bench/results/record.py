"""The run record (schema version 2): built here, and only here, for every kind of run; read here.

Three kinds of run write a record:

* ``fmr``: the FMR protocol (:func:`fmr_record`, from the finished per-sample outcomes);
* ``static``: a static evaluator (:func:`static_record`, from the evaluator's metrics);
* ``finetune``: a fine-tuned model and what it scored (:func:`finetune_record`).

All three go through :func:`build_record`, so the core fields and the provenance are the same
everywhere. :func:`load_record` reads a record (a path, a run folder or a dict) of version 2
or of version 1, which it upgrades and marks (``upgraded_from == 1``). Field by field:
docs/results_schema.md.

The FMR builder is a pure function of the run's settings, its descriptions (model, dataset,
generator, oracle...), its outcomes and its provenance: a run merged from shards and the same
run done in one piece give the same record when handed the same inputs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..metrics.fmr import audit_metrics, fmr_metrics, fmr_warnings, outcome_indicators, per_class_metrics
from ..metrics.intervals import Intervals, IntervalSettings, fmr_intervals
from ..protocol.outcome import SampleOutcome
from ..runtime import fmr_version, versions
from .scan import RECORD_FILE

SCHEMA_VERSION = 2
#: Schema versions :func:`load_record` reads (1 is upgraded on reading).
READABLE_SCHEMAS = (1, 2)
KIND_FMR, KIND_STATIC, KIND_FINETUNE = "fmr", "static", "finetune"
KINDS = (KIND_FMR, KIND_STATIC, KIND_FINETUNE)
#: A version-1 record's ``evaluator`` for an FMR run (version 1 had no ``kind``).
V1_FMR_EVALUATOR = "fmr"

#: Top-level keys the typed fields own; everything else in a record is a kind-specific section.
CORE_KEYS = ("schema_version", "kind", "evaluator", "run", "model", "dataset", "n", "seed", "settings", "metrics",
             "provenance", "upgraded_from")
#: Version-1 top-level keys that moved into ``provenance``.
V1_PROVENANCE_KEYS = ("versions", "device", "timestamp", "command")


class RecordError(DataError):
    """A file or dict that is not a run record this fmr_bench reads."""


@functools.lru_cache(maxsize=1)
def code_commit() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout fmr_bench is imported from; (None, None) otherwise.

    Never raises: an installed wheel, a missing ``git`` or a broken checkout all give None.
    ``dirty`` is True when tracked files under ``fmr_bench/`` differ from the commit.
    """
    root = Path(__file__).resolve().parents[2]  # the checkout holding fmr_bench/results/record.py
    if not (root / ".git").exists():
        return None, None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                 "fmr_bench"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return head.stdout.strip() or None, dirty


@dataclass(frozen=True)
class Provenance:
    """Where, when, by what code and by which command a record was made."""

    fmr_bench: str
    commit: str | None
    dirty: bool | None
    command: str | None
    timestamp: str | None
    device: str | None
    versions: dict[str, str]

    @classmethod
    def collect(cls, *, device: str | None, timestamp: str | None, command: str | None) -> Provenance:
        """This process's provenance: package version, git commit when known, library versions."""
        commit, dirty = code_commit()
        return cls(fmr_version(), commit, dirty, command, timestamp, device, versions())

    def to_dict(self) -> dict[str, Any]:
        return {"fmr_bench": self.fmr_bench, "commit": self.commit, "dirty": self.dirty, "command": self.command,
                "timestamp": self.timestamp, "device": self.device, "versions": dict(self.versions)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Provenance:
        return cls(str(d.get("fmr_bench") or "unknown"), d.get("commit"), d.get("dirty"), d.get("command"),
                   d.get("timestamp"), d.get("device"), dict(d.get("versions") or {}))


@dataclass
class Record:
    """One run's record. ``sections`` holds the kind-specific parts (``per_class``, ``generator``...).

    ``to_dict()`` lays the core fields and the sections out side by side (the JSON written to
    ``record.json``); ``Record.from_dict`` splits them again.
    """

    kind: str
    evaluator: str
    model: dict[str, Any]
    dataset: dict[str, Any]
    settings: dict[str, Any]
    metrics: dict[str, Any]
    provenance: Provenance
    run: str | None = None
    n: int | None = None
    seed: int | None = None
    sections: dict[str, Any] = field(default_factory=dict)
    #: 1 when read from a version-1 record and upgraded; None for a record written as version 2.
    upgraded_from: int | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def model_spec(self) -> str:
        return str(self.model.get("spec"))

    @property
    def dataset_spec(self) -> str:
        return str(self.dataset.get("spec"))

    def to_dict(self) -> dict[str, Any]:
        out = {"schema_version": self.schema_version, "kind": self.kind, "evaluator": self.evaluator, "run": self.run,
               "model": self.model, "dataset": self.dataset, "n": self.n, "seed": self.seed,
               "settings": self.settings, "metrics": self.metrics}
        out.update(self.sections)
        out["provenance"] = self.provenance.to_dict()
        out["upgraded_from"] = self.upgraded_from
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Record:
        """A record from its JSON form (version 2, or version 1, upgraded).

        Raises:
            RecordError: not a run record, or of a schema version this fmr_bench does not read.
        """
        if not isinstance(d, Mapping):
            raise RecordError(f"a run record is a JSON object, not {type(d).__name__}")
        try:
            version = int(d.get("schema_version"))
        except (TypeError, ValueError):
            version = None
        if version not in READABLE_SCHEMAS:
            got = d.get("schema_version")
            raise RecordError("no schema_version: not an fmr_bench run record" if got is None else
                              f"record of schema version {got!r} is not readable by this fmr_bench (reads "
                              f"{', '.join(map(str, READABLE_SCHEMAS))}); upgrade fmr_bench")
        for key in ("model", "dataset"):
            if not isinstance(d.get(key), Mapping) or "spec" not in d[key]:
                raise RecordError(f"the record lacks {key}.spec; not a complete run record")
        if not isinstance(d.get("metrics"), Mapping):
            raise RecordError("the record lacks its metrics; not a complete run record")
        try:
            return _upgrade_v1(d) if version == 1 else _from_v2(d)
        except (TypeError, ValueError, AttributeError) as e:  # a field of the wrong type, e.g. "settings": [1]
            raise RecordError(f"malformed run record ({type(e).__name__}: {e}); re-run the run's command to "
                              "rewrite it") from None


def _from_v2(d: Mapping[str, Any]) -> Record:
    kind = d.get("kind")
    if kind not in KINDS:
        raise RecordError(f"record kind {kind!r} is unknown (one of {', '.join(KINDS)})")
    return Record(kind=kind, evaluator=str(d.get("evaluator")), model=dict(d["model"]), dataset=dict(d["dataset"]),
                  settings=dict(d.get("settings") or {}), metrics=dict(d["metrics"]),
                  provenance=Provenance.from_dict(d.get("provenance") or {}), run=d.get("run"), n=d.get("n"),
                  seed=d.get("seed"), sections={k: v for k, v in d.items() if k not in CORE_KEYS},
                  upgraded_from=d.get("upgraded_from"))


def _upgrade_v1(d: Mapping[str, Any]) -> Record:
    """A version-1 record as version 2: provenance gathered, ``kind``, ``n`` and ``seed`` filled in."""
    evaluator = str(d.get("evaluator") or "fmr")
    settings = dict(d.get("settings") or {})
    metrics = dict(d["metrics"])
    old_versions = dict(d.get("versions") or {})
    prov = Provenance(fmr_bench=str(old_versions.get("fmr_bench") or "unknown"), commit=None, dirty=None,
                      command=d.get("command"), timestamp=d.get("timestamp"), device=d.get("device"),
                      versions=old_versions)
    dataset = dict(d["dataset"])
    dataset.setdefault("fingerprint", None)  # version 1 did not fingerprint the sample set
    skip = set(CORE_KEYS) | set(V1_PROVENANCE_KEYS)
    return Record(kind=KIND_FMR if evaluator == V1_FMR_EVALUATOR else KIND_STATIC, evaluator=evaluator, model=dict(d["model"]),
                  dataset=dataset, settings=settings, metrics=metrics, provenance=prov, run=d.get("run"),
                  n=_count(metrics, dataset), seed=settings.get("seed"),
                  sections={k: v for k, v in d.items() if k not in skip}, upgraded_from=1)


def _count(metrics: Mapping[str, Any], dataset: Mapping[str, Any]) -> int | None:
    """Samples a run scored: the metrics' ``n`` (or ``id/n``), else the dataset's."""
    for v in (metrics.get("n"), metrics.get("id/n"), dataset.get("n_selected"), dataset.get("n")):
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def load_record(source: str | Path | Mapping[str, Any]) -> Record:
    """A record from a dict, a ``record.json`` path or a run folder; version 1 is upgraded.

    Raises:
        RecordError: missing, not JSON, or not a run record this fmr_bench reads (names the file).
    """
    if isinstance(source, Mapping):
        return Record.from_dict(source)
    path = Path(source)
    file = path / RECORD_FILE if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise RecordError(f"no record at {file}; pass a finished run folder or its record.json") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RecordError(f"{file}: not readable JSON ({type(e).__name__}); re-run the run's command to rewrite "
                          "it") from None
    try:
        return Record.from_dict(data)
    except RecordError as e:
        raise RecordError(f"{file}: {e}") from None


# --- building ----------------------------------------------------------------------------------
def sample_set_fingerprint(ids: Sequence[str], labels: Sequence[int], fps: Sequence[str | None] | None = None) -> str:
    """16 hex digits of sha256 over the samples (id, label, content fingerprint or ``-``) in order."""
    h = hashlib.sha256()
    fps = fps if fps is not None else [None] * len(ids)
    for sid, label, fp in zip(ids, labels, fps):
        h.update(f"{sid}\t{int(label)}\t{fp or '-'}\n".encode())
    return h.hexdigest()[:16]


def build_record(kind: str, evaluator: str, *, model: Mapping[str, Any], dataset: Mapping[str, Any],
                 settings: Mapping[str, Any], metrics: Mapping[str, Any], provenance: Provenance,
                 run: str | None = None, n: int | None = None, seed: int | None = None,
                 sections: Mapping[str, Any] | None = None) -> Record:
    """The one constructor every kind goes through (checks the kind and that sections do not shadow core keys)."""
    if kind not in KINDS:
        raise ValueError(f"record kind {kind!r} is unknown")
    sections = dict(sections or {})
    clash = set(sections) & set(CORE_KEYS)
    if clash:
        raise ValueError(f"record sections {sorted(clash)} would shadow core fields")
    metrics = dict(metrics)
    dataset = dict(dataset)
    seed = seed if seed is not None else settings.get("seed")
    return Record(kind=kind, evaluator=evaluator, model=dict(model), dataset=dataset, settings=dict(settings),
                  metrics=metrics, provenance=provenance, run=run, n=n if n is not None else _count(metrics, dataset),
                  seed=seed, sections=sections)


#: What a record's ``seal`` digests (docs/results_schema.md).
SEAL_OF = ("sha256 of the finished outcomes samples.jsonl holds (the last line of an id wins), one JSON object "
           "per line with sorted keys and the sample's fingerprint as 'fp', in id order")
#: What :func:`fmr_record` needs besides settings and outcomes (all JSON-ready).
FMR_DESCRIPTIONS = ("model", "dataset", "generator", "oracle", "weights", "defaults", "notes")


def fmr_record(settings: Mapping[str, Any], descriptions: Mapping[str, Any], outcomes: Iterable[SampleOutcome], *,
               provenance: Provenance, run: str | None = None, judge: str | None = None,
               audit: Mapping[str, Any] | None = None, files: Mapping[str, str] | None = None,
               seal: str | None = None, intervals: IntervalSettings | None = None) -> Record:
    """The record of an FMR run from its finished per-sample outcomes.

    Args:
        settings: the run's settings (``FmrSettings`` as a dict, plus ``resolution``).
        descriptions: ``model`` (spec, weights hash, class map...), ``dataset`` (spec, n,
            ``n_selected``, ``fingerprint``, ``class_names``), ``generator``, ``oracle``,
            ``weights`` (file hashes), ``defaults``, ``notes``; :func:`fmr_descriptions` gives
            them back from a finished record.
        outcomes: one per selected sample; sorted here by index, so any order gives the same record.
        judge: the audit judge's spec when the run was audited (its verdicts enter the metrics).
        audit: the record's ``audit`` section (judge, counts), when audited.
        files: files of the run folder by role (``samples``, ``grid``).
        seal: the digest of the outcomes as ``samples.jsonl`` holds them
            (:func:`fmr_bench.results.rundir.samples_seal`), so that an edit of either file shows.
        intervals: level, resamples and seed of the metrics' intervals (default
            :class:`~fmr_bench.metrics.intervals.IntervalSettings`); the record's ``intervals``
            and ``interval_method`` sections.
    """
    missing = [k for k in FMR_DESCRIPTIONS if k not in descriptions]
    if missing:
        raise ValueError(f"fmr_record needs descriptions {missing}")
    rows = sorted(outcomes, key=lambda o: (o.index, o.id))
    class_names = list(descriptions["dataset"]["class_names"])
    metrics = {**fmr_metrics(rows), **(audit_metrics(rows, judge) if judge else {})}
    sections: dict[str, Any] = {
        "generator": descriptions["generator"], "oracle": descriptions["oracle"], "weights": descriptions["weights"],
        "defaults": descriptions["defaults"], "notes": descriptions["notes"],
        "per_class": per_class_metrics(rows, class_names, judge),
        "warnings": fmr_warnings(metrics, len(class_names)),
        "files": dict(files or {}),
    }
    sections.update(_fmr_interval_sections(rows, judge, intervals))
    if audit is not None:
        sections["audit"] = dict(audit)
    if seal is not None:
        sections["seal"] = {"samples_sha256": seal, "of": SEAL_OF}
    return build_record(KIND_FMR, "fmr", model=descriptions["model"], dataset=descriptions["dataset"], settings=settings,
                        metrics=metrics, provenance=provenance, run=run, n=len(rows), seed=settings.get("seed"),
                        sections=sections)


def _fmr_interval_sections(rows: Sequence[SampleOutcome], judge: str | None,
                           settings: IntervalSettings | None) -> dict[str, Any]:
    """The ``intervals`` and ``interval_method`` sections of an FMR record, from its outcomes."""
    settings = settings or IntervalSettings()
    x = outcome_indicators(rows, judge)
    values, methods = fmr_intervals(x, settings, audited=bool(judge))
    iv = Intervals(settings)
    for name, interval in values.items():
        iv.put(name, interval, methods[name])
    return iv.section()


def interval_of(record: Record | Mapping[str, Any], metric: str) -> tuple[float, float] | None:
    """The recorded interval of ``metric`` (``None`` for a record written before intervals, or without one)."""
    d = record.sections if isinstance(record, Record) else record
    iv = (d.get("intervals") or {}).get(metric)
    return (float(iv[0]), float(iv[1])) if isinstance(iv, (list, tuple)) and len(iv) == 2 else None


def fmr_descriptions(record: Record | Mapping[str, Any]) -> dict[str, Any]:
    """The ``descriptions`` an FMR record was built from (to rebuild it from other outcomes, e.g. merged shards)."""
    d = record.to_dict() if isinstance(record, Record) else dict(record)
    if d.get("kind", d.get("evaluator")) != KIND_FMR or "class_names" not in (d.get("dataset") or {}):
        raise RecordError("not a version-2 FMR record (it lacks kind 'fmr' or dataset.class_names); re-run the run "
                          "with this fmr_bench")
    return {k: d[k] for k in FMR_DESCRIPTIONS}


def static_record(evaluator: str, settings: Mapping[str, Any], *, model: Mapping[str, Any],
                  dataset: Mapping[str, Any], metrics: Mapping[str, Any], provenance: Provenance,
                  run: str | None = None, sections: Mapping[str, Any] | None = None,
                  intervals: Intervals | None = None) -> Record:
    """The record of a static evaluator's run (``sections``: datasets, ood, inference, files, its details;
    ``intervals``: what the evaluator computed from its per-sample data, the ``intervals`` and
    ``interval_method`` sections)."""
    sections = {**(sections or {}), **(intervals.section() if intervals is not None else {})}
    return build_record("static", evaluator, model=model, dataset=dataset, settings=settings, metrics=metrics,
                        provenance=provenance, run=run, sections=sections)


def finetune_record(method: str, settings: Mapping[str, Any], *, model: Mapping[str, Any],
                    dataset: Mapping[str, Any], metrics: Mapping[str, Any], provenance: Provenance,
                    run: str | None = None, seed: int | None = None,
                    sections: Mapping[str, Any] | None = None, intervals: Intervals | None = None) -> Record:
    """The record of a fine-tuning run: the trained model, its training data and settings, what it scored.

    ``evaluator`` is ``finetune:<method>``; ``model`` names the starting model (``spec``) and
    the trained weights (``weights_sha256_16``); ``dataset`` is the training set; ``intervals``: those of
    its metrics (the ``intervals`` and ``interval_method`` sections, as :func:`static_record`).
    """
    sections = {**(sections or {}), **(intervals.section() if intervals is not None else {})}
    return build_record("finetune", f"finetune:{method}", model=model, dataset=dataset, settings=settings,
                        metrics=metrics, provenance=provenance, run=run, seed=seed, sections=sections)


__all__ = ["SCHEMA_VERSION", "Provenance", "Record", "RecordError", "build_record", "code_commit", "finetune_record",
           "fmr_descriptions", "fmr_record", "interval_of", "load_record", "sample_set_fingerprint", "static_record"]
