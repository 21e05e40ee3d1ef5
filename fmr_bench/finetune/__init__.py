"""Robust fine-tuning as a library (SPEC §3): pieces for any PyTorch loop, and a complete run.

Pieces::

    from fmr_bench.finetune import losses, cam, masking, wise
    losses.clip_contrastive(img, txt, scale)          # FLYP
    losses.star_kl(s_img, s_txt, t_img, t_txt, y, scale)   # StarFT regulariser
    cam.class_activation_map(clf, parts.image_module(), x, y)  # seed 000 CAM
    masking.fill(x, masking.patch_mask("object", cam, threshold=0.3), "multi")
    wise.wise_ft(zero_shot, fine_tuned, alpha=0.5); wise.uniform_soup([a, b, c])

A whole run (``fmr finetune`` calls this)::

    from fmr_bench.finetune import finetune, EvalCallback
    res = finetune("builtin:digits-clip", "digits:train", method="starft", preset="digits", out="runs/ft",
                   callbacks=[EvalCallback("fmr", "digits", limit=32, budget=10)])

See docs/finetune.md.
"""

from __future__ import annotations

from .adapters import PARTS, Parts, parts_of
from .callbacks import Callback, EvalCallback
from .settings import PRESETS, FinetuneSettings, make_settings
from .train_data import ConcatImages, load_train_data
from .methods import METHODS, Method, Stage, build_method
from .terms import TERMS, StepContext
from .trainer import FinetuneResult, Trainer, finetune
from .wise import mix_states, uniform_soup, wise_ft

__all__ = ["finetune", "Trainer", "FinetuneResult", "FinetuneSettings", "make_settings", "PRESETS", "METHODS",
           "Method", "Stage", "TERMS", "StepContext", "Callback", "EvalCallback", "Parts", "PARTS", "parts_of",
           "wise_ft", "uniform_soup", "mix_states", "load_train_data", "ConcatImages"]
