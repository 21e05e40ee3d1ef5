"""Result records (one JSON per run) and per-sample outcomes (append-only JSONL).

Layout of a run folder ``OUT/<model>__<data>__<hash>/``::

    settings.json   everything that determines the outcomes (its hash names the folder)
    samples.jsonl   one line per finished sample, flushed as each finishes
    record.json     the result record (schema below), written when the run completes
    grid.png        clean vs perturbed images

Re-running the same command finds the folder, skips finished samples and yields the
same final numbers. Record schema (``schema_version`` 1): ``run``, ``evaluator``,
``model``, ``dataset``, ``generator``, ``oracle``, ``settings``, ``metrics`` (numbers,
percentages for accuracies), ``per_class`` (list of rows), ``versions``, ``device``,
``timestamp``, ``files``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import OutputError
from .protocol.outcome import SampleOutcome

SCHEMA_VERSION = 1


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _slug(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9.+-]+", "-", text.split("?")[0]).strip("-")
    return text[-40:] or "x"


def run_dir(out: str | Path, model: str, data: str, settings: dict[str, Any]) -> Path:
    return Path(out) / f"{_slug(model)}__{_slug(data)}__{settings_hash(settings)}"


def _disk_error(e: OSError, path: Path) -> OutputError:
    if e.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing {path}; free space and re-run the same command to resume "
                           "(finished samples are kept)")
    return OutputError(f"cannot write {path} ({e.strerror or e}); pass --out to a writable folder")


def prepare_run_dir(path: Path, settings: dict[str, Any]) -> None:
    """Create the run folder and its settings file, or check an existing one matches."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise _disk_error(e, path) from None
    sfile = path / "settings.json"
    if sfile.is_file():
        old = json.loads(sfile.read_text())
        if old != json.loads(json.dumps(settings, default=str)):
            raise OutputError(f"{path} belongs to a run with other settings; pass another --out")
    else:
        write_json(sfile, settings)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".part")
    try:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _disk_error(e, path) from None


def read_outcomes(path: Path) -> dict[str, SampleOutcome]:
    """Finished samples of a JSONL file; a torn last line (crash mid-write) is dropped."""
    done: dict[str, SampleOutcome] = {}
    if not path.is_file():
        return done
    good_bytes = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                o = SampleOutcome.from_dict(json.loads(raw))
            except (ValueError, KeyError, TypeError):
                break
            done[o.id] = o
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return done


class OutcomeWriter:
    """Appends one JSON line per finished sample and makes it durable at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._f = open(path, "a", encoding="utf-8")
        except OSError as e:
            raise _disk_error(e, path) from None

    def write(self, outcome: SampleOutcome) -> None:
        try:
            self._f.write(json.dumps(outcome.to_dict()) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise _disk_error(e, self.path) from None

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass


class RecordResult:
    """What every result object offers over its JSON ``record``: metrics, dict, one pandas row."""

    record: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record["metrics"]

    def to_dict(self) -> dict[str, Any]:
        return self.record

    def row(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_pandas(self):
        import pandas as pd

        return pd.Series(self.row())


@dataclass
class FmrResult(RecordResult):
    """The record of one run, with its per-sample outcomes.

    ``result.metrics["fmr"]``, ``result.to_dict()`` (the JSON record),
    ``result.to_pandas()`` (one flat row), ``result.samples_frame()``,
    ``result.per_class_frame()``.
    """

    record: dict[str, Any]
    outcomes: list[SampleOutcome] = field(default_factory=list)
    path: Path | None = None

    def row(self) -> dict[str, Any]:
        r = self.record
        row = {"model": r["model"]["spec"], "dataset": r["dataset"]["spec"], "generator": r["generator"]["spec"],
               "oracle": r["oracle"]["spec"], **{k: r["settings"][k] for k in ("budget", "step_size", "optimizer", "seed")}}
        row.update(r["metrics"])
        return row

    def samples_frame(self):
        import pandas as pd

        return pd.DataFrame([o.to_dict() for o in self.outcomes])

    def per_class_frame(self):
        import pandas as pd

        return pd.DataFrame(self.record["per_class"])

    @classmethod
    def load(cls, folder: str | Path) -> "FmrResult":
        folder = Path(folder)
        record = json.loads((folder / "record.json").read_text())
        outcomes = list(read_outcomes(folder / "samples.jsonl").values())
        return cls(record, outcomes, folder)


def select(outcomes: dict[str, SampleOutcome], ids: Iterable[str]) -> list[SampleOutcome]:
    return [outcomes[i] for i in ids if i in outcomes]
