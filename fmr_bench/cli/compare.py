"""``fmr compare RUN_A RUN_B``: the paired difference of two FMR runs on the same images."""

from __future__ import annotations

import argparse
import sys

from .commands import Command

FORMATS = ("table", "json", "csv")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..metrics.intervals import LEVEL, RESAMPLES, SEED

    p.add_argument("run_a", metavar="RUN_A", help="a finished FMR run folder")
    p.add_argument("run_b", metavar="RUN_B", help="another FMR run folder on the same images")
    p.add_argument("--format", choices=FORMATS, default="table", help="table (rich, default), json or csv")
    p.add_argument("--level", type=float, default=LEVEL, help=f"interval level (default {LEVEL})")
    p.add_argument("--resamples", type=int, default=RESAMPLES,
                   help=f"bootstrap resamples and sign-flip permutations (default {RESAMPLES})")
    p.add_argument("--seed", type=int, default=SEED, help=f"seed of the resampling (default {SEED})")


def run(args: argparse.Namespace) -> int:
    import json

    from ..errors import SettingsError
    from ..metrics.intervals import IntervalSettings
    from ..studies.paired import COLUMNS, compare_runs

    try:
        settings = IntervalSettings(args.level, args.resamples, args.seed)
    except ValueError as e:
        raise SettingsError(f"{e}; pass e.g. --level 0.95 --resamples 1000") from None
    cmp = compare_runs(args.run_a, args.run_b, settings)
    rows = cmp.rows()
    if args.format == "json":
        sys.stdout.write(json.dumps(cmp.to_dict(), indent=1) + "\n")
        return 0
    if args.format == "csv":
        import csv

        w = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return 0
    from rich.console import Console
    from rich.table import Table

    def f(v, fmt="{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    t = Table(title=f"A − B on {cmp.result.n} paired images", caption=(
        f"A: {cmp.a}\nB: {cmp.b}\n{settings.level:.0%} interval: paired percentile bootstrap ({settings.resamples} "
        f"resamples of the image ids, seed {settings.seed}); p: two-sided sign-flip permutation test"
        + (f"; audited by {cmp.judge}" if cmp.judge else "")))
    for name in ("metric", "A", "B", "Δ (A − B)", "interval", "p"):
        t.add_column(name, justify="left" if name == "metric" else "right", no_wrap=True)
    for r in rows:
        iv = "-" if r["lo"] is None else f"[{r['lo']:.2f}, {r['hi']:.2f}]"
        t.add_row(r["metric"], f(r["a"]), f(r["b"]), f(r["delta"], "{:+.2f}"), iv, f(r["p_value"], "{:.3f}"))
    Console(highlight=False, soft_wrap=True).print(t)
    return 0


COMMAND = Command(help="paired difference of two FMR runs on the same images: ΔSA, ΔVR, ΔPA, ΔFMR with a "
                       "paired-bootstrap interval and a sign-flip p-value", add_arguments=add_arguments, run=run)
