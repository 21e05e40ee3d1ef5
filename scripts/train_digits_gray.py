"""Train ``builtin:digits-cnn-gray``, the digits CNN that sees only luminance (seed 002 App. H).

The paper's grayscale model changes the ResNet's input to one channel and turns the images
grey before they reach it. Here the same CNN as ``builtin:digits-cnn`` (``DigitsCNN``), with
its recipe (the light augmentation, ``CNN_STEPS`` steps of ``CLS_BATCH`` images, AdamW with a
cosine schedule, label smoothing 0.05, all from ``scripts/train_digits_world.py``), is trained
on the BT.601 luma of every augmented batch, replicated to three channels and normalised with
the world's mean/std: exactly what the shipped model sees through its ``gray:`` feed
(:mod:`fmr_bench.models.gray`). Three equal channels make the first convolution equivalent
to a one-channel one.

Writes ``fmr_bench/digits/weights/digits-cnn-gray.safetensors`` (fp16) and ``GRAY.md`` (its
card: data, recipe, accuracy, command) beside it.

Usage::

    python scripts/train_digits_gray.py                  # the shipped weights (about a minute on 2 cores)
    python scripts/train_digits_gray.py --out /tmp/gray  # somewhere else
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_digits_world.py: spinning OpenMP workers

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "scripts"):  # run from a checkout without installing the package
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import train_digits_world as world  # the world's recipe and helpers, one copy

from fmr_bench.digits import MEAN, MODEL_CARDS, STD, WEIGHTS_DIR, augment, load_digits_split
from fmr_bench.models.gray import luminance

NAME = "digits-cnn-gray"
#: The digits-cnn seed offset of train_digits_world.py (seed + 10 + its position 0).
SEED_OFFSET = 10


def gray(x: torch.Tensor) -> torch.Tensor:
    return luminance(x, 3)


def write_card(path: Path, *, n_params: int, size: int, acc: dict[str, float], args: argparse.Namespace,
               steps: int, seconds: float) -> None:
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in acc.items())
    path.write_text(f"""# digits-cnn-gray

`builtin:digits-cnn-gray`: the digits CNN trained on luminance (seed 002 App. H, Table 10).

Written by `python scripts/train_digits_gray.py` (seed {args.seed}, {args.threads} CPU threads,
torch {torch.__version__}, {seconds:.0f} s). fp16 safetensors; the loader casts to fp32.

- **architecture**: `DigitsCNN` (3 blocks, 16-32-64 channels), {n_params:,} parameters, {size // 1024} KB —
  the same as `builtin:digits-cnn`;
- **input**: ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B) of the [0, 1] image, replicated to
  three channels, then `(x - MEAN) / STD` with the world's mean/std; the model applies the same
  luminance inside its forward pass (`fmr_bench.models.gray`), so colour cannot reach it;
- **data and recipe**: the clean train split with the light augmentation (strength 0.15) of
  `builtin:digits-cnn`, {steps} steps of {world.CLS_BATCH} images, AdamW (lr 3e-3, weight decay 5e-4,
  cosine schedule, 30 warm-up steps), label smoothing 0.05 — `train_classifier` of
  `scripts/train_digits_world.py`.

Accuracy on the 360-image test split (clean) and on augmented test images (strength 0.6):

| set | accuracy |
|---|---:|
{rows}
""")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder for the weights (default: the package's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=world.CNN_STEPS, help=f"default: {world.CNN_STEPS}")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        parser.error("--steps and --threads must be >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    x_tr_u8, y_tr = load_digits_split("train")
    x_te_u8, y_te = load_digits_split("test")
    x_tr, x_te = x_tr_u8.float() / 255, x_te_u8.float() / 255
    world.seed_everything(args.seed + SEED_OFFSET)
    g = torch.Generator().manual_seed(args.seed)

    def light_gray(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gray(augment(x, g, strength=0.15)), y

    card = MODEL_CARDS[NAME]
    print(f"{NAME} ({args.steps} steps)")
    model = world.train_classifier(card.arch(), x_tr, y_tr, args.steps, g, light_gray, label=NAME)
    path = args.out / card.weights
    world.save_fp16(model, path)
    model.eval()

    def fn(x: torch.Tensor) -> torch.Tensor:
        return model(world.normalise(gray(x), MEAN, STD))

    g_eval = torch.Generator().manual_seed(args.seed + 1)
    acc = {"test": (world.predict(fn, x_te) == y_te).float().mean().item(),
           "augmented": (world.predict(fn, augment(x_te, g_eval, strength=0.6)) == y_te).float().mean().item()}
    seconds = time.time() - t0
    write_card(args.out / "GRAY.md", n_params=world.n_params(model), size=path.stat().st_size, acc=acc, args=args,
               steps=args.steps, seconds=seconds)
    print(f"  test acc {acc['test']:.4f}  augmented {acc['augmented']:.4f}  ({seconds:.0f}s); wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
