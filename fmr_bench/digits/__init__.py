"""The digits world: a complete, offline FMR setting with tiny weights we ship.

scikit-learn's bundled handwritten digits (coloured, 32x32 RGB), three evaluated
classifiers of different robustness, a tiny VQGAN generator (card
``generators/vqgan-digits.json``) and a tiny open_clip model as zero-shot oracle. All
weights are trained by ``scripts/train_digits_world.py`` and live in :data:`WEIGHTS_DIR`
(``TRAINING.md`` there records how and how well).

Evaluated models take ``(x - MEAN) / STD`` for pixels ``x`` in [0, 1]; the oracle uses its
own mean/std, returned by :func:`create_digits_clip`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import SpecError, WeightsError
from ..weights import load_state_strict
from .clip import CLIP_MEAN, CLIP_MODEL_NAME, CLIP_STD, CLIP_WEIGHTS, PROMPT_TEMPLATE, create_digits_clip
from .images import augment, load_digits_split
from .nets import DigitsCNN, DigitsMLP

#: Folder of the shipped weights (safetensors) and their TRAINING.md.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: Class names, in label order; the oracle is queried with "an image of {name}".
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Side length of the images, in pixels.
IMAGE_SIZE = 32
#: Normalisation of the evaluated digit nets (channel mean/std of the train split).
MEAN = (0.655, 0.657, 0.656)
STD = (0.233, 0.233, 0.231)
#: Training script that writes every file of WEIGHTS_DIR.
TRAINING_SCRIPT = "scripts/train_digits_world.py"


@dataclass(frozen=True)
class DigitsModelCard:
    """An evaluated model of the digits world.

    Attributes:
        name: model name (``builtin:<name>``).
        arch: constructor of the untrained network.
        weights: file name of its weights in :data:`WEIGHTS_DIR`.
        description: one line on how it was trained.
        script: the script that writes its weights.
    """

    name: str
    arch: Callable[[], nn.Module]
    weights: str
    description: str
    script: str = TRAINING_SCRIPT

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / self.weights


MODEL_CARDS: dict[str, DigitsModelCard] = {
    card.name: card
    for card in (
        DigitsModelCard(
            "digits-cnn", DigitsCNN, "digits-cnn.safetensors",
            "small VGG-style CNN (3 blocks, 16-32-64 channels) trained on the clean train split "
            "with light augmentation",
        ),
        DigitsModelCard(
            "digits-mlp", DigitsMLP, "digits-mlp.safetensors",
            "two-hidden-layer MLP (128 units) on flattened pixels, trained without augmentation; "
            "expected to be the least robust",
        ),
        DigitsModelCard(
            "digits-cnn-aug", DigitsCNN, "digits-cnn-aug.safetensors",
            "same CNN trained with heavy augmentation and VQGAN reconstructions / decodes of "
            "perturbed VQGAN latents; expected to be the most robust",
        ),
        DigitsModelCard(
            "digits-cnn-gray", DigitsCNN, "digits-cnn-gray.safetensors",
            "same CNN and recipe as digits-cnn, trained on the BT.601 luminance of its inputs "
            "(seed 002 App. H); builtin:digits-cnn-gray feeds it luminance",
            script="scripts/train_digits_gray.py",
        ),
    )
}


def load_digits_model(name: str, pretrained: bool = True) -> nn.Module:
    """Build an evaluated digits model, in eval mode, with its shipped weights.

    Args:
        name: one of :data:`MODEL_CARDS` (``digits-cnn``, ``digits-mlp``, ``digits-cnn-aug``).
        pretrained: load the shipped weights (stored as fp16, loaded as fp32); otherwise
            keep the random initialisation.

    Returns:
        The network; it expects ``(x - MEAN) / STD`` and returns (N, 10) logits.

    Raises:
        SpecError: unknown name.
        WeightsError: the weights file is missing or does not fit.
    """
    card = MODEL_CARDS.get(name)
    if card is None:
        raise SpecError(f"unknown digits model {name!r}; valid names: {', '.join(MODEL_CARDS)}")
    model = card.arch()
    if pretrained:
        path = card.weights_path
        if not path.is_file():
            raise WeightsError(
                f"weights of {name} not found at {path}; create them with: python {card.script}"
            )
        from safetensors.torch import load_file

        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        load_state_strict(model, state, what=f"{path} does not fit {name}",
                          fix=f"re-create it with: python {card.script}")
    return model.eval()


__all__ = [
    "CLASS_NAMES",
    "CLIP_MEAN",
    "CLIP_MODEL_NAME",
    "CLIP_STD",
    "CLIP_WEIGHTS",
    "IMAGE_SIZE",
    "MEAN",
    "MODEL_CARDS",
    "PROMPT_TEMPLATE",
    "STD",
    "TRAINING_SCRIPT",
    "WEIGHTS_DIR",
    "DigitsCNN",
    "DigitsMLP",
    "DigitsModelCard",
    "augment",
    "create_digits_clip",
    "load_digits_model",
    "load_digits_split",
]
