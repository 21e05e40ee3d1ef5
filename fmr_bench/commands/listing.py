"""``fmr list``: what the registries hold."""

from __future__ import annotations

import argparse

from . import Command


def add_arguments(ls: argparse.ArgumentParser) -> None:
    ls.add_argument("what", choices=["models", "generators", "oracles", "datasets", "evaluators"])


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .. import datasets, generators, models, oracles  # noqa: F401  (registration)
    from ..models import builtin  # noqa: F401
    from ..generators.cards import list_cards
    from ..registry import BUILTIN_MODELS, DATASETS, GENERATORS, MODEL_SOURCES, ORACLE_SOURCES

    if args.what == "evaluators":
        from ..evaluators.cli import list_evaluators

        return list_evaluators()
    reg = {"models": MODEL_SOURCES, "generators": GENERATORS, "oracles": ORACLE_SOURCES, "datasets": DATASETS}[args.what]
    table = Table(title=args.what)
    table.add_column("spec")
    table.add_column("description")
    for entry in reg.items():
        table.add_row(entry.name + ("" if args.what == "generators" else ":…"), entry.help)
    if args.what == "models":
        for entry in BUILTIN_MODELS.items():
            table.add_row(f"builtin:{entry.name}", entry.help)
    if args.what == "generators":
        for card in list_cards("vqgan"):
            table.add_row(f"vqgan:{card.removeprefix('vqgan-')}", "card " + card)
    Console().print(table)
    return 0


COMMAND = Command(help="list models, generators, oracles, datasets or evaluators", add_arguments=add_arguments, run=run)
