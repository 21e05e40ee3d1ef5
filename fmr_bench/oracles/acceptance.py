"""Acceptance rules: when the oracle counts an image as still showing its true class y.

A rule is a named setting (``--accept RULE``, :attr:`fmr_bench.config.FmrSettings.accept`)
and part of a run's identity. Every rule is decided by one pure function,
:func:`decide`, over the oracle's class probabilities, shared by the batched loop and the
one-image reference loop.

Rules (``p`` = the oracle's probabilities, averaged over the members of an ensemble):

* ``argmax`` — ``argmax_c p(c) = y``: the paper's rule (FMR §3, Algorithm 1).
* ``confidence:τ`` — ``p(y) ≥ τ``, τ in [0, 1].
* ``margin:τ`` — ``p(y) − max_{c≠y} p(c) ≥ τ``, τ in [0, 1]; ``margin:0`` is ``argmax``
  except that a tie counts as accepted.
* ``all-agree`` — every member of an ensemble has argmax y (for a single oracle it is
  ``argmax``); the paper's §5.2 ensembles average probabilities instead, which is what
  the other rules see.
* ``RULE+RULE`` — all of the rules hold, e.g. ``all-agree+margin:0.2``.

``argmax`` returns the first of tied maxima (``torch.argmax``), so a tie with a lower
class index rejects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import SettingsError
from ..registry import Registry

#: The paper's rule; the default of every world that does not name another.
DEFAULT_RULE = "argmax"


@dataclass(frozen=True)
class Verdict:
    """The oracle's decision on a batch of N images.

    Attributes:
        accepted: (N,) bool, the rule's verdict.
        pred: (N,) the argmax of the (averaged) probabilities, a dataset label.
        confidence: (N,) p(y).
        margin: (N,) p(y) − max over the other classes.
    """

    accepted: torch.Tensor
    pred: torch.Tensor
    confidence: torch.Tensor
    margin: torch.Tensor

    def row(self, i: int) -> dict:
        """Sample ``i`` as the ``oracle_*`` fields of :class:`fmr_bench.protocol.SampleOutcome`."""
        return {"oracle_pred": int(self.pred[i]), "oracle_conf": float(self.confidence[i]),
                "oracle_margin": float(self.margin[i]), "oracle_accept": bool(self.accepted[i])}


def scores(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """argmax, p(y) and the margin p(y) − max_{c≠y} p(c) of (N, C) probabilities."""
    probs = probs.float()
    labels = labels.to(probs.device).long()
    conf = probs.gather(1, labels[:, None])[:, 0]
    others = probs.scatter(1, labels[:, None], float("-inf")).amax(1) if probs.shape[1] > 1 else torch.zeros_like(conf)
    return probs.argmax(1), conf, conf - others


class AcceptanceRule:
    """A rule over member probabilities (M, N, C) and labels (N,); ``spec`` is its canonical name."""

    spec: str = ""

    def accepts(self, member_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.spec


class Argmax(AcceptanceRule):
    spec = "argmax"

    def accepts(self, member_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pred, _, _ = scores(member_probs.mean(0), labels)
        return pred == labels.to(pred.device)


@dataclass(frozen=True)
class _Threshold(AcceptanceRule):
    tau: float

    @property
    def spec(self) -> str:  # type: ignore[override]
        return f"{self.name}:{self.tau!r}"


class Confidence(_Threshold):
    name = "confidence"

    def accepts(self, member_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _, conf, _ = scores(member_probs.mean(0), labels)
        return conf >= self.tau


class Margin(_Threshold):
    name = "margin"

    def accepts(self, member_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _, _, margin = scores(member_probs.mean(0), labels)
        return margin >= self.tau


class AllAgree(AcceptanceRule):
    spec = "all-agree"

    def accepts(self, member_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(member_probs.device).long()
        return (member_probs.argmax(-1) == labels[None]).all(0)


@dataclass(frozen=True)
class AllOf(AcceptanceRule):
    rules: tuple[AcceptanceRule, ...]

    @property
    def spec(self) -> str:  # type: ignore[override]
        return "+".join(r.spec for r in self.rules)

    def accepts(self, member_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = self.rules[0].accepts(member_probs, labels)
        for rule in self.rules[1:]:
            out = out & rule.accepts(member_probs, labels)
        return out


def _no_arg(cls: type[AcceptanceRule]) -> Callable[[str | None], AcceptanceRule]:
    def make(arg: str | None) -> AcceptanceRule:
        if arg is not None:
            raise SettingsError(f"acceptance rule {cls.spec!r} takes no value (got {cls.spec}:{arg}); "
                                f"pass --accept {cls.spec}")
        return cls()
    return make


def _threshold(cls: type[_Threshold]) -> Callable[[str | None], AcceptanceRule]:
    def make(arg: str | None) -> AcceptanceRule:
        example = f"--accept {cls.name}:0.5"
        if arg is None or not arg.strip():
            raise SettingsError(f"acceptance rule {cls.name!r} needs a threshold τ in [0, 1]; pass e.g. {example}")
        try:
            tau = float(arg)
        except ValueError:
            raise SettingsError(f"threshold of {cls.name!r} must be a number in [0, 1] (got {arg!r}); "
                                f"pass e.g. {example}") from None
        if not (math.isfinite(tau) and 0.0 <= tau <= 1.0):
            raise SettingsError(f"threshold of {cls.name!r} must lie in [0, 1] (got {arg}); pass e.g. {example}")
        return cls(tau + 0.0)  # -0.0 -> 0.0: one canonical name
    return make


ACCEPT_RULES: Registry = Registry("acceptance rule")
ACCEPT_RULES.register("argmax", _no_arg(Argmax), help="oracle argmax = y (the paper's rule)")
ACCEPT_RULES.register("confidence", _threshold(Confidence), help="confidence:τ — p(y) >= τ")
ACCEPT_RULES.register("margin", _threshold(Margin), help="margin:τ — p(y) - max over other classes >= τ")
ACCEPT_RULES.register("all-agree", _no_arg(AllAgree), help="every ensemble member's argmax = y")


def parse_rule(text: str | AcceptanceRule | None) -> AcceptanceRule:
    """The rule named by ``text`` (``None``: the paper's ``argmax``).

    Raises:
        SettingsError: unknown rule, missing or malformed threshold, τ outside [0, 1].
    """
    if isinstance(text, AcceptanceRule):
        return text
    text = DEFAULT_RULE if text is None else str(text).strip()
    rules = []
    for part in text.split("+"):
        name, colon, arg = part.strip().partition(":")
        if name not in ACCEPT_RULES:
            raise SettingsError(f"{ACCEPT_RULES.unknown_message(name or part)} Pass e.g. --accept argmax, "
                                "--accept confidence:0.5, --accept margin:0.2 or --accept all-agree")
        rules.append(ACCEPT_RULES.get(name)(arg if colon else None))
    return rules[0] if len(rules) == 1 else AllOf(tuple(rules))


def decide(rule: AcceptanceRule | str, member_probs: torch.Tensor | Sequence[torch.Tensor],
           labels: torch.Tensor) -> Verdict:
    """The oracle's verdict on a batch: the one function both loops call.

    Args:
        rule: a rule or its spec.
        member_probs: (M, N, C) probabilities of each of the M oracle members (or a list
            of M (N, C) tensors); a single (N, C) tensor is one member.
        labels: (N,) true dataset labels.
    """
    rule = parse_rule(rule)
    if not isinstance(member_probs, torch.Tensor):
        member_probs = torch.stack(list(member_probs))
    if member_probs.dim() == 2:
        member_probs = member_probs[None]
    member_probs = member_probs.float()
    labels = labels.to(member_probs.device).long()
    pred, conf, margin = scores(member_probs.mean(0), labels)
    return Verdict(rule.accepts(member_probs, labels), pred, conf, margin)
