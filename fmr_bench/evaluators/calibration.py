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
from ..metrics import static as M
from ..metrics.intervals import BOOTSTRAP, Intervals, ece_interval
from .base import Context, Output, correct, ds_name

N_BINS = 15


def split_halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, test indices): a seeded permutation cut in two (fit gets n // 2)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2].sort().values, perm[n // 2:].sort().values


def _block(logits: torch.Tensor, labels: torch.Tensor, t: float | None) -> dict[str, float | None]:
    """Accuracy, ECE and NLL, and the same after scaling by ``t`` (``None``: no usable T, no post-TS numbers)."""
    return {"acc": M.accuracy(logits, labels), "ece": 100 * M.ece(logits.double().softmax(-1), labels, N_BINS),
            "nll": M.nll(logits, labels),
            "ece_ts": None if t is None else 100 * M.ece((logits.double() / t).softmax(-1), labels, N_BINS),
            "nll_ts": None if t is None else M.nll(logits, labels, t)}


def _block_intervals(iv: Intervals, prefix: str, logits: torch.Tensor, labels: torch.Tensor, t: float | None) -> None:
    """Intervals of a block's accuracy (binomial) and ECE before / after scaling (bootstrap, T held fixed)."""
    iv.share(f"{prefix}/acc", correct(logits, labels), len(labels))
    for key, scale in (("ece", 1.0), ("ece_ts", t)):
        if scale is None:
            continue
        conf, pred = (logits.double() / scale).softmax(-1).max(-1)
        iv.put(f"{prefix}/{key}", ece_interval(conf.numpy(), (pred == labels).numpy(), iv.settings, iv.rng, N_BINS),
               BOOTSTRAP)


def identifiability(logits: torch.Tensor, labels: torch.Tensor) -> str | None:
    """Why the temperature cannot be fitted on these logits, or ``None`` when it can.

    The NLL of ``softmax(z / T)`` has a finite minimiser only when the fit set holds both right and
    wrong top-1 predictions: with every prediction right it keeps falling as T -> 0 (and LBFGS
    stops at an arbitrary tiny T), with every one wrong it falls towards T -> infinity.
    """
    right = int((logits.argmax(-1) == labels).sum())
    if right == len(labels):
        return (f"all {right} fit images are classified correctly, so the NLL keeps falling as T -> 0 and has no "
                "minimum: T is not identifiable and no post-scaling metric is reported; calibrate on a set the "
                "model errs on (e.g. a shifted set as --data)")
    if right == 0:
        return (f"none of the {len(labels)} fit images is classified correctly, so the NLL has no finite minimum: "
                "T is not identifiable and no post-scaling metric is reported")
    return None


def reliability_png(path: Path, before: list[dict], after: list[dict] | None, title: str,
                    note: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharey=True)
    for ax, bins, name in ((axes[0], before, "before TS"), (axes[1], after, "after TS")):
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_title(name)
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        if bins is None:  # no usable temperature: say so where the bars would be
            ax.text(0.5, 0.5, "T not identifiable:\n" + "\n".join(_wrap(note or "", 34)), ha="center", va="center",
                    fontsize=8, transform=ax.transAxes, bbox={"facecolor": "white", "edgecolor": "red"})
            continue
        centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
        accs = [b["accuracy"] if b["accuracy"] is not None else 0.0 for b in bins]
        ax.bar(centres, accs, width=1 / len(bins), edgecolor="black", alpha=0.7, label="accuracy")
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)


@EVALUATORS.register("calibration", help="ECE / NLL before and after temperature scaling fitted on half of ID")
def evaluate(ctx: Context, data, ood) -> Output:
    id_set = data[0]
    cl = ctx.logits(id_set)
    if len(cl.labels) < 2:
        raise DataError(f"{id_set.spec} has {len(cl.labels)} images; calibration needs at least 2 (half to fit)")
    fit, test = split_halves(len(cl.labels), ctx.settings.seed)
    why = identifiability(cl.logits[fit], cl.labels[fit])
    fitted = M.fit_temperature(cl.logits[fit], cl.labels[fit])
    t = None if why else fitted
    metrics: dict = {"temperature": t, "n_fit": len(fit), "id/n": len(test)}
    metrics.update({f"id/{k}": v for k, v in _block(cl.logits[test], cl.labels[test], t).items()})
    iv = Intervals()
    _block_intervals(iv, "id", cl.logits[test], cl.labels[test], t)
    for ds in ood:
        o = ctx.logits(ds)
        name = ds_name(ds)
        metrics.update({f"{name}/{k}": v for k, v in _block(o.logits, o.labels, t).items()})
        metrics[f"{name}/n"] = len(ds)
        _block_intervals(iv, name, o.logits, o.labels, t)
    before = M.reliability_bins(cl.logits[test].double().softmax(-1), cl.labels[test], N_BINS)
    after = None if t is None else M.reliability_bins((cl.logits[test].double() / t).softmax(-1), cl.labels[test],
                                                      N_BINS)
    files = {}
    if ctx.folder is not None:
        reliability_png(ctx.folder / "reliability.png", before, after,
                        f"{ctx.spec} on {id_set.spec} (test half), "
                        + (f"T = {t:.3f}" if t is not None else "T not identifiable"), note=why)
        files["reliability"] = "reliability.png"
    details = {"convention": {"ece": M.ECE_CONVENTION, "units": "ECE in percent, NLL in nats",
                              "split": f"seeded permutation (seed {ctx.settings.seed}); first half fits T, "
                                       "second half is the ID test set", "fit": "LBFGS on NLL over log T"},
               "temperature_fit": {"identifiable": why is None, "lbfgs_result": fitted, "why": why},
               "reliability": {"before": before, "after": after}}
    if why:
        details["temperature_note"] = why
        details["notes"] = [f"calibration: {why}"]
    return Output(metrics, details, files, intervals=iv)


evaluate.options = {}
evaluate.digits_defaults = lambda data: (data, [f"digits-shift:{s}" for s in
                                               ("rotated", "inverted", "noisy", "blurred", "small", "dark", "style")])
