"""What a board checks at build time, so that it shows only numbers its files agree on.

* Reported entries: the arithmetic of the numbers a paper prints (:func:`reported_problems`):
  a column with ``ratio_of`` must be 100 * num / den (FMR = 100 * PA / SA), one with
  ``average_of`` the mean of the listed columns, each within the rounding of the printed digits.
* Measured entries: a run counts for a task only when it is the run the task describes, on
  every identity setting (:func:`task_identity`, :func:`identity_differences`): data and
  split, limit, budget, step size, acceptance rule, generator, oracle, precision, seed,
  optimizer, start (FMR); data, OOD sets, options, seed (static evaluators). Then the run
  folder must agree with itself (:func:`record_problems`): the record's metrics recomputed
  from ``samples.jsonl`` (FMR), one line per sample, the record against ``settings.json``
  and the folder's name (which hashes ``settings.json``), the weights hash present and equal
  to the one the entry pins.

Each problem is one line; the build shows them as flags on the entry and ``fmr leaderboard
build --strict`` fails on them.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import FmrBenchError
from .schema import FINETUNE_EVALUATOR, Board, BoardError, Entry, Task, expand

#: The settings of an FMR run's identity a board compares (besides the dataset, generator and oracle).
FMR_SETTINGS = ("limit", "budget", "step_size", "accept", "precision", "seed", "optimizer", "init", "fgsm_eps")
_CLOSE = 1e-9


def _half_unit(v: float) -> float:
    """Half a unit of the last digit ``v`` is written with (76.26 -> 0.005; 63.0 -> 0.05)."""
    text = repr(float(v))
    if "e" in text:
        return 0.0
    return 0.5 * 10 ** -len(text.partition(".")[2])


def reported_problems(board: Board, entry: Entry) -> list[str]:
    """The reported numbers that break the board's arithmetic (``ratio_of``, ``average_of``).

    A value printed with d decimals is off by at most u = 0.5 * 10^-d; the bound of each check
    is what those rounding errors can add up to, so a paper's correctly rounded numbers pass.
    A value the entry lists in ``reported.as_printed`` is kept as printed (its reason is shown as
    a note); one listed there that passes the check is a problem too (the waiver is stale).
    """
    if entry.reported is None:
        return []
    values, waived = entry.reported.values, entry.reported.as_printed
    out = []
    for c in board.columns:
        v = values.get(c.key)
        if v is None or not (c.ratio_of or c.average_of):
            continue
        parts = [values.get(k) for k in (c.ratio_of or c.average_of)]
        if any(p is None for p in parts):
            continue
        keys = (c.key, *(c.ratio_of or c.average_of))
        u = {k: _half_unit(values[k]) for k in keys}  # type: ignore[arg-type]
        if c.ratio_of:
            num, den = parts
            if not den:
                out.append(f"{c.key} = 100·{c.ratio_of[0]}/{c.ratio_of[1]} with {c.ratio_of[1]} 0")
                continue
            want = 100 * num / den
            bound = u[c.key] + 100 * (u[c.ratio_of[0]] / den + abs(num) * u[c.ratio_of[1]] / den ** 2)
            what = f"100·{c.ratio_of[0]}/{c.ratio_of[1]}"
        else:
            want = sum(parts) / len(parts)
            bound = u[c.key] + sum(u[k] for k in c.average_of) / len(c.average_of)
            what = f"the mean of {', '.join(c.average_of)}"
        bad = abs(v - want) > bound + _CLOSE
        if bad and c.key not in waived:
            out.append(f"reported {c.key} {v:g} is not {what} = {want:.4g} (within rounding, ±{bound:.2g}); "
                       "fix the number, or give the reason in reported.as_printed")
        elif not bad and c.key in waived:
            out.append(f"reported.as_printed lists {c.key}, which agrees with {what}; drop it from as_printed")
    return out


# --- a task's identity ---------------------------------------------------------------------------

@lru_cache(maxsize=16)
def _dataset_spec(spec: str) -> str:
    """The canonical spec of a dataset (``digits`` -> ``digits:test``), as its records name it."""
    from ..datasets import load_dataset

    return load_dataset(spec).spec


def _same_data(a: str, b: str) -> bool:
    return a == b or _dataset_spec(a) == _dataset_spec(b)


def _fmr_identity(task: Task, where: str) -> dict[str, Any]:
    from dataclasses import fields

    from ..config import FmrSettings
    from ..datasets import load_dataset
    from ..engine.defaults import resolve_defaults
    from ..oracles.acceptance import parse_rule

    pinned = dict(task.settings)
    generator, oracle = pinned.pop("generator", None), pinned.pop("oracle", None)
    known = {f.name for f in fields(FmrSettings)}
    unknown = set(pinned) - known
    if unknown:
        raise BoardError(f"{where}: unknown FMR setting(s) {', '.join(sorted(unknown))}; valid: generator, oracle, "
                         f"{', '.join(sorted(known))}")
    settings = FmrSettings(**pinned).validated()
    dataset = load_dataset(expand(task.data, where))
    resolved = resolve_defaults(settings, dataset, generator, oracle)
    s = resolved.settings
    out = {k: getattr(s, k) for k in FMR_SETTINGS}
    out.update(accept=parse_rule(s.accept).spec, dataset=dataset.spec, generator=resolved.generator,
               oracle=resolved.oracle)
    return out


def _static_identity(task: Task, where: str) -> dict[str, Any]:
    from ..registry import EVALUATORS

    data = [expand(task.data, where)]
    ood = [expand(o, where) for o in task.ood]
    # the digits world's default sets of an evaluator, as run_evaluator picks them
    defaults = getattr(EVALUATORS.get(task.evaluator), "digits_defaults", None)
    if defaults is not None and not ood and all(s.split("?")[0] in ("digits", "digits:test") for s in data):
        data, ood = defaults(data)
    return {"data": list(data), "ood": list(ood), "options": dict(task.options),
            "seed": 0, "pretrained": True, **task.settings}


def task_identity(board: Board, task: Task) -> dict[str, Any]:
    """What a run of ``task`` must have, setting by setting: the task's own settings, and for
    every setting it leaves open the value a run takes by default (for FMR: the dataset
    world's generator, oracle, acceptance rule, the generator card's step size).

    Raises:
        BoardError: the task cannot be resolved (an unknown setting, an unset ``${VAR}``).
    """
    where = f"{board.folder or board.name}/board.json task {task.evaluator}"
    if task.evaluator == FINETUNE_EVALUATOR:
        return dict(task.settings)
    from ..evaluators import TASKS

    try:
        return (_fmr_identity if TASKS.get(task.evaluator).takes_subset else _static_identity)(task, where)
    except BoardError:
        raise
    except FmrBenchError as e:
        raise BoardError(f"{where}: {e}") from None


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def identity_differences(board: Board, task: Task, rec: dict[str, Any]) -> list[str]:
    """How the run ``rec`` (a :func:`~fmr_bench.leaderboard.records.record_metrics` view) differs
    from ``task``: one ``"<setting> <run's> (board: <task's>)"`` per differing setting; empty when it is the task's run."""
    want = task_identity(board, task)
    if task.evaluator == FINETUNE_EVALUATOR:
        got = rec["settings"]
        return [f"{k} {got.get(k)!r} (board: {v!r})" for k, v in want.items() if not _equal(got.get(k), v)]
    out = []
    if "dataset" in want:  # FMR
        from ..oracles.acceptance import parse_rule

        got = {**{k: rec["settings"].get(k) for k in FMR_SETTINGS}, "generator": rec.get("generator"),
               "oracle": rec.get("oracle"), "dataset": rec.get("dataset")}
        try:
            got["accept"] = parse_rule(got["accept"]).spec if got["accept"] else None
        except FmrBenchError:
            pass
        for k, v in want.items():
            same = _same_data(got[k], v) if k == "dataset" and got[k] else _equal(got[k], v)
            if not same:
                out.append(f"{k} {got[k]!r} (board: {v!r})")
        return out
    got = {"data": rec.get("data"), "ood": rec.get("ood"),
           "options": {k[len("option."):]: v for k, v in rec["settings"].items() if k.startswith("option.")},
           **{k: rec["settings"].get(k) for k in want if k not in ("data", "ood", "options")}}
    for k, v in want.items():
        if k in ("data", "ood"):
            g = list(got[k] or [])
            same = len(g) == len(v) and all(_same_data(a, b) for a, b in zip(g, v))
        else:
            same = _equal(got[k], v)
        if not same:
            out.append(f"{k} {got[k]!r} (board: {v!r})")
    return out


# --- one run folder against itself -------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _samples_problems(folder: Path, raw: dict[str, Any]) -> list[str]:
    """An FMR record's metrics against its samples.jsonl, recomputed by the record's own metric functions."""
    from ..metrics.fmr import audit_metrics, fmr_metrics
    from ..results.rundir import SAMPLES_FILE, read_outcome_rows

    path = folder / SAMPLES_FILE
    if not path.is_file():
        return [f"{folder.name} has no {SAMPLES_FILE}, so its metrics cannot be checked; re-run it"]
    rows = [o for o, _ in read_outcome_rows(path)]
    ids = [o.id for o in rows]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        return [f"{folder.name}/{SAMPLES_FILE} holds sample {twice[0]} {ids.count(twice[0])} times"
                + (f" (and {len(twice) - 1} more ids twice)" if len(twice) > 1 else "") + "; re-run it"]
    judge = (raw.get("audit") or {}).get("judge")
    metrics = {**fmr_metrics(rows), **(audit_metrics(rows, judge) if judge else {})}
    out = []
    recorded = raw.get("metrics") or {}
    for k, v in metrics.items():
        r = recorded.get(k)
        if not ((v is None and r is None) or (v is not None and r is not None and _equal(float(r), float(v)))):
            out.append(f"{folder.name}: record {k} {r!r} but its {SAMPLES_FILE} gives "
                       + (f"{v:.4g}" if isinstance(v, float) else repr(v)))
    if raw.get("n") != len(rows):
        out.append(f"{folder.name}: record n {raw.get('n')!r} but its {SAMPLES_FILE} holds {len(rows)} samples")
    return out


def _settings_problems(folder: Path, rec: dict[str, Any]) -> list[str]:
    """The record against the folder's settings.json, and settings.json against the folder's name."""
    from ..results.rundir import settings_hash

    settings = _read_json(folder / "settings.json")
    if not isinstance(settings, dict):
        return [f"{folder.name} has no readable settings.json (the run's identity); re-run it"]
    out = []
    if not folder.name.endswith("__" + settings_hash(settings)):
        out.append(f"{folder.name}/settings.json is not the settings this folder was made for (its hash "
                   f"{settings_hash(settings)} is not in the folder's name)")
    pairs = [("model", settings.get("model"), rec["model"])]
    if rec["kind"] == "fmr":
        pairs += [("dataset", settings.get("dataset"), rec["dataset"]),
                  ("model weights", settings.get("model_weights"), rec["weights"])]
        pairs += [(k, settings.get(k), rec["settings"].get(k)) for k in FMR_SETTINGS if k in settings]
    else:
        pairs += [("seed", settings.get("seed"), rec["settings"].get("seed")),
                  ("data", settings.get("data"), rec.get("data")), ("ood", settings.get("ood"), rec.get("ood"))]
        if settings.get("weights") is not None:
            pairs.append(("model weights", settings.get("weights"), rec["weights"]))
    for what, want, got in pairs:
        if not _equal(want, got):
            out.append(f"{folder.name}: record {what} {got!r} but its settings.json says {want!r}")
    return out


def record_problems(path: Path, rec: dict[str, Any], entry: Entry) -> list[str]:
    """Why the run whose ``record.json`` is ``path`` (view ``rec``) cannot be trusted for ``entry``; empty if none.

    Fine-tuning records (written by a script, several seeds, no per-sample log) are checked
    for their weights hash only.
    """
    folder = path.parent
    out: list[str] = []
    weights = rec.get("weights")
    if rec["kind"] == "finetune":  # trained in memory: no weights file to hash, no per-sample log
        return out if not entry.weights or weights == entry.weights else [
            f"{folder.name}: made with weights {weights}, the entry pins {entry.weights}"]
    if not weights or not re.fullmatch(r"[0-9a-f]{16}", str(weights)) or set(str(weights)) == {"0"}:
        out.append(f"{folder.name}: record has no weights hash ({weights!r}); re-run it")
    elif entry.weights and weights != entry.weights:
        out.append(f"{folder.name}: made with weights {weights}, the entry pins {entry.weights}")
    raw = _read_json(path) or {}
    out += _settings_problems(folder, rec)
    if rec["kind"] == "fmr":
        out += _samples_problems(folder, raw)
        from ..results.rundir import seal_problem

        broken = seal_problem(folder, raw)  # also an edit that leaves the metrics as they were
        if broken:
            out.append(f"{folder.name}: {broken}")
    return out
