"""``fmr results DIR…``: every run record under some folders as one table (rich, CSV, JSON or Markdown)."""

from __future__ import annotations

import argparse
import sys

from ..errors import DataError, SettingsError
from .commands import Command

FORMATS = ("table", "csv", "json", "markdown")
#: ``--out`` suffixes that choose the format when ``--format`` is not given.
SUFFIXES = {".csv": "csv", ".json": "json", ".md": "markdown", ".markdown": "markdown"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="DIR", help="run folders, folders of run folders, or record files")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="table (rich, the default on a terminal), csv, json (a list of rows) or markdown; "
                        "with --out, the file's suffix chooses when this is not given")
    p.add_argument("--out", default=None, metavar="FILE", help="write the table to FILE instead of the terminal")
    for name, what in (("model", "model spec"), ("evaluator", "evaluator (fmr, ood-accuracy, finetune:ft…)"),
                       ("data", "main dataset spec")):
        p.add_argument(f"--{name}", action="append", default=None, metavar="PATTERN",
                       help=f"keep records whose {what} matches: a glob when PATTERN has * or [ (whole value), "
                            "else a substring; repeatable (any may match)")
    p.add_argument("--shards", action="store_true",
                   help="also list the records of a sharded run's parts (shard-i-of-n/); by default a merged run "
                        "is one row and parts not yet merged are left out")


def render(frame, fmt: str) -> str:
    """The frame as CSV, JSON (a list of row objects, null for missing) or Markdown text."""
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return frame.to_json(orient="records", indent=1) + "\n"
    return frame.to_markdown(index=False) + "\n"


def rich_table(frame):
    """The frame for a terminal: settings shared by every row go to the caption, empty columns are left out,
    a metric with an interval is shown as ``value [lo, hi]``."""
    from rich.table import Table

    from ..results.table import ID_COLUMNS

    settings = ID_COLUMNS[ID_COLUMNS.index("n") + 1:]
    shown = with_intervals(frame.drop(columns=["path", "timestamp", "weights", "schema", "kind"])).dropna(axis=1,
                                                                                                       how="all")
    if (shown["seal"] != "broken").all():
        shown = shown.drop(columns=["seal"])  # only a broken seal is worth a column on the terminal
    if shown["run"].nunique(dropna=False) == 1:
        shown = shown.drop(columns=["run"])  # one run: its folder is in the title
    else:  # model and data have their columns: the folder's settings hash tells the runs apart
        shown["run"] = shown["run"].map(lambda r: r.rpartition("__")[2] if isinstance(r, str) else r)
        shown = shown[["run", *[c for c in shown.columns if c != "run"]]]  # first: a wide table is cut at the right
    shared = [c for c in shown.columns if (c in settings or c.startswith(("option.", "setting.")))
              and shown[c].nunique(dropna=False) == 1]
    one = frame["run"].nunique(dropna=False) == 1
    t = Table(title=f"{frame['run'].nunique()} run(s), {len(frame)} row(s)" + (f" of {frame['run'].iloc[0]}" if one else ""),
              caption=("same in every row: " + ", ".join(f"{c}={_cell(shown[c].iloc[0])}" for c in shared))
              if shared else None)
    shown = shown.drop(columns=shared)
    for col in shown.columns:
        whole = col in ("model", "run")  # names are read whole; numbers and long settings may fold
        t.add_column(str(col), overflow="fold",
                     min_width=max(len(str(col)), *(len(_cell(v)) for v in shown[col])) if whole else None)
    for row in shown.itertuples(index=False):
        t.add_row(*[_cell(v) for v in row])
    return t


def with_intervals(frame):
    """``fmr`` and its ``fmr_lo``/``fmr_hi`` as one text column ``71.60 [67.20, 75.00]`` (a metric without an
    interval, e.g. from a record written before intervals, stays a bare number)."""
    import pandas as pd

    from ..results.table import HI, LO

    out = frame.copy()
    for lo in [c for c in frame.columns if c.endswith(LO)]:
        name = lo[: -len(LO)]
        hi = f"{name}{HI}"
        if name not in frame.columns or hi not in frame.columns:
            continue
        out[name] = [_cell(v) if pd.isna(a) or pd.isna(b) or pd.isna(v) else f"{_cell(v)} [{a:.2f}, {b:.2f}]"
                     for v, a, b in zip(frame[name], frame[lo], frame[hi])]
        out[name] = out[name].replace("", None)
        out = out.drop(columns=[lo, hi])
    return out


def _cell(v) -> str:
    import pandas as pd

    return "" if v is None or pd.isna(v) else (f"{v:.2f}" if isinstance(v, float) else str(v))


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..files import write_text
    from ..results.table import load_results

    fmt = args.format
    if fmt is None and args.out:
        from pathlib import Path

        fmt = SUFFIXES.get(Path(args.out).suffix.lower())
        if fmt is None:
            raise SettingsError(f"cannot tell the format of {args.out} from its suffix; pass --format csv, json or "
                                "markdown")
    fmt = fmt or "table"
    if fmt == "table" and args.out:
        raise SettingsError("--format table is for the terminal; pass --format csv, json or markdown with --out")

    def report(skip) -> None:
        print(f"fmr: skipped {skip.path}: {skip.reason}", file=sys.stderr, flush=True)

    def broken(path, why: str) -> None:
        print(f"fmr: warning: {path}: {why}; its row is marked seal=broken", file=sys.stderr, flush=True)

    frame = load_results(*args.paths, model=args.model, evaluator=args.evaluator, data=args.data, on_skip=report,
                         shards=args.shards, on_broken_seal=broken)
    if frame.empty:
        filters = [f"--{k} {' '.join(v)}" for k, v in (("model", args.model), ("evaluator", args.evaluator),
                                                       ("data", args.data)) if v]
        raise DataError(f"no run records match {' '.join(filters)} under {', '.join(args.paths)}; loosen the filters"
                        if filters else f"no run records (record.json, finetune.json, study outputs) under {', '.join(args.paths)}; "
                        "pass folders that hold finished runs")
    if fmt == "table":
        Console(highlight=False).print(rich_table(frame))
        return 0
    text = render(frame, fmt)
    if args.out:
        write_text(args.out, text, resume=False, fix="pass --out a file in a writable folder")
        print(f"{len(frame)} row(s) written to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


COMMAND = Command(help="every run record under some folders as one table (rich, CSV, JSON, Markdown)",
                  add_arguments=add_arguments, run=run)
