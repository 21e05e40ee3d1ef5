"""Per-sample outcome of the FMR protocol (one JSONL line per sample)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace
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
        oracle_pred: the oracle's argmax on x-hat (dataset label).
        oracle_conf: the oracle's probability of the true class, p(y), on x-hat.
        oracle_margin: p(y) minus the largest probability of another class, on x-hat.
        oracle_accept: the acceptance rule's verdict on x-hat (always true for a validated
            sample; for one not validated, x-hat is the clean image).
        audit: verdicts of independent judges on x-hat of a validated sample, by judge spec:
            ``{"pred": label, "conf": p(y), "ok": pred == label}`` (see :mod:`fmr_bench.engine.judge`).

    The ``oracle_*`` and ``audit`` fields are ``None`` in lines written before they existed.
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
    oracle_pred: int | None = None
    oracle_conf: float | None = None
    oracle_margin: float | None = None
    oracle_accept: bool | None = None
    # not hashed (a dict); equality still compares it
    audit: dict[str, dict[str, Any]] | None = field(default=None, hash=False)

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
    def from_dict(cls, d: dict[str, Any]) -> SampleOutcome:
        """The outcome of a JSONL line; a missing optional field keeps its default (older lines)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d or f.default is MISSING})

    def verdict(self, judge: str) -> dict[str, Any] | None:
        """The verdict of ``judge`` (an oracle spec) on x-hat, if it has audited this sample."""
        return (self.audit or {}).get(judge)

    def with_verdict(self, judge: str, verdict: dict[str, Any]) -> SampleOutcome:
        """A copy that also holds ``judge``'s verdict (the other judges' stay)."""
        return replace(self, audit={**(self.audit or {}), judge: verdict})

    def key(self) -> tuple:
        """What must agree between two implementations of the loop."""
        return (self.id, self.validated, self.steps, self.final_pred, self.clean_pred, self.oracle_clean)
