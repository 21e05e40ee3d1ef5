"""``fmr sweep``: FMR over a grid of step sizes and budgets, table and plot (App. J)."""

from __future__ import annotations

import argparse

from .commands import Command
from .common import add_audit_argument, add_settings_arguments, add_world_arguments, set_cache, settings_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_world_arguments(p)
    p.add_argument("--step-sizes", required=True, help="comma-separated step sizes eta, e.g. 0.01,0.05,0.1")
    p.add_argument("--budgets", required=True, help="comma-separated budgets B, e.g. 10,50")
    add_settings_arguments(p, skip=("step_size", "budget"))
    p.add_argument("--to", default=None, metavar="DIR",
                   help="folder for sweep.csv/json/png (default OUT/sweep__<model>__<data>__<hash>)")
    p.add_argument("--per-class", action="store_true", help="also write per_class.csv: the per-class table of every pair")
    p.add_argument("--no-grid", action="store_true", help="do not write the runs' image grid PNGs")
    add_audit_argument(p)


def run(args: argparse.Namespace) -> int:
    set_cache(args.cache_dir)
    from rich.console import Console

    from ..studies.sweep import METRIC_COLUMNS, sweep
    from ..studies.tables import columns_for, fmt_delta, rich_table

    console = Console(highlight=False, soft_wrap=True)  # paths stay whole, for copying
    log = None if args.quiet else (lambda msg: console.print(msg, highlight=False))
    res = sweep(args.model, args.data, args.step_sizes, args.budgets, to=args.to, out=args.out,
                generator=args.generator, oracle=args.oracle, per_class=args.per_class, progress=not args.quiet,
                write_grid=not args.no_grid, audit=args.audit, log=log, **settings_overrides(args))
    audited = ("audit_validity", "audit_fmr") if args.audit else ()
    cols = [*columns_for(["step_size", "budget", *(k for k in METRIC_COLUMNS if k != "oracle_acc"), *audited]),
            ("ΔFMR vs first [95 %]", "d_fmr"), ("p", "fmr_delta_p")]
    first = res.rows[0]
    console.print(rich_table([{**r, "d_fmr": fmt_delta(r)} for r in res.rows], cols,
                             title=f"sweep — {args.model} on {args.data}",
                             caption="percent: SA, VR, PA, FMR, PA_all; steps: mean survived; valid: validated; "
                                     f"ΔFMR: FMR minus that of the first pair (eta {first['step_size']:g}, B "
                                     f"{first['budget']}) on the same images, paired-bootstrap interval; p: "
                                     "sign-flip test; all columns in sweep.csv"))
    console.print(f"table: {res.path / 'sweep.csv'}  plot: {res.plot}"
                  + (f"  per class: {res.path / 'per_class.csv'}" if args.per_class else ""))
    return 0


COMMAND = Command(help="FMR over a grid of step sizes and budgets: table and plot (App. J)",
                  add_arguments=add_arguments, run=run)
