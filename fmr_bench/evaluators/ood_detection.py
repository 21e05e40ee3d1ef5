"""``ood-detection``: can the model tell in-distribution images from OOD images?

Scores: MSP (max softmax), MaxLogit, Energy (``logsumexp``), and for CLIP zero-shot
models MCM (Ming et al. 2022): ``max softmax(cos / T)``, T = 1, over the class prompts
"a photo of a {c}". Metrics: AUROC, AUPR-In, AUPR-Out, FPR@95, in percent, with the
convention of :data:`fmr_bench.metrics.static.OOD_CONVENTION` (ID positive, higher
score = more ID; FPR@95 = OOD accepted at 95 % ID acceptance) written into the record.
OOD sets: ``inaturalist:``, ``sun:``, ``places:``, ``textures:``, ``imagenet-o:``,
``ninco:`` or any ``ood:PATH``.
"""

from __future__ import annotations

from ..errors import DataError, SettingsError
from ..registry import EVALUATORS
from ..metrics import static as M
from ..metrics.intervals import BOOTSTRAP, Intervals, detection_intervals
from .base import Context, Output, correct, ds_name, is_zero_shot

MCM_TEMPLATE = "a photo of a {}"
SCORES = ("msp", "maxlogit", "energy", "mcm")


def clip_templates(ctx: Context, templates: str) -> str | None:
    """Templates to build the model with, when the spec names a CLIP zero-shot model."""
    spec = ctx.spec
    return templates if spec.startswith("openclip:") or spec.split("?")[0] == "builtin:digits-clip" else None


def logit_scale(model) -> float:
    clip = model.net.clip
    return float(clip.logit_scale.detach().exp()) if hasattr(clip, "logit_scale") else 100.0


def score(name: str, logits, model, temperature: float = 1.0):
    if name == "msp":
        return M.msp(logits)
    if name == "maxlogit":
        return M.max_logit(logits)
    if name == "energy":
        return M.energy(logits)
    if name == "mcm":
        return M.mcm(logits / logit_scale(model), temperature)
    raise SettingsError(f"unknown OOD score {name!r}; use some of {', '.join(SCORES)}")


@EVALUATORS.register("ood-detection", help="OOD detection: MSP, MaxLogit, Energy, MCM; AUROC, AUPR-In/Out, FPR@95")
def evaluate(ctx: Context, data, ood, scores: str | None = None, temperature: float = 1.0,
             fpr_rule: str = "top") -> Output:
    if not ood:
        raise SettingsError("ood-detection needs OOD sets; pass --ood textures:PATH (repeatable)")
    id_set = data[0]
    templates = clip_templates(ctx, MCM_TEMPLATE)
    id_cl = ctx.logits(id_set, templates=templates)
    clip = is_zero_shot(id_cl.model)
    names = [s.strip() for s in scores.split(",")] if scores else [*SCORES[:3], *(["mcm"] if clip else [])]
    for s in names:
        if s not in SCORES:
            raise SettingsError(f"unknown OOD score {s!r}; use some of {', '.join(SCORES)}")
    if "mcm" in names and not clip:
        raise SettingsError(f"MCM needs a CLIP zero-shot model (cosine similarities to class prompts) and {ctx.spec} "
                            "is not one; use scores=msp,maxlogit,energy or an openclip: model")
    raw = temperature
    try:
        temperature = float(temperature)
    except ValueError:
        temperature = -1.0
    if not 0 < temperature < float("inf"):
        raise SettingsError(f"MCM temperature must be a number > 0 (got {raw!r}); pass e.g. --option temperature=1")
    if fpr_rule not in M.FPR_RULES:
        raise SettingsError(f"unknown fpr_rule {fpr_rule!r}; use --option fpr_rule=top (default) or "
                            "fpr_rule=mcm (the MCM paper's code)")
    metrics: dict = {"id_acc": M.accuracy(id_cl.logits, id_cl.labels), "id/n": len(id_set)}
    iv = Intervals()
    iv.share("id_acc", correct(id_cl.logits, id_cl.labels), len(id_cl.labels))
    id_scores = {s: score(s, id_cl.logits, id_cl.model, temperature) for s in names}
    per: dict[str, dict[str, list[float]]] = {s: {} for s in names}
    for ds in ood:
        if len(ds) == 0:
            raise DataError(f"OOD set {ds.spec} is empty; point it at a folder of images")
        cl = ctx.logits(ds, space_of=id_set, templates=templates)
        name = ds_name(ds)
        metrics[f"{name}/n"] = len(ds)
        for s in names:
            ood_scores = score(s, cl.logits, cl.model, temperature)
            for k, v in M.detection_metrics(id_scores[s], ood_scores, fpr_rule).items():
                metrics[f"{s}/{name}/{k}"] = v
                per[s].setdefault(k, []).append(v)
            found = detection_intervals(id_scores[s].numpy(), ood_scores.numpy(), iv.settings, iv.rng)
            if fpr_rule != "top":  # the interval kernel follows the default threshold rule only
                found.pop("fpr_at_95")
            for k, interval in found.items():
                iv.put(f"{s}/{name}/{k}", interval, BOOTSTRAP)
    for s in names:
        for k, vs in per[s].items():
            metrics[f"{s}/avg/{k}"] = sum(vs) / len(vs)
    details = {"convention": {**M.OOD_CONVENTION, "fpr_rule": fpr_rule, "fpr_rule_means": M.FPR_RULES[fpr_rule]},
               "scores": names,
               "mcm": {"template": MCM_TEMPLATE, "temperature": temperature} if "mcm" in names else None,
               "templates": templates}
    return Output(metrics, details, intervals=iv)


evaluate.options = {"scores": f"comma list of {', '.join(SCORES)} (default: all that apply)",
                    "temperature": "MCM temperature T (default 1)",
                    "fpr_rule": "FPR@95 threshold: top (default, as scikit-learn's roc_curve) or mcm (the MCM "
                                "paper's code: bottom of the gap between ID scores)"}
evaluate.digits_defaults = lambda data: (data, ["digits-ood:noise", "digits-ood:textures"])
