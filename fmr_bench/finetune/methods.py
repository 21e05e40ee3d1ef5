"""Fine-tuning methods as data: stages of weighted loss terms.

A :class:`Method` is one or more :class:`Stage` s (LP-FT has two); a stage names what
trains, what it reads (images, or features cached from the frozen encoder) and its loss
as a weighted sum of terms of :data:`fmr_bench.finetune.terms.TERMS`. A weight may be a
function of the epoch (StarFT's decaying λ). Add a method with
``@register_method("name", help=..., <traits>)`` on a ``builder(settings) -> Method``: the
traits (:class:`MethodKind`) say what the rest of the package needs to know about it, so no
code checks a method by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Union

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
    needs_text: bool = False  # set by build_method from the registration (MethodKind)
    teachers: tuple[str, ...] = ()  # "pretrained": frozen copy before FT; "wise": WiSE-FT mix (WiSE-KD)
    head_from_text: bool = False  # set by build_method from the registration (MethodKind)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)


@dataclass(frozen=True)
class MethodKind:
    """What a method registers: its builder and the traits the package asks about without building it."""

    build: Callable[[FinetuneSettings], Method]
    needs_text: bool = False  # trains on class captions through the text tower
    head_from_text: bool = False  # FLYP / StarFT: the head is rebuilt from the text tower to evaluate (and in WiSE-FT)
    uses_lp_epochs: bool = False  # has a linear-probe stage of --lp-epochs
    check: Callable[[FinetuneSettings], None] | None = None  # its own settings checks (raise SettingsError)


def star_weight(lam: float, decay: bool) -> Weight:
    """λ, or λ·(1 − (e+1)/E) at 0-based epoch e of E (seed 001 §3.2)."""
    if not decay:
        return lam
    return lambda e, epochs: lam * (1 - (e + 1) / epochs)


def register_method(name: str, *, help: str, needs_text: bool = False, head_from_text: bool = False,
                    uses_lp_epochs: bool = False, check: Callable[[FinetuneSettings], None] | None = None
                    ) -> Callable[[Callable[[FinetuneSettings], Method]], Callable[[FinetuneSettings], Method]]:
    """Decorator registering a method builder in :data:`METHODS` with the method's traits (see :class:`MethodKind`)."""
    def deco(build: Callable[[FinetuneSettings], Method]) -> Callable[[FinetuneSettings], Method]:
        METHODS.register(name, MethodKind(build, needs_text, head_from_text, uses_lp_epochs, check), help=help)
        return build
    return deco


def _concept_list(s: FinetuneSettings) -> str | list[str]:
    return s.concepts if s.concepts == "all" else [c.strip() for c in s.concepts.split(",") if c.strip()]


def _check_maskcf(s: FinetuneSettings) -> None:
    from ..errors import SettingsError

    if s.fill != "none" and s.batch_size < 2:
        raise SettingsError("filling masked patches from other images needs batches of at least 2 images; "
                            "raise --batch-size or use --fill none")


def _check_starft(s: FinetuneSettings) -> None:
    """The spurious-caption pools of ``--concepts`` exist and are not empty (before any model is loaded)."""
    if s.star_suffix == "spurious":
        from .descriptors import load_pools, select_phrases

        select_phrases(load_pools(s.descriptors), _concept_list(s))


@register_method("ft", help="cross-entropy on the zero-shot-initialised head, all image weights trained")
def ft(s: FinetuneSettings) -> Method:
    return Method("ft", (Stage("ft", (("ce", 1.0),), s.epochs, s.lr),))


@register_method("lp", help="linear probe: frozen encoder, head trained on cached features", uses_lp_epochs=True)
def lp(s: FinetuneSettings) -> Method:
    return Method("lp", (Stage("lp", (("ce_features", 1.0),), s.lp_epochs, s.lp_lr, "head", "features"),))


@register_method("lp-ft", help="linear probe, then full fine-tuning from the probed head (Kumar et al. 2022)",
                 uses_lp_epochs=True)
def lp_ft(s: FinetuneSettings) -> Method:
    return Method("lp-ft", (Stage("lp", (("ce_features", 1.0),), s.lp_epochs, s.lp_lr, "head", "features"),
                            Stage("ft", (("ce", 1.0),), s.epochs, s.lr)))


@register_method("flyp", help="CLIP contrastive loss on image / class-caption batches (Goyal et al. 2023)",
                 needs_text=True, head_from_text=True)
def flyp(s: FinetuneSettings) -> Method:
    return Method("flyp", (Stage("flyp", (("clip", 1.0),), s.epochs, s.lr, "clip"),))


@register_method("maskcf", help="CE + beta * MSE of frozen vs student features of masked-image counterfactuals "
                                "(seed 000)", check=_check_maskcf)
def maskcf(s: FinetuneSettings) -> Method:
    terms: tuple[tuple[str, Weight], ...] = (("ce", 1.0), ("feature_mse", s.beta))
    teachers: tuple[str, ...] = ("pretrained",)
    if s.wise_kd > 0:
        terms += (("wise_kd", s.wise_kd),)
        teachers += ("wise",)
    return Method("maskcf", (Stage("maskcf", terms, s.epochs, s.lr),), teachers=teachers)


@register_method("starft", help="FLYP + lambda * KL(teacher || student) over spurious captions (seeds 001/003)",
                 needs_text=True, head_from_text=True, check=_check_starft)
def starft(s: FinetuneSettings) -> Method:
    from .descriptors import SpuriousCaptions, load_pools, select_phrases

    phrases = select_phrases(load_pools(s.descriptors), _concept_list(s)) if s.star_suffix == "spurious" else []
    captions = SpuriousCaptions(s.caption, phrases, s.star_suffix)
    terms = (("clip", 1.0), ("star", star_weight(s.star_lambda, s.star_decay)))
    return Method("starft", (Stage("starft", terms, s.epochs, s.lr, "clip"),), teachers=("pretrained",),
                  extras={"captions": captions})


def method_kind(name: str) -> MethodKind:
    """The registration of method ``name``: its builder and traits (unknown: a SpecError listing the methods)."""
    return METHODS.get(name)


def build_method(settings: FinetuneSettings) -> Method:
    """The :class:`Method` of ``settings``, with the traits its registration declares."""
    kind = method_kind(settings.method)
    return replace(kind.build(settings), needs_text=kind.needs_text, head_from_text=kind.head_from_text)
