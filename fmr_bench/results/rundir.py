"""Result records (one JSON per run) and per-sample outcomes (append-only JSONL).

Layout of a run folder ``OUT/<model>__<data>__<hash>/``::

    settings.json        everything that determines the outcomes (its hash names the folder)
    samples.jsonl        one line per finished sample of the current sample set, flushed as it finishes
    samples.stale.jsonl  outcomes of samples that left the set or whose file changed (kept, not counted)
    record.json          the result record (schema below), written last, when the run completes
    grid.png             clean vs perturbed images
    .lock                flock held by the running process (holds its PID)
    replaced-<time>/     files of an earlier run set aside by ``--fresh``

Re-running the same command finds the folder, skips finished samples and yields the
same final numbers. The record is built and read by :mod:`fmr_bench.results.record` (schema
version 2; docs/results_schema.md); version-1 records are upgraded when read.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from ..errors import OutputError
from ..files import PART, atomic_write, make_dir, output_error, write_json
from ..protocol.outcome import SampleOutcome
from .record import SCHEMA_VERSION, Record, RecordError, load_record  # noqa: F401  (SCHEMA_VERSION: re-exported)
from .scan import RECORD_FILE


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _slug(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9.+-]+", "-", text.split("?")[0]).strip("-")
    return text[-40:] or "x"


def run_dir(out: str | Path, model: str, data: str, settings: dict[str, Any]) -> Path:
    return Path(out) / f"{_slug(model)}__{_slug(data)}__{settings_hash(settings)}"


def prepare_run_dir(path: Path, settings: dict[str, Any]) -> None:
    """Create the run folder and its settings file, or check an existing one matches.

    Call with the run lock held: temporary files that a killed writer left (``NAME.<pid>.part``)
    are removed first, since no other process writes into a locked folder.
    """
    make_dir(path)
    for tmp in path.glob(f"*{PART}"):
        with contextlib.suppress(OSError):
            tmp.unlink()
    sfile = path / "settings.json"
    old = read_json_or_none(sfile)
    if old is None:  # absent, or torn by a crash before this writer was atomic
        write_json(sfile, settings)
    elif old != json.loads(json.dumps(settings, default=str)):
        raise OutputError(f"{path} belongs to a run with other settings; pass another --out")


def read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None


# --- the run-folder lock ---------------------------------------------------------------------
LOCK_FILE = ".lock"


class RunLock:
    """An exclusive ``flock`` on ``FOLDER/.lock`` (or on ``path``) that holds the owner's PID.

    A second process that asks for the folder while the first holds it stops at once
    (it does not wait) with one line naming the holder's PID. The kernel drops the lock
    when its holder exits, even after ``kill -9``, so a stale lock file blocks nothing.
    Neither taking nor releasing it raises for a full disk: the PID is written unbuffered
    and only as a courtesy, and a folder the lock created is removed again when nothing
    else was written into it (bad input leaves no empty run folder behind).

    Args:
        folder: the folder the lock guards (named in the message).
        path: the lock file (default ``folder/.lock``).
        what: how the message names what the holder writes (default: ``folder``).
        optional: a lock file that cannot be created is no error (the lock is then not held);
            for early locks that only spare a second process the wait.
    """

    def __init__(self, folder: Path, *, path: Path | None = None, what: str | None = None,
                 optional: bool = False) -> None:
        self.folder = Path(folder)
        self.path = Path(path) if path is not None else self.folder / LOCK_FILE
        self.what = what or str(self.folder)
        self.optional = optional
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover  (not POSIX: no lock, as before)
            return self
        try:
            self._created = _missing_parents(self.path.parent)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            if self.optional:
                return self
            raise output_error(e, self.folder) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            except OSError:
                holder = "unknown"
            os.close(fd)
            raise OutputError(f"another run (PID {holder}) is writing {self.what}; wait for it to finish, "
                              "or pass another --out") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the PID is a courtesy for the message; the flock is what counts
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock; never raises (it runs while another error may be on its way out)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        created, self._created = self._created, []
        if created:  # bad input before any work: leave no empty folder behind
            with contextlib.suppress(OSError):
                if [p.name for p in self.path.parent.iterdir()] == [self.path.name]:
                    self.path.unlink()
            for folder in created:  # innermost first; stops at the first that holds anything
                try:
                    folder.rmdir()
                except OSError:
                    break
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _missing_parents(folder: Path) -> list[Path]:
    """The folders ``folder.mkdir(parents=True)`` would create, innermost first."""
    out = []
    while not folder.exists() and folder.parent != folder:
        out.append(folder)
        folder = folder.parent
    return out


# --- the run folder: one protocol for every task ---------------------------------------------
class RunFolder:
    """One run's folder, as every task opens it: lock first, then settings, the record last.

    ``with RunFolder(path, settings, fresh=...) as run:`` takes the folder's :class:`RunLock`
    (a second process stops at once, naming the holder), sets an earlier run's files aside
    when ``fresh`` (``replaced-<time>/``, nothing deleted), writes ``settings.json`` (or checks
    that the one there is the same: another run's folder is refused) and, on leaving, releases
    the lock. :meth:`write_record` writes the record, last: a record means every file it lists
    is complete. ``discard_unfinished``: a run that fails before any file of its own was written
    (static evaluators: logits are cached elsewhere) leaves no folder behind.
    """

    def __init__(self, path: Path, settings: dict[str, Any], *, fresh: bool = False, record_file: str = RECORD_FILE,
                 discard_unfinished: bool = False) -> None:
        self.path = Path(path)
        self.settings = settings
        self.fresh = fresh
        self.record_file = record_file
        self.discard_unfinished = discard_unfinished
        self._lock = RunLock(self.path)
        self._created = False

    @property
    def record_path(self) -> Path:
        return self.path / self.record_file

    @property
    def finished(self) -> bool:
        """Whether the folder holds a record (the run finished before)."""
        return self.record_path.is_file()

    def __enter__(self) -> RunFolder:
        self._created = not self.path.exists()
        self._lock.acquire()  # before reading anything: a second process stops here
        try:
            if self.fresh:
                set_aside(self.path)
            prepare_run_dir(self.path, self.settings)
        except BaseException:
            self._lock.release()
            raise
        return self

    def write_record(self, record: dict[str, Any]) -> Path:
        return write_json(self.record_path, record)

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            if exc_type is not None and self.discard_unfinished and self._created:
                self._discard()
        finally:
            self._lock.release()

    def _discard(self) -> None:
        own = {"settings.json", LOCK_FILE}
        try:
            if {p.name for p in self.path.iterdir()} <= own:
                for name in own:
                    (self.path / name).unlink(missing_ok=True)
                self.path.rmdir()
        except OSError:
            pass  # leaving an empty run folder behind is untidy, not wrong


# --- per-sample outcomes -------------------------------------------------------------------
SAMPLES_FILE = "samples.jsonl"
#: Outcomes of samples that left the current sample set (or whose file changed): kept, not counted.
STALE_FILE = "samples.stale.jsonl"

_DECODER = json.JSONDecoder()


def _parse_line(raw: str) -> list[dict]:
    """The JSON objects on one line; two glued objects (``{...}{...}``) are both read."""
    out, pos, raw = [], 0, raw.strip()
    while pos < len(raw):
        try:
            obj, end = _DECODER.raw_decode(raw, pos)
        except ValueError:
            break  # a torn tail: what came before it is kept
        if isinstance(obj, dict):
            out.append(obj)
        pos = end
        while pos < len(raw) and raw[pos].isspace():
            pos += 1
    return out


def read_outcome_rows(path: Path) -> list[tuple[SampleOutcome, str | None]]:
    """Every finished outcome in a JSONL file, with its sample fingerprint, in file order.

    Never writes. A torn last line (crash mid-write) is skipped; a last line that only
    lost its newline is a finished outcome and is kept; lines glued together by an older
    writer are split.
    """
    rows: list[tuple[SampleOutcome, str | None]] = []
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return rows
    with f:
        for raw in f:
            for d in _parse_line(raw):
                try:
                    rows.append((SampleOutcome.from_dict(d), d.get("fp")))
                except (KeyError, TypeError):
                    continue
    return rows


def read_outcomes(path: Path) -> dict[str, SampleOutcome]:
    """Finished samples of a JSONL file by id (the last line of an id wins); never writes."""
    return {o.id: o for o, _ in read_outcome_rows(path)}


def outcome_line(outcome: SampleOutcome, fp: str | None) -> str:
    return json.dumps({**outcome.to_dict(), "fp": fp}) + "\n"


def samples_seal(rows: Iterable[tuple[SampleOutcome, str | None]]) -> str:
    """The digest a record seals its samples with: the outcomes by id (a later row of an id wins),
    each as one JSON object with sorted keys and its fingerprint, in id order (see ``SEAL_OF``)."""
    last = {o.id: (o, fp) for o, fp in rows}
    h = hashlib.sha256()
    for sid in sorted(last):
        o, fp = last[sid]
        h.update((json.dumps({**o.to_dict(), "fp": fp}, sort_keys=True) + "\n").encode())
    return h.hexdigest()


def seal_problem(folder: Path, record: dict[str, Any] | Record) -> str | None:
    """Why ``folder``'s samples do not match the seal of its ``record`` (None: they match, or it has none).

    A record written before seals existed has none; that is not a problem.
    """
    rec = record.to_dict() if isinstance(record, Record) else record
    seal = (rec.get("seal") or {}).get("samples_sha256")
    if seal is None:
        return None
    samples = Path(folder) / SAMPLES_FILE
    if not samples.is_file():
        return f"{samples} is missing; the record seals {rec.get('n')} outcomes"
    if samples_seal(read_outcome_rows(samples)) != seal:
        return f"{samples} does not match the seal of its record (an outcome was added, removed or edited since)"
    return None



def reconcile_outcomes(folder: Path, ids: list[str], indices: list[int], fps: list[str | None]
                       ) -> dict[str, SampleOutcome]:
    """The finished outcomes of the current sample set, and a samples file that holds just them.

    An outcome is reused only if its sample's fingerprint is the current one; its
    ``index`` is refreshed to the sample's current position. Outcomes of samples no longer
    in the set, or of files whose content changed, move to ``samples.stale.jsonl``
    (kept, not counted; reused if the same content comes back). Call with the run lock held.
    """
    samples, stale = folder / SAMPLES_FILE, folder / STALE_FILE
    current = read_outcome_rows(samples)
    candidates = read_outcome_rows(stale) + current  # later lines win
    want = {sid: (i, fp) for sid, i, fp in zip(ids, indices, fps)}
    chosen: dict[str, SampleOutcome] = {}
    for o, fp in candidates:
        if o.id in want and fp == want[o.id][1]:
            chosen[o.id] = o if o.index == want[o.id][0] else replace(o, index=want[o.id][0])
    kept = [(chosen[sid], want[sid][1]) for sid in ids if sid in chosen]
    if Counter(current) != Counter(kept):  # file order does not matter; extra, stale or moved lines do
        leftovers, seen = [], {(o.id, fp) for o, fp in kept}
        for o, fp in candidates:
            if (o.id, fp) not in seen:
                seen.add((o.id, fp))
                leftovers.append((o, fp))
        if leftovers:  # first, so that a crash in between loses nothing
            atomic_write(stale, "".join(outcome_line(o, fp) for o, fp in leftovers))
        atomic_write(samples, "".join(outcome_line(o, fp) for o, fp in kept))
    return chosen


class OutcomeWriter:
    """Appends one JSON line per finished sample and makes it durable at once.

    On opening, a file whose last line lost only its newline gets the newline (that line
    is a finished outcome); a torn last line (no complete JSON object) is cut off. The
    caller holds the run lock, so no other process appends at the same time.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._repair_tail()
            self._f = open(path, "a", encoding="utf-8")
        except OSError as e:
            raise output_error(e, path) from None

    def _repair_tail(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(max(0, size - 1))
            if f.read(1) == b"\n":
                return
            back = min(size, 1 << 20)
            f.seek(size - back)
            tail = f.read(back)
            start = tail.rfind(b"\n") + 1
            last = tail[start:].decode("utf-8", errors="replace")
            objs = _parse_line(last)
            if objs and last.rstrip().endswith("}"):
                f.write(b"\n")  # a finished outcome that only lost its newline
            else:  # torn mid-write: cut it, keeping any complete outcome glued before it
                f.truncate(size - back + start)
                f.seek(size - back + start)
                f.write("".join(json.dumps(d) + "\n" for d in objs).encode())
            f.flush()
            os.fsync(f.fileno())

    def write(self, outcome: SampleOutcome, fp: str | None = None) -> None:
        try:
            self._f.write(outcome_line(outcome, fp))
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise output_error(e, self.path) from None

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass


def set_aside(folder: Path, keep: str | None = None) -> Path | None:
    """Move a run folder's outcomes and artefacts into ``folder/replaced-<UTC time>/`` (``--fresh``).

    Nothing is deleted: the earlier run's files stay readable there. Returns that folder,
    or None when there was nothing to move. Entries whose names start with ``keep`` stay
    (the shard folders of a run that a torchrun job has just redone).
    """
    names = [p for p in folder.iterdir() if p.name not in ("settings.json", LOCK_FILE)
             and not p.name.startswith("replaced-") and not (keep and p.name.startswith(keep))
             ] if folder.is_dir() else []
    if not names:
        return None
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    dest = folder / f"replaced-{stamp}"
    try:
        dest.mkdir()
        for p in names:
            os.replace(p, dest / p.name)
    except OSError as e:
        raise output_error(e, dest) from None
    return dest


class RecordResult:
    """What every result object offers over its JSON ``record``: metrics, dict, one pandas row."""

    record: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record["metrics"]

    def to_dict(self) -> dict[str, Any]:
        return self.record

    @property
    def typed(self) -> Record:
        """The record as a :class:`~fmr_bench.results.record.Record`."""
        return Record.from_dict(self.record)

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
    #: True when this call found the run already finished in its folder and computed nothing.
    reused: bool = False

    def row(self) -> dict[str, Any]:
        r = self.record
        s = r["settings"]
        row = {"model": r["model"]["spec"], "dataset": r["dataset"]["spec"], "generator": r["generator"]["spec"],
               "oracle": r["oracle"]["spec"],
               **{k: s.get(k) for k in ("budget", "step_size", "optimizer", "seed", "limit", "precision", "init")},
               "fgsm_eps": s.get("fgsm_eps") if s.get("init") == "fgsm" else None,
               "resolution": s.get("resolution"), "run": r.get("run"),
               "path": str(self.path) if self.path is not None else None}
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
        if not (folder / RECORD_FILE).is_file():
            raise OutputError(f"{folder} holds no record.json (the run did not finish); re-run its command "
                              "to resume it")
        try:
            record = load_record(folder).to_dict()  # a version-1 record comes back upgraded
        except RecordError as e:
            raise OutputError(str(e)) from None
        outcomes = list(read_outcomes(folder / SAMPLES_FILE).values())  # reads only, never repairs
        return cls(record, outcomes, folder)


def select(outcomes: dict[str, SampleOutcome], ids: Iterable[str]) -> list[SampleOutcome]:
    return [outcomes[i] for i in ids if i in outcomes]
