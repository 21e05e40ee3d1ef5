"""Sub-commands of the ``fmr`` CLI, one module each.

A command is a :class:`Command` (help line, ``add_arguments(parser)``, ``run(args) -> int``)
registered lazily in :data:`COMMANDS`, so that building the parser imports no heavy
backend. Shared argument groups live in :mod:`fmr_bench.commands.common`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from ..registry import COMMANDS


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS.register("evaluate", "fmr_bench.commands.evaluate:COMMAND", help="run the FMR protocol (or static evaluators) on a model")
COMMANDS.register("list", "fmr_bench.commands.listing:COMMAND", help="list models, generators, oracles, datasets or evaluators")
