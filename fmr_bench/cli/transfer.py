"""``fmr transfer``: images generated for source model(s) scored by other models (App. D, F, G)."""

from __future__ import annotations

import argparse

from .commands import Command
from .common import add_settings_arguments, add_world_arguments, set_cache, settings_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", help="the generating model A (a model spec)")
    src.add_argument("--sources", help="several generating models, comma-separated: a full matrix")
    p.add_argument("--models", default="", help="further scored models, comma-separated (the sources are scored too)")
    add_world_arguments(p, model=False)
    add_settings_arguments(p)
    p.add_argument("--to", default=None, metavar="DIR",
                   help="folder for transfer.csv/json and the matrices (default OUT/transfer__<data>__<hash>)")
    p.add_argument("--no-cache", action="store_true", help="do not read/write the logits cache when scoring")


def run(args: argparse.Namespace) -> int:
    set_cache(args.cache_dir)
    from rich.console import Console

    from ..studies.tables import fmt_delta, rich_table
    from ..studies.transfer import METRICS, transfer

    console = Console(highlight=False, soft_wrap=True)  # paths stay whole, for copying
    log = None if args.quiet else (lambda msg: console.print(msg, highlight=False))
    res = transfer(args.source or args.sources, args.models, args.data, to=args.to, out=args.out,
                   generator=args.generator, oracle=args.oracle, progress=not args.quiet, cache=not args.no_cache,
                   log=log, **settings_overrides(args))
    # numbered columns keep the matrix narrow; the legend names them
    num = {m: f"[{i}]" for i, m in enumerate(res.models, 1)}
    console.print("scored models: " + ", ".join(f"{num[m]} {m}" for m in res.models))
    cols = [("generating model", "source"), *[(num[m], m) for m in res.models]]
    for metric in METRICS:
        rows = [{"source": f"{num[s]} {s}", **dict(zip(res.models, vals))}
                for s, vals in zip(res.sources, res.matrix(metric))]
        console.print(rich_table(rows, cols, title=f"{metric.upper()} — rows: generating model, columns: scored model"))
    gaps = [(s, {m: fmt_delta(res.cell(s, m)) for m in res.models}) for s in res.sources]
    if any(v != "-" for _, row in gaps for v in row.values()):
        console.print(rich_table(
            [{"source": f"{num[s]} {s}", **row} for s, row in gaps], cols,
            title="transfer gap: FMR(row's images, column) − FMR(column's own run) [95 %]",
            caption="paired over the same clean images; above 0: the row's images fool the column's model less "
                    "than its own run's do; only columns that are sources"))
    console.print("diagonal: the source's own FMR run; SA: clean accuracy of the scored model on the same "
                  "samples; PA over the source's validated images; FMR = 100 PA / SA")
    console.print(f"results: {res.path / 'transfer.json'} and {res.path / 'transfer.csv'}")
    return 0


COMMAND = Command(help="score models on images generated for another model (transferability, App. D/F/G)",
                  add_arguments=add_arguments, run=run)
