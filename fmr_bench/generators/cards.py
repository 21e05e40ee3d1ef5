"""Generator cards: JSON files in the top-level ``generators/`` folder.

A card holds a generator's config, where its weights come from (a URL with sha256, or a
file shipped in the package) and its preprocessing. Cards are data: they are found in a
checkout (``<repo>/generators``) and in an installed wheel (``fmr_bench/_generators``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SpecError

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def cards_dir() -> Path:
    for candidate in (PACKAGE_DIR / "_generators", PACKAGE_DIR.parent / "generators"):
        if candidate.is_dir():
            return candidate
    raise SpecError("generator cards folder not found; reinstall fmr_bench")  # pragma: no cover


def list_cards(kind: str | None = None) -> list[str]:
    names = []
    for path in sorted(cards_dir().glob("*.json")):
        card = json.loads(path.read_text())
        if kind is None or card.get("kind") == kind:
            names.append(card["name"])
    return names


def load_card(name: str, kind: str) -> dict:
    """Card ``name`` (with or without the ``KIND-`` prefix), or a path to a card file."""
    path = Path(name).expanduser()
    if not (name.endswith(".json") and path.is_file()):
        for candidate in (name, f"{kind}-{name}"):
            path = cards_dir() / f"{candidate}.json"
            if path.is_file():
                break
        else:
            raise SpecError(f"no {kind} card {name!r}; available: {', '.join(list_cards(kind))} "
                            "(or pass a path to a card .json)")
    card = json.loads(path.read_text())
    card["_path"] = str(path)
    return card
