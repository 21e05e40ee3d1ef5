"""``digits[:SPLIT]`` — the embedded digits world (scikit-learn's digits, 32 px RGB)."""

from __future__ import annotations

from ..errors import SpecError
from ..registry import DATASETS
from .base import TensorImages, WorldDefaults

DIGITS_WORLD = WorldDefaults(generator="vqgan:digits", oracle="builtin:digits-clip", step_size=0.05)


class DigitsImages(TensorImages):
    def __init__(self, split: str) -> None:
        from ..digits import CLASS_NAMES
        from ..digits.data import load_digits_split

        images, labels = load_digits_split(split)
        super().__init__(images, labels.tolist(), CLASS_NAMES, spec=f"digits:{split}", world=DIGITS_WORLD,
                         ids=[f"{split}/{i:04d}" for i in range(len(labels))], label_space="digits")


@DATASETS.register("digits", help="digits[:test|train] — embedded digits world (offline default)", options={})
def build(spec) -> DigitsImages:
    split = spec.ident or "test"
    if split not in ("test", "train"):
        raise SpecError(f"digits has splits test and train (got {split!r}); e.g. --data digits:test")
    return DigitsImages(split)
