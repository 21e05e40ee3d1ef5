"""Spurious descriptor pools of StarFT (seed 003 Table 15), shipped as ``descriptors.json``.

A pool is a list of phrases with ``{}`` for the class name ("{} in the snow", "blurred
{}"); a spurious caption is the base template filled with such a phrase ("a photo of a
{} in the snow"). Users add or replace pools with a JSON file of the same shape.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import SettingsError

POOLS_FILE = Path(__file__).resolve().parent / "descriptors.json"
SUFFIXES = ("spurious", "random", "none")


def load_pools(extra: str | Path | Mapping[str, Sequence[str]] | None = None) -> dict[str, list[str]]:
    """The shipped pools, updated with ``extra`` (a JSON file or mapping concept -> phrases)."""
    pools = {k: list(v) for k, v in json.loads(POOLS_FILE.read_text()).items() if not k.startswith("_")}
    if extra is None:
        return pools
    if not isinstance(extra, Mapping):
        path = Path(extra)
        try:
            extra = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SettingsError(f"cannot read descriptor pools from {path} ({type(e).__name__}); "
                                'give a JSON object such as {"background": ["{} in the snow"]}') from None
        if not isinstance(extra, Mapping):
            raise SettingsError(f'{path} must hold a JSON object such as {{"background": ["{{}} in the snow"]}}')
    for concept, phrases in extra.items():
        if str(concept).startswith("_"):
            continue
        if isinstance(phrases, str) or not all(isinstance(p, str) for p in phrases):
            raise SettingsError(f"descriptor pool {concept!r} must be a list of strings")
        pools[str(concept)] = list(phrases)
    return pools


def select_phrases(pools: Mapping[str, Sequence[str]], concepts: str | Sequence[str]) -> list[str]:
    """Phrases of the named concepts (``all`` = every pool); each gets a ``{}`` if it lacks one.

    Raises:
        SettingsError: an unknown concept or an empty result.
    """
    names = list(pools) if concepts == "all" else ([concepts] if isinstance(concepts, str) else list(concepts))
    out: list[str] = []
    for name in names:
        if name not in pools:
            raise SettingsError(f"unknown descriptor concept {name!r}; use one of {', '.join(sorted(pools))} or all, "
                                "or add it with --descriptors FILE.json")
        out += [p if "{}" in p else "{} " + p for p in pools[name]]
    if not out:
        raise SettingsError(f"the descriptor pool {', '.join(names)} is empty; add phrases such as "
                            '"{} in the snow" to it (--descriptors FILE.json) or pick another concept')
    return out


class SpuriousCaptions:
    """Draws one spurious caption per image (seed 001 §3.2), or the Table 6 ablations.

    Args:
        template: base caption with ``{}`` for the class, e.g. "a photo of a {}.".
        phrases: descriptor phrases with ``{}`` (see :func:`select_phrases`).
        suffix: ``spurious`` (a phrase drawn uniformly), ``random`` (random letter tokens
            appended: Table 6 "Random"), ``none`` (the clean caption: Table 6 first row).
    """

    def __init__(self, template: str, phrases: Sequence[str], suffix: str = "spurious", n_random_tokens: int = 3) -> None:
        if suffix not in SUFFIXES:
            raise SettingsError(f"unknown StarFT suffix {suffix!r}; use one of {', '.join(SUFFIXES)}")
        if suffix == "spurious" and not phrases:
            raise SettingsError('the descriptor pool is empty; add phrases such as "{} in the snow" (--descriptors FILE.json)')
        self.template, self.phrases, self.suffix, self.k = template, list(phrases), suffix, n_random_tokens

    def __call__(self, class_names: Sequence[str], rng: random.Random) -> list[str]:
        out = []
        for c in class_names:
            c = c.replace("_", " ")
            if self.suffix == "spurious":
                subject = rng.choice(self.phrases).format(c)
            elif self.suffix == "random":
                words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8))) for _ in range(self.k)]
                subject = f"{c} {' '.join(words)}"
            else:
                subject = c
            out.append(self.template.format(subject))
        return out
