"""The oracle of the digits world: a tiny open_clip model used zero-shot.

The architecture is the open_clip model config ``fmr-digits-clip.json`` beside this
file (a 4-layer ViT with 8x8 patches at 32 px, a 2-layer text transformer with
open_clip's standard 49408-token vocabulary and a context of 16 tokens, 64-d joint
embedding). It is registered with ``open_clip.add_model_config`` and built by
``open_clip.create_model``, the same code path as any open_clip model, so the generic
open_clip oracle can also load it by name once :func:`register_digits_clip` has run.

Zero-shot use::

    model, mean, std, tokenizer = create_digits_clip()
    text = model.encode_text(tokenizer([PROMPT_TEMPLATE.format(c) for c in CLASS_NAMES]))
    image = model.encode_image((x - mean) / std)          # x in [0, 1], (N, 3, 32, 32)
    logits = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import MissingDependencyError, WeightsError

#: open_clip model name; equals the config file's stem, as open_clip names configs by it.
CLIP_MODEL_NAME = "fmr-digits-clip"
CLIP_CONFIG = Path(__file__).resolve().parent / f"{CLIP_MODEL_NAME}.json"
#: Weights file name inside ``WEIGHTS_DIR``.
CLIP_WEIGHTS = "digits-clip.safetensors"
#: Pixel normalisation of the oracle: open_clip's OPENAI_DATASET_MEAN / _STD, which is
#: also what open_clip's own ``create_model_and_transforms`` attaches to this model.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Prompt of the FMR oracle.
PROMPT_TEMPLATE = "an image of {}"


def open_clip_module() -> Any:
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"the digits-world oracle needs open_clip ({e}); run: pip install open_clip_torch"
        ) from None
    return open_clip


@contextlib.contextmanager
def _no_random_init_warning(name: str) -> Iterator[None]:
    """Drop open_clip's "No pretrained weights loaded for model '<name>'" warning, and only it.

    open_clip logs it (to the root logger) whenever ``create_model`` gets no weights of its
    own; our models get theirs from us (from a safetensors file right after, or on purpose
    none at all with ``pretrained=False``), so the line would only be noise on every load.
    """
    line = f"No pretrained weights loaded for model '{name}'"

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(line)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def create_model(name: str, pretrained: str | None = None) -> torch.nn.Module:
    """``open_clip.create_model(name, pretrained=...)`` for one of our own configs, without the
    random-initialisation warning (see :func:`_no_random_init_warning`)."""
    open_clip = open_clip_module()
    with _no_random_init_warning(name):
        return open_clip.create_model(name, pretrained=pretrained)


def register_digits_clip() -> str:
    """Register the ``fmr-digits-clip`` config with open_clip (idempotent).

    Returns:
        The model name to pass to ``open_clip.create_model`` / ``get_tokenizer``.
    """
    open_clip = open_clip_module()
    if CLIP_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CLIP_CONFIG)
    return CLIP_MODEL_NAME


def create_digits_clip(
    pretrained: bool = True,
) -> tuple[torch.nn.Module, tuple[float, ...], tuple[float, ...], Any]:
    """Build the digits-world CLIP oracle.

    Args:
        pretrained: load ``WEIGHTS_DIR/digits-clip.safetensors`` (through open_clip's own
            checkpoint loader, strict); otherwise return the randomly initialised model.

    Returns:
        ``(model, mean, std, tokenizer)``: the open_clip ``CLIP`` model in eval mode (fp32,
        CPU), the pixel mean and std to normalise [0, 1] images with, and open_clip's
        tokenizer for this model (context length 16).

    Raises:
        WeightsError: ``pretrained`` and the weights file is missing.
        MissingDependencyError: open_clip is not installed.
    """
    from . import TRAINING_SCRIPT, WEIGHTS_DIR

    open_clip = open_clip_module()
    name = register_digits_clip()
    weights = WEIGHTS_DIR / CLIP_WEIGHTS
    if pretrained and not weights.is_file():
        raise WeightsError(
            f"digits CLIP oracle weights not found at {weights}; create them with: python {TRAINING_SCRIPT}"
        )
    model = create_model(name, pretrained=str(weights) if pretrained else None)
    tokenizer = open_clip.get_tokenizer(name)
    return model.eval(), CLIP_MEAN, CLIP_STD, tokenizer


@torch.no_grad()
def zero_shot_weights(
    model: torch.nn.Module, tokenizer: Any, class_names: tuple[str, ...] | list[str],
    template: str = PROMPT_TEMPLATE,
) -> torch.Tensor:
    """L2-normalised text embeddings of one prompt per class, shape (C, embed_dim).

    Args:
        model: an open_clip model (e.g. from :func:`create_digits_clip`).
        tokenizer: its tokenizer.
        class_names: class names in label order.
        template: prompt with one ``{}`` for the class name.
    """
    device = next(model.parameters()).device
    tokens = tokenizer([template.format(c) for c in class_names]).to(device)
    return torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
