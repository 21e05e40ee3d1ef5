"""Loss kernels of the fine-tuning methods: pure functions of tensors.

Each is checked in the tests against a direct re-computation of its formula. The named,
weighted terms that methods are made of (:mod:`fmr_bench.finetune.terms`) call these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_contrastive(image_feats: torch.Tensor, text_feats: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's symmetric InfoNCE (FLYP): pair i of the batch is image i with caption i.

    ``(CE(s·x·tᵀ, arange) + CE(s·t·xᵀ, arange)) / 2`` on L2-normalised features.
    """
    x = F.normalize(image_feats, dim=-1)
    t = F.normalize(text_feats, dim=-1)
    logits = scale * x @ t.t()
    target = torch.arange(len(x), device=x.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def same_class_mask(labels: torch.Tensor) -> torch.Tensor:
    """(N, N) True where captions j and image i share a class (the diagonal included)."""
    return labels[:, None] == labels[None, :]


def star_kl(student_img: torch.Tensor, student_txt: torch.Tensor, teacher_img: torch.Tensor,
            teacher_txt: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | float, *,
            mask: bool = True) -> torch.Tensor:
    """StarFT regulariser (seed 001 Eq. 2-3): mean over images of KL(q̃ᵢ ‖ qᵢ).

    qᵢ is the softmax over the spurious captions j of ``scale · xᵢ·sⱼ`` (student), q̃ᵢ the
    same for the frozen teacher; with ``mask`` the pairs of the same class (i itself
    included) are left out of both softmaxes. Rows with no caption of another class add
    nothing (their KL is undefined) and are left out of the mean; if every row is such
    a row the loss is 0.
    """
    s = scale * F.normalize(student_img, dim=-1) @ F.normalize(student_txt, dim=-1).t()
    t = scale * F.normalize(teacher_img, dim=-1) @ F.normalize(teacher_txt, dim=-1).t()
    if not mask:
        return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True)
    keep = ~same_class_mask(labels)
    rows = keep.any(1)
    if not rows.any():
        return s.sum() * 0.0
    s, t, keep = s[rows], t[rows], keep[rows]
    neg = torch.finfo(s.dtype).min
    log_q = F.log_softmax(s.masked_fill(~keep, neg), -1)
    log_qt = F.log_softmax(t.masked_fill(~keep, neg), -1)
    kl = (log_qt.exp() * (log_qt - log_q)).masked_fill(~keep, 0.0).sum(-1)
    return kl.mean()


def feature_mse(teacher_feats: torch.Tensor, student_feats: torch.Tensor) -> torch.Tensor:
    """MSE(f̂(x_cf), f(x_cf)) of seed 000 Eq. 2, mean over batch and feature dims."""
    return F.mse_loss(student_feats, teacher_feats.detach())


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 10.0) -> torch.Tensor:
    """Hinton KD: KL(softmax(t/T) ‖ softmax(s/T)) · T², batch mean (WiSE-KD, seed 000 App. A.3)."""
    T = temperature
    return F.kl_div(F.log_softmax(student_logits / T, -1), F.log_softmax(teacher_logits.detach() / T, -1),
                    reduction="batchmean", log_target=True) * T * T
