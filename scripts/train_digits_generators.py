"""Train the diffusers generators of the digits world and write their shipped folders.

Writes diffusers-loadable folders (``config.json`` + fp16
``diffusion_pytorch_model.safetensors``, loaded as fp32) under ``fmr_bench/digits/``:

- ``vae/``: a tiny ``AutoencoderKL`` (spec ``vae:digits``), trained on the digits train
  split with L1 + L2 reconstruction and a small KL term (no GAN, no perceptual loss);
- ``diffusion/``: a tiny unconditional DDPM ``UNet2DModel`` (spec ``diffusion:digits``)
  with a linear 1000-step schedule (``scheduler_config.json``), trained to predict the
  noise at uniformly drawn timesteps;

each with a ``card.json`` (what, how, how well, sha256 of the weights and the spec
defaults). Everything runs on CPU with fixed seeds and step counts.

Usage::

    python scripts/train_digits_generators.py                 # the shipped folders
    python scripts/train_digits_generators.py --scale 0.05 --out /tmp/gens   # a smoke run
"""

from __future__ import annotations

import os

# See train_digits_world.py: passive OpenMP waiting keeps shared two-core machines fast.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from fmr_bench.digits import load_digits_split
from fmr_bench.weights import sha256_file

OUT = ROOT / "fmr_bench" / "digits"
SCRIPT = "scripts/train_digits_generators.py"

VAE_CONFIG = {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 3,
              "up_block_types": ("UpDecoderBlock2D",) * 3, "block_out_channels": (16, 32, 32), "layers_per_block": 1,
              "latent_channels": 8, "norm_num_groups": 8, "sample_size": 32}
UNET_CONFIG = {"sample_size": 32, "in_channels": 3, "out_channels": 3, "block_out_channels": (16, 32, 32),
               "layers_per_block": 1, "norm_num_groups": 8,
               "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
               "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")}
BATCH = 64
#: Spec defaults of ``diffusion:digits`` (chosen on the train split, see the card).
DIFFUSION_DEFAULTS = {"strength": 0.1, "steps": 2, "guidance": 0.5}


def batches(x: torch.Tensor, n_steps: int, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)  # on the CPU: the same batches on every device
    for _ in range(n_steps):
        idx = torch.randint(len(x), (batch,), generator=g).to(x.device)
        flip = (torch.rand(batch, 1, 1, 1, generator=g) < 0.5).to(x.device)  # colour inversion: more "styles"
        xb = x[idx]
        yield torch.where(flip, 1 - xb, xb)


def lr_at(step: int, n_steps: int, base: float) -> float:
    warm = max(1, n_steps // 20)
    return base * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / n_steps)))


def to_fp16_and_back(model: torch.nn.Module) -> None:
    """Round the weights to fp16 so that evaluation sees what is shipped."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def save(model: torch.nn.Module, folder: Path, card: dict, scheduler=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.cpu().half().save_pretrained(folder, safe_serialization=True)
    model.float()
    if scheduler is not None:
        scheduler.save_config(folder)
    card["sha256"] = {"diffusion_pytorch_model.safetensors": sha256_file(folder / "diffusion_pytorch_model.safetensors")}
    card["size_kb"] = round((folder / "diffusion_pytorch_model.safetensors").stat().st_size / 1024)
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")


def update(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> None:
    """One optimiser step at learning rate ``lr``."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad()
    loss.backward()
    opt.step()


def train_vae(train: torch.Tensor, test: torch.Tensor, n_steps: int, seed: int) -> tuple[torch.nn.Module, dict]:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG).to(train.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    t0 = time.time()
    for step, xb in enumerate(batches(train, n_steps, BATCH, seed)):
        post = vae.encode(xb * 2 - 1).latent_dist
        rec = (vae.decode(post.sample()).sample + 1) / 2
        kl = post.kl().mean() / xb[0].numel()
        loss = (rec - xb).abs().mean() + F.mse_loss(rec, xb) + 1e-3 * kl
        update(opt, loss, lr_at(step, n_steps, 2e-3))
        if step % 200 == 0 or step == n_steps - 1:
            print(f"vae step {step}: loss {loss.item():.4f} kl/dim {kl.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    vae.eval()
    to_fp16_and_back(vae)
    with torch.no_grad():
        z = vae.encode(test * 2 - 1).latent_dist.mean
        rec = ((vae.decode(z).sample + 1) / 2).clamp(0, 1)
    mse = F.mse_loss(rec, test).item()
    stats = {"steps": n_steps, "batch": BATCH, "seconds": round(time.time() - t0),
             "test_l1": round((rec - test).abs().mean().item(), 4), "test_mse": round(mse, 5),
             "test_psnr_db": round(10 * torch.log10(torch.tensor(1 / mse)).item(), 1),
             "latent_shape": list(z.shape[1:]), "latent_std": round(z.std().item(), 3)}
    print("vae:", stats, flush=True)
    return vae, stats


def train_unet(train: torch.Tensor, n_steps: int, seed: int) -> tuple[torch.nn.Module, dict, object]:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**UNET_CONFIG).to(train.device)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    ac = sched.alphas_cumprod.to(train.device)
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.time()
    for step, xb in enumerate(batches(train, n_steps, BATCH, seed)):
        x0 = xb * 2 - 1
        t = torch.randint(0, 1000, (len(x0),), generator=g).to(x0.device)
        noise = torch.randn(x0.shape, generator=g).to(x0.device)
        a = ac[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t).sample, noise)
        update(opt, loss, lr_at(step, n_steps, 2e-3))
        if step % 200 == 0 or step == n_steps - 1:
            print(f"unet step {step}: loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    unet.eval()
    to_fp16_and_back(unet)
    stats = {"steps": n_steps, "batch": BATCH, "seconds": round(time.time() - t0), "final_train_loss": round(loss.item(), 4)}
    return unet, stats, sched


def denoise_error(unet: torch.nn.Module, test: torch.Tensor, ac: torch.Tensor, ts=(50, 100, 200, 300)) -> dict:
    """Test MSE of the one-step x0 prediction from x_t (pixels in [0, 1]), per timestep."""
    g = torch.Generator().manual_seed(0)
    out = {}
    with torch.no_grad():
        for t in ts:
            x0 = test * 2 - 1
            a = ac[t]
            xt = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g).to(x0.device)
            eps = unet(xt, torch.full((len(x0),), t, device=x0.device)).sample
            pred = ((xt - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            out[f"t{t}"] = round(F.mse_loss((pred + 1) / 2, test).item(), 5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help="folder receiving vae/ and diffusion/")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every step count (smoke runs)")
    ap.add_argument("--only", choices=("vae", "diffusion"), default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (the shipped folders were trained on a GPU)")
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--unet-steps", type=int, default=6000)
    args = ap.parse_args()
    torch.set_num_threads(2)
    train = (load_digits_split("train")[0].float() / 255).to(args.device)
    test = (load_digits_split("test")[0].float() / 255).to(args.device)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "2 CPU threads"
    meta = {"trained_by": f"python {SCRIPT} --device {args.device} (seed {args.seed}, torch {torch.__version__}, "
                          f"{where})",
            "data": "digits train split (1437 images, 32x32 RGB), random colour inversion"}
    if args.only in (None, "vae"):
        vae, stats = train_vae(train, test, max(1, int(args.vae_steps * args.scale)), args.seed)
        card = {"name": "vae-digits", "kind": "vae", **meta,
                "description": "Tiny diffusers AutoencoderKL of the digits world: 32 px RGB, 3 blocks (16-32-32 "
                               "channels), 8x8x8 latent (posterior mean), trained with L1 + L2 reconstruction and a "
                               "KL term of weight 1e-3 per pixel value; no GAN or perceptual loss.",
                "training": stats}
        save(vae, args.out / "vae", card)
    if args.only in (None, "diffusion"):
        unet, stats, sched = train_unet(train, max(1, int(args.unet_steps * args.scale)), args.seed)
        stats["test_x0_mse"] = denoise_error(unet, test, sched.alphas_cumprod.to(test.device))
        print("unet:", stats, flush=True)
        card = {"name": "diffusion-digits", "kind": "diffusion", **meta,
                "description": "Tiny unconditional DDPM UNet2DModel of the digits world: 32 px RGB, 3 levels "
                               "(16-32-32 channels, self-attention at 8x8), epsilon prediction, linear 1000-step "
                               "schedule; trained at uniformly drawn timesteps.",
                "defaults": DIFFUSION_DEFAULTS, "training": stats}
        save(unet, args.out / "diffusion", card, scheduler=sched)


if __name__ == "__main__":
    main()
