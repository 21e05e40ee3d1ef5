"""Sub-commands of the ``fmr`` CLI, one module each.

A command is a :class:`Command` (help line, ``add_arguments(parser)``, ``run(args) -> int``)
registered lazily in :data:`COMMANDS`, so that building the parser imports no heavy
backend. Shared argument groups live in :mod:`fmr_bench.cli.common`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from collections.abc import Callable

from ..registry import COMMANDS


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS.register("evaluate", "fmr_bench.cli.evaluate:COMMAND", help="run the FMR protocol (or static evaluators) on a model")
COMMANDS.register("merge", "fmr_bench.cli.merge:COMMAND",
                  help="merge the shards of an FMR run (fmr evaluate --shard i/n) into the record a single run writes")
COMMANDS.register("list", "fmr_bench.cli.listing:COMMAND", help="list models, generators, oracles, datasets or evaluators")
COMMANDS.register("fit-sparse", "fmr_bench.cli.fit_sparse:COMMAND", help="fit a sparse-VQGAN mask on a fit split")
COMMANDS.register("export", "fmr_bench.cli.export:COMMAND", help="export a run's validated perturbed images as a static benchmark (App. O)")
COMMANDS.register("transfer", "fmr_bench.cli.transfer:COMMAND", help="score models on images generated for another model (App. D/F/G)")
COMMANDS.register("sweep", "fmr_bench.cli.sweep:COMMAND", help="FMR over a grid of step sizes and budgets: table and plot (App. J)")
COMMANDS.register("per-class", "fmr_bench.cli.per_class:COMMAND", help="per-class VR/SA/PA/FMR table of an FMR run (App. J)")
COMMANDS.register("audit", "fmr_bench.cli.audit:COMMAND",
                  help="score the validated perturbed images of a finished run or export with an independent judge")
COMMANDS.register("compare-generators", "fmr_bench.cli.compare_generators:COMMAND",
                  help="PA/FMR of several models under several generators, and Kendall tau between them (Table 3)")
COMMANDS.register("compare", "fmr_bench.cli.compare:COMMAND",
                  help="paired difference of two FMR runs on the same images (ΔSA, ΔPA, ΔFMR...), with a "
                       "paired-bootstrap interval and a p-value")
COMMANDS.register("leaderboard", "fmr_bench.cli.leaderboard:COMMAND",
                  help="build leaderboards to Markdown, CSV and HTML, or run a board's evaluations")
COMMANDS.register("results", "fmr_bench.cli.results:COMMAND",
                  help="every run record under some folders as one table (rich, CSV, JSON, Markdown)")
COMMANDS.register("finetune", "fmr_bench.cli.finetune:COMMAND",
                  help="fine-tune a model robustly (ft, lp, lp-ft, flyp, maskcf, starft); WiSE-FT and soups")
COMMANDS.register("data", "fmr_bench.cli.data:COMMAND",
                  help="fetch, list and verify the evaluation sets under a data root (FMR_DATA)")
COMMANDS.register("attack-oracle", "fmr_bench.cli.attack_oracle:COMMAND",
                  help="targeted PGD/FGSM on the oracle and on classifiers, per-step target loss, p[true], p[target] (App. L)")
