"""``fmr data``: fetch, list and verify the evaluation sets under a data root."""

from __future__ import annotations

import argparse
from pathlib import Path

from .commands import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True, metavar="{fetch,list,verify}")
    root_help = "data root (default: $FMR_DATA, else <cache dir>/data; the cache dir is $FMR_CACHE or ~/.cache/fmr_bench)"
    f = sub.add_parser("fetch", help="download, verify and unpack a set into the data root")
    f.add_argument("name", help="a set of fmr data list, e.g. imagenet-r")
    f.add_argument("--root", default=None, help=root_help)
    f.add_argument("--archive", action="append", default=None, metavar="[NAME=]PATH",
                   help="use an archive you downloaded yourself instead of downloading it (checked the same way; "
                        "NAME= picks the file of a set with several)")
    f.add_argument("--force", action="store_true", help="replace the set if it is present")
    f.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive(s) under ROOT/.downloads")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    ls = sub.add_parser("list", help="each set: present and verified / present, not verified / missing, with its size")
    ls.add_argument("--root", default=None, help=root_help)
    v = sub.add_parser("verify", help="re-check a set's files against the manifest written at fetch time, and its layout")
    v.add_argument("name")
    v.add_argument("--root", default=None, help=root_help)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _archives(values: list[str] | None) -> dict[str, Path]:
    out = {}
    for v in values or ():
        name, sep, path = v.partition("=")
        if sep and "/" not in name:
            out[name] = Path(path)
        else:
            out[f"_{len(out)}"] = Path(v)
    return out


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..datasets import fetch as fx

    console = Console(highlight=False, soft_wrap=True)
    if args.data_command == "fetch":
        archives = _archives(args.archive)
        if any(k.startswith("_") for k in archives) and len(archives) > 1:
            from ..errors import SettingsError

            raise SettingsError("several --archive values: name each one, --archive NAME=PATH")
        result = fx.fetch(args.name, args.root, archives=archives, force=args.force, keep_archives=args.keep_archive,
                          progress=not args.quiet, warn=lambda s: console.print(s, markup=False))
        if result.reused:
            state = "verified" if result.verified else "present, not verified"
            console.print(f"{args.name} is already at {result.path} ({state}); --force fetches it again", markup=False)
        else:
            state = "verified against the published checksum" if result.verified else \
                "NOT verified (no published checksum; its sha256 is recorded in the manifest)"
            console.print(f"{args.name}: {result.n_images} images at {result.path}, {state}", markup=False)
        return 0
    if args.data_command == "list":
        from rich.table import Table

        t = Table(title=f"data root {fx.data_root(args.root)}")
        for col in ("set", "state", "size", "path / how"):
            t.add_column(col, overflow="fold")
        for s in fx.status(args.root):
            where = s.note if s.state in ("missing", "package") else str(s.path) + (f" ({s.note})" if s.note else "")
            t.add_row(s.name, s.state, _size(s.size) if s.state != "package" else "", where)
        console.print(t)
        return 0
    report = fx.verify(args.name, args.root)
    if report.problems:
        for p in report.problems[:20]:
            console.print(f"  {p}", markup=False)
        from ..errors import DataError

        more = f" (and {len(report.problems) - 20} more)" if len(report.problems) > 20 else ""
        raise DataError(f"{args.name} at {report.path}: {len(report.problems)} problem(s){more}, e.g. "
                        f"{report.problems[0]}; fetch it again with fmr data fetch {args.name} --force")
    what = f"{report.n_files} files match the manifest" if report.n_files else "no manifest (layout checked only)"
    console.print(f"{args.name} at {report.path}: {what}; {report.n_images} images in the layout "
                  f"{args.name}: reads", markup=False)
    return 0


COMMAND = Command(help="fetch, list and verify the evaluation sets (ImageNet-R/A/Sketch/V2, Waterbirds, PACS, ...)",
                  add_arguments=add_arguments, run=run)
