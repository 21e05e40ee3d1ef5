"""Audit: an independent judge looks at every validated perturbed image x-hat.

The FMR protocol trusts its oracle: a validated x-hat is supposed to still show class y,
so that the evaluated model's mistake on it is the model's fault. An audit checks that
premise with a second classifier, the *judge* (any oracle spec or ``+`` ensemble, e.g. a
larger CLIP for ImageNet, ``builtin:digits-judge`` in the digits world), which labels
each validated x-hat; it says ``ok`` when its argmax is y.

Auditing never changes the perturbation: the judge is not part of the run's identity, its
verdicts are added to the samples' JSONL lines (``audit`` field, by judge spec) and the
audited metrics (:func:`fmr_bench.metrics.fmr.audit_metrics`) to the record. Samples that
finished without a verdict of this judge (a run audited later, an interrupted audit) get
their x-hat generated again with the run's own settings; a regenerated sample whose
outcome differs from the recorded one is left unaudited and counted (``n_unreproduced``).
``fmr audit`` (:mod:`fmr_bench.studies.audit`) audits a finished run or an export folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..errors import ClassMappingError
from ..metrics.fmr import audit_metrics
from ..oracles import Oracle, load_oracle, oracle_weight_refs
from ..oracles.acceptance import decide
from ..protocol.outcome import SampleOutcome

#: Called with (outcome, clean image, x-hat).
OnImages = Callable[[SampleOutcome, torch.Tensor, torch.Tensor], None]
#: ``regenerate(pending, hook)`` runs the run's loop again over the ``pending`` outcomes'
#: samples and calls ``hook(new_outcome, clean, x_hat)`` for each.
Regenerate = Callable[[list[SampleOutcome], OnImages], None]


@dataclass
class Audit:
    """A judge and what it has done in this call.

    Attributes:
        judge: the judge, an :class:`Oracle` (its members' probabilities are averaged).
        spec: the judge's spec, the key of its verdicts in samples.jsonl.
        n_regenerated: samples whose x-hat was generated again to be audited.
        unreproduced: ids of samples whose regenerated outcome differed from the recorded one.
    """

    judge: Oracle
    spec: str
    n_regenerated: int = 0
    unreproduced: list[str] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def load(cls, spec: str, class_names: Sequence[str], *, pretrained: bool = True) -> "Audit":
        """The judge named by an oracle spec (``openclip:...``, ``builtin:...``, ``A+B``).

        Raises:
            ClassMappingError: the judge does not score exactly the dataset's classes.
        """
        audit = cls(load_oracle(spec, class_names, pretrained=pretrained).eval(), spec)
        with torch.no_grad():  # the judge resizes to its own input size: any probe size will do
            n_out = audit.judge.member_probs(torch.zeros(1, 3, 32, 32)).shape[-1]
        if n_out != len(class_names):
            raise ClassMappingError(f"judge {spec} scores {n_out} classes but the dataset has {len(class_names)}; "
                                    "pass a judge for this dataset's classes (e.g. an openclip: zero-shot spec)")
        return audit

    @staticmethod
    def weight_refs(spec: str):
        return oracle_weight_refs(spec)

    def to(self, device: torch.device) -> "Audit":
        self.judge, self.device = self.judge.to(device), torch.device(device)
        return self

    def verdicts(self, images: torch.Tensor, labels: Sequence[int]) -> list[dict[str, Any]]:
        """The judge's ``{"pred", "conf", "ok"}`` on a batch of images (N, 3, H, W) in [0, 1]."""
        with torch.no_grad():
            v = decide("argmax", self.judge.member_probs(images.to(self.device).float()), torch.tensor(list(labels)))
        return [{"pred": int(v.pred[i]), "conf": float(v.confidence[i]), "ok": bool(v.accepted[i])}
                for i in range(len(labels))]

    def annotate(self, outcome: SampleOutcome, x_hat: torch.Tensor) -> SampleOutcome:
        """``outcome`` with the judge's verdict on ``x_hat`` (unchanged if not validated)."""
        if not outcome.validated:
            return outcome
        return outcome.with_verdict(self.spec, self.verdicts(x_hat[None], [outcome.label])[0])

    def pending(self, outcomes: Sequence[SampleOutcome]) -> list[SampleOutcome]:
        """Validated outcomes this judge has not audited yet."""
        return [o for o in outcomes if o.validated and o.verdict(self.spec) is None]

    def complete(self, outcomes: Sequence[SampleOutcome], regenerate: Regenerate, save: OnImages) -> None:
        """Audit the pending ``outcomes``: generate their x-hat again and ``save`` each annotated one."""
        pending = self.pending(outcomes)
        if not pending:
            return
        expected = {o.id: o for o in pending}

        def hook(new: SampleOutcome, clean: torch.Tensor, x_hat: torch.Tensor) -> None:
            old = expected[new.id]
            if new.key() != old.key():
                self.unreproduced.append(old.id)
                return
            self.n_regenerated += 1
            save(self.annotate(old, x_hat), clean, x_hat)  # the recorded outcome, with the verdict added

        regenerate(pending, hook)

    def describe(self, outcomes: Sequence[SampleOutcome]) -> dict[str, Any]:
        """The record's ``audit`` section: the judge, counts, and the audited metrics."""
        return {"judge": {**self.judge.settings(), "rule": "argmax"}, "metrics": audit_metrics(outcomes, self.spec),
                "n_pending": len(self.pending(outcomes)), "n_regenerated": self.n_regenerated,
                "n_unreproduced": len(self.unreproduced), "unreproduced": self.unreproduced[:20]}
