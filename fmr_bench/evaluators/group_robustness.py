"""``group-robustness``: worst-group and average accuracy (StarFT §4.2).

Datasets with group labels: ``waterbirds:PATH`` (groups = bird x background),
``pacs:PATH`` (domains), ``cifar10.02:PATH`` (data source), ``digits-shift:mixed``.
Zero-shot models are built with the dataset's prompt of StarFT Table 14 ("This is a
picture of a {}." for Waterbirds, "a {}." for PACS and CIFAR-10.02; ``prompt=`` overrides).
Average accuracy is over all samples (as StarFT); the mean of group accuracies is also given.
"""

from __future__ import annotations

import torch

from ..errors import DataError
from ..registry import EVALUATORS
from ..metrics import static as M
from ..metrics.intervals import BASIC, BOOTSTRAP, Intervals, group_intervals
from .base import Context, Output, correct, ds_name


def group_accuracies(pred: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, n_groups: int) -> list[float | None]:
    """Accuracy in percent per group id 0..n_groups-1 (None for an empty group)."""
    out = []
    for g in range(n_groups):
        m = groups == g
        out.append(100.0 * (pred[m] == labels[m]).double().mean().item() if m.any() else None)
    return out


@EVALUATORS.register("group-robustness", help="worst-group and average accuracy from group labels")
def evaluate(ctx: Context, data, ood, prompt: str | None = None) -> Output:
    metrics: dict = {}
    per_group: dict = {}
    iv = Intervals()
    for ds in [*data, *ood]:
        groups = getattr(ds, "groups", None)
        if groups is None:
            raise DataError(f"{ds.spec} has no group labels; use waterbirds:, pacs:, cifar10.02: or digits-shift:mixed")
        template = prompt or getattr(ds, "prompt", None)
        from .ood_detection import clip_templates

        cl = ctx.logits(ds, templates=clip_templates(ctx, template) if template else None)
        pred = cl.logits.argmax(-1)
        accs = group_accuracies(pred, cl.labels, torch.as_tensor(groups), len(ds.group_names))
        name = ds_name(ds)
        present = [a for a in accs if a is not None]
        metrics[f"{name}/worst_group_acc"] = min(present)
        metrics[f"{name}/avg_acc"] = M.accuracy(cl.logits, cl.labels)
        metrics[f"{name}/mean_group_acc"] = sum(present) / len(present)
        metrics[f"{name}/n"] = len(ds)
        iv.share(f"{name}/avg_acc", correct(cl.logits, cl.labels), len(cl.labels))
        for k, interval in group_intervals((pred == cl.labels).numpy(), torch.as_tensor(groups).numpy(),
                                           len(ds.group_names), iv.settings, iv.rng).items():
            iv.put(f"{name}/{k}", interval, BASIC if k == "worst_group_acc" else BOOTSTRAP)
        per_group[name] = {"prompt": template, "groups": [
            {"group": gname, "acc": a, "n": int(sum(1 for g in groups if g == k))}
            for k, (gname, a) in enumerate(zip(ds.group_names, accs))]}
    return Output(metrics, {"per_group": per_group}, intervals=iv)


evaluate.options = {"prompt": "zero-shot template with {} (default: the dataset's, StarFT Table 14)"}
evaluate.digits_defaults = lambda data: (["digits-shift:mixed"], [])
