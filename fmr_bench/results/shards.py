"""Shards of one FMR run: which samples a shard takes, its folder, and merging shards back.

A run's selected samples (after ``--limit`` and its seeded subset, in dataset order) are
dealt round-robin: shard ``i`` of ``n`` takes positions ``i, i + n, i + 2n, ...``. The
partition needs no communication, every sample lands in exactly one shard, shard sizes
differ by at most one, and each shard gets an even slice of every stretch of the dataset
(ImageNet-val is sorted by class, so each shard sees every class about equally often).

A shard is not part of the run's identity: it runs in ``RUN/shard-<i>-of-<n>/``, a
complete run folder of its own (settings, samples log, lock, record) inside the folder a
single run would use, plus ``shard.json`` naming its samples. :func:`merge_parts` checks
that a set of shards is one whole run and combines their outcomes; :func:`write_merged`
writes the result where a single run writes its own, so merging and resuming mix freely.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from ..errors import OutputError, SettingsError, first_line
from ..files import write_json
from ..protocol.outcome import SampleOutcome
from ..metrics.fmr import fmr_metrics
from .record import Record, RecordError, fmr_descriptions, fmr_record, sample_set_fingerprint
from .rundir import (
    SAMPLES_FILE,
    RunLock,
    atomic_write,
    outcome_line,
    prepare_run_dir,
    read_outcome_rows,
    read_outcomes,
    samples_seal,
    set_aside,
)
from .scan import RECORD_FILE

T = TypeVar("T")
SHARD_FILE = "shard.json"
SHARD_PREFIX = "shard-"
#: SLURM array variables: the task id, the number of tasks, the first and the last id (``--array=1-8``).
SLURM_ID, SLURM_COUNT, SLURM_MIN = "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"
SLURM_MAX = "SLURM_ARRAY_TASK_MAX"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise SettingsError(f"shard {self.index}/{self.count} does not exist: pass --shard i/n with "
                                "n >= 1 and 0 <= i < n, e.g. --shard 0/4")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def folder_name(self) -> str:
        return f"{SHARD_PREFIX}{self.index}-of-{self.count}"

    def take(self, items: Sequence[T]) -> list[T]:
        """This shard's items: positions ``index, index + count, ...`` (possibly none)."""
        return list(items[self.index::self.count])


def parse_shard(text: str) -> Shard:
    """``"i/n"`` -> :class:`Shard`; anything else is a :class:`SettingsError` naming the form."""
    head, sep, tail = str(text).strip().partition("/")
    try:
        index, count = int(head), int(tail)
    except ValueError:
        index = count = None
    if not sep or index is None:
        raise SettingsError(f"--shard {text!r} is not i/n; pass e.g. --shard 0/4 (shards 0/4 to 3/4)")
    return Shard(index, count)


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of a SLURM array task (``SLURM_ARRAY_TASK_ID`` / ``_COUNT`` / ``_MIN`` / ``_MAX``), or None.

    Raises:
        SettingsError: a task id without a task count, values that are not whole numbers, or an
            array with gaps or a step (ids ``MIN..MAX`` are not ``COUNT`` tasks), whose task ids do
            not map onto shards ``0..COUNT-1``.
    """
    env = os.environ if env is None else env
    if SLURM_ID not in env:
        return None
    if SLURM_COUNT not in env:
        raise SettingsError(f"{SLURM_ID} is set but {SLURM_COUNT} is not; pass --shard i/n")
    try:
        task, count, first = int(env[SLURM_ID]), int(env[SLURM_COUNT]), int(env.get(SLURM_MIN, "0"))
        last = int(env[SLURM_MAX]) if SLURM_MAX in env else None
    except ValueError:
        shown = ", ".join(f"{k}={env[k]!r}" for k in (SLURM_ID, SLURM_COUNT, SLURM_MIN, SLURM_MAX) if k in env)
        raise SettingsError(f"{shown}: not whole numbers; pass --shard i/n") from None
    if last is not None and last - first + 1 != count:  # --array=0,2,5 or 0-10:5: ids are not 0..n-1 from MIN
        raise SettingsError(f"SLURM array tasks {first}..{last} are {count} tasks, not {last - first + 1}: an array "
                            f"with gaps or a step (e.g. --array=0,2,5) cannot map task ids to shards; use a "
                            "contiguous --array=A-B, or pass --shard i/n")
    index = task - first
    if not 0 <= index < count:  # an array with gaps (--array=0,2,5) or a step does not map to 0..n-1
        raise SettingsError(f"SLURM array task {task} (first {first}, {count} tasks) is not task {first}..."
                            f"{first + count - 1}; use a contiguous --array=A-B, or pass --shard i/n")
    return Shard(index, count)


def resolve_shard(flag: str | None, env: Mapping[str, str] | None = None) -> tuple[Shard | None, str | None]:
    """The shard to run: ``--shard`` if given, else the SLURM array's; and a note when they disagree.

    Returns:
        (shard or None, a one-line note when ``--shard`` overrides a different SLURM array task).
    """
    explicit = parse_shard(flag) if flag is not None else None
    from_env = shard_from_env(env)
    if explicit is None:
        return from_env, None
    note = None
    if from_env is not None and from_env != explicit:
        note = (f"--shard {explicit} overrides SLURM array task shard {from_env}; drop --shard to take the "
                "array's")
    return explicit, note


def shard_manifest(shard: Shard, ids: Sequence[str], labels: Sequence[int]) -> dict[str, Any]:
    """What ``shard.json`` holds: the shard, the whole selection's size and digest, the shard's ids."""
    return {"index": shard.index, "count": shard.count, "n_selected": len(ids),
            # ids and labels only: a shard reads just its own files, so contents cannot enter it
            "selection_sha256": sample_set_fingerprint(ids, labels), "ids": shard.take(list(ids))}


# --- merging ---------------------------------------------------------------------------------
@dataclass
class ShardPart:
    """One shard as the merge sees it: identity, manifest, record and finished outcomes."""

    source: str  # a folder, or "rank r" under torchrun
    settings: dict[str, Any] | None
    manifest: dict[str, Any] | None
    record: dict[str, Any] | None
    outcomes: dict[str, tuple[SampleOutcome, str | None]] = field(default_factory=dict)
    #: Ids whose samples.jsonl holds two different finished outcomes (a later line would silently win).
    conflicting: list[str] = field(default_factory=list)

    @property
    def shard(self) -> Shard:
        return Shard(self.manifest["index"], self.manifest["count"])

    @classmethod
    def load(cls, folder: Path) -> ShardPart:
        """Read a shard folder; reads only (a read-only folder loads)."""
        rows = read_outcome_rows(folder / SAMPLES_FILE)
        seen: dict[str, tuple[SampleOutcome, str | None]] = {}
        conflicting = []
        for o, fp in rows:
            if o.id in seen and seen[o.id] != (o, fp) and o.id not in conflicting:
                conflicting.append(o.id)
            seen[o.id] = (o, fp)
        return cls(str(folder), read_shard_json(folder / "settings.json"), read_shard_json(folder / SHARD_FILE),
                   read_shard_json(folder / RECORD_FILE), seen, conflicting)


def read_shard_json(path: Path) -> Any:
    """A shard folder's JSON file, or None when it is not there (an unfinished shard has no record).

    Raises:
        OutputError: the file is there but cannot be read or is not JSON (a truncated copy): said
            so, naming the file, rather than taken for a missing one.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise OutputError(f"cannot read {path} ({e.strerror or e}); make it readable, or copy the shard folder "
                          "again") from None
    try:
        return json.loads(text)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise OutputError(f"{path} is corrupt (not JSON: {first_line(e)}); re-run the shard's command to write it "
                          "again (its finished samples are kept), or copy the shard folder again") from None


@dataclass
class Merged:
    """A whole run put together from its shards."""

    settings: dict[str, Any]
    record: dict[str, Any]
    rows: list[tuple[SampleOutcome, str | None]]  # in dataset order, as a single run writes them

    @property
    def outcomes(self) -> list[SampleOutcome]:
        return [o for o, _ in self.rows]


def shard_folders(paths: Sequence[str | Path]) -> list[Path]:
    """Shard folders among ``paths``: a shard folder itself, or a run folder holding ``shard-*`` folders.

    Raises:
        OutputError: a path that is neither.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / SHARD_FILE).is_file():
            out.append(p)
            continue
        found = sorted(q for q in p.glob(f"{SHARD_PREFIX}*-of-*") if (q / SHARD_FILE).is_file()) if p.is_dir() else []
        if not found:
            raise OutputError(f"{p} is neither a shard folder (holding {SHARD_FILE}) nor a run folder holding "
                              f"{SHARD_PREFIX}<i>-of-<n> folders; pass the folders that fmr evaluate --shard wrote")
        out += found
    return list(dict.fromkeys(out))


def _differing(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(keys) or "?"


def _names(items: Sequence[str], limit: int = 5) -> str:
    head = ", ".join(items[:limit])
    return head + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _as_record(part: ShardPart) -> Record:
    try:
        record = Record.from_dict(part.record)
        fmr_descriptions(record)  # an FMR record of this schema, with what a merge rebuilds it from
    except RecordError as e:
        raise OutputError(f"{part.source}/record.json: {e}") from None
    return record


def _check_one_run(parts: Sequence[ShardPart]) -> None:
    """Every part is a shard (settings and manifest) of the same command and dataset as the first."""
    if not parts:
        raise OutputError("no shards to merge; pass the shard folders (or their run folder)")
    for p in parts:
        if p.settings is None or p.manifest is None:
            raise OutputError(f"{p.source} holds no settings.json or {SHARD_FILE}; it is not a shard that "
                              "fmr evaluate --shard wrote")
    first = parts[0]
    for p in parts[1:]:
        if p.settings != first.settings:
            raise OutputError(f"{p.source} and {first.source} are shards of different runs (they differ in "
                              f"{_differing(p.settings, first.settings)}); merge shards of one command only")
        for key, what in (("selection_sha256", "dataset (sample ids or labels)"), ("count", "shard count"),
                          ("n_selected", "number of selected samples")):
            if p.manifest[key] != first.manifest[key]:
                raise OutputError(f"{p.source} and {first.source} differ in {what}: {p.manifest[key]} vs "
                                  f"{first.manifest[key]}; merge shards of one command and one dataset only")


def _check_partition(parts: Sequence[ShardPart]) -> None:
    """Each shard ``0..count-1`` given exactly once, and no sample in two shards."""
    by_index: dict[int, list[ShardPart]] = {}
    for p in parts:
        by_index.setdefault(p.manifest["index"], []).append(p)
    count = parts[0].manifest["count"]
    twice = {i: ps for i, ps in by_index.items() if len(ps) > 1}
    if twice:
        i, ps = min(twice.items())
        raise OutputError(f"shard {i}/{count} is given {len(ps)} times ({', '.join(p.source for p in ps)}); "
                          "pass each shard once")
    missing = [f"{i}/{count}" for i in range(count) if i not in by_index]
    if missing:
        raise OutputError(f"shard(s) {_names(missing)} missing; merge needs all {count} shards (run "
                          "fmr evaluate --shard i/n for each)")
    owner: dict[str, list[str]] = {}
    for p in parts:
        for sid in set(p.manifest["ids"]) | set(p.outcomes):
            owner.setdefault(sid, []).append(str(p.shard))
    overlap = sorted(sid for sid, owners in owner.items() if len(owners) > 1)
    if overlap:
        raise OutputError(f"sample(s) {_names(overlap)} are in more than one shard "
                          f"({', '.join(owner[overlap[0]])}); these folders are not one partition of a run")


def _check_finished(parts: Sequence[ShardPart]) -> None:
    """Every shard has a record and an outcome for each of its samples."""
    unfinished = [p for p in parts if p.record is None
                  or any(sid not in p.outcomes for sid in p.manifest["ids"])]
    if unfinished:
        p = unfinished[0]
        left = [sid for sid in p.manifest["ids"] if sid not in p.outcomes]
        raise OutputError(f"shard {p.shard} ({p.source}) is unfinished: {len(p.manifest['ids']) - len(left)} of its "
                          f"{len(p.manifest['ids'])} samples are done" + (f", missing {_names(left)}" if left else
                                                                          ", no record.json")
                          + "; re-run its command to finish it")


def _shard_records(parts: Sequence[ShardPart]) -> list[Record]:
    """The shards' records, checked to share one record schema and one fmr_bench version."""
    first = parts[0]
    records = [_as_record(p) for p in parts]
    for p, r in zip(parts[1:], records[1:]):
        if r.schema_version != records[0].schema_version or r.upgraded_from != records[0].upgraded_from:
            raise OutputError(f"{p.source} and {first.source} were written with record schema "
                              f"{r.upgraded_from or r.schema_version} vs "
                              f"{records[0].upgraded_from or records[0].schema_version}; re-run the older shard")
        if r.provenance.fmr_bench != records[0].provenance.fmr_bench:
            raise OutputError(f"{p.source} and {first.source} ran fmr_bench {r.provenance.fmr_bench} vs "
                              f"{records[0].provenance.fmr_bench} (the protocol may differ); re-run the shards with "
                              "one version")
    return records


def _check_each_shard(parts: Sequence[ShardPart], records: Sequence[Record]) -> None:
    """Each shard's samples against its own record: one outcome per id, the record's seal, its metrics.

    A shard's samples.jsonl edited after its run (a decision flipped, a label changed, a second
    line for an id) is refused here, naming the shard, rather than merged into the run's record.
    """
    for p, r in zip(parts, records):
        where = f"shard {p.shard} ({p.source})"
        if p.conflicting:
            raise OutputError(f"{where}: samples.jsonl holds two different outcomes for sample {p.conflicting[0]}"
                              + (f" (and {len(p.conflicting) - 1} more)" if len(p.conflicting) > 1 else "")
                              + "; it was edited after the run: re-run the shard with --fresh")
        rows = [p.outcomes[sid] for sid in p.manifest["ids"] if sid in p.outcomes]
        seal = (r.sections.get("seal") or {}).get("samples_sha256")
        if seal is not None and samples_seal(rows) != seal:
            raise OutputError(f"{where}: samples.jsonl does not match the seal of its record.json (an outcome was "
                              "edited since the shard finished); re-run the shard with --fresh")
        got = fmr_metrics([o for o, _ in rows])
        off = sorted(k for k, v in got.items() if k in r.metrics and not _same_number(v, r.metrics[k]))
        if off:
            raise OutputError(f"{where}: its record says {off[0]} {r.metrics[off[0]]!r} but its samples.jsonl gives "
                              f"{got[off[0]]!r}; one of the two was edited: re-run the shard with --fresh")


def _same_number(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))


def _check_selection(parts: Sequence[ShardPart], rows: Sequence[tuple[SampleOutcome, str | None]]) -> None:
    """The merged samples are the selection every shard.json pins (ids and labels, by ``selection_sha256``)."""
    if sample_set_fingerprint([o.id for o, _ in rows], [o.label for o, _ in rows]) != parts[0].manifest[
            "selection_sha256"]:
        raise OutputError("the merged samples' ids or labels are not the selection the shards' shard.json pin "
                          "(selection_sha256): a label or id was changed in a shard's samples.jsonl; re-run that "
                          "shard with --fresh")


def _merged_rows(parts: Sequence[ShardPart]) -> list[tuple[SampleOutcome, str | None]]:
    """All shards' outcome rows in dataset order, checked to cover the whole selection."""
    rows = [p.outcomes[sid] for p in parts for sid in p.manifest["ids"]]
    rows.sort(key=lambda r: r[0].index)  # dataset order: the order a single run reads and sums them in
    n_selected = parts[0].manifest["n_selected"]
    if len(rows) != n_selected:
        raise OutputError(f"the shards hold {len(rows)} samples, the run selects {n_selected}; "
                          "they are not one partition of a run")
    return rows


def _merged_record(parts: Sequence[ShardPart], records: Sequence[Record],
                   rows: Sequence[tuple[SampleOutcome, str | None]]) -> dict[str, Any]:
    """The whole run's record, built as a single run builds it, plus ``merged_from``."""
    outcomes = [o for o, _ in rows]
    descriptions = fmr_descriptions(records[0])
    # the whole run's sample set, as a single run fingerprints it (ids, labels, contents in dataset order)
    descriptions["dataset"] = {**descriptions["dataset"], "n_selected": len(rows), "fingerprint":
                               sample_set_fingerprint([o.id for o in outcomes], [o.label for o in outcomes],
                                                      [fp for _, fp in rows])}
    ordered = sorted(zip(parts, records), key=lambda pr: pr[0].manifest["index"])
    stamps = [r.provenance.timestamp for r in records if r.provenance.timestamp]
    prov = replace(records[0].provenance, timestamp=min(stamps) if stamps else None,
                   device=", ".join(dict.fromkeys(str(r.provenance.device) for r in records)))
    record = fmr_record(records[0].settings, descriptions, outcomes, provenance=prov, run=records[0].run,
                        files={"samples": SAMPLES_FILE}, seal=samples_seal(rows)).to_dict()
    record["merged_from"] = [{"shard": str(p.shard), "source": p.source, "n": len(p.manifest["ids"]),
                              **{k: v for k, v in r.provenance.to_dict().items() if k != "versions"}}
                             for p, r in ordered]
    return record


def merge_parts(parts: Sequence[ShardPart]) -> Merged:
    """Check that ``parts`` are all shards of one run and put their outcomes together.

    The record is built by :func:`fmr_bench.results.record.fmr_record`, the builder a single run
    uses, from the shards' descriptions (which agree) and the merged per-sample table; its
    provenance is the first shard's with the earliest start and every device, and
    ``merged_from`` lists each shard's.

    Raises:
        OutputError: shards of different settings, weights, datasets or versions; a shard
            given twice, missing or unfinished; samples missing or in two shards. Each
            message names the shards and sample ids concerned.
    """
    _check_one_run(parts)
    _check_partition(parts)
    _check_finished(parts)
    records = _shard_records(parts)
    _check_each_shard(parts, records)
    rows = _merged_rows(parts)
    _check_selection(parts, rows)
    return Merged(parts[0].settings, _merged_record(parts, records, rows), rows)


def write_merged(merged: Merged, folder: Path, command: str | None = None, *, fresh: bool = False) -> Path:
    """Write a merged run into ``folder`` (settings, samples log, record), under the run lock.

    A folder that already holds outcomes is written only if they make the merged decisions
    (merging again is harmless; outcomes of a partial run in one piece, which may differ in
    the oracle's last float bits, move to ``replaced-<time>/``); other outcomes are refused,
    never replaced, unless ``fresh``: then they move to ``replaced-<time>/`` first, as
    ``--fresh`` does.

    Raises:
        OutputError: the folder belongs to other settings or holds other outcomes, is locked,
            or cannot be written.
    """
    with RunLock(folder):
        if fresh:
            set_aside(folder, keep=SHARD_PREFIX)
        prepare_run_dir(folder, merged.settings)
        have = read_outcomes(folder / SAMPLES_FILE)
        want = {o.id: o for o in merged.outcomes}
        clash = sorted(sid for sid in have if sid not in want or have[sid].key() != want[sid].key())
        if clash:
            raise OutputError(f"{folder} already holds other outcomes (e.g. {_names(clash, 3)}); pass --out to "
                              "another folder, or move them away")
        if any(have[sid] != want[sid] for sid in have):
            # the same decisions from an earlier partial run in one piece, p(y) off in the last float
            # bits (other batches): kept in replaced-<time>/, the merged outcomes take their place
            set_aside(folder, keep=SHARD_PREFIX)
        atomic_write(folder / SAMPLES_FILE, "".join(outcome_line(o, fp) for o, fp in merged.rows))
        record = {**merged.record, "run": folder.name}
        if command:
            record["provenance"] = {**record["provenance"], "command": command}
        write_json(folder / RECORD_FILE, record)
    return folder


def merge_folders(paths: Sequence[str | Path], out: str | Path | None = None, command: str | None = None
                  ) -> tuple[Merged, Path]:
    """``fmr merge``: load the shard folders among ``paths``, merge them, write the whole run.

    Args:
        paths: shard folders, or run folders holding them.
        out: folder for run folders (as ``fmr evaluate --out``); the merged run goes to
            ``out/<run name>``. Default: the run folder the shards sit in.

    Returns:
        (the merged run, the folder it was written to).
    """
    folders = shard_folders(paths)
    merged = merge_parts([ShardPart.load(f) for f in folders])
    run_name = merged.record.get("run") or folders[0].parent.name
    target = Path(out) / run_name if out is not None else folders[0].parent
    if any(target.resolve() == f.resolve() for f in folders):
        raise OutputError(f"--out {out} would write the merge into a shard folder; pass the folder for run folders")
    return merged, write_merged(merged, target, command)


__all__ = ["Merged", "Shard", "ShardPart", "merge_folders", "merge_parts", "parse_shard", "resolve_shard",
"shard_folders", "shard_from_env", "shard_manifest", "write_merged"]
