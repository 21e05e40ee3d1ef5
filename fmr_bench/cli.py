"""``fmr`` command line: ``fmr evaluate``, ``fmr list``.

Options of ``evaluate`` are derived from :class:`fmr_bench.config.FmrSettings`, so the
CLI and the library share their defaults. Bad input ends with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Sequence

from .config import FmrSettings
from .errors import FmrBenchError


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = FmrSettings()
    for f in fields(FmrSettings):
        flag = "--" + f.name.replace("_", "-")
        kind = {"budget": int, "batch_size": int, "limit": int, "seed": int, "step_size": float}.get(f.name, str)
        default = getattr(defaults, f.name)
        help_text = f.metadata.get("help", "") + (f" (default: {default})" if default is not None else "")
        parser.add_argument(flag, type=kind, default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmr", description="Foundation-model-oriented robustness (FMR) benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="run the FMR protocol on a model and dataset")
    ev.add_argument("--model", required=True, help="timm:NAME, openclip:ARCH/TAG, hf:ORG/REPO, file:PATH, builtin:NAME")
    ev.add_argument("--data", default="digits", help="digits, imagenet:PATH or folder:PATH (default: digits)")
    ev.add_argument("--generator", default=None, help="vqgan[:CARD], pixel, noise (default: the dataset world's)")
    ev.add_argument("--oracle", default=None, help="openclip:ARCH/TAG or builtin:digits-clip (default: the dataset world's)")
    _settings_arguments(ev)
    ev.add_argument("--out", default="runs", help="folder for run folders (default: runs)")
    ev.add_argument("--cache-dir", default=None, help="where downloaded weights live (sets FMR_CACHE, HF_HOME, TORCH_HOME)")
    ev.add_argument("--no-grid", action="store_true", help="do not write the image grid PNG")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument("--evaluator", default="fmr",
                    help="fmr (the dynamic FMR protocol, default) or static evaluator(s), comma-separated: "
                         "ood-accuracy, imagenet-x, ood-detection, calibration, group-robustness, zero-shot "
                         "(see fmr list evaluators)")
    ev.add_argument("--ood", action="append", default=None, metavar="DATA",
                    help="static evaluators: OOD / shifted dataset spec (repeatable)")
    ev.add_argument("--option", action="append", default=None, metavar="KEY=VALUE",
                    help="static evaluators: evaluator option, e.g. baseline=runs/ or scores=msp,mcm (repeatable)")
    ev.add_argument("--no-cache", action="store_true", help="static evaluators: do not read/write the logits cache")

    ls = sub.add_parser("list", help="list models, generators, oracles or datasets")
    ls.add_argument("what", choices=["models", "generators", "oracles", "datasets", "evaluators"])
    return parser


def _set_cache(path: str | None) -> None:
    if not path:
        return
    import os

    os.environ["FMR_CACHE"] = path
    os.environ.setdefault("HF_HOME", os.path.join(path, "huggingface"))
    os.environ.setdefault("TORCH_HOME", os.path.join(path, "torch"))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    _set_cache(args.cache_dir)
    if args.evaluator != "fmr":
        from .evaluators.cli import run_static

        return run_static(args)
    from rich.console import Console

    from .runner import evaluate

    overrides = {f.name: getattr(args, f.name) for f in fields(FmrSettings) if getattr(args, f.name) is not None}
    result = evaluate(args.model, args.data, generator=args.generator, oracle=args.oracle, out=args.out,
                      progress=not args.quiet, write_grid=not args.no_grid, **overrides)
    console = Console()
    console.print(metrics_table(result.record))
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
                    f"B={s['budget']}, eta={s['step_size']}, {s['optimizer']})")
    cols = [("SA", "sa"), ("VR", "vr"), ("PA", "pa"), ("FMR", "fmr"), ("PA_all", "pa_all"),
            ("oracle", "oracle_acc"), ("steps", "mean_steps"), ("valid", "n_validated"), ("n", "n")]
    t.caption = "percent: SA, VR, PA, FMR, PA_all, oracle (its clean accuracy); steps: mean survived; valid: validated"
    for name, _ in cols:
        t.add_column(name, justify="right", no_wrap=True)
    t.add_row(*["-" if m[k] is None else (f"{m[k]:.2f}" if isinstance(m[k], float) else str(m[k])) for _, k in cols])
    return t


def _cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import datasets, generators, models, oracles  # noqa: F401  (registration)
    from .models import builtin  # noqa: F401
    from .generators.cards import list_cards
    from .registry import BUILTIN_MODELS, DATASETS, GENERATORS, MODEL_SOURCES, ORACLE_SOURCES

    if args.what == "evaluators":
        from .evaluators.cli import list_evaluators

        return list_evaluators()
    reg = {"models": MODEL_SOURCES, "generators": GENERATORS, "oracles": ORACLE_SOURCES, "datasets": DATASETS}[args.what]
    table = Table(title=args.what)
    table.add_column("spec")
    table.add_column("description")
    for entry in reg.items():
        table.add_row(entry.name + ("" if args.what == "generators" else ":…"), entry.help)
    if args.what == "models":
        for entry in BUILTIN_MODELS.items():
            table.add_row(f"builtin:{entry.name}", entry.help)
    if args.what == "generators":
        for card in list_cards("vqgan"):
            table.add_row(f"vqgan:{card.removeprefix('vqgan-')}", "card " + card)
    Console().print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"evaluate": _cmd_evaluate, "list": _cmd_list}[args.command](args)
    except FmrBenchError as e:
        print(f"fmr: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
