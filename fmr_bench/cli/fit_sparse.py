"""``fmr fit-sparse``: fit a sparse-VQGAN mask (FMR paper §3.2.1, App. I) on a fit split.

Checks ``--out`` first (before any model is loaded), then runs the dense loop with a
progress bar (rate, ETA). Each image's latents are appended to
``--out/work/fit-HASH/latents.jsonl`` as soon as its loop ends (HASH names the model,
data, generator, oracle and settings), so Ctrl-C or a killed process loses at most the
images in flight: the same command continues the collection. The finished 2n-row latent
dataset is saved as ``.npz`` (``--latents``, default ``work/fit-HASH/latents.npz``)
before any fitting, so that a failed fit loses no loop work: refit with
``--from-latents``. The L1 strength is chosen on a validation split (``--c-grid``;
``--lam`` fixes it, the paper's is 36.36) and ``sparse-vqgan-NAME.json`` plus
``.mask.npy`` go into ``--out`` (default: ``masks/`` under the current folder; use the
card with ``--generator sparse-vqgan:PATH.json``). A command never writes into the
package or the checkout's ``generators/`` folder: shipped cards and masks change only by
hand.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from .commands import Command
from .common import (
    add_cache_argument,
    add_settings_arguments,
    data_help,
    model_help,
    oracle_help,
    positive_int,
    set_cache,
    settings_overrides,
)

DEFAULT_OUT = "masks"


def _c_grid(text: str) -> tuple[float, ...]:
    try:
        grid = tuple(float(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 0.01,0.1,1") from None
    if not grid or any(not c > 0 for c in grid):
        raise argparse.ArgumentTypeError(f"{text!r}: every C must be > 0, e.g. 0.01,0.1,1")
    return grid


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..studies.fit_sparse import C_GRID, C_TOLERANCE, MAX_SHARE, MIN_DIMS, PAPER_LAMBDA, VAL_SIZE

    p.add_argument("--model", required=True, help=model_help("the evaluated model whose loss the dense loop "
                                                             "follows"))
    p.add_argument("--data", default="digits:train",
                   help="the fit split, not the split you evaluate on: " + data_help("digits:train"))
    p.add_argument("--generator", default=None, help="the dense generator vqgan[:CARD] (default: the dataset world's)")
    p.add_argument("--oracle", default=None, help=oracle_help())
    p.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the card and mask, and for the collected latents "
                                                      f"(work/); default: {DEFAULT_OUT}/ under the current folder; "
                                                      "never the shipped generators/ folder")
    p.add_argument("--name", default=None,
                   help="mask name; the card is sparse-vqgan-NAME.json (default: the dataset source, e.g. digits)")
    p.add_argument("--latents", default=None,
                   help="where the finished latent dataset (.npz) goes (default: OUT/work/fit-HASH/latents.npz)")
    p.add_argument("--from-latents", default=None, metavar="NPZ",
                   help="refit from a saved latent dataset instead of running the dense loop")
    p.add_argument("--fresh", action="store_true", help="collect the latents again from scratch")
    p.add_argument("--lam", type=float, default=None,
                   help=f"fix the L1 strength, C = 1/lam (the paper's: {PAPER_LAMBDA}); default: choose C on a "
                        "validation split over --c-grid")
    p.add_argument("--c-grid", type=_c_grid, default=C_GRID, metavar="C,C,...",
                   help="the C values tried on the validation split (default: "
                        + ",".join(f"{c:.4g}" for c in C_GRID) + ", the paper's 1/36.36 among them)")
    p.add_argument("--c-tolerance", type=float, default=C_TOLERANCE,
                   help=f"take the smallest C within this many accuracy points of the best (default: {C_TOLERANCE:g})")
    p.add_argument("--min-dims", type=int, default=MIN_DIMS,
                   help=f"... among the Cs that keep at least this many dims (default: {MIN_DIMS})")
    p.add_argument("--max-dims", type=int, default=None,
                   help=f"... and at most this many (default: {MAX_SHARE * 100:.0f}%% of the latent dims)")
    p.add_argument("--val-size", type=float, default=VAL_SIZE,
                   help=f"share of the non-test images that choose C (default: {VAL_SIZE:g})")
    p.add_argument("--test-size", type=float, default=0.2, help="share of images held out (paper: 0.2)")
    p.add_argument("--original", choices=["encoder", "quantised"], default="encoder",
                   help="label-0 row: the continuous encoder latent (SPEC, default) or its quantised codes")
    p.add_argument("--standardize", action="store_true", help="standardise every latent dim before fitting")
    p.add_argument("--max-iter", type=positive_int, default=1000, help="saga iterations (default: 1000)")
    add_cache_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..files import require_writable

    set_cache(args.cache_dir)  # a check that writes nothing: first, so a refusal leaves no --out behind
    fix = "pick a writable folder with --out"
    require_writable(args.out, fix)  # before any model is loaded: a bad --out costs nothing
    if args.latents:
        require_writable(Path(args.latents).parent, "pick a writable --latents path")

    from rich.console import Console

    from ..errors import InterruptedRun
    from ..generators.sparse import KIND
    from ..runtime import command_line
    from ..studies.fit_sparse import LATENTS_NPZ, LatentSet, collect_latents, fit_mask, work_folder, write_mask_card

    console = Console(highlight=False, soft_wrap=True)
    say = console.print
    overrides = settings_overrides(args)
    if args.from_latents:
        latents = LatentSet.load(args.from_latents)
        source = latents.meta.get("dataset", "data")
    else:
        source = args.data
    name = args.name or source.partition(":")[0].partition("?")[0]
    name = name if name.startswith(KIND + "-") else f"{KIND}-{name}"
    saved = args.from_latents
    if not args.from_latents:
        if args.data.rstrip("/").endswith(":test") or args.data == "digits":
            console.print(f"[yellow]note:[/] fitting on {args.data}, the split evaluations use; prefer a train split")
        work = work_folder(args.out, args.model, args.data, args.generator, args.oracle, overrides)
        latents = collect_latents(args.model, args.data, generator=args.generator, oracle=args.oracle, work=work,
                                  progress=not args.quiet, fresh=args.fresh, say=say, **overrides)
        saved = latents.save(args.latents or work / LATENTS_NPZ)
        say(f"latent dataset: {saved} ({len(latents.ids)} images x 2 rows, latent {latents.latent_shape})")
    say("fitting the L1 logistic regression" + (f" with C = 1/{args.lam:g}" if args.lam else
                                                f" for {len(args.c_grid)} values of C on a validation split"))
    try:
        fit = fit_mask(latents, seed=overrides.get("seed", 0), lam=args.lam, c_grid=args.c_grid,
                       c_tolerance=args.c_tolerance, min_dims=args.min_dims, max_dims=args.max_dims,
                       val_size=args.val_size,
                       test_size=args.test_size, original=args.original, standardize=args.standardize,
                       max_iter=args.max_iter, say=say)
    except KeyboardInterrupt:
        raise InterruptedRun(f"interrupted during the fit; the latents are saved in {saved}; refit without the "
                             f"loop: {refit_command(args, saved, args.lam)}") from None
    _refuse_empty_mask(args, fit, saved)
    card = write_mask_card(fit, latents, args.out, name,
                           extra={"command": command_line(), "latents_from": args.from_latents})
    _report_fit(console, args, fit, saved, card)
    return 0


def _refuse_empty_mask(args: argparse.Namespace, fit: Any, saved: str | Path) -> None:
    """A mask that keeps no dim moves nothing and is no generator: refuse it, naming the refit (the latents
    are kept).

    Raises:
        SettingsError: the fit kept no latent dim.
    """
    from ..errors import SettingsError

    if fit.mask.sum() == 0:
        if args.lam:
            raise SettingsError(f"the L1 fit kept no latent dim (nothing would move); refit on more images or with "
                                f"a smaller --lam: {refit_command(args, saved, args.lam / 4)}")
        bigger = ",".join(f"{c * 10:g}" for c in args.c_grid)
        raise SettingsError(f"the L1 fit kept no latent dim for any C of the grid (nothing would move); refit on "
                            f"more images or with larger C: {refit_command(args, saved, None, c_grid=bigger)}")


def _report_fit(console: Any, args: argparse.Namespace, fit: Any, saved: str | Path, card: Path) -> None:
    """Print the mask's size and scores, any note (rule not met, not converged) and how to use the card."""
    how = (f"C = {fit.params['C']:.4g} chosen on {fit.selection['n_val_images']} validation images"
           if fit.selection else f"C = 1/{args.lam:g} fixed")
    console.print(f"mask: {int(fit.mask.sum())} of {fit.mask.size} dims kept ({how}); held-out accuracy "
                  f"{fit.test_score:.2f} % on {fit.n_test_images} images, train {fit.train_score:.2f} %; "
                  f"sparsity {fit.sparsity:.2f} %")
    if fit.selection and not fit.selection["rule_met"]:
        console.print(f"[yellow]note:[/] no C of the grid kept {args.min_dims} to {fit.selection['max_dims']} dims; "
                      "took the C nearest that range (pass --c-grid, --min-dims or --max-dims to widen it)")
    if not fit.converged:
        console.print(f"[yellow]note:[/] saga did not converge in {args.max_iter} iterations; refit with more: "
                      f"{refit_command(args, saved, args.lam, max_iter=args.max_iter * 4)}")
    console.print(f"card: {card}")
    console.print(f"use: --generator sparse-vqgan:{card}")


def refit_command(args: argparse.Namespace, latents: str | Path, lam: float | None, **changes) -> str:
    """The ``fmr fit-sparse --from-latents`` command that refits these latents with every
    option of this call kept (``--model``, ``--out``, ``--name``...) and ``changes`` applied."""
    grid = changes.get("c_grid") or ",".join(f"{c:g}" for c in args.c_grid)
    opts = {"--model": args.model, "--from-latents": str(latents), "--out": str(args.out), "--name": args.name,
            "--test-size": f"{args.test_size:g}", "--original": args.original,
            "--max-iter": str(changes.get("max_iter", args.max_iter)),
            "--seed": None if args.seed is None else str(args.seed), "--cache-dir": args.cache_dir}
    if lam is not None:
        opts["--lam"] = f"{lam:g}"
    else:
        opts.update({"--c-grid": grid, "--c-tolerance": f"{args.c_tolerance:g}", "--min-dims": str(args.min_dims),
                     "--max-dims": None if args.max_dims is None else str(args.max_dims),
                     "--val-size": f"{args.val_size:g}"})
    argv = ["fmr", "fit-sparse"]
    for flag, value in opts.items():
        if value is not None:
            argv += [flag, value]
    if args.standardize:
        argv.append("--standardize")
    return shlex.join(argv)


COMMAND = Command(help="fit a sparse-VQGAN mask (paper §3.2.1) on a fit split", add_arguments=add_arguments, run=run)
