"""Dense VQGAN vs sparse VQGAN (FMR paper §3.2.1, App. I): time per image and outcomes.

Usage::

    python benchmarks/bench_sparse.py --n 360 --budget 50 --batch-size 32 --threads 2
    python benchmarks/bench_sparse.py --n 360 --repeats 0 --audit builtin:digits-judge   # outcomes only

Runs the batched loop on the same digits test images with ``vqgan:digits`` and with
``sparse-vqgan:digits`` (the shipped mask) under the digits world's defaults (acceptance
rule included), and prints two tables:

* outcomes: decoded image-rows (one per sample per loop iteration: the work the loop
  did), mean steps survived, VR, PA, FMR and, with ``--audit JUDGE``, the judge's
  validity and the audited FMR. They do not depend on the machine's load. With
  ``--audit`` they come from one extra, untimed pass per generator;
* timing: the two generators alternated ``--repeats`` times in one process after a short
  warm-up (never audited): seconds per image (best of the repeats), seconds per
  image-iteration, and the change against dense. ``--repeats 0`` skips it, for a loaded
  machine where timings mean nothing.

The per-iteration cost of both is the same by construction (the mask zeroes gradients;
the decoder still decodes and back-propagates through the whole latent), so a saving
can only come from samples stopping earlier or later: read the image-iterations column.
"""

from __future__ import annotations

import argparse
import time

import torch


def run(spec: str, n: int, budget: int, batch_size: int, seed: int, audit: str | None = None):
    from fmr_bench.generators import load_generator
    from fmr_bench.engine.fmr import evaluate

    gen = load_generator(spec, default="vqgan:digits", seed=seed)
    rows = [0]
    decode = gen.decode

    def counting(z: torch.Tensor) -> torch.Tensor:
        rows[0] += z.shape[0]
        return decode(z)

    gen.decode = counting  # count image-iterations without touching the loop
    start = time.perf_counter()
    result = evaluate("builtin:digits-cnn", "digits", generator=gen, out=None, limit=n, budget=budget,
                      batch_size=batch_size, seed=seed, device="cpu", audit=audit)
    wall = time.perf_counter() - start
    return wall, rows[0], {**result.record["metrics"], "accept": result.record["oracle"]["accept"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=360, help="digits test images (default: all 360)")
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats; 0: outcomes only, no timing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dense", default="vqgan:digits")
    ap.add_argument("--sparse", default="sparse-vqgan:digits")
    ap.add_argument("--audit", default=None, metavar="JUDGE",
                    help="audit the outcomes with this judge (e.g. builtin:digits-judge), in an untimed pass")
    args = ap.parse_args()
    if args.repeats < 0:
        ap.error("--repeats must be >= 0 (0: outcomes only)")
    torch.set_num_threads(args.threads)

    modes = {"dense": args.dense, "sparse": args.sparse}
    outcomes: dict[str, tuple[int, dict]] = {}
    if args.audit or not args.repeats:
        for name, spec in modes.items():
            _, rows, metrics = run(spec, args.n, args.budget, args.batch_size, args.seed, audit=args.audit)
            outcomes[name] = (rows, metrics)
    best: dict[str, tuple[float, int, dict]] = {}
    if args.repeats:
        for spec in modes.values():  # warm-up: weights, oneDNN kernels
            run(spec, 8, 3, args.batch_size, args.seed)
        for _ in range(args.repeats):
            for name, spec in modes.items():
                wall, rows, metrics = run(spec, args.n, args.budget, args.batch_size, args.seed)
                print(f"{name}: {wall:.1f} s, {rows} image-iterations, mean steps {metrics['mean_steps']:.2f}",
                      flush=True)
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, rows, metrics)
        outcomes = outcomes or {name: (rows, m) for name, (_, rows, m) in best.items()}

    def pct(m: dict, key: str) -> str:
        return "-" if m.get(key) is None else f"{m[key]:.1f}"

    print(f"\n{args.n} digits test images, B={args.budget}, accept {outcomes['dense'][1].get('accept', 'default')}"
          + (f", judge {args.audit}" if args.audit else "") + "\n")
    audited = ("audit_validity", "audit_fmr") if args.audit else ()
    print("| generator | image-iterations | mean steps | VR | PA | FMR |"
          + (" validity | audited FMR |" if audited else ""))
    print("|---|---:|---:|---:|---:|---:|" + "---:|" * len(audited))
    for name, spec in modes.items():
        rows, m = outcomes[name]
        print(f"| {spec} | {rows} | {m['mean_steps']:.2f} | "
              + " | ".join(pct(m, k) for k in ("vr", "pa", "fmr", *audited)) + " |")
    if not best:
        return
    print(f"\ntiming: batch {args.batch_size}, {args.threads} threads, best of {args.repeats}\n")
    print("| generator | s / image | s / image-iteration | vs dense (s / image) |")
    print("|---|---:|---:|---:|")
    dense_per_image = best["dense"][0] / args.n
    for name, spec in modes.items():
        wall, rows, _ = best[name]
        per_image = wall / args.n
        print(f"| {spec} | {per_image:.4f} | {wall / rows:.5f} | {100 * (per_image / dense_per_image - 1):+.1f} % |")


if __name__ == "__main__":
    main()
