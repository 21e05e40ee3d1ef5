"""Step-size / budget ablation and per-class tables (FMR paper App. J, Tables 13-14).

:func:`sweep` runs the FMR protocol once per (step size η, budget B) pair, each a normal
run folder under ``out`` (so a sweep resumes, and reuses runs made by ``fmr evaluate``), and
writes to its folder::

    sweep.csv / sweep.json   one row per pair: SA, VR, PA, FMR, PA_all, oracle accuracy,
                             mean steps, counts, the 95 % intervals of PA and FMR, the
                             paired difference of PA and FMR from the reference pair (the
                             first step size and budget listed) on the same images with its
                             interval and sign-flip p-value, run folder
    sweep.png                FMR and VR against the step size, one line per budget
    per_class.csv            (``per_class=True``) the per-class table of every pair

:func:`per_class_rows` turns the per-class table a record already holds into rows with a
final ``total`` row (the record's overall metrics), as in Tables 13-14.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import FmrSettings
from ..datasets import ImageDataset, load_dataset
from ..errors import DataError, SettingsError
from ..metrics.intervals import IntervalSettings, paired_method
from ..plots import finish_figure
from ..results.record import load_record as read_record
from ..results.rundir import run_dir, write_json
from ..results.study import study_document
from .export import merge_settings
from .paired import DELTA_COLUMNS, compare_results, delta_row
from .tables import AUDIT_COLUMNS, INTERVAL_COLUMNS, METRIC_COLUMNS, metric_row, write_csv
from ..results.scan import RECORD_FILE

SWEEP_COLUMNS = ("step_size", "budget", *METRIC_COLUMNS, *INTERVAL_COLUMNS, *DELTA_COLUMNS, *AUDIT_COLUMNS, "run")
PER_CLASS_COLUMNS = ("label", "class", *METRIC_COLUMNS)


@dataclass
class SweepResult:
    """One row per (step size, budget) pair, and the files written."""

    rows: list[dict[str, Any]]
    path: Path
    plot: Path | None
    per_class: list[dict[str, Any]] | None = None


def parse_values(text: str | Sequence[float] | None, what: str, kind: type) -> list:
    """``"0.01,0.05"`` (or a list) -> unique positive numbers in order; a one-line error otherwise.

    Args:
        what: the option, for messages (``"--step-sizes"``).
        kind: ``float`` or ``int``.
    """
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text or [])
    items = [s for s in items if s != ""]
    example = "0.01,0.05,0.1" if kind is float else "10,50"
    if not items:
        raise SettingsError(f"{what} is empty; pass a comma-separated list, e.g. {what} {example}")
    values = []
    for s in items:
        try:
            v = kind(s)
            if kind is int and isinstance(s, float) and not s.is_integer():
                raise ValueError
        except (TypeError, ValueError):
            raise SettingsError(f"{what}: {s!r} is not {'a number' if kind is float else 'an integer'}; "
                                f"pass e.g. {what} {example}") from None
        if not (v > 0 and math.isfinite(v)):
            raise SettingsError(f"{what}: every value must be > 0 (got {s}); pass e.g. {what} {example}")
        values.append(v)
    return list(dict.fromkeys(values))


def sweep(model: str, data: str | ImageDataset = "digits", step_sizes: Any = None, budgets: Any = None, *,
          to: str | Path | None = None, out: str | Path = "runs", generator: str | None = None,
          oracle: str | None = None, settings: FmrSettings | None = None, per_class: bool = False,
          progress: Any = False, pretrained: bool = True, write_grid: bool = True, audit: str | None = None,
          log=None, **overrides: Any) -> SweepResult:
    """Run FMR for every (step size, budget) pair and tabulate and plot the metrics.

    Args:
        model, data, generator, oracle, out, settings, overrides, progress, pretrained:
            as for :func:`fmr_bench.evaluate` (``step_size``/``budget`` come from the lists).
        step_sizes, budgets: lists or comma-separated strings of positive values.
        to: output folder; default ``OUT/sweep__<model>__<data>__<hash of the request>``.
        per_class: also write every pair's per-class table (``per_class.csv``).
        audit: a judge spec that audits every run (as ``fmr evaluate --audit``); the rows gain
            the audited columns (:data:`fmr_bench.studies.tables.AUDIT_COLUMNS`).
        log: optional ``callable(str)`` for progress lines.

    Raises:
        SettingsError: bad lists or settings, before any run starts.
    """
    from ..engine.fmr import evaluate

    etas, bs, merged = _grid(step_sizes, budgets, settings, overrides)
    dataset = data if isinstance(data, ImageDataset) else load_dataset(data)
    request = {"model": model, "dataset": dataset.spec, "generator": generator, "oracle": oracle,
               "step_sizes": etas, "budgets": bs,
               "settings": {k: v for k, v in asdict(merged).items() if k not in ("device", "batch_size", "workers")},
               **({"audit": audit} if audit else {})}
    to = Path(to) if to is not None else run_dir(Path(out), f"sweep__{model}", dataset.spec, request)
    say = log or (lambda _msg: None)
    started = _dt.datetime.now(_dt.timezone.utc)
    rows, class_rows, reference = [], [], None
    for b in bs:
        for eta in etas:
            say(f"step size {eta:g}, budget {b}")
            res = evaluate(model, dataset, generator=generator, oracle=oracle, out=out, progress=progress,
                           pretrained=pretrained, write_grid=write_grid, audit=audit,
                           settings=merge_settings(merged, {"step_size": eta, "budget": b}))
            if reference is None:  # the first pair listed: (first step size, first budget)
                reference = res
            delta = None if res is reference else compare_results(
                res, reference, f"step size {eta:g}, budget {b}", f"step size {etas[0]:g}, budget {bs[0]}").result
            rows.append({"step_size": eta, "budget": b, **metric_row(res.metrics, res.record.get("intervals")),
                         **delta_row(delta), "run": str(res.path) if res.path else None})
            if per_class:
                class_rows += [{"step_size": eta, "budget": b, **r} for r in per_class_rows(res.record)]
    write_csv(to / "sweep.csv", rows, SWEEP_COLUMNS)
    write_json(to / "sweep.json", json.loads(json.dumps(study_document(
        "sweep", request, rows, reference={"step_size": etas[0], "budget": bs[0]},
        paired_method=paired_method(IntervalSettings()), timestamp=started.isoformat(timespec="seconds")),
        default=str)))
    if per_class:
        write_csv(to / "per_class.csv", class_rows, ("step_size", "budget", *PER_CLASS_COLUMNS))
    plot = plot_sweep(rows, to / "sweep.png", title=f"{model} on {dataset.spec}")
    return SweepResult(rows, to, plot, class_rows if per_class else None)


def _grid(step_sizes: Any, budgets: Any, settings: FmrSettings | None,
          overrides: dict[str, Any]) -> tuple[list[float], list[int], FmrSettings]:
    """The swept step sizes and budgets and the other settings, every pair range-checked before any run."""
    etas = parse_values(step_sizes, "--step-sizes", float)
    bs = parse_values(budgets, "--budgets", int)
    clash = {"step_size", "budget"} & set(overrides)
    if clash:
        raise SettingsError(f"pass {', '.join(sorted(clash))} through the sweep lists (--step-sizes, --budgets), "
                            "not as a single setting")
    merged = merge_settings(settings, overrides)
    for eta in etas:
        for b in bs:
            merge_settings(merged, {"step_size": eta, "budget": b})
    return etas, bs, merged


def plot_sweep(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """FMR and VR against the step size, one line per budget (log x axis when the sizes span 10x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    etas = sorted({r["step_size"] for r in rows})
    for b in sorted({r["budget"] for r in rows}):
        mine = sorted((r for r in rows if r["budget"] == b), key=lambda r: r["step_size"])
        for ax, key in zip(axes, ("fmr", "vr")):
            pts = [(r["step_size"], r[key]) for r in mine if r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"B = {b}")
    for ax, name in zip(axes, ("FMR (%)", "VR (%)")):
        ax.set_xlabel("step size η")
        ax.set_ylabel(name)
        if len(etas) > 1 and etas[-1] / etas[0] >= 10:
            ax.set_xscale("log")
        ax.set_xticks(etas, [f"{e:g}" for e in etas])  # the swept values, not a dense log grid
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return finish_figure(fig, path, title)


def load_record(path: str | Path) -> dict[str, Any]:
    """The record (version-2 dict) of a run folder or a ``record.json`` path."""
    path = Path(path)
    file = path / RECORD_FILE if path.is_dir() else path
    if not file.is_file():
        hint = " (the run is unfinished: re-run its command to complete it)" if (file.parent / "samples.jsonl").is_file() \
            else ""
        raise DataError(f"no record at {file}{hint}; pass a run folder or its record.json")
    return read_record(file).to_dict()  # version 1 comes back upgraded to version 2


def per_class_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's per-class table (VR/SA/PA/FMR...) with a final ``total`` row."""
    table = record.get("per_class")
    if not table:
        raise DataError(f"record of {record.get('evaluator', '?')} run {record.get('run')} has no per-class table; "
                        "pass the record of an FMR run (fmr evaluate without --evaluator)")
    return [*table, {"label": None, "class": "total", **record["metrics"]}]
