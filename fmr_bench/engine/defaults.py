"""The defaults an FMR run leaves open, filled from the dataset's world and the generator's card.

:func:`resolve_defaults` is where a run's generator, oracle, step size and acceptance rule
come from when the caller does not give them; every default taken is written into the record.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..config import FmrSettings
from ..datasets.digits import DIGITS_WORLD
from ..datasets.imagenet import IMAGENET_WORLD
from ..generators import default_step_size


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
    for home in (DIGITS_WORLD, IMAGENET_WORLD):
        if oracle is not None and oracle == home.oracle and home.accept != world.accept:
            return home.accept, f"the default rule of oracle {oracle}"
    return world.accept, world_name
