"""Static evaluators: images/s of one dataset pass, and a second evaluator served from the cache.

    python benchmarks/bench_static.py [--model timm:resnet50] [--n 64] [--batch-size 32]

Builds a synthetic ImageNet-style folder (random 256x320 JPEGs in 2 wnid folders plus
ImageNet-R-style copies), a random-weight model, and runs ``ood-accuracy`` (cold: one
pass over each set) then ``calibration`` on the same sets (warm: logits from the cache).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic(root: Path, n: int) -> tuple[str, str]:
    from PIL import Image

    from fmr_bench.datasets.imagenet_variants import _timm_info

    rng = np.random.default_rng(0)
    wnids = _timm_info("imagenet_r_synsets.txt")[:2]
    for sub in ("val", "r"):
        for k in range(n):
            folder = root / sub / wnids[k % 2]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)).save(folder / f"{k}.JPEG", quality=90)
    return f"imagenet:{root / 'val'}", f"imagenet-r:{root / 'r'}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="timm:resnet50")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: one per core)")
    args = ap.parse_args()
    import torch

    from fmr_bench.datasets.imagenet import imagenet_class_names
    from fmr_bench.evaluators import Context, EvalSettings, run_evaluator

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FMR_LOGITS_CACHE"] = str(Path(tmp) / "cache")
        val, r = synthetic(Path(tmp), args.n)
        settings = EvalSettings(batch_size=args.batch_size, device="cpu", num_workers=args.workers)
        names = imagenet_class_names()
        ctx = Context(args.model, settings, pretrained=False)
        ctx.classifier(names)  # build the model (and its weights hash) outside the timed part
        t0 = time.perf_counter()
        cold = run_evaluator(args.model, "ood-accuracy", val, [r], out=None, pretrained=False, context=ctx)
        t1 = time.perf_counter()
        warm_ctx = Context(args.model, settings, pretrained=False)  # fresh process state: only the disk cache helps
        warm_ctx.classifier(names)
        t2 = time.perf_counter()
        warm = run_evaluator(args.model, "calibration", val, [r], out=None, pretrained=False, context=warm_ctx)
        t3 = time.perf_counter()
    passes = cold.record["inference"]
    print(f"model {args.model} (random weights), {args.n} images per set, batch {args.batch_size}, "
          f"workers {args.workers}, torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    for p in passes:
        print(f"  pass {p['dataset'].split(':')[0]}: {p['n']} images in {p['seconds']:.2f} s = {p['images_per_s']:.1f} images/s")
    print(f"  ood-accuracy total (cold, both sets): {t1 - t0:.2f} s")
    print(f"  calibration from cache (second evaluator, same sets): {t3 - t2:.3f} s; "
          f"cached passes: {[p['cached'] for p in warm.record['inference']]}")


if __name__ == "__main__":
    main()
