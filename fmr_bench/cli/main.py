"""``fmr`` command line. Each sub-command is a module of :mod:`fmr_bench.cli.commands`,
registered in :data:`fmr_bench.registry.COMMANDS`.

Options shared with the library are derived from :class:`fmr_bench.config.FmrSettings`,
so the CLI and :func:`fmr_bench.evaluate` share their defaults. Bad input ends with one
line and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..errors import FmrBenchError


def build_parser() -> argparse.ArgumentParser:
    from . import commands  # noqa: F401  (registration)
    from ..registry import COMMANDS

    from ..runtime import fmr_version

    parser = argparse.ArgumentParser(prog="fmr", description="Foundation-model-oriented robustness (FMR) benchmark.")
    parser.add_argument("--version", action="version", version=f"fmr_bench {fmr_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for entry in COMMANDS.items():
        cmd = entry.load()
        cmd.add_arguments(sub.add_parser(entry.name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..registry import COMMANDS

    if not sys.stdout.isatty():  # logs and pipes: rich would cut wide tables at 80 columns
        os.environ.setdefault("COLUMNS", "160")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS.get(args.command).run(args)
    except FmrBenchError as e:
        print(f"fmr: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
