"""``fmr list``: what the registries hold."""

from __future__ import annotations

import argparse

from .commands import Command


def add_arguments(ls: argparse.ArgumentParser) -> None:
    ls.add_argument("what", choices=["models", "generators", "oracles", "datasets", "evaluators"])


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..generators.cards import list_cards
    from ..models import builtin  # noqa: F401
    from ..registry import BUILTIN_MODELS, DATASETS, GENERATORS, MODEL_SOURCES, ORACLE_SOURCES

    if args.what == "evaluators":
        from .static_options import list_evaluators

        return list_evaluators()
    reg = {"models": MODEL_SOURCES, "generators": GENERATORS, "oracles": ORACLE_SOURCES, "datasets": DATASETS}[args.what]
    table = Table(title=args.what)
    table.add_column("spec")
    table.add_column("description")
    table.add_column("?options (checked: type, range)")
    for entry in reg.items():
        table.add_row(entry.name + ("" if args.what == "generators" else ":…"), entry.help,
                      option_summary(entry.options))
    if args.what == "models":
        for entry in BUILTIN_MODELS.items():
            table.add_row(f"builtin:{entry.name}", entry.help, "")
    if args.what == "generators":
        from ..generators import default_step_size

        for card in list_cards("vqgan"):
            spec = f"vqgan:{card.removeprefix('vqgan-')}"
            eta = default_step_size(spec, spec)
            table.add_row(spec, "card " + card + (f"; default step size {eta[0]:g}" if eta else ""), "")
    Console().print(table)
    return 0


def option_summary(options) -> str:
    """``key: what a valid value looks like (default)`` for each option of a source's table."""
    if options is None:
        return "not declared"
    return "; ".join(f"{k}: {o.describe()}" + (f" (default {o.default})" if o.default not in (None, "") else "")
                     for k, o in options.items()) or "none"


COMMAND = Command(help="list models, generators, oracles, datasets or evaluators", add_arguments=add_arguments, run=run)
