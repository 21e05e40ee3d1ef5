"""FMR tracked during fine-tuning: FMR per epoch of plain FT and a robust method on the testbed.

The "FMR during fine-tuning" use of the toolkit on the digits testbed (docs/digits-finetune.md,
``--preset testbed`` of ``finetune_digits_table.py``): the captioned digits CLIP is fine-tuned on
``digits-spurious:train`` with each method, and an :class:`~fmr_bench.finetune.EvalCallback`
runs the FMR protocol after every epoch on a fixed seeded subset of ``digits:test`` (epoch 0 is
the zero-shot model, scored the same way). Writes ``OUT/fmr_per_epoch.json`` (a study document:
request, one row per (method, epoch) with FMR, PA, SA, VR and PA/FMR intervals, provenance) and
``OUT/fmr_per_epoch.png`` (FMR against epoch, one line per method, the 95 % interval shaded).

Usage::

    python scripts/fmr_per_epoch.py --out runs/fmr-per-epoch                       # the documented plot
    python scripts/fmr_per_epoch.py --out /tmp/e --epochs 1 --fmr-limit 8 --fmr-budget 2 --train-limit 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "scripts"):  # a checkout without installing; the table script's subset()
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402

from fmr_bench.errors import FmrBenchError  # noqa: E402

MODEL = "builtin:digits-clip-captions"
TRAIN = "digits-spurious:train"
PROMPT = "a photo of a {}"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for fmr_per_epoch.json and .png")
    p.add_argument("--methods", default="ft,maskcf", help="comma-separated fine-tuning methods (default: ft,maskcf)")
    p.add_argument("--epochs", type=int, default=6, help="epochs of each run (default 6)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak lr of the end-to-end stages (the testbed's 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fmr-limit", type=int, default=120, help="digits:test images FMR is measured on (seeded subset)")
    p.add_argument("--fmr-budget", type=int, default=10, help="FMR budget B per image")
    p.add_argument("--train-limit", type=int, default=None, help="first N training images (smoke runs)")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def fmr_row(method: str, epoch: int, record: dict) -> dict:
    m, iv = record["metrics"], record.get("intervals") or {}
    return {"method": method, "epoch": epoch, **{k: m.get(k) for k in ("sa", "vr", "pa", "fmr", "n_validated", "n")},
            **{f"{k}_{end}": (iv.get(k) or (None, None))[i] for k in ("pa", "fmr") for i, end in enumerate(("lo", "hi"))}}


def score_fmr(clf, args) -> dict:
    from fmr_bench.engine.fmr import evaluate

    res = evaluate(clf, "digits", out=None, limit=args.fmr_limit, budget=args.fmr_budget, seed=args.seed,
                   write_grid=False)
    return res.to_dict()


def train(method: str, args, data) -> list[dict]:
    from fmr_bench.finetune import Callback, finetune
    from fmr_bench.finetune.callbacks import isolated_rng

    rows: list[dict] = []

    class PerEpoch(Callback):  # the FMR record of each epoch (the one-run record, with its intervals)
        def on_epoch_end(self, trainer) -> None:
            with isolated_rng():  # scoring draws no random numbers the training would have drawn
                trainer.prepare_eval()
                rec = score_fmr(trainer.model, args)
            trainer.model.train()
            rows.append(fmr_row(method, trainer.epochs_done, rec))
            print(f"  {method} epoch {trainer.epochs_done}: FMR {rows[-1]['fmr']:.1f}", flush=True)

    finetune(MODEL, data, preset="digits", method=method, seed=args.seed, epochs=args.epochs, lr=args.lr,
             caption=PROMPT, templates=PROMPT, out=None, callbacks=[PerEpoch()])
    return rows


def plot(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fmr_bench.plots import finish_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "zero-shot"):
        mine = [r for r in rows if r["method"] in (method, "zero-shot")]
        xs = [r["epoch"] for r in mine]
        ax.plot(xs, [r["fmr"] for r in mine], marker="o", label=method)
        if all(r["fmr_lo"] is not None for r in mine):
            ax.fill_between(xs, [r["fmr_lo"] for r in mine], [r["fmr_hi"] for r in mine], alpha=0.15)
    ax.set_xlabel("epoch (0: the zero-shot model)")
    ax.set_ylabel("FMR (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return finish_figure(fig, path, title)


def main(argv: list[str] | None = None) -> int:
    import json

    from fmr_bench import load_model
    from fmr_bench.datasets import load_dataset
    from fmr_bench.files import require_writable, write_json
    from fmr_bench.results.study import study_document

    args = parse(argv)
    try:
        out = require_writable(args.out)
        torch.set_num_threads(args.threads)
        data = load_dataset(TRAIN)
        if args.train_limit:
            from finetune_digits_table import subset  # every k-th image: all groups and classes stay

            data = subset(data, args.train_limit)
        rows = [fmr_row("zero-shot", 0, score_fmr(load_model(MODEL, templates=PROMPT), args))]
        print(f"  zero-shot: FMR {rows[0]['fmr']:.1f}", flush=True)
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            rows += train(method, args, data)
        request = {k: v for k, v in vars(args).items() if k not in ("out", "threads")} | {"model": MODEL,
                                                                                          "data": "digits:test"}
        write_json(out / "fmr_per_epoch.json", json.loads(json.dumps(study_document("fmr-per-epoch", request, rows))))
        plot(rows, out / "fmr_per_epoch.png", f"FMR during fine-tuning ({args.fmr_limit} digits:test images, "
                                              f"B={args.fmr_budget}, lr {args.lr:g}, seed {args.seed})")
    except FmrBenchError as e:
        print(f"fmr_per_epoch: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'fmr_per_epoch.json'} and {out / 'fmr_per_epoch.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
