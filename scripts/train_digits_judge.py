"""Train ``builtin:digits-judge``, the digits world's independent shape-only judge.

Writes ``fmr_bench/digits/weights/digits-judge.safetensors`` (fp16) and
``fmr_bench/digits/weights/JUDGE.md`` (its card: data, architecture, accuracy, command).

The judge is trained apart from everything else in the digits world: only the clean
train split, its own light geometric jitter (rotation, scale, shift, mild pixel noise),
no VQGAN images, no colour augmentation, no captions, and its own seeds. See
``fmr_bench/digits/judge.py`` for what it looks at.

Usage::

    python scripts/train_digits_judge.py                 # the shipped weights (well under a minute)
    python scripts/train_digits_judge.py --out /tmp/judge  # somewhere else
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_digits_world.py: spinning OpenMP workers

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from fmr_bench.digits import WEIGHTS_DIR, load_digits_split
from fmr_bench.digits.judge import JUDGE_WEIGHTS, MIN_CLEAN_ACCURACY, DigitsJudge, load_digits_judge

EPOCHS = 60
BATCH = 64
LR = 3e-3
SEED = 1234  # not the world's seed 0: nothing shared with the oracle's or the models' training


def jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Light random geometry and noise on [0, 1] images; shape-preserving by design.

    Rotation up to 12 degrees, scale 0.9-1.1, shift up to 2 px (of 32), border pixels
    repeated into the gaps (the paper colour), then Gaussian pixel noise (std up to 0.04)
    on half of the images.
    """
    n, _, h, w = x.shape
    u = lambda lo, hi: torch.rand(n, generator=g) * (hi - lo) + lo
    angle = u(-12, 12) * math.pi / 180
    scale = u(0.9, 1.1)
    tx, ty = u(-2, 2) * 2 / w, u(-2, 2) * 2 / h
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) / scale
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale
    theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    noisy = (torch.rand(n, generator=g) < 0.5).float().view(n, 1, 1, 1)
    x = x + noisy * torch.randn(x.shape, generator=g) * u(0, 0.04).view(n, 1, 1, 1)
    return x.clamp(0, 1)


@torch.no_grad()
def accuracy(judge: DigitsJudge, x: torch.Tensor, y: torch.Tensor) -> float:
    return (judge(x).argmax(1) == y).float().mean().item()


def train(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> DigitsJudge:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    judge = DigitsJudge()
    opt = torch.optim.AdamW(judge.parameters(), lr=LR, weight_decay=1e-4)
    steps = epochs * (len(x) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.1)
    judge.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - BATCH + 1, BATCH):
            idx = perm[i : i + BATCH]
            loss = F.cross_entropy(judge(jitter(x[idx], g)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 20 == 0:
            print(f"  epoch {epoch + 1}/{epochs}  loss {loss.item():.3f}", flush=True)
    return judge.eval()


def write_card(path: Path, *, n_params: int, size: int, acc: dict[str, float], args: argparse.Namespace,
               seconds: float) -> None:
    cmd = "python scripts/train_digits_judge.py" + ("" if args.epochs == EPOCHS else f" --epochs {args.epochs}")
    path.write_text("\n".join([
        "# builtin:digits-judge",
        "",
        "The digits world's independent judge (`fmr_bench/digits/judge.py`): it audits whether a",
        "perturbed image still shows its class, and must not share the oracle's blind spots.",
        "",
        "- **Sees**: shape only. Luminance; paper colour = mean of the one-pixel frame; ink =",
        "  |luminance - paper|; area-averaged to 8x8; scaled so the strongest ink is 1.",
        "- **Architecture**: MLP 64-128-128-10 (ReLU, dropout 0.1) on those 64 features;",
        f"  {n_params:,} parameters, fp16 safetensors `{JUDGE_WEIGHTS}` ({size / 1024:.0f} KB).",
        "- **Trained on**: the 1437 clean images of `digits:train` with light jitter (rotation up",
        "  to 12 degrees, scale 0.9-1.1, shift up to 2 px, pixel noise std up to 0.04 on half);",
        "  no VQGAN images, no colour augmentation, nothing from the oracle's training.",
        f"- **Recipe**: AdamW lr {LR} (one-cycle), weight decay 1e-4, batch {BATCH}, {args.epochs} epochs,",
        (f"  label smoothing 0.05, seed {args.seed}; {seconds:.0f} s on {args.threads} CPU thread(s)"
         " (not measured on an idle machine)."),
        "",
        "| split | images | accuracy |",
        "|---|---:|---:|",
        *(f"| `digits:{k}` | {n} | {v:.4f} |" for k, (n, v) in acc.items()),
        "",
        f"Command: `{cmd}` (torch {torch.__version__}).",
        "",
    ]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder for the weights and card")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        probe = args.out / ".write-test"
        probe.write_bytes(b"")  # fail now, not after training
        probe.unlink()
    except OSError as e:
        print(f"error: cannot write to {args.out} ({e.strerror}); pass a writable --out folder", file=sys.stderr)
        return 2
    t0 = time.time()

    x_tr_u8, y_tr = load_digits_split("train")
    x_te_u8, y_te = load_digits_split("test")
    x_tr, x_te = x_tr_u8.float() / 255, x_te_u8.float() / 255
    judge = train(x_tr, y_tr, args.epochs, args.seed)

    from safetensors.torch import save_file

    path = args.out / JUDGE_WEIGHTS
    save_file({k: v.detach().half().contiguous() for k, v in judge.state_dict().items()}, str(path))
    shipped = load_digits_judge(path=path)  # score the file as shipped (fp16 rounded)
    acc = {"train": (len(y_tr), accuracy(shipped, x_tr, y_tr)), "test": (len(y_te), accuracy(shipped, x_te, y_te))}
    seconds = time.time() - t0
    n_params = sum(p.numel() for p in shipped.parameters())
    write_card(args.out / "JUDGE.md", n_params=n_params, size=path.stat().st_size, acc=acc, args=args,
               seconds=seconds)
    print(f"digits-judge: train {acc['train'][1]:.4f}  test {acc['test'][1]:.4f}  "
          f"({n_params:,} params, {path.stat().st_size / 1024:.0f} KB, {seconds:.0f}s) -> {path}")
    if acc["test"][1] < MIN_CLEAN_ACCURACY:
        print(f"warning: test accuracy below {MIN_CLEAN_ACCURACY}; the judge is not fit to audit")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
