"""Fine-tuning methods as data: stages of weighted loss terms.

A :class:`Method` is one or more :class:`Stage` s (LP-FT has two); a stage names what
trains, what it reads (images, or features cached from the frozen encoder) and its loss
as a weighted sum of terms of :data:`fmr_bench.finetune.terms.TERMS`. A weight may be a
function of the epoch (StarFT's decaying λ). Add a method with
``METHODS.register("name", builder)`` where ``builder(settings) -> Method``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Union

from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from .settings import FinetuneSettings

Weight = Union[float, Callable[[int, int], float]]  # constant, or (epoch, epochs) -> weight
TRAINS = ("head", "image", "clip")  # head only; image encoder + head; image + text towers + temperature
INPUTS = ("images", "features")

METHODS: Registry = Registry("fine-tuning method")


@dataclass(frozen=True)
class Stage:
    """One phase of training with its own optimiser and schedule."""

    name: str
    terms: tuple[tuple[str, Weight], ...]
    epochs: int
    lr: float
    trains: str = "image"
    inputs: str = "images"

    def weights(self, epoch: int) -> dict[str, float]:
        return {n: (w(epoch, self.epochs) if callable(w) else float(w)) for n, w in self.terms}


@dataclass(frozen=True)
class Method:
    name: str
    stages: tuple[Stage, ...]
    needs_text: bool = False
    teachers: tuple[str, ...] = ()  # "pretrained": frozen copy before FT; "wise": WiSE-FT mix (WiSE-KD)
    head_from_text: bool = False  # FLYP / StarFT: the head is rebuilt from the text tower to evaluate
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)


def star_weight(lam: float, decay: bool) -> Weight:
    """λ, or λ·(1 − (e+1)/E) at 0-based epoch e of E (seed 001 §3.2)."""
    if not decay:
        return lam
    return lambda e, epochs: lam * (1 - (e + 1) / epochs)


@METHODS.register("ft", help="cross-entropy on the zero-shot-initialised head, all image weights trained")
def ft(s: FinetuneSettings) -> Method:
    return Method("ft", (Stage("ft", (("ce", 1.0),), s.epochs, s.lr),))


@METHODS.register("lp", help="linear probe: frozen encoder, head trained on cached features")
def lp(s: FinetuneSettings) -> Method:
    return Method("lp", (Stage("lp", (("ce_features", 1.0),), s.lp_epochs, s.lp_lr, "head", "features"),))


@METHODS.register("lp-ft", help="linear probe, then full fine-tuning from the probed head (Kumar et al. 2022)")
def lp_ft(s: FinetuneSettings) -> Method:
    return Method("lp-ft", (Stage("lp", (("ce_features", 1.0),), s.lp_epochs, s.lp_lr, "head", "features"),
                            Stage("ft", (("ce", 1.0),), s.epochs, s.lr)))


@METHODS.register("flyp", help="CLIP contrastive loss on image / class-caption batches (Goyal et al. 2023)")
def flyp(s: FinetuneSettings) -> Method:
    return Method("flyp", (Stage("flyp", (("clip", 1.0),), s.epochs, s.lr, "clip"),), needs_text=True,
                  head_from_text=True)


@METHODS.register("maskcf", help="CE + beta * MSE of frozen vs student features of masked-image counterfactuals (seed 000)")
def maskcf(s: FinetuneSettings) -> Method:
    terms: tuple[tuple[str, Weight], ...] = (("ce", 1.0), ("feature_mse", s.beta))
    teachers: tuple[str, ...] = ("pretrained",)
    if s.wise_kd > 0:
        terms += (("wise_kd", s.wise_kd),)
        teachers += ("wise",)
    return Method("maskcf", (Stage("maskcf", terms, s.epochs, s.lr),), teachers=teachers)


@METHODS.register("starft", help="FLYP + lambda * KL(teacher || student) over spurious captions (seeds 001/003)")
def starft(s: FinetuneSettings) -> Method:
    from .descriptors import SpuriousCaptions, load_pools, select_phrases

    concepts = s.concepts if s.concepts == "all" else [c.strip() for c in s.concepts.split(",") if c.strip()]
    phrases = select_phrases(load_pools(s.descriptors), concepts) if s.star_suffix == "spurious" else []
    captions = SpuriousCaptions(s.caption, phrases, s.star_suffix)
    terms = (("clip", 1.0), ("star", star_weight(s.star_lambda, s.star_decay)))
    return Method("starft", (Stage("starft", terms, s.epochs, s.lr, "clip"),), needs_text=True,
                  teachers=("pretrained",), head_from_text=True, extras={"captions": captions})


def build_method(settings: FinetuneSettings) -> Method:
    return METHODS.get(settings.method)(settings)
