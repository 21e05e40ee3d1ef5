"""The static-evaluator side of ``fmr evaluate --evaluator NAME`` and ``fmr list evaluators``."""

from __future__ import annotations

import argparse

from ..errors import SettingsError


def _options(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SettingsError(f"--option {item!r} must be KEY=VALUE, e.g. --option baseline=runs/")
        out[key.strip().replace("-", "_")] = value
    return out


def run_static(args: argparse.Namespace) -> int:
    from rich.console import Console

    from . import EVALUATORS, EvalSettings, evaluate_suite

    names = [n.strip() for n in args.evaluator.split(",") if n.strip()]
    for n in names:
        EVALUATORS.get(n)  # unknown names fail before any work
    if "fmr" in names:
        raise SettingsError("run fmr on its own (--evaluator fmr); combine only static evaluators")
    if args.limit is not None:
        raise SettingsError("--limit applies to the FMR protocol only; static evaluators use every image")
    settings = EvalSettings(batch_size=args.batch_size or EvalSettings.batch_size,
                            device=args.device or EvalSettings.device,
                            seed=args.seed if args.seed is not None else EvalSettings.seed,
                            cache=not args.no_cache)
    console = Console(stderr=False)
    progress = None
    if not args.quiet:
        def progress(spec: str, done: int, total: int) -> None:
            if done == total or done % 1024 < (args.batch_size or 64):
                console.print(f"  {spec}: {done}/{total} images", highlight=False)
    results = evaluate_suite(args.model, names, args.data, args.ood, out=args.out, settings=settings,
                             progress=progress, **_options(args.option))
    for r in results:
        console.print(metrics_table(r.record))
        if r.path is not None:
            console.print(f"record: {r.path / 'record.json'}")
    return 0


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def metrics_table(record: dict):
    """Metrics as tables: ``a/b/c`` keys pivoted to row ``a/b``, column ``c`` (transposed when
    wider than long); keys without ``/`` in a first two-column table."""
    from rich.console import Group
    from rich.table import Table

    title = f"{record['evaluator']} — {record['model']['spec']} on {record['dataset']['spec']}"
    scalars = {k: v for k, v in record["metrics"].items() if "/" not in k}
    grid: dict[str, dict[str, object]] = {}
    for k, v in record["metrics"].items():
        if "/" in k:
            row, _, col = k.rpartition("/")
            grid.setdefault(row, {})[col] = v
    cols = list(dict.fromkeys(c for r in grid.values() for c in r))
    if len(cols) > len(grid) + 2:  # wide: one row per column instead
        flipped: dict[str, dict[str, object]] = {}
        for r, vals in grid.items():
            for c, v in vals.items():
                flipped.setdefault(c, {})[r] = v
        grid, cols = flipped, list(grid)
    tables = []
    if scalars:
        t = Table(title=title)
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in scalars.items():
            t.add_row(k, _fmt(v))
        tables.append(t)
    if grid:
        t = Table(title=None if scalars else title)
        t.add_column("")
        for c in cols:
            t.add_column(c, justify="right")
        for r, vals in grid.items():
            t.add_row(r, *[_fmt(vals.get(c)) for c in cols])
        tables.append(t)
    return Group(*tables)


def list_evaluators() -> int:
    from rich.console import Console
    from rich.table import Table

    from . import EVALUATORS

    table = Table(title="evaluators")
    table.add_column("name")
    table.add_column("description")
    table.add_column("options")
    table.add_row("fmr", "the dynamic FMR protocol (default of fmr evaluate)", "see fmr evaluate --help")
    for entry in EVALUATORS.items():
        opts = getattr(entry.load(), "options", {})
        table.add_row(entry.name, entry.help, "; ".join(f"{k}: {v}" for k, v in opts.items()) or "-")
    Console().print(table)
    return 0
