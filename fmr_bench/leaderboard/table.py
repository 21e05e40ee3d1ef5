"""A board's table: entries joined with their measured records, flagged and ranked.

Each column of the board gets, per entry, the reported number (from the entry), the
measured number (from the run record of the column's evaluator), and the number shown:
measured where it exists, else reported. An entry with both whose gap exceeds the board's
tolerance on any column is flagged ``unreliable`` (RobustBench's word for it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .records import read_records
from .schema import Board, BoardError, Entry, Task

RUNS = "runs"
SIZES = "sizes.json"


@dataclass
class BoardTable:
    """The built board: one row per entry, ranked; ``reliability`` holds calibration bins per entry."""

    board: Board
    entries: list[Entry]
    frame: pd.DataFrame
    reliability: dict[str, Any] = field(default_factory=dict)
    #: (entry name, problem): what the build's checks found (:mod:`fmr_bench.leaderboard.checks`),
    #: each also in the entry's ``flag``; ``fmr leaderboard build --strict`` fails on any.
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def value_columns(self) -> list[str]:
        return [c.key for c in self.board.columns]


def _task(board: Board, evaluator: str) -> Task:
    return next(t for t in board.tasks if t.evaluator == evaluator)


Key = tuple[str, str, "str | None"]


@dataclass
class Scan:
    """The records under a board's ``runs/`` for its measurable entries.

    Attributes:
        taken: (model spec, evaluator, method) -> (record path, record view): the run of each
            entry and task, matched on every identity setting (:func:`~fmr_bench.leaderboard.checks.task_identity`).
        others: (model spec, method) -> one line per run of that model that is not the task's
            (other settings, or a task that cannot be resolved here); never taken.
    """

    taken: dict[Key, tuple[Path, dict[str, Any]]] = field(default_factory=dict)
    others: dict[tuple[str, str | None], list[str]] = field(default_factory=dict)


def scan_records(board: Board, entries: list[Entry], runs: Path) -> Scan:
    """Sort the records under ``runs`` into the runs of the board's tasks and the others.

    Raises:
        BoardError: a record of another protocol version than the board's, or two
            records for the same entry and task.
    """
    from .checks import identity_differences

    scan = Scan()
    if not runs.is_dir():
        return scan
    wanted = {e.model for e in entries if e.measurable}
    for path, rec in read_records(runs):
        if rec["model"] not in wanted or rec["evaluator"] not in {t.evaluator for t in board.tasks}:
            continue
        if rec["protocol_version"] != board.protocol_version:
            raise BoardError(f"{path} is a protocol-version {rec['protocol_version']} record but board {board.name} "
                             f"holds version {board.protocol_version}; delete the old runs and re-run "
                             f"`fmr leaderboard run {board.name}`, or put them on a board of their own")
        try:
            diffs = identity_differences(board, _task(board, rec["evaluator"]), rec)
        except BoardError as e:
            diffs = [f"cannot be compared with the board's task ({e})"]
        if diffs:
            scan.others.setdefault((rec["model"], rec["method"]), []).append(
                f"run {path.parent.name} is not this board's {rec['evaluator']} run, not counted: " + ", ".join(diffs))
            continue
        key = (rec["model"], rec["evaluator"], rec["method"])
        if key in scan.taken:
            what = key[1] + (f":{key[2]}" if key[2] else "")
            raise BoardError(f"two runs of {key[0]} for {what} on board {board.name}: {scan.taken[key][0].parent} and "
                             f"{path.parent}; delete the one that should not count")
        scan.taken[key] = (path, rec)
    return scan


def measured_records(board: Board, entries: list[Entry], runs: Path
                     ) -> dict[tuple[str, str, str | None], dict[str, Any]]:
    """(model spec, evaluator, fine-tuning method or None) -> record view: the run of each
    measurable entry and task, matched on every identity setting (runs of other settings are
    left out; :func:`scan_records` names them).

    Raises:
        BoardError: a record of another protocol version than the board's, or two
            records for the same entry and task.
    """
    return {k: v[1] for k, v in scan_records(board, entries, runs).taken.items()}


def _sizes(runs: Path) -> dict[str, dict[str, Any]]:
    path = runs / SIZES
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BoardError(f"{path} is unreadable ({e}); delete it and re-run the board") from None


def build_table(board: Board, entries: list[Entry], runs: Path | None = None) -> BoardTable:
    """Join entries with records under ``runs`` (default ``<board folder>/runs``), check, flag and rank.

    A measured number is shown only from the run of the board's task whose folder passes
    :func:`~fmr_bench.leaderboard.checks.record_problems`; every problem found is a flag on its entry.
    """
    from .checks import reported_problems

    runs = runs if runs is not None else (board.folder / RUNS if board.folder else None)
    scan = scan_records(board, entries, runs) if runs is not None else Scan()
    sizes = _sizes(runs) if runs is not None else {}
    rows, reliability, problems = [], {}, []
    checked: dict[Path, list[str]] = {}
    for e in entries:
        entry_problems = reported_problems(board, e)
        if e.measurable:
            entry_problems += scan.others.get((e.model, e.method), [])
        touched: list[Path] = []
        row = _entry_row(e, sizes)
        gaps, runs_used = _fill_columns(board, e, row, scan, checked, touched, reliability)
        for path in touched:
            entry_problems += checked[path]
        row["runs"] = " ".join(sorted(r for r in runs_used if r))
        row["flag"] = "; ".join(([f"unreliable: {', '.join(gaps)}"] if gaps else []) + entry_problems)
        row["pending"] = e.measurable and not touched
        rows.append(row)
        problems += [(e.name, p) for p in entry_problems]
    frame = pd.DataFrame(rows)
    frame = frame.sort_values(board.sort, ascending=not board.descending, na_position="last", kind="stable")
    frame.insert(0, "rank", range(1, len(frame) + 1))
    frame.insert(1, "tie", _ties(frame, board.sort))
    return BoardTable(board, entries, frame.reset_index(drop=True), reliability, problems)


def _ties(frame: pd.DataFrame, key: str) -> list[str]:
    """For each ranked row, the ranks its 95 % interval on the sort column overlaps ("" if none):
    such entries are not told apart by the measurement. Reported numbers have no interval."""
    lo, hi = frame.get(f"{key}_lo"), frame.get(f"{key}_hi")
    if lo is None or hi is None:
        return [""] * len(frame)
    spans = [(a, b) if pd.notna(a) and pd.notna(b) else None for a, b in zip(lo, hi)]
    out = []
    for i, s in enumerate(spans):
        near = [j + 1 for j, t in enumerate(spans) if j != i and s and t and s[0] <= t[1] and t[0] <= s[1]]
        out.append(", ".join(f"#{j}" for j in near))
    return out


def _entry_row(e: Entry, sizes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The identity, provenance and size cells of an entry's row (sizes the entry leaves out taken from
    the measured ``sizes``)."""
    row: dict[str, Any] = {"name": e.name, "group": e.group, "status": e.status, "model": e.model or "",
                           "paper": e.paper.title, "venue": e.paper.venue, "url": e.paper.url,
                           "architecture": e.architecture, "pretraining_data": e.pretraining_data,
                           "extra_data": e.extra_data,
                           "source": e.reported.source.text if e.reported else
                           (f"measured by `{e.measured_by}`" if e.measured_by else ""),
                           "reported_protocol": e.reported.protocol_version if e.reported else "",
                           "measured_by": e.measured_by}
    measured_size = sizes.get(e.model or "", {})
    row["params_m"] = e.size.params_m if e.size.params_m is not None else measured_size.get("params_m")
    row["gflops"] = e.size.gflops if e.size.gflops is not None else measured_size.get("gflops")
    row["images_per_s"] = e.size.images_per_s
    row["speed_device"] = e.size.speed_device
    return row


def _fill_columns(board: Board, e: Entry, row: dict[str, Any], scan: Scan, checked: dict[Path, list[str]],
                  touched: list[Path], reliability: dict[str, Any]) -> tuple[list[str], set[str]]:
    """Fill ``row``'s value cells (shown, reported, measured) column by column, computed ones last.

    A record is checked once (``checked``, ``touched`` updated) and its numbers used only when it has
    no problem; returns the columns whose reported and measured numbers disagree and the runs used.
    """
    from .checks import record_problems

    gaps = []
    runs_used = set()
    for c in sorted(board.columns, key=lambda c: bool(c.mean_of)):  # computed columns after their inputs
        if c.mean_of:
            row[f"{c.key}_lo"] = row[f"{c.key}_hi"] = None  # an average of columns: no interval of its own
            for suffix in ("", "_reported", "_measured"):
                parts = [row[f"{k}{suffix}"] for k in c.mean_of]
                row[f"{c.key}{suffix}"] = None if any(v is None for v in parts) else sum(parts) / len(parts)
            continue
        rep = e.reported.values.get(c.key) if e.reported else None
        mea = None
        if e.measurable and c.evaluator is not None:
            hit = scan.taken.get((e.model, c.evaluator, e.method))
            if hit is not None and hit[0] not in touched:
                touched.append(hit[0])
                checked[hit[0]] = record_problems(hit[0], hit[1], e)
            if hit is not None and not checked[hit[0]]:
                rec = hit[1]
                mea = rec["metrics"].get(c.metric_key)
                iv = (rec.get("intervals") or {}).get(c.metric_key)
                if mea is not None and iv:
                    row[f"{c.key}_lo"], row[f"{c.key}_hi"] = iv
                runs_used.add(rec["run"])
                if rec.get("reliability") and e.name not in reliability:
                    reliability[e.name] = rec["reliability"]
        row[c.key] = mea if mea is not None else rep
        row.setdefault(f"{c.key}_lo", None)
        row.setdefault(f"{c.key}_hi", None)
        row[f"{c.key}_reported"] = rep
        row[f"{c.key}_measured"] = mea
        if rep is not None and mea is not None and abs(mea - rep) > board.tolerance:
            gaps.append(c.key)
    for c in board.columns:
        if c.mean_of:
            rep, mea = row[f"{c.key}_reported"], row[f"{c.key}_measured"]
            row[c.key] = mea if mea is not None else (rep if rep is not None else row[c.key])
    return gaps, runs_used


def csv_columns(table: BoardTable) -> list[str]:
    """CSV column order: rank and identity, shown values, reported/measured pairs, provenance."""
    keys = table.value_columns
    pairs = [f"{k}_{side}" for k in keys for side in ("reported", "measured")]
    intervals = [f"{k}_{end}" for k in keys for end in ("lo", "hi")]
    return (["rank", "name", "status", "flag"] + keys + ["tie"] + intervals + pairs +
            ["params_m", "gflops", "images_per_s", "speed_device", "group", "model", "architecture", "pretraining_data", "extra_data",
             "paper", "venue", "url", "source", "reported_protocol", "runs"])
