"""Defaults of the FMR protocol, in one place: the CLI and the library read them here."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import SettingsError

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


@dataclass(frozen=True)
class RunDefaults:
    """What one FMR run takes when the caller leaves it open, and where each value came from.

    Attributes:
        settings: the settings with ``step_size`` filled in.
        generator, oracle: the specs to build (``None``: the caller passed an object).
        taken: ``{"step_size" | "generator" | "oracle": {"value": ..., "from": ...}}`` for each
            default taken (written into the record).
        notes: lines to show the user (and record): defaults taken when the run mixes worlds,
            a ``limit`` above the dataset size.
    """

    settings: FmrSettings
    generator: str | None
    oracle: str | None
    taken: dict[str, dict[str, Any]]
    notes: list[str]


def resolve_defaults(settings: FmrSettings, dataset: Any, generator: Any = None, oracle: Any = None) -> RunDefaults:
    """Fill the defaults an FMR run leaves open: generator and oracle from the dataset's world, the step
    size from the generator's card (else the world's).

    Args:
        settings: validated settings (``step_size`` may be ``None``).
        dataset: the :class:`~fmr_bench.datasets.ImageDataset` (its ``world``, ``spec`` and size).
        generator, oracle: a spec, an object, or ``None`` for the world's default.
    """
    from .generators import default_step_size

    world = dataset.world
    taken: dict[str, dict[str, Any]] = {}
    world_name = f"the dataset world of {dataset.spec}"
    gen_spec = generator if isinstance(generator, str) else None
    ora_spec = oracle if isinstance(oracle, str) else None
    if generator is None:
        gen_spec = world.generator
        taken["generator"] = {"value": gen_spec, "from": world_name}
    if oracle is None:
        ora_spec = world.oracle
        taken["oracle"] = {"value": ora_spec, "from": world_name}
    if settings.step_size is None:
        card = default_step_size(gen_spec, world.generator) if gen_spec is not None else None
        if card is None:
            what = f"generator {gen_spec}" if gen_spec else "the generator object"
            card = (world.step_size, f"{world_name} ({what} has no card with a step size)")
        taken["step_size"] = {"value": card[0], "from": card[1]}
        settings = replace(settings, step_size=card[0])
    if settings.accept is None:
        rule, source = _default_rule(ora_spec, world, world_name)
        taken["accept"] = {"value": rule, "from": source}
        settings = replace(settings, accept=rule)
    notes = []
    own = {k: v for k, v in (("generator", generator), ("oracle", oracle)) if v is not None}
    foreign = {k: v for k, v in own.items() if not isinstance(v, str) or v != getattr(world, k)}
    if foreign and taken:
        notes.append("defaults taken (the run mixes worlds: " + ", ".join(f"{k} {v}" for k, v in foreign.items())
                     + f" with {dataset.spec}): " + "; ".join(f"{k} {d['value']} from {d['from']}"
                                                                for k, d in taken.items()))
    if settings.limit is not None and settings.limit > len(dataset):
        notes.append(f"limit {settings.limit} is more than the {len(dataset)} images of {dataset.spec}: "
                     f"all {len(dataset)} ran")
    return RunDefaults(settings, gen_spec, ora_spec, taken, notes)


def _default_rule(oracle: str | None, world: Any, world_name: str) -> tuple[str, str]:
    """The acceptance rule belongs to the oracle, as the step size belongs to the generator: an
    oracle that is a shipped world's default keeps that world's rule (the digits CLIP's
    ``margin:0.99``) whatever the data; any other oracle takes the dataset world's rule."""
    from .datasets.digits import DIGITS_WORLD
    from .datasets.imagenet import IMAGENET_WORLD

    for home in (DIGITS_WORLD, IMAGENET_WORLD):
        if oracle is not None and oracle == home.oracle and home.accept != world.accept:
            return home.accept, f"the default rule of oracle {oracle}"
    return world.accept, world_name


def settings_help() -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in fields(FmrSettings)}
