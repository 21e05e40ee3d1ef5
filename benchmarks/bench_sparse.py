"""Dense VQGAN vs sparse VQGAN (FMR paper §3.2.1, App. I): time per image and outcomes.

Usage::

    python benchmarks/bench_sparse.py --n 360 --budget 50 --batch-size 32 --threads 2

Runs the batched loop on the same digits test images with ``vqgan:digits`` and with
``sparse-vqgan:digits`` (the shipped mask), alternating the two ``--repeats`` times in
one process after a short warm-up, and prints for each: seconds per image (best of the
repeats), decoded image-rows (one per sample per loop iteration: the work the loop did),
seconds per image-iteration, mean steps survived, VR, PA and FMR.

The per-iteration cost of both is the same by construction (the mask zeroes gradients;
the decoder still decodes and back-propagates through the whole latent), so a saving
can only come from samples stopping earlier or later: read the image-iterations column.
"""

from __future__ import annotations

import argparse
import time

import torch


def run(spec: str, n: int, budget: int, batch_size: int, seed: int):
    from fmr_bench.generators import load_generator
    from fmr_bench.runner import evaluate

    gen = load_generator(spec, default="vqgan:digits", seed=seed)
    rows = [0]
    decode = gen.decode

    def counting(z: torch.Tensor) -> torch.Tensor:
        rows[0] += z.shape[0]
        return decode(z)

    gen.decode = counting  # count image-iterations without touching the loop
    start = time.perf_counter()
    result = evaluate("builtin:digits-cnn", "digits", generator=gen, out=None, limit=n, budget=budget,
                      batch_size=batch_size, seed=seed, device="cpu")
    return time.perf_counter() - start, rows[0], result.record["metrics"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=360, help="digits test images (default: all 360)")
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dense", default="vqgan:digits")
    ap.add_argument("--sparse", default="sparse-vqgan:digits")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    modes = {"dense": args.dense, "sparse": args.sparse}
    for spec in modes.values():  # warm-up: weights, oneDNN kernels
        run(spec, 8, 3, args.batch_size, args.seed)
    best: dict[str, tuple[float, int, dict]] = {}
    for _ in range(args.repeats):
        for name, spec in modes.items():
            wall, rows, metrics = run(spec, args.n, args.budget, args.batch_size, args.seed)
            print(f"{name}: {wall:.1f} s, {rows} image-iterations, mean steps {metrics['mean_steps']:.2f}", flush=True)
            if name not in best or wall < best[name][0]:
                best[name] = (wall, rows, metrics)

    print(f"\n{args.n} digits test images, B={args.budget}, batch {args.batch_size}, {args.threads} threads, "
          f"best of {args.repeats}\n")
    print("| generator | s / image | image-iterations | s / image-iteration | mean steps | VR | PA | FMR | vs dense |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    dense_per_image = best["dense"][0] / args.n
    for name, spec in modes.items():
        wall, rows, m = best[name]
        per_image = wall / args.n
        vr, pa, fmr = ("-" if m[k] is None else f"{m[k]:.1f}" for k in ("vr", "pa", "fmr"))
        print(f"| {spec} | {per_image:.4f} | {rows} | {wall / rows:.5f} | {m['mean_steps']:.2f} | {vr} | "
              f"{pa} | {fmr} | {100 * (per_image / dense_per_image - 1):+.1f} % |")


if __name__ == "__main__":
    main()
