"""Per-sample outcome of the FMR protocol (one JSONL line per sample)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SampleOutcome:
    """What happened to one image.

    Attributes:
        id: stable sample id (relative file path, or ``split/index``).
        index: position in the dataset.
        label: true class (dataset label).
        target: the model output that stands for ``label``.
        clean_pred: the model's argmax on the clean image (model output index).
        oracle_clean: the oracle's prediction on the clean image (dataset label).
        validated: the oracle kept the true class after the first step.
        steps: accepted perturbation steps (0 when not validated).
        final_pred: the model's argmax on the final image x-hat (the clean image if not validated).
    """

    id: str
    index: int
    label: int
    target: int
    clean_pred: int
    oracle_clean: int
    validated: bool
    steps: int
    final_pred: int

    @property
    def clean_correct(self) -> bool:
        return self.clean_pred == self.target

    @property
    def final_correct(self) -> bool:
        return self.final_pred == self.target

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clean_correct"] = self.clean_correct
        d["final_correct"] = self.final_correct
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SampleOutcome":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def key(self) -> tuple:
        """What must agree between two implementations of the loop."""
        return (self.id, self.validated, self.steps, self.final_pred, self.clean_pred, self.oracle_clean)
