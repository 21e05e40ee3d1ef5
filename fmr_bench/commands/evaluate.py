"""``fmr evaluate``: the FMR protocol on one model, or static evaluators with ``--evaluator``."""

from __future__ import annotations

import argparse

from . import Command
from .common import add_settings_arguments, add_world_arguments, set_cache, settings_overrides


def add_arguments(ev: argparse.ArgumentParser) -> None:
    add_world_arguments(ev)
    add_settings_arguments(ev)
    ev.add_argument("--no-grid", action="store_true", help="do not write the image grid PNG")
    ev.add_argument("--fresh", action="store_true",
                    help="redo a run whose folder already holds outcomes; the earlier files move to "
                         "replaced-<time>/ inside the run folder (nothing is deleted)")
    ev.add_argument("--audit", default=None, metavar="JUDGE",
                    help="score every validated perturbed image with an independent judge (any oracle spec or "
                         "A+B ensemble, e.g. openclip:ViT-L-14/openai); not part of the run's identity")
    ev.add_argument("--evaluator", default="fmr",
                    help="fmr (the dynamic FMR protocol, default) or static evaluator(s), comma-separated: "
                         "ood-accuracy, imagenet-x, ood-detection, calibration, group-robustness, zero-shot "
                         "(see fmr list evaluators)")
    ev.add_argument("--ood", action="append", default=None, metavar="DATA",
                    help="static evaluators: OOD / shifted dataset spec (repeatable)")
    ev.add_argument("--option", action="append", default=None, metavar="KEY=VALUE",
                    help="static evaluators: evaluator option, e.g. baseline=runs/ or scores=msp,mcm (repeatable)")
    ev.add_argument("--no-cache", action="store_true", help="static evaluators: do not read/write the logits cache")


def run(args: argparse.Namespace) -> int:
    set_cache(args.cache_dir)
    if args.evaluator != "fmr":
        from ..evaluators.cli import run_static

        if args.fresh:
            from ..errors import SettingsError

            raise SettingsError("--fresh redoes an FMR run; static evaluators recompute their record on every call "
                                "(pass --no-cache to recompute the logits too)")

        return run_static(args)
    from rich.console import Console

    from ..protocol.cpu import keep_freed_memory
    from ..runner import evaluate

    keep_freed_memory()  # a process of its own: the loop may keep its peak memory reserved
    result = evaluate(args.model, args.data, generator=args.generator, oracle=args.oracle, out=args.out,
                      progress=not args.quiet, write_grid=not args.no_grid, fresh=args.fresh, audit=args.audit,
                      **settings_overrides(args))
    console = Console()
    if result.reused and args.quiet:  # without --quiet the runner has said so already
        console.print(f"reused finished run ({result.path}); pass --fresh to redo it", highlight=False)
    console.print(metrics_table(result.record))
    for line in result.record.get("warnings", []):
        console.print(f"[yellow]warning:[/] {line}", highlight=False)
    if "audit" in result.record:
        console.print(audit_table(result.record["audit"]))
    if result.path is not None:
        console.print(f"record: {result.path / 'record.json'}")
        if (result.path / "grid.png").is_file():
            console.print(f"grid:   {result.path / 'grid.png'}")
    return 0


def metrics_table(record: dict):
    from rich.table import Table

    m = record["metrics"]
    s = record["settings"]
    t = Table(title=f"FMR — {record['model']['spec']} on {record['dataset']['spec']} "
                    f"(generator {record['generator']['spec']}, oracle {record['oracle']['spec']}, "
                    f"B={s['budget']}, eta={s['step_size']}, {s['optimizer']}, accept {s.get('accept') or 'argmax'})")
    cols = [("SA", "sa"), ("VR", "vr"), ("PA", "pa"), ("FMR", "fmr"), ("PA_all", "pa_all"),
            ("oracle", "oracle_acc"), ("steps", "mean_steps"), ("valid", "n_validated"), ("n", "n")]
    t.caption = "percent: SA, VR, PA, FMR, PA_all, oracle (its clean accuracy); steps: mean survived; valid: validated"
    for name, _ in cols:
        t.add_column(name, justify="right", no_wrap=True)
    t.add_row(*["-" if m[k] is None else (f"{m[k]:.2f}" if isinstance(m[k], float) else str(m[k])) for _, k in cols])
    return t


def audit_table(audit: dict, title: str | None = None):
    """The audited metrics of a record's ``audit`` section (or an export's audit report)."""
    from rich.table import Table

    m = audit["metrics"]
    t = Table(title=title or f"audit by judge {audit['judge']['spec']}")
    cols = [("validity", "audit_validity"), ("PA", "audit_pa"), ("FMR", "audit_fmr"),
            ("fails confirmed", "audit_failures_confirmed"), ("confirmed", "n_confirmed"), ("audited", "n_audited"),
            ("unaudited", "n_unaudited")]
    t.caption = ("percent; validity: validated images the judge labels y; PA, FMR: over those; "
                 "fails confirmed: the model's errors the judge labels y")
    for name, _ in cols:
        t.add_column(name, justify="right", no_wrap=True)
    t.add_row(*["-" if m[k] is None else (f"{m[k]:.2f}" if isinstance(m[k], float) else str(m[k])) for _, k in cols])
    return t


COMMAND = Command(help="run the FMR protocol on a model and dataset", add_arguments=add_arguments, run=run)
