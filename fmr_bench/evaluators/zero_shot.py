"""``zero-shot``: zero-shot classification accuracy of CLIP models (StarFT §4.3).

Datasets such as ``cifar10:``, ``cifar100:``, ``caltech101:``, ``stl10:`` (or any
``folder:``); the class head is built from the dataset's class names with the 80 OpenAI
templates (``templates=`` changes them: ``openai``, ``single`` or a template with ``{}``).
"""

from __future__ import annotations

from ..errors import ClassMappingError
from ..registry import EVALUATORS
from ..metrics import static as M
from ..metrics.intervals import BOOTSTRAP, Intervals, mean_of_shares
from .base import Context, Output, class_space, correct, ds_name, is_zero_shot


@EVALUATORS.register("zero-shot", help="zero-shot top-1/top-5 accuracy of CLIP models (OpenAI templates)")
def evaluate(ctx: Context, data, ood, templates: str = "openai") -> Output:
    metrics: dict = {}
    accs = []
    iv = Intervals()
    counts: list[tuple[int, int]] = []
    for ds in [*data, *ood]:
        if not is_zero_shot(ctx.classifier(class_space(ds)[0], templates)[0]):
            raise ClassMappingError(f"{ctx.spec} is not a zero-shot model; zero-shot needs a CLIP model "
                                    "(openclip:ARCH/TAG or builtin:digits-clip)")
        cl = ctx.logits(ds, templates=templates)
        name = ds_name(ds)
        acc = M.accuracy(cl.logits, cl.labels)
        k = min(5, cl.logits.shape[1])
        top5 = 100.0 * (cl.logits.topk(k, -1).indices == cl.labels[:, None]).any(-1).double().mean().item()
        metrics[f"{name}/acc"], metrics[f"{name}/top5"], metrics[f"{name}/n"] = acc, top5, len(ds)
        accs.append(acc)
        counts.append((correct(cl.logits, cl.labels), len(cl.labels)))
        iv.share(f"{name}/acc", *counts[-1])
        iv.share(f"{name}/top5", round(top5 * len(cl.labels) / 100), len(cl.labels))
    metrics["mean_acc"] = sum(accs) / len(accs)
    iv.put("mean_acc", mean_of_shares([k for k, _ in counts], [n for _, n in counts], iv.settings, iv.rng), BOOTSTRAP)
    return Output(metrics, {"templates": templates}, intervals=iv)


evaluate.options = {"templates": "openai (default), single, or a template with {}"}
evaluate.digits_defaults = lambda data: (["digits:test"] + [f"digits-shift:{s}" for s in ("rotated", "style")], [])
