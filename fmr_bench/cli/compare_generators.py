"""``fmr compare-generators``: PA/FMR of several models under several generators (paper Table 3)."""

from __future__ import annotations

import argparse

from .commands import Command
from .common import (
    add_audit_argument,
    add_cache_argument,
    add_settings_arguments,
    data_help,
    oracle_help,
    set_cache,
    settings_overrides,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", required=True, action="append",
                   help="comma-separated model specs, e.g. builtin:digits-mlp,builtin:digits-cnn (repeatable)")
    p.add_argument("--generators", required=True, action="append",
                   help="comma-separated generator specs, e.g. vqgan:digits,vae:digits,diffusion:digits (repeatable)")
    p.add_argument("--data", default="digits", help=data_help())
    p.add_argument("--oracle", default=None, help=oracle_help())
    p.add_argument("--out", default="runs", help="folder for run folders (default: runs)")
    p.add_argument("--to", default=None, metavar="DIR",
                   help="folder for compare.csv/table.csv/tau.csv/compare.json (default OUT/compare__<data>__<hash>)")
    add_cache_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-grid", action="store_true", help="do not write the runs' image grid PNGs")
    add_audit_argument(p)
    add_settings_arguments(p)


def run(args: argparse.Namespace) -> int:
    set_cache(args.cache_dir)
    from rich.console import Console

    from ..studies.compare import compare_generators
    from ..studies.tables import columns_for, fmt, fmt_delta, rich_table

    console = Console(highlight=False, soft_wrap=True)
    log = None if args.quiet else (lambda msg: console.print(msg, highlight=False))
    res = compare_generators(args.models, args.generators, args.data, to=args.to, out=args.out, oracle=args.oracle,
                             progress=not args.quiet, write_grid=not args.no_grid, audit=args.audit, log=log,
                             **settings_overrides(args))
    audited = ("audit_validity", "audit_fmr") if args.audit else ()
    cols = [("generator", "generator"), ("model", "model"),
            *columns_for(["sa", "vr", "pa", "fmr", *audited, "mean_steps", "n"])]
    console.print(rich_table(res.rows, cols, title=f"PA / FMR per generator — {args.data}",
                             caption="percent; PA over validated samples, FMR = 100 PA / SA; validity: share of "
                                     "validated images the judge still labels y; aud. FMR over those; "
                                     "steps: mean survived; "
                                     "the Table 3 layout is in table.csv"))
    console.print(rich_table(
        [{k: fmt(v) for k, v in r.items()} for r in res.tau],
        [("generator A", "generator_a"), ("generator B", "generator_b"), ("tau FMR", "tau_fmr"),
         ("tau PA", "tau_pa"), *([("tau aud. FMR", "tau_audit_fmr")] if args.audit else []), ("models", "n_models"),
         ("settled pairs", "settled_pairs"), ("of them opposite", "settled_discordant")],
        title="rank agreement (Kendall tau-b over the models)",
        caption="settled pairs: model pairs whose ΔFMR interval excludes 0 under both generators; opposite: those "
                "the two generators order the other way round (pairs.csv)"))
    order = {1: "A > B", -1: "A < B", 0: "tie", None: "-"}
    console.print(rich_table(
        [{**r, "d_fmr": fmt_delta(r), "order": order[r["settled"]]} for r in res.pairs],
        [("generator", "generator"), ("model A", "model_a"), ("model B", "model_b"),
         ("ΔFMR A − B [95 %]", "d_fmr"), ("p", "fmr_delta_p"), ("order", "order")],
        title="pairs of models on the same images",
        caption="paired-bootstrap interval over the images and sign-flip p-value, as fmr compare of the two runs"))
    for note in res.notes:
        console.print(f"note: {note}", markup=False)
    console.print(f"tables: {res.path / 'table.csv'}  {res.path / 'tau.csv'}  {res.path / 'pairs.csv'}  "
                  f"all rows: {res.path / 'compare.csv'}")
    return 0


COMMAND = Command(help="PA/FMR of several models under several generators, and their rank agreement (Table 3)",
                  add_arguments=add_arguments, run=run)
