"""``fmr export``: a run's validated perturbed images as a static ImageFolder benchmark (App. O)."""

from __future__ import annotations

import argparse

from .commands import Command
from .common import add_settings_arguments, add_world_arguments, set_cache, settings_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_world_arguments(p)
    add_settings_arguments(p)
    p.add_argument("--to", default=None, metavar="DIR",
                   help="export folder: new, empty, or an earlier export of the same settings (resumed); "
                        "default OUT/exports/<model>__<data>__<hash>")
    p.add_argument("--no-grid", action="store_true", help="do not write the run's image grid PNG")


def run(args: argparse.Namespace) -> int:
    set_cache(args.cache_dir)
    from rich.console import Console

    from ..studies.export import export_run
    from .evaluate import metrics_table

    exp = export_run(args.model, args.data, args.to, generator=args.generator, oracle=args.oracle, out=args.out,
                     progress=not args.quiet, write_grid=not args.no_grid, **settings_overrides(args))
    console = Console(highlight=False, soft_wrap=True)  # paths stay whole, for copying
    console.print(metrics_table(exp.result.record))
    counts = exp.generation["counts"]
    console.print(f"export: {exp.path} ({counts['images']} images of {counts['selected']} samples"
                  + (f", {exp.n_regenerated} generated again" if exp.n_regenerated else "") + ")")
    console.print(f"labels: {exp.path / 'labels.csv'}; read back with --data {exp.generation['read_back']}")
    return 0


COMMAND = Command(help="export the validated perturbed images of an FMR run as a static benchmark (App. O)",
                  add_arguments=add_arguments, run=run)
