"""Batched FMR loop vs the plain one-image reference loop: speed, memory, agreement.

Usage (each mode runs in its own process so peak memory is its own)::

    python benchmarks/bench_loop.py --setup full --n 4 --budget 4 --batch-size 4
    python benchmarks/bench_loop.py --setup digits --n 64 --budget 50 --batch-size 32

``full``: the paper's full-size architectures at 224 px with random weights (VQGAN
f16-16384 from its card, timm resnet50, open_clip ViT-B-32 as oracle) — random weights
cost the same as trained ones. Labels are the oracle's own predictions on the clean
images so that samples survive the first step, as with a trained oracle. ``digits``:
the shipped digits world. Prints seconds per image-iteration (one gradient step of one
image) for both loops, their ratio, peak RSS / CUDA memory, and the share of samples
whose outcome (validated, steps survived, final prediction) agrees with the reference.

Modes: ``reference`` and the batched loop in each precision (``fp32`` exact, ``tf32``,
``bf16``). Each batched mode is also compared with batched exact fp32: the share of
identical per-sample outcomes and ΔFMR with a paired bootstrap 95 % interval. With
``--oracle-head accept`` every sample runs its whole budget (steady state); the run then
prints a projected ImageNet-val time, 50,000 × (mean image-iterations per image) × ms per
image-iteration, for mean steps 10, 25 and 50 — a projection: real-weight trajectories
(how long samples survive with the trained models) cannot be run here.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


class _AcceptHead(torch.nn.Module):
    """Runs the CLIP image tower for its cost, then always answers class 0 (never rejects)."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.clip.encode_image(x).float()
        logits = torch.zeros(len(x), 1000, device=x.device)
        logits[:, 0] = 100 + 0 * f.sum(-1)
        return logits


class _CentredHead(torch.nn.Module):
    """Cosine logits between centred image features and centred class features."""

    def __init__(self, clip: torch.nn.Module, class_feats: torch.Tensor) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("mu", class_feats.mean(0))
        centred = torch.nn.functional.normalize(class_feats - class_feats.mean(0), dim=-1)
        self.register_buffer("classes", torch.cat([centred, torch.zeros(1000 - len(centred), centred.shape[1])]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional.normalize(self.clip.encode_image(x).float() - self.mu, dim=-1)
        return 100 * f @ self.classes.t()


def build(setup: str, n: int, device: torch.device, seed: int = 0, oracle_head: str = "centred"):
    from fmr_bench.datasets import load_dataset
    from fmr_bench.generators import load_generator
    from fmr_bench.models import ImageClassifier, load_model
    from fmr_bench.oracles import load_oracle

    torch.manual_seed(seed)
    if setup == "digits":
        data = load_dataset("digits")
        model = load_model("builtin:digits-cnn").freeze()
        oracle = load_oracle("builtin:digits-clip", data.class_names)
        gen = load_generator("vqgan:digits")
        samples = [(data.ids[i], i, data.load(i), data.labels[i]) for i in range(min(n, len(data)))]
        return samples, model, oracle, gen, data.world.step_size, torch.arange(10)
    from fmr_bench.datasets.imagenet import imagenet_class_names
    from fmr_bench.generators.cards import load_card
    from fmr_bench.generators.vqgan import VQGAN
    from fmr_bench.models.openclip import load as openclip_load
    from fmr_bench.oracles import Oracle
    from fmr_bench.specs import Spec

    names = imagenet_class_names()
    cfg = load_card("imagenet-f16-16384", "vqgan")["config"]
    gen = VQGAN(cfg["ddconfig"], cfg["n_embed"], cfg["embed_dim"], card="random-weights").freeze()
    gen.resolution = 224
    model = load_model("timm:resnet50", pretrained=False).freeze()
    clip = openclip_load(Spec("openclip", "ViT-B-32/openai"), class_names=names, pretrained=False, templates="single")

    # Smooth random images: low-resolution noise upsampled to 224 px.
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, 14, 14, generator=g), size=224, mode="bicubic").clamp(0, 1)
    # A random CLIP maps all images to nearly the same embedding, so its argmax flips under
    # the smallest change; a trained one does not. To keep samples alive as a trained
    # oracle would, class i's embedding is the *centred* image embedding of the generator's
    # reconstruction of image i (same compute as the real oracle: one ViT-B/32 image
    # forward per check).
    with torch.no_grad():
        feats = clip.net.clip.encode_image(clip.normalize(gen.decode(gen.encode(x)))).float()
    if oracle_head == "accept":  # steady-state speed: every sample runs its whole budget
        oracle = Oracle([ImageClassifier(_AcceptHead(clip.net.clip), clip.preprocess, class_names=names)],
                        "openclip:ViT-B-32 (random weights, accept-all head)", "single")
        labels = [0] * n
    else:
        oracle = Oracle([ImageClassifier(_CentredHead(clip.net.clip, feats), clip.preprocess, class_names=names)],
                        "openclip:ViT-B-32 (random weights, centred head)", "single")
        labels = list(range(n))
    samples = [(f"img{i}", i, x[i], labels[i]) for i in range(n)]
    return samples, model, oracle, gen, 1e-3, torch.arange(1000)


def run_mode(args) -> dict:
    from fmr_bench.protocol import LoopConfig, run_batched, run_reference

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    samples, model, oracle, gen, lr, target_of = build(args.setup, args.n, torch.device("cpu"),
                                                       oracle_head=args.oracle_head)
    model, oracle, gen = model.to(device), oracle.to(device), gen.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    lr = args.step_size or lr
    start = time.perf_counter()
    slots = 1
    if args.mode == "reference":
        samples = [(s[0], s[1], s[2].to(device), s[3]) for s in samples]
        outs = run_reference(samples, model=model, oracle=oracle, generator=gen, target_of=target_of,
                             budget=args.budget, step_size=lr, optimizer="adam")
    else:
        from fmr_bench.protocol.cpu import keep_freed_memory

        keep_freed_memory()  # as `fmr evaluate` does
        outs = []
        if args.levers:
            from fmr_bench.generators.fastpath import apply_levers

            apply_levers(gen, args.levers.split(","))
        cfg = LoopConfig(args.budget, lr, "adam", args.batch_size, args.precision, fixed_slots=args.fixed_slots)
        slots = run_batched(iter(samples), model=model, oracle=oracle, generator=gen, target_of=target_of, cfg=cfg,
                            device=device, on_sample=lambda o, *_: outs.append(o))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # Gradient steps taken: a sample that stopped at its first rejection took steps + 1.
    iters = sum(min(o.steps + 1, args.budget) for o in outs)
    return {"mode": args.mode, "precision": args.precision, "slots": slots, "levers": args.levers,
            "seconds": seconds, "image_iterations": iters,
            "s_per_image_iteration": seconds / max(iters, 1), "images_per_s": len(outs) / seconds,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_cuda_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
            "outcomes": {o.id: [o.validated, o.steps, o.final_pred] for o in outs},
            "correct": {o.id: [o.clean_correct, o.validated and o.final_correct, o.validated] for o in outs}}


def fmr_of(correct: list[list[bool]]) -> float:
    """FMR (%) of (clean correct, validated and still correct, validated) rows: PA / SA."""
    import numpy as np

    c = np.asarray(correct, dtype=float)
    sa, val = c[:, 0].mean(), c[:, 2].sum()
    return float(100 * (c[:, 1].sum() / val) / sa) if sa and val else float("nan")


def delta_fmr(a: dict, b: dict, rounds: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """FMR(a) - FMR(b) over the same samples, with a paired bootstrap 95 % interval."""
    import numpy as np

    ids = sorted(set(a) & set(b))
    ra, rb = [a[i] for i in ids], [b[i] for i in ids]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(rounds):
        pick = rng.integers(0, len(ids), len(ids))
        draws.append(fmr_of([ra[k] for k in pick]) - fmr_of([rb[k] for k in pick]))
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return fmr_of(ra) - fmr_of(rb), float(lo), float(hi)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setup", choices=["full", "digits"], default="digits")
    p.add_argument("--oracle-head", choices=["centred", "accept"], default="centred",
                   help="full setup: centred (decisions like a trained oracle's) or accept (never rejects: "
                        "every sample runs its whole budget, for steady-state speed)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--budget", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--step-size", type=float, default=None)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--modes", default="reference,fp32,tf32,bf16", help="comma list of reference, fp32, tf32, bf16")
    p.add_argument("--levers", default="", help="decoder levers for the batched modes, comma list of "
                                                "subpixel, groupnorm, compile (fmr_bench.generators.fastpath)")
    p.add_argument("--fixed-slots", action="store_true", help="pad every decode to the slot count (one shape)")
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    if args.mode:  # child process
        print(json.dumps(run_mode(args)))
        return
    results = {}
    for mode in args.modes.split(","):
        child = [sys.executable, __file__, "--setup", args.setup, "--oracle-head", args.oracle_head,
                 "--n", str(args.n), "--budget", str(args.budget),
                 "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--device", args.device,
                 "--mode", "reference" if mode == "reference" else "batched",
                 "--precision", "fp32" if mode == "reference" else mode]
        if args.levers and mode != "reference":
            child += ["--levers", args.levers]
        if args.fixed_slots:
            child += ["--fixed-slots"]
        if args.step_size:
            child += ["--step-size", str(args.step_size)]
        out = subprocess.run(child, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"{mode} failed:\n{out.stderr[-2000:]}")
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(f"{mode:>9}: {1000 * r['s_per_image_iteration']:.2f} ms/image-iteration, {r['images_per_s']:.2f} "
              f"images/s, {r['slots']} slots, "
              f"{r['image_iterations']} image-iterations in {r['seconds']:.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB"
              + (f", peak CUDA {r['peak_cuda_gb']:.2f} GB" if r["peak_cuda_gb"] else ""), flush=True)
    if "reference" in results:
        ref = results["reference"]
        for mode, r in results.items():
            if mode == "reference":
                continue
            n = len(ref["outcomes"])
            agree = sum(r["outcomes"].get(k) == v for k, v in ref["outcomes"].items()) / n
            # The oracle's decisions alone (validated, steps survived), without the final prediction:
            decided = sum((r["outcomes"].get(k) or [None])[:2] == v[:2] for k, v in ref["outcomes"].items()) / n
            speed = ref["s_per_image_iteration"] / r["s_per_image_iteration"]
            print(f"{mode:>9}: {speed:.2f}x faster than the reference per image-iteration; "
                  f"outcomes agree for {100 * agree:.1f} % of {n} samples "
                  f"(validation and steps survived alone: {100 * decided:.1f} %)")
            r["speedup"], r["agreement"], r["decisions_agreement"] = speed, agree, decided
    if "fp32" in results:
        exact = results["fp32"]
        for mode, r in results.items():
            if mode in ("fp32", "reference"):
                continue
            n = len(exact["outcomes"])
            same = sum(r["outcomes"].get(k) == v for k, v in exact["outcomes"].items()) / n
            d, lo, hi = delta_fmr(r["correct"], exact["correct"])
            print(f"{mode:>9}: vs exact fp32: {100 * same:.1f} % of {n} outcomes identical; "
                  f"ΔFMR {d:+.2f} points (95 % bootstrap interval {lo:+.2f} to {hi:+.2f})")
            r["identical_to_fp32"], r["delta_fmr"] = same, {"value": d, "ci95": [lo, hi]}
    if args.oracle_head == "accept" or args.setup == "full":
        print("projected ImageNet-val (50,000 images; real-weight trajectories cannot be run here):")
        for mode, r in results.items():
            ms = 1000 * r["s_per_image_iteration"]
            proj = {steps: 50_000 * steps * ms / 1000 for steps in (10, 25, 50)}
            r["projected_imagenet_val_s"] = proj
            print(f"{mode:>9}: " + ", ".join(f"mean {k} steps: {v:,.0f} s" for k, v in proj.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
