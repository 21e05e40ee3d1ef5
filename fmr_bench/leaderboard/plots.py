"""Figures of a board, one registered function per plot kind.

A plot function takes the built table, the plot definition and an output path, writes a
PNG and returns it, or returns ``None`` when the board has no data for it yet (e.g. no
calibration record for reliability diagrams).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..registry import Registry

if TYPE_CHECKING:
    from .schema import Plot
    from .table import BoardTable

PLOTS: Registry = Registry("plot kind")
PlotFn = Callable[["BoardTable", "Plot", Path], "Path | None"]


def _figure(width: float = 6.0, height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=(width, height), dpi=110)


def _save(plt, fig, path: Path) -> Path:
    from ..files import save_figure

    fig.tight_layout()
    try:  # metadata without a date: the same board renders to the same bytes
        save_figure(fig, path, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path


def _title(ax, text: str, intervals: bool = False) -> None:
    """The plot's title; with ``intervals``, a second line saying what the error bars are."""
    import textwrap

    note = "\nbars: 95 % intervals of measured numbers (reported numbers have none)" if intervals else ""
    ax.set_title(textwrap.fill(text, 70) + note, fontsize=9)


def _label(table: BoardTable, key: str) -> str:
    return table.board.column(key).label


def _points(table: BoardTable, x: str, y: str):
    """Entries with both x and y, with the 95 % interval columns of each (``KEY_lo``/``KEY_hi``, NaN where none)."""
    ends = [f"{k}_{e}" for k in dict.fromkeys((x, y)) for e in ("lo", "hi")]
    f = table.frame.reindex(columns=["name", "group", x, y, *ends]).dropna(subset=[x, y])
    return f.astype({c: float for c in ends})


def _errors(frame, key: str, transform=None) -> np.ndarray | None:
    """Asymmetric error bars (2, n) of ``key`` from its interval columns (0 where an entry has none), or None
    when no entry has one (reported numbers have no interval: no bar)."""
    lo, hi = frame.get(f"{key}_lo"), frame.get(f"{key}_hi")
    if lo is None or hi is None or not (lo.notna() & hi.notna()).any():
        return None
    f = transform or (lambda v: np.asarray(v, dtype=float))
    mid, low, high = f(frame[key]), f(lo), f(hi)
    err = np.stack([mid - low, high - mid])
    return np.clip(np.nan_to_num(err, nan=0.0), 0, None)


def _error_bars(ax, frame, x: str, y: str, transform=None) -> bool:
    """Draw each point's 95 % intervals (grey bars behind the markers); True if any was drawn."""
    xerr, yerr = _errors(frame, x, transform), _errors(frame, y, transform)
    if xerr is None and yerr is None:
        return False
    f = transform or (lambda v: np.asarray(v, dtype=float))
    ax.errorbar(f(frame[x]), f(frame[y]), xerr=xerr, yerr=yerr, fmt="none", ecolor="0.6", elinewidth=0.8,
                capsize=2, zorder=1)
    return True


def _annotate(ax, frame, x: str, y: str) -> None:
    if len(frame) > 15:  # names would cover each other; the table beside the plot names the points
        return
    for _, r in frame.iterrows():
        ax.annotate(str(r["name"]), (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")


def _by_group(ax, frame, x: str, y: str, marker: str = "o") -> None:
    groups = list(dict.fromkeys(frame["group"].fillna("")))
    for g in groups:
        sub = frame[frame["group"].fillna("") == g]
        ax.scatter(sub[x], sub[y], marker=marker, label=g or None, s=28)
    if any(groups):
        ax.legend(fontsize=7)


@PLOTS.register("scatter")
def scatter(table: BoardTable, plot: Plot, path: Path) -> Path | None:
    """y against x, one point per entry (e.g. FMR against SA, AUROC against accuracy)."""
    if not plot.x or not plot.y:
        return None
    y = plot.y[0]
    pts = _points(table, plot.x, y)
    if pts.empty:
        return None
    plt, (fig, ax) = _figure()
    bars_shown = _error_bars(ax, pts, plot.x, y)
    _by_group(ax, pts, plot.x, y)
    _annotate(ax, pts, plot.x, y)
    ax.set_xlabel(_label(table, plot.x))
    ax.set_ylabel(_label(table, y))
    _title(ax, plot.title or f"{_label(table, y)} against {_label(table, plot.x)}", bars_shown)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def logit(p):
    p = np.clip(np.asarray(p, dtype=float) / 100.0, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def fit_baseline(id_acc, ood_acc) -> tuple[float, float]:
    """Least squares line ``logit(ood) = a·logit(id) + b`` (Taori et al. 2020), accuracies in percent."""
    a, b = np.polyfit(logit(id_acc), logit(ood_acc), 1)
    return float(a), float(b)


@PLOTS.register("effective-robustness")
def effective_robustness(table: BoardTable, plot: Plot, path: Path) -> Path | None:
    """Accuracy on the line: OOD against ID accuracy on logit axes, with the fitted baseline.

    The baseline is fitted on the entries of group ``baseline`` when there are at least
    two, else on every entry shown; the distance above it is the effective robustness.
    """
    if not plot.x or not plot.y:
        return None
    y = plot.y[0]
    pts = _points(table, plot.x, y)
    if len(pts) < 2:
        return None
    base = pts[pts["group"] == "baseline"]
    base = base if len(base) >= 2 else pts
    a, b = fit_baseline(base[plot.x], base[y])
    plt, (fig, ax) = _figure()
    lx, ly = logit(pts[plot.x]), logit(pts[y])
    frame = pts.assign(_lx=lx, _ly=ly)
    bars_shown = _error_bars(ax, pts, plot.x, y, transform=logit)
    _by_group(ax, frame, "_lx", "_ly")
    _annotate(ax, frame, "_lx", "_ly")
    pad = 0.3
    xlim = (float(lx.min()) - pad, float(lx.max()) + pad)
    ylim = (float(min(ly.min(), (a * np.array(xlim) + b).min())) - pad,
            float(max(ly.max(), (a * np.array(xlim) + b).max())) + pad)
    xs = np.linspace(*xlim, 50)
    ax.plot(xs, a * xs + b, "k--", lw=1, label=f"baseline fit ({'group baseline' if base is not pts else 'all entries'})")
    ax.plot(xs, xs, color="0.7", lw=1, label="y = x")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ticks = np.array([1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99, 99.5, 99.8])
    for setter, lim in ((ax.set_xticks, xlim), (ax.set_yticks, ylim)):
        inside = ticks[(logit(ticks) >= lim[0]) & (logit(ticks) <= lim[1])]
        setter(logit(inside), [f"{t:g}" for t in inside])
    ax.set_xlabel(f"{_label(table, plot.x)} (logit axis)")
    ax.set_ylabel(f"{_label(table, y)} (logit axis)")
    _title(ax, plot.title or "Effective robustness: distance above the baseline fit", bars_shown)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


@PLOTS.register("bars")
def bars(table: BoardTable, plot: Plot, path: Path) -> Path | None:
    """Grouped bars: one group per column in ``y`` (e.g. ImageNet-X factors), one bar per entry."""
    keys = [k for k in plot.y if table.frame[k].notna().any()]
    if not keys:
        return None
    f = table.frame[table.frame[keys].notna().any(axis=1)]
    plt, (fig, ax) = _figure(max(6.0, 0.9 * len(keys) + 2), 4.2)
    width = 0.8 / max(len(f), 1)
    xs = np.arange(len(keys))
    shown = False
    for i, (_, r) in enumerate(f.iterrows()):
        heights = [r[k] if r[k] == r[k] else 0 for k in keys]
        row = f.iloc[[i]]
        errs = [_errors(row, k) for k in keys]
        yerr = None if all(e is None for e in errs) else \
            np.concatenate([e if e is not None else np.zeros((2, 1)) for e in errs], axis=1)
        shown |= yerr is not None
        ax.bar(xs + i * width - 0.4 + width / 2, heights, width, label=r["name"], yerr=yerr,
               error_kw={"ecolor": "0.3", "elinewidth": 0.8, "capsize": 2})
    ax.set_xticks(xs, [_label(table, k) for k in keys], rotation=30, ha="right", fontsize=8)
    _title(ax, plot.title or "Per-factor results", shown)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


@PLOTS.register("reliability")
def reliability(table: BoardTable, plot: Plot, path: Path) -> Path | None:
    """Reliability diagrams (accuracy against confidence per bin) from calibration records."""
    data = {name: r for name, r in table.reliability.items() if isinstance(r, dict) and r.get("before")}
    if not data:
        return None
    plt, (fig, ax) = _figure()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, label="perfect calibration")
    for name, r in data.items():
        for side, style in (("before", "-o"), ("after", "--s")):
            bins = [b for b in r.get(side) or [] if b.get("n")]
            if bins:
                ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, ms=3,
                        label=f"{name} ({'before' if side == 'before' else 'after'} TS)")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    _title(ax, plot.title or "Reliability diagrams (ID test half)")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)
