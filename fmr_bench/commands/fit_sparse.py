"""``fmr fit-sparse``: fit a sparse-VQGAN mask (FMR paper §3.2.1, App. I) on a fit split.

Runs the dense loop, saves the 2n-row latent dataset (``--latents``, before any fitting,
so that a failed fit loses no loop work: refit with ``--from-latents``), fits the L1
logistic regression and writes ``sparse-vqgan-NAME.json`` plus ``.mask.npy`` into
``--out`` (default: ``masks/`` under the current folder; use the card with
``--generator sparse-vqgan:PATH.json``). A command never writes into the package or the
checkout's ``generators/`` folder: shipped cards and masks change only by hand.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from . import Command
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=model_help("the evaluated model whose loss the dense loop "
                                                             "follows"))
    p.add_argument("--data", default="digits:train",
                   help="the fit split, not the split you evaluate on: " + data_help("digits:train"))
    p.add_argument("--generator", default=None, help="the dense generator vqgan[:CARD] (default: the dataset world's)")
    p.add_argument("--oracle", default=None, help=oracle_help())
    p.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the card and mask (default: {DEFAULT_OUT}/ under the "
                                                      "current folder; never the shipped generators/ folder)")
    p.add_argument("--name", default=None,
                   help="mask name; the card is sparse-vqgan-NAME.json (default: the dataset source, e.g. digits)")
    p.add_argument("--latents", default=None,
                   help="where the latent dataset (.npz) goes (default: runs/fit-sparse/sparse-vqgan-NAME.latents.npz)")
    p.add_argument("--from-latents", default=None, metavar="NPZ",
                   help="refit from a saved latent dataset instead of running the dense loop")
    p.add_argument("--lam", type=float, default=36.36, help="L1 regularisation strength, C = 1/lam (paper: 36.36)")
    p.add_argument("--test-size", type=float, default=0.2, help="share of images held out (paper: 0.2)")
    p.add_argument("--original", choices=["encoder", "quantised"], default="encoder",
                   help="label-0 row: the continuous encoder latent (SPEC, default) or its quantised codes")
    p.add_argument("--standardize", action="store_true", help="standardise every latent dim before fitting")
    p.add_argument("--max-iter", type=positive_int, default=1000, help="saga iterations (default: 1000)")
    add_cache_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_arguments(p)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..generators.sparse import KIND
    from ..runtime import command_line
    from ..sparse import LatentSet, collect_latents, fit_mask, write_mask_card

    set_cache(args.cache_dir)
    console = Console()
    overrides = settings_overrides(args)
    if args.from_latents:
        latents = LatentSet.load(args.from_latents)
        source = latents.meta.get("dataset", "data")
    else:
        source = args.data
    name = args.name or source.partition(":")[0].partition("?")[0]
    name = name if name.startswith(KIND + "-") else f"{KIND}-{name}"
    if not args.from_latents:
        if args.data.rstrip("/").endswith(":test") or args.data == "digits":
            console.print(f"[yellow]note:[/] fitting on {args.data}, the split evaluations use; prefer a train split")
        latents = collect_latents(args.model, args.data, generator=args.generator, oracle=args.oracle,
                                  progress=not args.quiet, **overrides)
        path = latents.save(args.latents or Path("runs") / "fit-sparse" / f"{name}.latents.npz")
        console.print(f"latent dataset: {path} ({len(latents.ids)} images x 2 rows, latent {latents.latent_shape})")
    fit = fit_mask(latents, seed=overrides.get("seed", 0), lam=args.lam, test_size=args.test_size,
                   original=args.original, standardize=args.standardize, max_iter=args.max_iter)
    if fit.mask.sum() == 0:  # a mask that moves nothing is no generator; the latents are kept
        from ..errors import SettingsError

        saved = args.from_latents or path
        raise SettingsError(f"the L1 fit kept no latent dim (nothing would move); refit on more images or with a "
                            f"smaller --lam: {refit_command(args, saved, args.lam / 4)}")
    card = write_mask_card(fit, latents, args.out, name,
                           extra={"command": command_line(), "latents_from": args.from_latents})
    console.print(f"mask: {int(fit.mask.sum())} of {fit.mask.size} dims move; sparsity {fit.sparsity:.2f} %, "
                  f"test score {fit.test_score:.2f} %, train score {fit.train_score:.2f} % "
                  f"({fit.n_train_images}/{fit.n_test_images} images train/test)")
    if not fit.converged:
        console.print(f"[yellow]note:[/] saga did not converge in {args.max_iter} iterations; refit with more: "
                      f"{refit_command(args, args.from_latents or path, args.lam, max_iter=args.max_iter * 4)}",
                      highlight=False, soft_wrap=True)
    console.print(f"card: {card}")
    console.print(f"use: --generator sparse-vqgan:{card}")
    return 0


def refit_command(args: argparse.Namespace, latents: str | Path, lam: float, **changes) -> str:
    """The ``fmr fit-sparse --from-latents`` command that refits these latents with every
    option of this call kept (``--model``, ``--out``, ``--name``...) and ``changes`` applied."""
    opts = {"--model": args.model, "--from-latents": str(latents), "--lam": f"{lam:g}", "--out": str(args.out),
            "--name": args.name, "--test-size": f"{args.test_size:g}", "--original": args.original,
            "--max-iter": str(changes.get("max_iter", args.max_iter)),
            "--seed": None if args.seed is None else str(args.seed), "--cache-dir": args.cache_dir}
    argv = ["fmr", "fit-sparse"]
    for flag, value in opts.items():
        if value is not None:
            argv += [flag, value]
    if args.standardize:
        argv.append("--standardize")
    return shlex.join(argv)


COMMAND = Command(help="fit a sparse-VQGAN mask (paper §3.2.1) on a fit split", add_arguments=add_arguments, run=run)
