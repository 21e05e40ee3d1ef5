"""The tally of ``scripts/audit_digits_world.py``: the judge's verdicts and what they imply.

:class:`AuditTally` collects, per finished sample, the outcome and the judge's verdict on
the validated final image, and computes the audit figures of ``scripts/audit_digits_world.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol.outcome import SampleOutcome


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
