"""Auditing the digits world: acceptance rules as oracles, and the judge's tally.

The FMR loop asks its oracle for one label per image and accepts the step when that
label is y. :class:`RuleOracle` makes a stricter acceptance rule fit that interface: it
answers the argmax class only when the rule holds for it, and ``-1`` (a class no sample
has) otherwise, so the loop rejects. For the rules below this is exactly "accept iff
the rule holds for y": with ``confidence:T``, T > 0.5, at most one class can reach T;
with ``margin:T``, T > 0, only the argmax class can have a positive margin.

:class:`AuditTally` collects, per finished sample, the outcome and the judge's verdict on
the validated final image, and computes the audit figures of ``scripts/audit_digits_world.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import SettingsError
from ..oracles import Oracle
from ..protocol.outcome import SampleOutcome

#: Label answered when the rule rejects: no dataset label is negative.
REJECT = -1


@dataclass(frozen=True)
class Rule:
    """An acceptance rule: ``kind`` is argmax, confidence or margin; ``tau`` its threshold."""

    kind: str = "argmax"
    tau: float = 0.0

    def __str__(self) -> str:
        return self.kind if self.kind == "argmax" else f"{self.kind}:{self.tau:g}"

    def accepts(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(argmax class, whether the rule holds for it) per row of ``probs`` (N, C)."""
        top2 = probs.topk(min(2, probs.shape[-1]), dim=-1).values
        pred = probs.argmax(-1)
        if self.kind == "argmax":
            return pred, torch.ones_like(pred, dtype=torch.bool)
        if self.kind == "confidence":
            return pred, top2[:, 0] >= self.tau
        margin = top2[:, 0] - (top2[:, 1] if top2.shape[-1] > 1 else 0)
        return pred, margin >= self.tau


def parse_rule(text: str) -> Rule:
    """``argmax``, ``confidence:T`` (0.5 < T <= 1) or ``margin:T`` (0 < T < 1).

    Raises:
        SettingsError: anything else, naming the valid forms.
    """
    kind, _, value = text.strip().partition(":")
    forms = "use argmax, confidence:T (0.5 < T <= 1) or margin:T (0 < T < 1), e.g. margin:0.5"
    if kind == "argmax" and not value:
        return Rule()
    if kind not in ("confidence", "margin") or not value:
        raise SettingsError(f"unknown acceptance rule {text!r}; {forms}")
    try:
        tau = float(value)
    except ValueError:
        raise SettingsError(f"acceptance rule {text!r} needs a number after ':'; {forms}") from None
    ok = 0.5 < tau <= 1 if kind == "confidence" else 0 < tau < 1
    if not ok:
        raise SettingsError(f"threshold of {text!r} out of range; {forms}")
    return Rule(kind, tau)


class RuleOracle(Oracle):
    """An oracle that answers its class only when an acceptance rule holds, else ``REJECT``.

    Args:
        base: the oracle whose members vote.
        rule: the acceptance rule.
        all_agree: apply the rule to each member and accept only when all accept the same
            class; otherwise apply it to the members' averaged probabilities (the paper's
            ensemble, §5.2).
    """

    def __init__(self, base: Oracle, rule: Rule, *, all_agree: bool = False) -> None:
        super().__init__(list(base.members), base.spec, base.prompts)
        self.rule, self.all_agree = rule, all_agree

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if not self.all_agree:
            pred, ok = self.rule.accepts(self(x))
            return torch.where(ok, pred, torch.full_like(pred, REJECT))
        votes = [self.rule.accepts(m(x).float().softmax(-1)) for m in self.members]
        first = votes[0][0]
        ok = torch.stack([v_ok & (v_pred == first) for v_pred, v_ok in votes]).all(0)
        return torch.where(ok, first, torch.full_like(first, REJECT))

    def settings(self) -> dict:
        return {**super().settings(), "rule": str(self.rule), "ensemble": "all-agree" if self.all_agree else "mean"}


@dataclass
class AuditTally:
    """Outcomes and the judge's verdicts on validated final images; the audit's figures."""

    rows: list[tuple[SampleOutcome, int | None]] = field(default_factory=list)

    def add(self, outcome: SampleOutcome, verdict: int | None) -> None:
        """Record one sample; ``verdict`` is the judge's label of x-hat (None if not validated)."""
        if outcome.validated and verdict is None:
            raise ValueError(f"sample {outcome.id} is validated but has no judge verdict")
        self.rows.append((outcome, verdict))

    def metrics(self, sa: float | None) -> dict[str, float | int | None]:
        """Audit figures, in percent.

        Args:
            sa: the run's clean accuracy (percent), for the audited FMR.

        Returns:
            ``n_validated``; ``validity`` (share of validated x-hat the judge labels y);
            ``audited_pa`` (model accuracy on x-hat over judge-confirmed samples);
            ``audited_fmr`` (100 * audited_pa / sa); ``fooled_agree`` (among validated x-hat
            the model gets wrong, share where the judge gives the model's label).
        """
        validated = [(o, v) for o, v in self.rows if o.validated]
        confirmed = [o for o, v in validated if v == o.label]
        wrong = [(o, v) for o, v in validated if not o.final_correct]

        def pct(a: int, b: int) -> float | None:
            return 100.0 * a / b if b else None

        audited_pa = pct(sum(o.final_correct for o in confirmed), len(confirmed))
        return {
            "n_validated": len(validated),
            "validity": pct(len(confirmed), len(validated)),
            "audited_pa": audited_pa,
            "audited_fmr": 100.0 * audited_pa / sa if audited_pa is not None and sa else None,
            # The judge answers in dataset labels; the model's label is an output index, so
            # compare through the sample's own label <-> target pair only when they coincide.
            "fooled_agree": pct(sum(v == o.final_pred for o, v in wrong if o.label == o.target), len(wrong)),
        }
