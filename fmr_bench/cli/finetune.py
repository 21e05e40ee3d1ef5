"""``fmr finetune``: fine-tune a model with a robust method, or mix checkpoints in weight space.

One flag per :class:`fmr_bench.finetune.settings.FinetuneSettings` field; ``--preset`` loads
the papers' hyper-parameters and explicit flags override them. ``--wise`` mixes the
result with the zero-shot model at each α and scores every mix; ``--mix`` / ``--soup``
work on existing checkpoints without training.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import SettingsError
from .commands import Command
from .common import add_cache_argument, only_apply, positive_int, set_cache


def _optional_float(text: str) -> float | None:
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None


def _alphas(text: str) -> list[float]:
    """``0,0.5,1`` or ``start:stop:step`` (stop included)."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0:
                raise ValueError
            n = round((stop - start) / step)
            return [round(start + k * step, 10) for k in range(n + 1)]
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"alphas as 0,0.5,1 or 0:1:0.1 (got {text!r})") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..finetune.methods import METHODS
    from ..finetune.settings import PRESETS, FinetuneSettings

    p.add_argument("--model", help="openclip:ARCH/TAG, builtin:digits-clip, timm:NAME or file:PATH (the model to fine-tune)")
    p.add_argument("--data", default="digits:train",
                   help="training set: digits:train, folder:DIR (ImageFolder), csv:FILE (columns path,label)")
    p.add_argument("--extra-data", action="append", default=[], metavar="SPEC",
                   help="more training images, classes matched by name (e.g. folder:EXPORT?crop_pct=1 from "
                        "fmr export: static adversarial augmentation); repeatable")
    p.add_argument("--out", help="run folder (checkpoints, resume, result); re-run the same command to resume")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named hyper-parameters (papers' or the digits world's)")
    p.add_argument("--templates", default=None, help="zero-shot head prompts: openai, single, or a template with {}")
    p.add_argument("--random-weights", action="store_true", help="start from random weights (tests, benchmarks)")
    defaults = FinetuneSettings()
    for f in fields(FinetuneSettings):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f.metadata.get("help", "") + f" (default: {default})"
        if f.name == "method":
            p.add_argument(flag, choices=list(METHODS), default=None,
                           help=f"{f.metadata['help']}: {', '.join(METHODS)} (default: {default})")
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name == "grad_clip":
            p.add_argument(flag, type=_optional_float, default=None, help=help_text)
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            p.add_argument(flag, type=type(default), default=None, help=help_text)
        else:
            p.add_argument(flag, default=None, help=help_text)
    g = p.add_argument_group("evaluation while training (a callback) and of WiSE-FT mixes")
    g.add_argument("--eval", default=None, metavar="NAMES", help="evaluators, e.g. fmr,ood-accuracy (fmr list evaluators)")
    g.add_argument("--eval-data", default=None, help="evaluation set (default: digits)")
    g.add_argument("--eval-ood", action="append", default=None, metavar="SPEC", help="shifted sets for static evaluators")
    g.add_argument("--eval-every", type=positive_int, default=None, help="every N units (default: 1)")
    g.add_argument("--eval-unit", choices=("step", "epoch"), default=None, help="steps or epochs (default: epoch)")
    g.add_argument("--eval-limit", type=positive_int, default=None, help="FMR: images of the fixed subset (default: 64)")
    g.add_argument("--eval-budget", type=positive_int, default=None, help="FMR: perturbation steps per image (default: 10)")
    w = p.add_argument_group("weight space")
    w.add_argument("--wise", type=_alphas, default=None, metavar="ALPHAS",
                   help="after training (or with --mix), write and score WiSE-FT mixes at these alphas: 0,0.5,1 or 0:1:0.1")
    w.add_argument("--mix", nargs=2, default=None, metavar=("ZERO_SHOT", "FINE_TUNED"),
                   help="no training: mix two checkpoints (file:...) at the --wise alphas")
    w.add_argument("--rebuild-head", action="store_true",
                   help="with --mix: rebuild each mix's zero-shot head from its mixed text tower (FLYP / StarFT "
                        "models; automatic after training with those methods)")
    w.add_argument("--soup", nargs="+", default=None, metavar="MODEL",
                   help="no training: uniform soup of these checkpoints, written to OUT/soup.safetensors")
    add_cache_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from ..finetune.settings import FinetuneSettings

    return {f.name: getattr(args, f.name) for f in fields(FinetuneSettings) if getattr(args, f.name, None) is not None}


def _print_evals(console, rows: list[dict], title: str) -> None:
    from rich.table import Table

    if not rows:
        return
    keys = []
    for r in rows:
        for k, v in r["metrics"].items():
            if isinstance(v, (int, float)) and k not in keys and not k.endswith("/n"):
                keys.append(k)
    keys = keys[:10]
    t = Table(title=title)
    for c in ["", "evaluator", *keys]:
        t.add_column(c)
    for r in rows:
        label = r.get("label", f"step {r.get('step', '')}")
        t.add_row(str(label), r["evaluator"], *[_fmt(r["metrics"].get(k)) for k in keys])
    console.print(t)


def _fmt(v: Any) -> str:
    return "" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


#: defaults of the evaluation flags; given without --eval they would be ignored, so they are refused
EVAL_DEFAULTS = {"eval_data": "digits", "eval_ood": [], "eval_every": 1, "eval_unit": "epoch", "eval_limit": 64,
                 "eval_budget": 10}


def _eval_flags(args: argparse.Namespace) -> None:
    given = [k for k in EVAL_DEFAULTS if getattr(args, k) is not None]
    if given and not args.eval:
        subject, it = only_apply(["--" + k.replace("_", "-") for k in given])
        raise SettingsError(f"{subject} with --eval NAMES (e.g. --eval fmr,ood-accuracy); add --eval or drop {it}")
    for k, v in EVAL_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def run(args: argparse.Namespace) -> int:
    set_cache(args.cache_dir)
    _eval_flags(args)
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    evaluators = [e for e in (args.eval or "").split(",") if e.strip()]
    if args.rebuild_head and not args.mix:
        raise SettingsError("--rebuild-head applies to --mix; after training FLYP / StarFT mixes rebuild it anyway")
    if args.soup or args.mix:
        return _weight_space(args, console, evaluators)
    if not args.model or not args.out:
        raise SettingsError("fmr finetune needs --model and --out (or --mix / --soup with --out)")
    from ..finetune import EvalCallback, finetune
    from ..finetune.methods import method_kind
    from ..finetune.train_data import ConcatImages, load_train_data
    from ..finetune.wise import check_alphas, wise_grid

    if args.wise is not None:
        check_alphas(args.wise)  # before hours of training, not after
    data: Any = args.data
    if args.extra_data:
        data = ConcatImages([load_train_data(s) for s in [args.data, *args.extra_data]])
    callbacks: list = [] if args.quiet else [_epoch_line(console)]
    if evaluators:
        callbacks.append(EvalCallback(evaluators, args.eval_data, ood=args.eval_ood, every=args.eval_every,
                                      unit=args.eval_unit, limit=args.eval_limit, budget=args.eval_budget,
                                      log=Path(args.out) / "evaluations.jsonl"))
    res = finetune(args.model, data, out=args.out, preset=args.preset, callbacks=callbacks,
                   pretrained=not args.random_weights, templates=args.templates, progress=not args.quiet,
                   **_overrides(args))
    last = res.log[-1] if res.log else {}
    console.print(f"fine-tuned ({res.settings.method}, {res.steps} steps, final loss {last.get('loss', float('nan')):.4f}): "
                  f"{res.path}")
    console.print(f"evaluate with: fmr evaluate --model file:{res.path}")
    _print_evals(console, res.evaluations, "evaluations while training (FMR on a subset, see 'subset')")
    if args.wise is not None:
        out = Path(args.out)
        rows = wise_grid(f"file:{out / 'zeroshot.safetensors'}", f"file:{res.path}", args.wise, out / "wise",
                         evaluators=evaluators, data=args.eval_data if evaluators else None, ood=args.eval_ood,
                         limit=args.eval_limit, budget=args.eval_budget,
                         rebuild_head=method_kind(res.settings.method).head_from_text)
        _print_wise(console, rows, out / "wise" / "wise.json")
    return 0


def _epoch_line(console):
    """A callback printing one line per finished epoch: stage, epoch, step, mean loss."""
    from ..finetune.callbacks import Callback

    class EpochLine(Callback):
        def on_train_start(self, trainer) -> None:
            if trainer.global_step:
                console.print(f"resuming at step {trainer.global_step}")

        def on_epoch_end(self, trainer) -> None:
            rows = [r for r in trainer.log if r.get("epoch") == trainer.epoch and r.get("stage") == trainer.stage_name]
            mean = sum(r["loss"] for r in rows) / len(rows) if rows else float("nan")
            console.print(f"{trainer.stage_name} epoch {trainer.epoch + 1}/{trainer.stage.epochs}: "
                          f"step {trainer.global_step}, mean loss {mean:.4f}")

    return EpochLine()


def _print_wise(console, rows: list[dict], where: Path) -> None:
    flat = [{**e, "label": f"alpha {r['alpha']:g}"} for r in rows for e in r.get("evaluations", [])]
    _print_evals(console, flat, "WiSE-FT mixes")
    console.print(f"WiSE-FT mixes: {where.parent} ({len(rows)} files); table: {where}")


def _weight_space(args: argparse.Namespace, console, evaluators: list[str]) -> int:
    from ..finetune.wise import uniform_soup, wise_grid
    from ..models.file import save_model

    if not args.out:
        raise SettingsError("--mix and --soup need --out DIR for the mixed checkpoints")
    if args.soup and args.mix:
        raise SettingsError("give either --mix or --soup, not both")
    if args.soup and args.wise is not None:
        raise SettingsError("--wise applies to --mix or to a training run, not to --soup")
    out = Path(args.out)
    if args.mix:
        if args.wise is None:
            raise SettingsError("--mix needs --wise ALPHAS, e.g. --wise 0:1:0.1")
        rows = wise_grid(args.mix[0], args.mix[1], args.wise, out, evaluators=evaluators,
                         data=args.eval_data if evaluators else None, ood=args.eval_ood,
                         limit=args.eval_limit, budget=args.eval_budget, rebuild_head=args.rebuild_head)
        _print_wise(console, rows, out / "wise.json")
        return 0
    soup = uniform_soup(args.soup)
    path = save_model(soup, out / "soup.safetensors",
                      metadata={"fmr_bench_finetune": json.dumps({"soup_of": list(args.soup)})})
    console.print(f"uniform soup of {len(args.soup)} checkpoints: {path}")
    if evaluators:
        from ..finetune.callbacks import score

        rows = score(soup.eval(), evaluators, args.eval_data, args.eval_ood, limit=args.eval_limit,
                     budget=args.eval_budget)
        _print_evals(console, [{**r, "label": "soup"} for r in rows], "uniform soup")
    return 0


COMMAND = Command(help="fine-tune a model robustly (ft, lp, lp-ft, flyp, maskcf, starft); WiSE-FT and soups",
                  add_arguments=add_arguments, run=run)
