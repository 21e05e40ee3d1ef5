"""Train every model of the digits world and write its shipped weights.

Writes to ``fmr_bench/digits/weights/`` (fp16 safetensors; loaders cast to fp32):

- ``vqgan-digits.safetensors``: the generator (card ``generators/vqgan-digits.json``,
  whose ``sha256`` this script updates),
- ``digits-cnn.safetensors``, ``digits-mlp.safetensors``, ``digits-cnn-aug.safetensors``:
  the evaluated classifiers, of increasing expected robustness (MLP < CNN < CNN-aug),
- ``digits-clip.safetensors``: the zero-shot CLIP oracle (open_clip ``fmr-digits-clip``),
- ``TRAINING.md``: what was trained, how well, and the command that did it.

Everything runs on CPU with fixed seeds and fixed step counts, in about ten minutes on
two cores. Every trained model is rounded to fp16 before it is evaluated or used to
train the next one, so the printed numbers are those of the shipped files.

Usage::

    python scripts/train_digits_world.py            # the shipped weights
    python scripts/train_digits_world.py --scale 0.1 --out /tmp/digits  # a quick smoke run
"""

from __future__ import annotations

import os

# torch's OpenMP workers spin while they wait by default; on a two-core machine shared with
# any other busy process that makes every training step several times slower (measured:
# 5.4 s instead of 0.3 s per VQGAN step). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hashlib
import json
import math
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from fmr_bench.digits import (
    CLASS_NAMES,
    CLIP_MEAN,
    CLIP_STD,
    CLIP_WEIGHTS,
    MEAN,
    MODEL_CARDS,
    PROMPT_TEMPLATE,
    STD,
    WEIGHTS_DIR,
    augment,
    create_digits_clip,
    load_digits_split,
)
from fmr_bench.generators.vqgan import VQGAN

CARD_PATH = ROOT / "generators" / "vqgan-digits.json"
VQGAN_FILE = "vqgan-digits.safetensors"

# Step counts of the shipped run (multiplied by --scale).
VQGAN_STEPS = 2400
VQGAN_BATCH = 16
CNN_STEPS = 700
MLP_STEPS = 900
CNN_AUG_STEPS = 1500
CLS_BATCH = 64
CLIP_STEPS = 1500
CLIP_BATCH = 128
POOL_COPIES = 5  # VQGAN variants per train image in the augmentation pool
ORACLE_MAX_NOISE = 1.5  # largest latent perturbation (in latent stds) the oracle trains on

# Captions of the oracle's training images. "{}" is the class, as a word or a numeral.
CAPTION_TEMPLATES = (
    "an image of {}",
    "an image of the digit {}",
    "an image of a {}",
    "a photo of {}",
    "a photo of the digit {}",
    "a photo of the number {}",
    "a picture of a {}",
    "a handwritten {}",
    "a handwritten digit {}",
    "the digit {}",
    "the number {}",
    "a blurry {}",
    "a blurry photo of the digit {}",
    "a noisy image of {}",
    "a rotated digit {}",
    "a small {}",
    "a colourful {}",
    "a low resolution image of a {}",
    "a drawing of the number {}",
    "a scan of a handwritten {}",
    "a pixelated {}",
    "{}",
)
PROMPT_SHARE = 0.3  # share of captions that use the oracle's own prompt


# -- helpers ------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_fp16_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with floating tensors in fp16 (contiguous, as safetensors wants)."""
    return {
        k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous()
        for k, v in model.state_dict().items()
    }


def save_fp16(model: nn.Module, path: Path) -> None:
    """Write the model as fp16 safetensors and round the in-memory model the same way."""
    from safetensors.torch import save_file

    state = to_fp16_state(model)
    save_file(state, str(path))
    path.chmod(0o644)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def set_card_sha256(path: Path, digest: str) -> None:
    """Write ``digest`` into the card's ``weights.sha256``, keeping the file's layout."""
    text = path.read_text()
    new, n = re.subn(r'("sha256":\s*)(null|"[0-9a-f]*")', rf'\g<1>"{digest}"', text, count=1)
    if n != 1:
        raise SystemExit(f"cannot find the weights sha256 field in {path}")
    if json.loads(new)["weights"]["sha256"] != digest:
        raise SystemExit(f"the sha256 field of {path} is not under weights")
    path.write_text(new)


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def batches(n: int, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless stream of index batches over shuffled epochs."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def predict(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


# -- VQGAN --------------------------------------------------------------------------------


def vq_forward(vq: VQGAN, x: torch.Tensor, beta: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training forward: unclamped reconstruction, VQ loss and code indices."""
    z = vq.encode(x)
    idx = vq.code_indices(z.detach())
    e = vq.quantize.embedding(idx).permute(0, 3, 1, 2)
    vq_loss = F.mse_loss(e, z.detach()) + beta * F.mse_loss(z, e.detach())
    zq = z + (e - z).detach()
    out = (vq.decoder(vq.post_quant_conv(zq)) + 1) / 2
    return out, vq_loss, idx


def train_vqgan(card: dict, x_train: torch.Tensor, steps: int, g: torch.Generator,
                monitor: Callable[[VQGAN, int], None] | None = None) -> VQGAN:
    cfg = card["config"]
    vq = VQGAN(cfg["ddconfig"], cfg["n_embed"], cfg["embed_dim"], card=card["name"])
    base_lr = 1e-3
    opt = torch.optim.Adam(vq.parameters(), lr=base_lr, betas=(0.9, 0.99))
    usage = torch.zeros(cfg["n_embed"])
    stream = batches(len(x_train), VQGAN_BATCH, g)
    t0 = time.time()
    vq.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, base_lr, 50)
        x = x_train[next(stream)]
        # Mostly clean images, a quarter augmented: the generator must represent the test
        # distribution well and also the varied images the robust models train on.
        k = len(x) // 4
        x = torch.cat([x[: len(x) - k], augment(x[len(x) - k :], g, strength=float(torch.rand(1, generator=g)))])
        if step == 0:  # start the codebook on encoder outputs, not on a tiny uniform blob
            with torch.no_grad():
                z = vq.encode(x).permute(0, 2, 3, 1).reshape(-1, cfg["embed_dim"])
                pick = torch.randint(0, len(z), (cfg["n_embed"],), generator=g)
                vq.quantize.embedding.weight.copy_(z[pick] + 0.01 * torch.randn(cfg["n_embed"], cfg["embed_dim"], generator=g))
        out, vq_loss, idx = vq_forward(vq, x)
        rec = F.l1_loss(out, x) + F.mse_loss(out, x)
        loss = rec + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        usage += torch.bincount(idx.flatten(), minlength=cfg["n_embed"]).float()
        if (step + 1) % 200 == 0 and step + 1 < steps * 0.9:
            # Restart dead codes on random current encoder outputs.
            dead = (usage == 0).nonzero().flatten()
            if len(dead):
                with torch.no_grad():
                    z = vq.encode(x).permute(0, 2, 3, 1).reshape(-1, cfg["embed_dim"])
                    pick = torch.randint(0, len(z), (len(dead),), generator=g)
                    noise = 0.01 * torch.randn(len(dead), cfg["embed_dim"], generator=g)
                    vq.quantize.embedding.weight[dead] = z[pick] + noise
            print(f"  vqgan step {step + 1}/{steps}  rec {rec.item():.4f}  vq {vq_loss.item():.4f}  "
                  f"restarted {len(dead)} codes  ({time.time() - t0:.0f}s)", flush=True)
            usage.zero_()
            if monitor is not None:
                monitor(vq, step + 1)
    return vq.eval()


@torch.no_grad()
def latent_scale(vq: VQGAN, x: torch.Tensor) -> float:
    """Per-coordinate standard deviation of the encoder latent over ``x``."""
    return vq.encode(x).std().item()


@torch.no_grad()
def vqgan_variants(vq: VQGAN, x: torch.Tensor, g: torch.Generator, z_std: float,
                   max_noise: float = 2.5, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Decodes of encoder latents with random perturbations (and plain reconstructions).

    Per image one of: plain reconstruction (1/4), Gaussian latent noise with a random
    std up to ``max_noise * z_std`` (1/2), or a random sign pattern of a random size up to
    ``max_noise * z_std`` on every coordinate (1/4, the shape of a run of Adam steps).

    Returns:
        The decoded images and, per image, the perturbation size in units of ``z_std``.
    """
    out, sizes = [], []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        z = vq.encode(xb)
        n = len(z)
        kind = torch.randint(0, 4, (n,), generator=g)
        size = torch.rand(n, generator=g) * max_noise * z_std
        gauss = torch.randn(z.shape, generator=g) * size.view(-1, 1, 1, 1)
        signs = torch.sign(torch.randn(z.shape, generator=g)) * size.view(-1, 1, 1, 1)
        delta = torch.where((kind == 0).view(-1, 1, 1, 1), torch.zeros_like(z), gauss)
        delta = torch.where((kind == 3).view(-1, 1, 1, 1), signs, delta)
        out.append(vq.decode(z + delta))
        sizes.append(torch.where(kind == 0, torch.zeros_like(size), size / z_std))
    return torch.cat(out), torch.cat(sizes)


# -- evaluated classifiers ----------------------------------------------------------------


def train_classifier(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    steps: int,
    g: torch.Generator,
    make_batch: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    lr: float = 3e-3,
    label: str = "",
) -> nn.Module:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    stream = batches(len(x_train), CLS_BATCH, g)
    model.train()
    t0 = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, 30)
        idx = next(stream)
        x, y = make_batch(x_train[idx], y_train[idx])
        loss = F.cross_entropy(model(normalise(x, MEAN, STD)), y, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 300 == 0:
            print(f"  {label} step {step + 1}/{steps}  loss {loss.item():.3f}  ({time.time() - t0:.0f}s)", flush=True)
    return model.eval()


# -- CLIP oracle --------------------------------------------------------------------------


def caption(label: int, rng: random.Random) -> str:
    word = CLASS_NAMES[label] if rng.random() < 0.8 else str(label)
    if rng.random() < PROMPT_SHARE:
        return PROMPT_TEMPLATE.format(word)
    return rng.choice(CAPTION_TEMPLATES).format(word)


def train_clip(
    x_train: torch.Tensor, y_train: torch.Tensor, pool: torch.Tensor, pool_y: torch.Tensor,
    steps: int, g: torch.Generator, rng: random.Random,
) -> nn.Module:
    model, mean, std, tokenizer = create_digits_clip(pretrained=False)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    base_lr = 2e-3
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=base_lr, betas=(0.9, 0.98))
    stream = batches(len(x_train), CLIP_BATCH, g)
    model.train()
    t0 = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, base_lr, 100)
        idx = next(stream)
        x, y = x_train[idx], y_train[idx]
        # A third clean or lightly augmented, a third heavily augmented, a third VQGAN
        # variants (themselves lightly augmented).
        k = len(x) // 3
        pidx = torch.randint(0, len(pool), (k,), generator=g)
        x = torch.cat([
            augment(x[:k], g, strength=0.2),
            augment(x[k : len(x) - k], g, strength=1.0),
            augment(pool[pidx], g, strength=0.3),
        ])
        y = torch.cat([y[: len(y) - k], pool_y[pidx]])
        tokens = tokenizer([caption(int(c), rng) for c in y])
        img = F.normalize(model.encode_image(normalise(x, mean, std)), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.t()
        # CLIP loss with every same-class pair a positive (there are only ten classes, so
        # a batch holds many captions that correctly describe each image).
        same = (y[:, None] == y[None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = -0.5 * ((target * logits.log_softmax(1)).sum(1).mean()
                       + (target * logits.log_softmax(0)).sum(0).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if (step + 1) % 200 == 0:
            print(f"  clip step {step + 1}/{steps}  loss {loss.item():.3f}  "
                  f"scale {model.logit_scale.exp().item():.1f}  ({time.time() - t0:.0f}s)", flush=True)
    return model.eval()


def clip_classifier(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Zero-shot logits with the oracle's prompt, for [0, 1] pixels."""
    from open_clip import get_tokenizer

    from fmr_bench.digits.clip import register_digits_clip, zero_shot_weights

    tokenizer = get_tokenizer(register_digits_clip())
    text = zero_shot_weights(model, tokenizer, CLASS_NAMES)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(model.encode_image(normalise(x, CLIP_MEAN, CLIP_STD)), dim=-1) @ text.t()

    return fn


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder for the weights (default: the package's)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step count (e.g. 0.1 for a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    shipping = args.out.resolve() == WEIGHTS_DIR.resolve()
    if not shipping:
        print(f"note: writing to {args.out}; the card's sha256 is left alone and create_digits_clip "
              f"still reads {WEIGHTS_DIR}")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    base_steps = {"vqgan": VQGAN_STEPS, "cnn": CNN_STEPS, "mlp": MLP_STEPS, "cnn_aug": CNN_AUG_STEPS, "clip": CLIP_STEPS}
    steps = {k: max(1, round(v * args.scale)) for k, v in base_steps.items()}
    t_start = time.time()
    timings: dict[str, float] = {}

    x_tr_u8, y_tr = load_digits_split("train")
    x_te_u8, y_te = load_digits_split("test")
    x_tr, x_te = x_tr_u8.float() / 255, x_te_u8.float() / 255
    print(f"digits: {len(x_tr)} train, {len(x_te)} test images")

    # (a) VQGAN ------------------------------------------------------------------------
    t = time.time()
    card = json.loads(CARD_PATH.read_text())
    print(f"[1/5] VQGAN {card['name']} ({steps['vqgan']} steps)")
    vq = train_vqgan(card, x_tr, steps["vqgan"], g)
    vq_path = args.out / VQGAN_FILE
    save_fp16(vq, vq_path)
    vq.freeze()
    check = VQGAN(card["config"]["ddconfig"], card["config"]["n_embed"], card["config"]["embed_dim"])
    check.load_weights(vq_path)  # the shipped file loads through the package's loader
    with torch.no_grad():
        rec_te = torch.cat([vq.reconstruct(x_te[i : i + 256]) for i in range(0, len(x_te), 256)])
        codes_te = vq.code_indices(vq.encode(x_te))
    z_std = latent_scale(vq, x_tr[:512])
    vq_stats = {
        "l1": F.l1_loss(rec_te, x_te).item(),
        "mse": F.mse_loss(rec_te, x_te).item(),
        "psnr": (10 * torch.log10(1 / ((rec_te - x_te) ** 2).mean((1, 2, 3)))).mean().item(),
        "codes_used": int(codes_te.unique().numel()),
        "z_std": z_std,
    }
    print(f"  test reconstruction: L1 {vq_stats['l1']:.4f}  MSE {vq_stats['mse']:.5f}  "
          f"PSNR {vq_stats['psnr']:.1f} dB  codes used {vq_stats['codes_used']}/{card['config']['n_embed']}  "
          f"latent std {z_std:.3f}")
    if shipping:
        set_card_sha256(CARD_PATH, sha256_of(vq_path))
        print(f"  wrote {vq_path} and the sha256 into {CARD_PATH.relative_to(ROOT)}")
    timings["vqgan"] = time.time() - t

    # VQGAN augmentation pool: variants of (partly augmented) train images.
    t = time.time()
    sources = [x_tr if c == 0 else augment(x_tr, g, strength=float(c) / POOL_COPIES) for c in range(POOL_COPIES)]
    variants = [vqgan_variants(vq, s, g, z_std) for s in sources]
    pool = torch.cat([v[0] for v in variants])
    pool_size = torch.cat([v[1] for v in variants])
    pool_y = y_tr.repeat(POOL_COPIES)
    # The oracle only sees the milder variants: it should keep recognising a digit whose
    # style moved, but not learn to accept latents so noisy that the digit is gone.
    mild = pool_size <= ORACLE_MAX_NOISE
    g_eval = torch.Generator().manual_seed(args.seed + 1)
    noised_te = vqgan_variants(vq, x_te, g_eval, z_std)[0]
    aug_te = augment(x_te, g_eval, strength=0.6)
    print(f"  VQGAN pool: {len(pool)} images, {int(mild.sum())} mild enough for the oracle "
          f"({time.time() - t:.0f}s)")
    timings["pool"] = time.time() - t

    # (b) evaluated classifiers -------------------------------------------------------------
    def light(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return augment(x, g, strength=0.15), y

    def plain(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def heavy(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = len(x) // 2
        pidx = torch.randint(0, len(pool), (k,), generator=g)
        strength = float(torch.rand(1, generator=g)) * 0.7 + 0.3
        xs = torch.cat([augment(x[: len(x) - k], g, strength=strength), augment(pool[pidx], g, strength=0.3)])
        return xs, torch.cat([y[: len(y) - k], pool_y[pidx]])

    recipes = {"digits-cnn": (light, steps["cnn"]), "digits-mlp": (plain, steps["mlp"]),
               "digits-cnn-aug": (heavy, steps["cnn_aug"])}
    results: list[dict] = []
    for i, (name, (make_batch, n_steps)) in enumerate(recipes.items()):
        t = time.time()
        seed_everything(args.seed + 10 + i)
        print(f"[{2 + i}/5] {name} ({n_steps} steps)")
        card_m = MODEL_CARDS[name]
        model = train_classifier(card_m.arch(), x_tr, y_tr, n_steps, g, make_batch, label=name)
        path = args.out / card_m.weights
        save_fp16(model, path)
        model.eval()

        def fn(x: torch.Tensor, model: nn.Module = model) -> torch.Tensor:
            return model(normalise(x, MEAN, STD))

        row = {
            "model": name, "params": n_params(model), "bytes": path.stat().st_size,
            "test": (predict(fn, x_te) == y_te).float().mean().item(),
            "recon": (predict(fn, rec_te) == y_te).float().mean().item(),
            "noised": (predict(fn, noised_te) == y_te).float().mean().item(),
            "aug": (predict(fn, aug_te) == y_te).float().mean().item(),
            "file": path.name,
        }
        results.append(row)
        timings[name] = time.time() - t
        print(f"  {name}: test acc {row['test']:.4f}  on VQGAN recon {row['recon']:.4f}  "
              f"noised latents {row['noised']:.4f}  augmented {row['aug']:.4f}  ({timings[name]:.0f}s)")

    # (c) CLIP oracle ----------------------------------------------------------------------
    t = time.time()
    seed_everything(args.seed + 20)
    print(f"[5/5] CLIP oracle ({steps['clip']} steps)")
    clip = train_clip(x_tr, y_tr, pool[mild], pool_y[mild], steps["clip"], g, rng)
    clip_path = args.out / CLIP_WEIGHTS
    save_fp16(clip, clip_path)
    if shipping:
        clip, _, _, _ = create_digits_clip(pretrained=True)  # evaluate the file as shipped
    zs = clip_classifier(clip)
    row = {
        "model": "digits-clip (oracle, zero-shot)", "params": n_params(clip), "bytes": clip_path.stat().st_size,
        "test": (predict(zs, x_te) == y_te).float().mean().item(),
        "recon": (predict(zs, rec_te) == y_te).float().mean().item(),
        "noised": (predict(zs, noised_te) == y_te).float().mean().item(),
        "aug": (predict(zs, aug_te) == y_te).float().mean().item(),
        "file": clip_path.name,
    }
    results.append(row)
    timings["clip"] = time.time() - t
    print(f"  oracle zero-shot ('{PROMPT_TEMPLATE}'): test acc {row['test']:.4f}  on VQGAN recon {row['recon']:.4f}  "
          f"noised latents {row['noised']:.4f}  augmented {row['aug']:.4f}  ({timings['clip']:.0f}s)")

    total = time.time() - t_start
    write_report(args, results, vq_stats, vq, vq_path, card, steps, timings, total)
    print("\nmodel                              params   file KB   test   recon  noised  augmented")
    for r in results:
        print(f"{r['model']:<34} {r['params']:>7} {r['bytes'] / 1024:>8.0f}  {r['test']:.3f}  {r['recon']:.3f}  "
              f"{r['noised']:.3f}  {r['aug']:.3f}")
    print(f"total {total:.0f}s; weights in {args.out}")
    return 0


def write_report(args: argparse.Namespace, results: list[dict], vq_stats: dict, vq: VQGAN, vq_path: Path,
                 card: dict, steps: dict, timings: dict, total: float) -> None:
    cmd = "python scripts/train_digits_world.py" + ("" if args.scale == 1.0 else f" --scale {args.scale}")
    prompt = PROMPT_TEMPLATE.format("{class}")
    lines = [
        "# Digits world weights",
        "",
        (f"Written by `{cmd}` (seed {args.seed}, {args.threads} CPU threads, torch {torch.__version__}, "
         f"{total / 60:.1f} min). All files are fp16 safetensors; loaders cast them to fp32."),
        "",
        "Accuracy on the 360-image test split: clean (`test`), on VQGAN reconstructions (`recon`), on decodes",
        "of randomly perturbed VQGAN latents (`noised`) and on augmented images (`augmented`, strength 0.6).",
        f'The oracle is scored zero-shot with the prompt "{prompt}".',
        "",
        "| model | params | file | size (KB) | test | recon | noised | augmented |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['model']} | {r['params']:,} | `{r['file']}` | {r['bytes'] / 1024:.0f} | {r['test']:.4f} | "
                     f"{r['recon']:.4f} | {r['noised']:.4f} | {r['aug']:.4f} |")
    vq_kb = vq_path.stat().st_size / 1024
    stage_steps = ", ".join(f"{k} {v}" for k, v in steps.items())
    stage_times = ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
    lines += [
        f"| vqgan-digits (generator) | {n_params(vq):,} | `{vq_path.name}` | {vq_kb:.0f} | – | – | – | – |",
        "",
        (f"VQGAN test reconstruction: L1 {vq_stats['l1']:.4f}, MSE {vq_stats['mse']:.5f}, "
         f"PSNR {vq_stats['psnr']:.1f} dB; {vq_stats['codes_used']} of {card['config']['n_embed']} codes used "
         f"on the test split; latent standard deviation {vq_stats['z_std']:.3f}."),
        "",
        f"Steps: {stage_steps}. Time per stage (s): {stage_times}.",
        "",
    ]
    (args.out / "TRAINING.md").write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
