"""``fmr per-class``: the per-class VR/SA/PA/FMR table of a run (App. J, Tables 13-14)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .commands import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("record", metavar="RUN_DIR_OR_RECORD", help="a run folder or its record.json")
    p.add_argument("--csv", default=None, metavar="PATH",
                   help="where to write the table (default: per_class.csv beside the record)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..studies.sweep import PER_CLASS_COLUMNS, load_record, per_class_rows
    from ..studies.tables import columns_for, rich_table, write_csv

    record = load_record(args.record)
    rows = per_class_rows(record)
    src = Path(args.record)
    path = Path(args.csv) if args.csv else (src if src.is_dir() else src.parent) / "per_class.csv"
    s = record.get("settings", {})
    title = (f"per class — {record['model']['spec']} on {record['dataset']['spec']} "
             f"(B={s.get('budget')}, eta={s.get('step_size')})")
    cols = columns_for(["class", "sa", "vr", "pa", "fmr", "pa_all", "mean_steps", "n_validated", "n"])
    console = Console(highlight=False, soft_wrap=True)  # paths stay whole, for copying
    console.print(rich_table(rows, cols, title=title, caption="percent; last row: the whole run; all columns in the CSV"))
    console.print(f"table: {write_csv(path, rows, PER_CLASS_COLUMNS)}")
    return 0


COMMAND = Command(help="print and write the per-class VR/SA/PA/FMR table of an FMR run (App. J)",
                  add_arguments=add_arguments, run=run)
