"""Fine-tuning methods: seconds per training step relative to plain FT on the same batch,
and the evaluation callback's cost per call.

    python benchmarks/bench_finetune.py [--setup digits|vit-b-32|all] [--batch-size 32] [--steps 5]
                                        [--device cpu|cuda] [--callback] [--json FILE]

``digits``: the shipped digits CLIP on digits:train images. ``vit-b-32``: open_clip
ViT-B-32 with random weights (no download) on random 224-px images and 10 class names.
Each method runs one warm-up step, then ``--steps`` timed steps on the same batch (best
and median reported; the ratio uses medians). LP is timed on cached features (its
per-step cost; the one-off caching pass is reported separately as ``lp-cache``).
``--callback`` times one ``EvalCallback`` call: FMR on 16 digits test images, budget 10.
Figures measured on a shared machine say nothing about speed: run on an idle one.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: this tree's fmr_bench, not an installed one
    sys.path.insert(0, str(ROOT))

METHODS = ("ft", "lp", "lp-ft", "flyp", "maskcf", "starft")


def _model_and_batch(setup: str, batch: int):
    from fmr_bench import load_model

    if setup == "digits":
        from fmr_bench.datasets.digits import DigitsImages

        data = DigitsImages("train")
        clf = load_model("builtin:digits-clip", class_names=data.class_names)
        x = data.images[:batch].float()
        x = x / 255.0 if data.images.dtype == torch.uint8 else x
        return clf, data, x, torch.tensor(data.labels[:batch])
    names = [f"class {i}" for i in range(10)]
    torch.manual_seed(0)
    clf = load_model("openclip:ViT-B-32?prompts=a photo of a {}.", class_names=names, pretrained=False)
    x = torch.rand(batch, 3, 224, 224)
    y = torch.arange(batch) % 10
    from fmr_bench.datasets import TensorImages

    return clf, TensorImages(x, y.tolist(), names), x, y


def time_method(method: str, clf0, data, x, y, steps: int, device: str) -> dict:
    from fmr_bench.finetune import Trainer, make_settings

    clf = copy.deepcopy(clf0)
    s = make_settings(method=method, batch_size=len(x), warmup_steps=1, device=device, lr=1e-5,
                      caption="an image of {}", lp_epochs=1, epochs=1)
    tr = Trainer(clf, data, s)
    tr.model.to(tr.device)
    if tr.method.teachers:
        tr._make_teachers(copy.deepcopy(clf0))
    stage = tr.method.stages[-1] if method == "lp-ft" else tr.method.stages[0]
    params = tr._set_trainable(stage)
    opt, sched = tr._optimizer(stage, params, 10_000)
    xb, yb = x.to(tr.device), y.to(tr.device)
    extra = {}
    if stage.inputs == "features":
        t0 = time.perf_counter()
        with torch.no_grad():
            xb = tr.parts.features(xb).float()
        extra["lp-cache_s_per_batch"] = time.perf_counter() - t0
    weights = stage.weights(0)
    times = []
    for k in range(steps + 1):
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        tr._step(stage, weights, xb, yb, opt, sched, None, params)
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
        if k:
            times.append(time.perf_counter() - t0)
    return {"method": method, "best_s": min(times), "median_s": statistics.median(times), **extra}


def time_callback(device: str) -> dict:
    from fmr_bench import load_model
    from fmr_bench.finetune import Trainer, make_settings
    from fmr_bench.finetune.callbacks import EvalCallback
    from fmr_bench.datasets.digits import DigitsImages

    data = DigitsImages("train")
    clf = load_model("builtin:digits-clip", class_names=data.class_names)
    tr = Trainer(clf, data, make_settings("digits", device=device))
    tr.model.to(tr.device)
    out = {}
    for name, limit, budget in (("fmr", 16, 10), ("ood-accuracy", None, None)):
        cb = EvalCallback(name, "digits", limit=limit, budget=budget, ood=["digits-shift:blurred"] if name != "fmr" else ())
        t0 = time.perf_counter()
        cb.run(tr)
        out[name] = {"seconds": time.perf_counter() - t0, "limit": limit, "budget": budget}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setup", choices=("digits", "vit-b-32", "all"), default="digits")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--callback", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    report = {"device": args.device, "threads": torch.get_num_threads(), "load": os.getloadavg()[0], "setups": {}}
    for setup in (("digits", "vit-b-32") if args.setup == "all" else (args.setup,)):
        clf, data, x, y = _model_and_batch(setup, args.batch_size)
        rows = [time_method(m, clf, data, x, y, args.steps, args.device) for m in args.methods.split(",")]
        base = next((r["median_s"] for r in rows if r["method"] == "ft"), None)
        print(f"\n{setup}: batch {args.batch_size}, {args.steps} timed steps, device {args.device}, "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"{'method':8} {'median s/step':>14} {'best s/step':>12} {'x FT':>6}")
        for r in rows:
            r["vs_ft"] = r["median_s"] / base if base else None
            ratio = f"{r['vs_ft']:.2f}" if base else "-"
            print(f"{r['method']:8} {r['median_s']:14.4f} {r['best_s']:12.4f} {ratio:>6}")
        report["setups"][setup] = rows
    if args.callback:
        cb = time_callback(args.device)
        report["callback"] = cb
        for k, v in cb.items():
            print(f"callback {k}: {v['seconds']:.2f} s per call (limit {v['limit']}, budget {v['budget']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
