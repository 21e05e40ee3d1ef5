"""Settings and their defaults, in one place: the CLI and the library read them here.

:class:`FmrSettings` (one FMR run) and :class:`EvalSettings` (the static evaluators); the
fine-tuning settings live beside their methods (:mod:`fmr_bench.finetune.settings`). Every
form of a run's settings is built by :func:`merge`, which refuses a name the dataclass does
not have, and checked once by the dataclass's ``validated()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from .errors import SettingsError

S = TypeVar("S")


def merge(base: S, overrides: dict[str, Any], *, what: str = "setting") -> S:
    """``base`` (a settings dataclass) with the fields named in ``overrides`` replaced.

    Raises:
        SettingsError: a name that is not a field, with the valid names listed.
    """
    known = {f.name for f in fields(base)}
    unknown = set(overrides) - known
    if unknown:
        raise SettingsError(f"unknown {what}(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known))}")
    return replace(base, **overrides)

OPTIMIZERS = ("adam", "sgd", "sign")
INITS = ("none", "fgsm")
#: fp32 is exact (no TF32 on a GPU); tf32 and bf16 run only the decoder and the evaluated model
#: reduced; the oracle and the codebook search decide in fp32 (fmr_bench.runtime.Precision).
PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class FmrSettings:
    """Settings of one FMR run. ``None`` means "the dataset world's default"."""

    budget: int = field(default=50, metadata={"help": "B: maximum number of perturbation steps per image"})
    step_size: float | None = field(
        default=None,
        metadata={"help": "eta: optimiser learning rate on the latent (default: the generator card's, e.g. "
                          "vqgan:digits 0.05, the ImageNet VQGAN 0.001 as in the paper; else the dataset world's)"},
    )
    optimizer: str = field(default="adam", metadata={"help": f"latent optimiser, one of {OPTIMIZERS}"})
    batch_size: int = field(default=32, metadata={"help": "images perturbed at once (slots refilled as samples finish)"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only this many images (a seeded random subset)"})
    seed: int = field(default=0, metadata={"help": "seed for the subset and for stochastic generators"})
    precision: str = field(default="fp32", metadata={"help": f"one of {PRECISIONS}: fp32 is exact (no TF32); tf32 and "
                                                                "bf16 run only the decoder and the model reduced, the "
                                                                "oracle and the code search stay fp32"})
    device: str = field(default="auto", metadata={"help": "torch device ('auto' picks cuda when available)"})
    init: str = field(default="none", metadata={"help": f"starting image, one of {INITS}: fgsm starts from an "
                                                       "FGSM adversarial image of the evaluated model (paper App. E)"})
    fgsm_eps: float = field(default=0.003, metadata={"help": "FGSM step (pixels in [0, 1]) for --init fgsm"})
    workers: int | None = field(default=None, metadata={"help": "DataLoader workers that decode image files (default: "
                                                                "up to 4 for FMR, one per core up to 8 for static "
                                                                "evaluators; 0 decodes in the main process)"})
    accept: str | None = field(
        default=None,
        metadata={"help": "acceptance rule of the oracle: argmax (the paper's), confidence:T (p(y) >= T), "
                          "margin:T (p(y) - max other >= T), all-agree (every ensemble member's argmax = y), "
                          "or RULE+RULE (all hold); T in [0, 1] (default: the dataset world's, argmax for ImageNet)"},
    )

    def validated(self) -> "FmrSettings":
        """Return self after range checks; raises :class:`SettingsError` naming the fix."""
        if self.budget < 1:
            raise SettingsError(f"budget must be >= 1 (got {self.budget}); pass e.g. --budget 50")
        if self.step_size is not None and not self.step_size > 0:
            raise SettingsError(f"step size must be > 0 (got {self.step_size}); pass e.g. --step-size 0.001")
        if self.optimizer not in OPTIMIZERS:
            raise SettingsError(f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise SettingsError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.init not in INITS:
            raise SettingsError(f"unknown init {self.init!r}; use one of {', '.join(INITS)}")
        if not self.fgsm_eps > 0:
            raise SettingsError(f"fgsm eps must be > 0 (got {self.fgsm_eps}); pass e.g. --fgsm-eps 0.003")
        if self.batch_size < 1:
            raise SettingsError(f"batch size must be >= 1 (got {self.batch_size}); pass e.g. --batch-size 32")
        if self.limit is not None and self.limit < 1:
            raise SettingsError(f"limit must be >= 1 (got {self.limit}); pass e.g. --limit 100, or no --limit for every "
                                "sample")
        if self.workers is not None and self.workers < 0:
            raise SettingsError(f"workers must be >= 0 (got {self.workers}); pass e.g. --workers 4")
        return self

    def with_defaults(self, **defaults: Any) -> "FmrSettings":
        """Fill the ``None`` fields from ``defaults`` (see :func:`resolve_defaults`)."""
        updates = {k: v for k, v in defaults.items() if getattr(self, k, 0) is None}
        return replace(self, **updates)


@dataclass(frozen=True)
class EvalSettings:
    """Settings shared by the static evaluators (the CLI reads its defaults here)."""

    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})
    num_workers: int | None = field(default=None, metadata={"help": "DataLoader workers (default: all cores for files)"})
    device: str = field(default="auto", metadata={"help": "torch device ('auto' picks cuda when available)"})
    cache: bool = field(default=True, metadata={"help": "read/write the on-disk logits cache"})
    seed: int = field(default=0, metadata={"help": "seed of random splits (calibration halves)"})

    def validated(self) -> EvalSettings:
        if self.batch_size < 1:
            raise SettingsError(f"batch size must be >= 1 (got {self.batch_size})")
        if self.num_workers is not None and self.num_workers < 0:
            raise SettingsError(f"num_workers must be >= 0 (got {self.num_workers})")
        return self


PAPER_STEP_SIZE = 1e-3

#: On a CPU the loop caps its batch at this many pixels (batch x height x width): the
#: 224-px VQGAN decoder's activations overflow the caches, and batch 1 measured faster
#: per image than 2 or 4 (docs/benchmarks.md); the 32-px digits world keeps batch 32.
CPU_BATCH_PIXELS = 32 * 32 * 32

# Defaults for the oracle prompt; the paper queries CLIP with "an image of {class}".
ORACLE_TEMPLATE = "an image of {}"


#: Settings that only the FMR protocol reads; static evaluators share batch_size, device, seed, workers.
STATIC_SHARED = ("batch_size", "device", "seed", "workers")
FMR_ONLY = tuple(f.name for f in fields(FmrSettings) if f.name not in STATIC_SHARED)


def check_given(given: dict[str, Any]) -> None:
    """Refuse settings that would be given and then ignored (``given``: the fields set explicitly).

    Raises:
        SettingsError: ``fgsm_eps`` without ``init="fgsm"``.
    """
    if "fgsm_eps" in given and given.get("init", "none") != "fgsm":
        raise SettingsError("--fgsm-eps sets the FGSM start, which only --init fgsm uses; add --init fgsm "
                            "or drop --fgsm-eps")


def settings_help() -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in fields(FmrSettings)}
