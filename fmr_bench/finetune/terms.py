"""Named loss terms: the pieces a method is a weighted sum of.

A term is a function ``term(ctx) -> scalar tensor`` of a :class:`StepContext` (the batch,
the student and its parts, frozen teachers, the RNGs of the run). Terms share work
through ``ctx.cache`` (the student's features of the clean batch are computed once).
Add a term with ``@TERMS.register("name")``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..models import ImageClassifier
from ..registry import Registry
from . import losses
from .adapters import Parts
from .cam import class_activation_map
from .settings import FinetuneSettings
from .masking import fill, patch_mask

TERMS: Registry = Registry("loss term")


@dataclass
class StepContext:
    """Everything a loss term may read during one training step."""

    x: torch.Tensor  # pixels in [0, 1] (N, 3, H, W), or cached features in a feature stage
    y: torch.Tensor
    clf: ImageClassifier
    parts: Parts
    settings: FinetuneSettings
    class_names: list[str]
    epoch: int
    epochs: int
    step: int
    generator: torch.Generator  # masks and fills (saved in checkpoints)
    rng: random.Random  # captions (saved in checkpoints)
    teachers: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # method-level objects (caption sampler...)
    cache: dict[str, Any] = field(default_factory=dict)

    def student_features(self) -> torch.Tensor:
        if "feats" not in self.cache:
            self.cache["feats"] = self.parts.features(self.x)
        return self.cache["feats"]


@TERMS.register("ce")
def ce(ctx: StepContext) -> torch.Tensor:
    """Cross-entropy of the head on the student's features (FT: head initialised zero-shot)."""
    return F.cross_entropy(ctx.parts.head(ctx.student_features()), ctx.y, label_smoothing=ctx.settings.label_smoothing)


@TERMS.register("ce_features")
def ce_features(ctx: StepContext) -> torch.Tensor:
    """Cross-entropy of the head on cached, frozen features (LP)."""
    return F.cross_entropy(ctx.parts.head(ctx.x), ctx.y, label_smoothing=ctx.settings.label_smoothing)


def _captions(ctx: StepContext) -> list[str]:
    return [ctx.settings.caption.format(ctx.class_names[int(c)].replace("_", " ")) for c in ctx.y]


@TERMS.register("clip")
def clip(ctx: StepContext) -> torch.Tensor:
    """FLYP: CLIP's contrastive loss between images and their class captions, learned temperature."""
    text = ctx.parts.encode_text(_captions(ctx))
    ctx.cache["scale"] = ctx.parts.logit_scale()
    return losses.clip_contrastive(ctx.student_features(), text, ctx.cache["scale"])


@TERMS.register("star")
def star(ctx: StepContext) -> torch.Tensor:
    """StarFT: KL(teacher ‖ student) over one spurious caption per image, same-class pairs masked."""
    captions = ctx.extras["captions"]([ctx.class_names[int(c)] for c in ctx.y], ctx.rng)
    teacher = ctx.teachers["pretrained"]
    with torch.no_grad():
        t_img = teacher.features(ctx.x)
        t_txt = teacher.encode_text(captions)
        scale = teacher.logit_scale()  # both sides: the frozen original model's scale
    s_txt = ctx.parts.encode_text(captions)
    return losses.star_kl(ctx.student_features(), s_txt, t_img, t_txt, ctx.y, scale, mask=ctx.settings.star_mask)


def counterfactual(ctx: StepContext) -> torch.Tensor:
    """The masked-and-refilled images of the batch (seed 000 §3.2)."""
    s = ctx.settings
    cam = None
    if s.mask != "random":
        was = ctx.clf.training
        ctx.clf.eval()  # CAM of the current weights without dropout noise
        try:
            cam = class_activation_map(ctx.clf, ctx.parts.image_module(), ctx.x, ctx.y)
        finally:
            ctx.clf.train(was)
        if s.mask_patch:
            cam = F.adaptive_max_pool2d(cam[:, None], s.mask_patch)[:, 0] if cam.shape[-1] > s.mask_patch else \
                F.interpolate(cam[:, None], size=(s.mask_patch,) * 2, mode="nearest")[:, 0]
    if cam is not None:
        grid = tuple(cam.shape[1:])
    else:  # random masks: the ViT's own patches, else a K x K grid (--mask-patch, default 7 as ViT-B/32 at 224)
        grid = (s.mask_patch,) * 2 if s.mask_patch else (ctx.parts.patch_grid() or (7, 7))
    mask = patch_mask(s.mask, cam, threshold=s.mask_threshold, rate=s.mask_rate, grid=grid, n=len(ctx.x),
                      generator=ctx.generator)
    ctx.cache["mask_rate"] = float(mask.float().mean())
    return fill(ctx.x, mask, s.fill, generator=ctx.generator)


@TERMS.register("feature_mse")
def feature_mse(ctx: StepContext) -> torch.Tensor:
    """MSE between the frozen pre-trained encoder's and the student's features of the counterfactual."""
    x_cf = counterfactual(ctx)
    with torch.no_grad():
        target = ctx.teachers["pretrained"].features(x_cf)
    return losses.feature_mse(target, ctx.parts.features(x_cf))


@TERMS.register("wise_kd")
def wise_kd(ctx: StepContext) -> torch.Tensor:
    """WiSE-KD (seed 000 App. A.3): KD towards the WiSE-FT mix of the pre-trained and a fine-tuned model."""
    teacher = ctx.teachers["wise"]
    with torch.no_grad():
        t_logits = teacher.clf(ctx.x)
    s_logits = ctx.parts.head(ctx.student_features())
    return losses.distill_kl(s_logits, t_logits, ctx.settings.wise_kd_temperature)
