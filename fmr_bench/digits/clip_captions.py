"""The captioned digits CLIP: a zero-shot model that reads digits *and* scene descriptors.

``builtin:digits-clip`` (the FMR oracle) was trained on captions that only name the digit,
so its text tower cannot tell "a three on a red background" from "a three". Robust
fine-tuning methods that talk to the text tower about spurious features (StarFT) need a
CLIP that can, as a web-scale CLIP knows "on water" or "in a forest". This model is
trained by ``scripts/train_digits_captions_clip.py`` on digits drawn on uniformly random
backgrounds, inks, textures and qualities (:mod:`fmr_bench.digits.scenes`), with
captions that name a random subset of them ("a photo of a three in white ink on a
striped red background"), and on plain digits-world images captioned by their digit.

Architecture: the open_clip config ``fmr-digits-clip-captions.json`` beside this file:
the oracle's towers (4-layer ViT, 2-layer 32-wide text transformer) with a 24-token
context; training starts from the oracle's weights.

Storage: open_clip's tokenizer has 49,408 tokens but the captions use about a hundred;
the training script keeps the other rows of the token embedding at zero, and the
weights file stores only the used rows (``token_embedding.rows`` with their ids in
``token_embedding.ids``), so the fp16 file stays well under 1 MB. :func:`expand_state`
restores the full, identical state dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from .clip import CLIP_MEAN, CLIP_STD, open_clip_module, create_model

CAPTIONS_MODEL_NAME = "fmr-digits-clip-captions"
CAPTIONS_CONFIG = Path(__file__).resolve().parent / f"{CAPTIONS_MODEL_NAME}.json"
CAPTIONS_WEIGHTS = "digits-clip-captions.safetensors"
CAPTIONS_SCRIPT = "scripts/train_digits_captions_clip.py"
#: Zero-shot prompt of the captioned model (its most frequent class-only caption).
CAPTIONS_PROMPT = "a photo of a {}"
_ROWS, _IDS, _FULL = "token_embedding.rows", "token_embedding.ids", "token_embedding.weight"


def register_captions_clip() -> str:
    """Register the ``fmr-digits-clip-captions`` config with open_clip (idempotent)."""
    open_clip = open_clip_module()
    if CAPTIONS_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CAPTIONS_CONFIG)
    return CAPTIONS_MODEL_NAME


def compact_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fp16 state dict with only the non-zero rows of the token embedding (see module doc)."""
    state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous()
             for k, v in model.state_dict().items()}
    full = state.pop(_FULL)
    ids = torch.nonzero(full.abs().sum(1) > 0).flatten()
    state[_IDS] = ids.to(torch.int32).contiguous()
    state[_ROWS] = full[ids].contiguous()
    return state


def expand_state(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Inverse of :func:`compact_state`, as fp32 (rows not stored are zero)."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if _ROWS in state:
        rows, ids = state.pop(_ROWS), state.pop(_IDS).long()
        if len(ids) and int(ids.max()) >= vocab_size:
            raise WeightsError(f"token id {int(ids.max())} is outside the vocabulary ({vocab_size})")
        full = torch.zeros(vocab_size, rows.shape[1])
        full[ids] = rows
        state[_FULL] = full
    return state


def create_digits_clip_captions(
    pretrained: bool = True, weights: str | Path | None = None,
) -> tuple[torch.nn.Module, tuple[float, ...], tuple[float, ...], Any]:
    """Build the captioned digits CLIP.

    Args:
        pretrained: load the shipped weights; otherwise return the random initialisation.
        weights: another weights file in the same (compact or full) format.

    Returns:
        ``(model, mean, std, tokenizer)`` as :func:`fmr_bench.digits.clip.create_digits_clip`.

    Raises:
        WeightsError: the weights file is missing or does not fit the architecture.
    """
    from . import WEIGHTS_DIR

    open_clip = open_clip_module()
    name = register_captions_clip()
    model = create_model(name, pretrained=None)
    path = Path(weights) if weights is not None else WEIGHTS_DIR / CAPTIONS_WEIGHTS
    if pretrained or weights is not None:
        if not path.is_file():
            raise WeightsError(f"captioned digits CLIP weights not found at {path}; "
                               f"create them with: python {CAPTIONS_SCRIPT}")
        from safetensors.torch import load_file

        try:
            state = expand_state(load_file(str(path)), model.token_embedding.num_embeddings)
            model.load_state_dict(state, strict=True)
        except Exception as e:  # safetensors' own error type, or a shape mismatch
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise WeightsError(f"{path} does not fit {name} ({first}); "
                               f"re-create it with: python {CAPTIONS_SCRIPT}") from None
    return model.eval(), CLIP_MEAN, CLIP_STD, open_clip.get_tokenizer(name)
