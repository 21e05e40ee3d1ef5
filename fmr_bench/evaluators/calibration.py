"""``calibration``: ECE and NLL before and after temperature scaling.

The ID set (``--data``, ImageNet val) is split in two halves by a fixed-seed permutation
(``seed``, default 0): the temperature is fitted by LBFGS on the NLL of the first half,
and ECE (15 equal-width top-label bins, intervals (lo, hi]) and NLL are reported on the
second half and on every shifted set (``--ood``: ``imagenet-v2:``, ``imagenet-a:``,
``imagenet-r:``, ``imagenet-sketch:``, ``objectnet:``, ``imagenet-vid-robust:``) with
that ID temperature. Writes ``reliability.png`` (ID test half, before / after).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DataError
from ..files import save_figure
from ..registry import EVALUATORS
from . import metrics as M
from .base import Context, Output, ds_name

N_BINS = 15


def split_halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, test indices): a seeded permutation cut in two (fit gets n // 2)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2].sort().values, perm[n // 2:].sort().values


def _block(logits: torch.Tensor, labels: torch.Tensor, t: float) -> dict[str, float]:
    return {"acc": M.accuracy(logits, labels), "ece": 100 * M.ece(logits.double().softmax(-1), labels, N_BINS),
            "nll": M.nll(logits, labels), "ece_ts": 100 * M.ece((logits.double() / t).softmax(-1), labels, N_BINS),
            "nll_ts": M.nll(logits, labels, t)}


def reliability_png(path: Path, before: list[dict], after: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharey=True)
    for ax, bins, name in ((axes[0], before, "before TS"), (axes[1], after, "after TS")):
        centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
        accs = [b["accuracy"] if b["accuracy"] is not None else 0.0 for b in bins]
        ax.bar(centres, accs, width=1 / len(bins), edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_title(name)
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


@EVALUATORS.register("calibration", help="ECE / NLL before and after temperature scaling fitted on half of ID")
def evaluate(ctx: Context, data, ood) -> Output:
    id_set = data[0]
    cl = ctx.logits(id_set)
    if len(cl.labels) < 2:
        raise DataError(f"{id_set.spec} has {len(cl.labels)} images; calibration needs at least 2 (half to fit)")
    fit, test = split_halves(len(cl.labels), ctx.settings.seed)
    t = M.fit_temperature(cl.logits[fit], cl.labels[fit])
    metrics: dict = {"temperature": t, "n_fit": len(fit), "id/n": len(test)}
    metrics.update({f"id/{k}": v for k, v in _block(cl.logits[test], cl.labels[test], t).items()})
    for ds in ood:
        o = ctx.logits(ds)
        name = ds_name(ds)
        metrics.update({f"{name}/{k}": v for k, v in _block(o.logits, o.labels, t).items()})
        metrics[f"{name}/n"] = len(ds)
    before = M.reliability_bins(cl.logits[test].double().softmax(-1), cl.labels[test], N_BINS)
    after = M.reliability_bins((cl.logits[test].double() / t).softmax(-1), cl.labels[test], N_BINS)
    files = {}
    if ctx.folder is not None:
        reliability_png(ctx.folder / "reliability.png", before, after,
                        f"{ctx.spec} on {id_set.spec} (test half), T = {t:.3f}")
        files["reliability"] = "reliability.png"
    details = {"convention": {"ece": M.ECE_CONVENTION, "units": "ECE in percent, NLL in nats",
                              "split": f"seeded permutation (seed {ctx.settings.seed}); first half fits T, "
                                       "second half is the ID test set", "fit": "LBFGS on NLL over log T"},
               "reliability": {"before": before, "after": after}}
    if bool((cl.logits[fit].argmax(-1) == cl.labels[fit]).all()):
        # NLL then keeps falling as T -> 0 and has no minimum: T is where LBFGS stopped.
        details["temperature_note"] = ("every fit image is classified correctly, so the NLL has no minimum and T is "
                                       "where LBFGS stopped; post-TS numbers are not meaningful on this ID set")
    return Output(metrics, details, files)


evaluate.options = {}
evaluate.digits_defaults = lambda data: (data, [f"digits-shift:{s}" for s in
                                               ("rotated", "inverted", "noisy", "blurred", "small", "dark", "style")])
