"""The static-evaluator side of ``fmr evaluate --evaluator NAME`` and ``fmr list evaluators``."""

from __future__ import annotations

import argparse

from ..errors import SettingsError


def option_pairs(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SettingsError(f"--option {item!r} must be KEY=VALUE, e.g. --option baseline=runs/")
        out[key.strip().replace("-", "_")] = value
    return out


def run_static(args: argparse.Namespace, names: list[str] | None = None) -> list:
    """Run the static evaluators ``names`` (default: ``args.evaluator``), print their tables, return their results."""
    from rich.console import Console

    from ..engine.distributed import process_group, rank_device, world_from_env
    from ..evaluators import EVALUATORS, EvalSettings, evaluate_suite

    if names is None:
        names = [n.strip() for n in args.evaluator.split(",") if n.strip()]
    for n in names:
        EVALUATORS.get(n)  # unknown names fail before any work
    settings = EvalSettings(batch_size=args.batch_size or EvalSettings.batch_size,
                            num_workers=getattr(args, "workers", None),
                            device=args.device or EvalSettings.device,
                            seed=args.seed if args.seed is not None else EvalSettings.seed,
                            cache=not args.no_cache)
    console = Console(highlight=False, soft_wrap=True)  # paths stay whole, for copying
    world = world_from_env()
    if world is not None:  # torchrun: the ranks share every forward pass; rank 0 writes and prints
        device = rank_device(settings.device, world)
        show = not args.quiet and world.is_root
        with process_group(world, device), InferenceProgress(console, enabled=show) as bar:
            results = evaluate_suite(args.model, names, args.data, args.ood, out=args.out if world.is_root else None,
                                     settings=settings, world=world, progress=bar.update if show else None,
                                     **option_pairs(args.option))
        if not world.is_root:
            return 0
    else:
        with InferenceProgress(console, enabled=not args.quiet) as bar:
            results = evaluate_suite(args.model, names, args.data, args.ood, out=args.out, settings=settings,
                                     progress=bar.update if not args.quiet else None, **option_pairs(args.option))
    for r in results:
        for note in r.record.get("notes") or []:
            console.print(f"note: {note}", markup=False)
        console.print(metrics_table(r.record))
        if r.path is not None:
            console.print(f"record: {r.path / 'record.json'}")
    return results


class InferenceProgress:
    """A rich progress bar per dataset pass: images done, images/s and ETA (as the FMR loop's)."""

    def __init__(self, console, *, enabled: bool = True) -> None:
        self.console, self.enabled = console, enabled
        self._bar = None
        self._tasks: dict[str, int] = {}
        self._start: dict[str, float] = {}

    def __enter__(self) -> InferenceProgress:
        if self.enabled:
            from ..progress import rate_bar

            self._bar = rate_bar("{task.description}", console=self.console)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, spec: str, done: int, total: int) -> None:
        """The progress callback of :class:`~fmr_bench.evaluators.Context`: ``(dataset spec, done, total)``."""
        if self._bar is None:
            return
        key = spec
        if key not in self._tasks or (done <= self._bar.tasks[self._tasks[key]].completed and done < total):
            # a new pass over this dataset (another head of a zero-shot model): a new line
            self._tasks[key] = self._bar.add_task(spec, total=total, rate="-")
            self._start[key] = self._bar.get_time()
        task = self._tasks[key]
        elapsed = max(self._bar.get_time() - self._start[key], 1e-9)
        self._bar.update(task, completed=done, total=total, rate=f"{done / elapsed:.1f}")


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

    from ..evaluators import EVALUATORS, TASKS

    table = Table(title="evaluators")
    table.add_column("name")
    table.add_column("description")
    table.add_column("options")
    for entry in TASKS.items():
        task = entry.load()
        if task.takes_subset:
            table.add_row(entry.name, f"{entry.help}; in a list with static evaluators (--evaluator fmr,calibration) "
                          "it runs first, each evaluator writing its own record", "see fmr evaluate --help")
            continue
        opts = getattr(EVALUATORS.get(entry.name), "options", {})
        table.add_row(entry.name, entry.help, "; ".join(f"{k}: {v}" for k, v in opts.items()) or "-")
    Console().print(table)
    return 0
