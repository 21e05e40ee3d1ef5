"""Class activation maps of the model being fine-tuned, on the ground-truth logit.

ViTs (open_clip and timm): the attention relevance of Chefer et al. (2021) that seed 000
uses: from R = I, every block adds ``mean_heads((∇A ⊙ A)⁺) · R``; the CAM is the CLS row
of R over the patch tokens, max-normalised per image. CNNs: Grad-CAM on the last 4-D
activation. Gradients are taken with :func:`torch.autograd.grad`, so computing a CAM
never touches the ``.grad`` of the parameters being trained.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..models import ImageClassifier


def _explicit_mha(mha: nn.MultiheadAttention, store: list[torch.Tensor]):
    """A forward for ``mha`` that computes the attention matrix in the open and records it."""

    def forward(query, key=None, value=None, need_weights=False, attn_mask=None, **_):
        x = query if mha.batch_first else query.transpose(0, 1)  # (N, L, D)
        n, length, d = x.shape
        h = mha.num_heads
        q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, -1)
        q, k, v = (t.reshape(n, length, h, d // h).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // h)
        if attn_mask is not None:
            scores = scores + attn_mask.to(scores.dtype)
        attn = scores.softmax(-1)
        store.append(attn)
        out = (attn @ v).transpose(1, 2).reshape(n, length, d)
        out = mha.out_proj(out)
        return (out if mha.batch_first else out.transpose(0, 1)), None

    return forward


@contextmanager
def record_attention(visual: nn.Module) -> Iterator[tuple[list[torch.Tensor], int]]:
    """Record every block's (N, heads, L, L) attention; yields (list, number of prefix tokens)."""
    store: list[torch.Tensor] = []
    undo = []
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):  # open_clip
        for block in visual.transformer.resblocks:
            mha = block.attn
            mha.forward = _explicit_mha(mha, store)
            undo.append(lambda m=mha: m.__dict__.pop("forward", None))
        prefix = 1
    else:  # timm VisionTransformer
        for block in visual.blocks:
            attn = block.attn
            old = getattr(attn, "fused_attn", False)
            attn.fused_attn = False
            handle = attn.attn_drop.register_forward_hook(lambda _m, _i, out: store.append(out))
            undo.append(lambda a=attn, o=old, hd=handle: (hd.remove(), setattr(a, "fused_attn", o)))
        prefix = int(getattr(visual, "num_prefix_tokens", 1))
    try:
        yield store, prefix
    finally:
        for u in undo:
            u()


def is_vit(module: nn.Module) -> bool:
    return (hasattr(module, "transformer") and hasattr(module.transformer, "resblocks")) or (
        hasattr(module, "blocks") and hasattr(module, "patch_embed"))


def relevance(attns: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al. rule: R ← R + mean_heads((∇A ⊙ A)⁺) · R from R = I; returns (N, L, L)."""
    n, _, length, _ = attns[0].shape
    r = torch.eye(length, device=attns[0].device, dtype=torch.float32).expand(n, length, length).clone()
    for a, g in zip(attns, grads):
        cam = (g.float() * a.float()).clamp(min=0).mean(1)
        r = r + cam @ r
    return r


def _max_normalise(cam: torch.Tensor) -> torch.Tensor:
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)
    return cam / peak.view(-1, *([1] * (cam.dim() - 1)))


def vit_cam(clf: ImageClassifier, visual: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, gh, gw) relevance of the patches for the logit of ``labels``, max-normalised."""
    with torch.enable_grad(), record_attention(visual) as (attns, prefix):
        logits = clf(x.detach())
        score = logits.gather(1, labels[:, None]).sum()
        grads = torch.autograd.grad(score, attns)
    r = relevance([a.detach() for a in attns], list(grads))
    row = r[:, 0, prefix:]
    side = int(round(math.sqrt(row.shape[1])))
    if side * side != row.shape[1]:
        raise ValueError(f"{row.shape[1]} patch tokens do not form a square grid")
    return _max_normalise(row.clamp(min=0).reshape(-1, side, side))


def grad_cam(clf: ImageClassifier, module: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Grad-CAM on the last 4-D activation inside ``module``: (N, h, w), max-normalised."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out) if torch.is_tensor(out) and out.dim() == 4
                                     and out.requires_grad else None) for m in module.modules()]
    try:
        with torch.enable_grad():
            logits = clf(x.detach())
            if not seen:
                raise ValueError("the model has no 4-D activation to take a Grad-CAM of")
            act = seen[-1]
            score = logits.gather(1, labels[:, None]).sum()
            (grad,) = torch.autograd.grad(score, [act])
    finally:
        for h in hooks:
            h.remove()
    weights = grad.float().mean((2, 3), keepdim=True)
    return _max_normalise(F.relu((weights * act.detach().float()).sum(1)))


def class_activation_map(clf: ImageClassifier, image_module: nn.Module, x: torch.Tensor,
                         labels: torch.Tensor) -> torch.Tensor:
    """The CAM of seed 000: attention relevance for ViTs, Grad-CAM otherwise; (N, gh, gw) in [0, 1].

    Args:
        clf: the classifier being fine-tuned (its current weights).
        image_module: its image encoder (``Parts.image_module()``).
        x: pixels in [0, 1], (N, 3, H, W).
        labels: ground-truth classes in ``clf``'s output space, (N,).
    """
    if is_vit(image_module):
        return vit_cam(clf, image_module, x, labels)
    return grad_cam(clf, image_module, x, labels)
