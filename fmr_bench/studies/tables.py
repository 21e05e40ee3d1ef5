"""Small output helpers shared by the studies: atomic CSV files and rich tables of rows."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write

#: The metrics of an FMR run that the studies' rows carry.
METRIC_COLUMNS = ("sa", "vr", "pa", "fmr", "pa_all", "oracle_acc", "mean_steps", "n_validated", "n")
#: The audited metrics a row gains when a judge audited the run (``audit=``); absent otherwise.
AUDIT_COLUMNS = ("audit_validity", "audit_pa", "audit_fmr", "n_confirmed")


#: The 95 % intervals a row carries with its headline metrics (the run record's ``intervals``).
INTERVAL_METRICS = ("pa", "fmr")
INTERVAL_COLUMNS = tuple(f"{m}_{end}" for m in INTERVAL_METRICS for end in ("lo", "hi"))


def metric_row(metrics: dict[str, Any], intervals: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's metrics as a study row's columns: :data:`METRIC_COLUMNS`, the intervals of PA and FMR
    (``pa_lo``, ``pa_hi``, ``fmr_lo``, ``fmr_hi``: empty for a run recorded before intervals), and
    :data:`AUDIT_COLUMNS` when the run was audited."""
    keys = METRIC_COLUMNS + (AUDIT_COLUMNS if "audit_validity" in metrics else ())
    row = {k: metrics.get(k) for k in keys}
    for m in INTERVAL_METRICS:
        lo, hi = (intervals or {}).get(m) or (None, None)
        row[f"{m}_lo"], row[f"{m}_hi"] = lo, hi
    return row


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` (missing keys and ``None`` as empty cells) atomically; returns the path."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return atomic_write(path, buf.getvalue(), fix="pass a writable folder")


#: Short column headers of the printed tables (as ``fmr evaluate`` prints them).
HEADERS = {"step_size": "eta", "budget": "B", "sa": "SA", "vr": "VR", "pa": "PA", "fmr": "FMR", "pa_all": "PA_all",
           "oracle_acc": "oracle", "mean_steps": "steps", "n_validated": "valid", "n": "n", "label": "label",
           "class": "class", "audit_validity": "validity", "audit_pa": "aud. PA", "audit_fmr": "aud. FMR",
           "n_confirmed": "confirmed"}


_TEXT = ("class", "source", "model", "model_a", "model_b", "generator")


def fmt_delta(row: dict[str, Any], metric: str = "fmr") -> str:
    """A paired difference as the tables show it: ``+1.25 [-0.50, +3.00]`` (``-`` when there is none)."""
    d, lo, hi = (row.get(f"{metric}_delta{e}") for e in ("", "_lo", "_hi"))
    if d is None:
        return "-"
    return f"{d:+.2f}" + ("" if lo is None else f" [{lo:+.2f}, {hi:+.2f}]")


def columns_for(keys: Sequence[str]) -> list[tuple[str, str]]:
    """``(header, key)`` pairs for :func:`rich_table`."""
    return [(HEADERS.get(k, k), k) for k in keys]


def fmt(value: Any) -> str:
    """Numbers as the tables show them: floats with two decimals, ``None`` as ``-``."""
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is not None and key == "step_size":
        return f"{value:g}"
    if value is not None and key.endswith("_p"):  # p-values: three decimals (1/1001 is the smallest)
        return f"{value:.3f}"
    return fmt(value)


def rich_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], *, title: str = "",
               caption: str = ""):
    """A :class:`rich.table.Table` with one row per dict; ``columns`` are ``(header, key)`` pairs."""
    from rich import box
    from rich.table import Table

    table = Table(title=title or None, caption=caption or None, box=box.SIMPLE_HEAD, pad_edge=False)
    for header, key in columns:
        table.add_column(header, justify="left" if key in _TEXT else "right", no_wrap=True)
    for row in rows:
        table.add_row(*[_cell(row, key) for _, key in columns])
    return table
