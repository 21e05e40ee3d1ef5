"""``fmr`` command line. Each sub-command is a module of :mod:`fmr_bench.cli.commands`,
registered in :data:`fmr_bench.registry.COMMANDS`.

Options shared with the library are derived from :class:`fmr_bench.config.FmrSettings`,
so the CLI and :func:`fmr_bench.evaluate` share their defaults. Bad input ends with one
line and exit code 2: errors of the library (:class:`FmrBenchError`) and argparse's own
(a bad value, a missing or unknown flag) alike, the latter through :class:`Parser`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ..errors import FmrBenchError


class UsageError(SystemExit):
    """A bad command line, already reported in one line: exit code 2."""

    def __init__(self) -> None:
        super().__init__(2)


#: argparse's wording -> ours (what is wrong and what to pass), tried in order on the one message
_REWRITES: tuple[tuple[str, str], ...] = (
    (r"^argument (\S+): invalid int value: (.*)$", r"\1 takes a whole number, not \2"),
    (r"^argument (\S+): invalid float value: (.*)$", r"\1 takes a number, not \2"),
    (r"^argument (-\S+): invalid choice: (.*?) \(choose from (.*)\)$", r"\1 \2 is not one of \3"),
    (r"^argument [^-]\S*: invalid choice: (.*?) \(choose from (.*)\)$", r"\1 is not one of \2"),
    (r"^argument (\S+): expected one argument$", r"\1 needs a value"),
    (r"^argument (\S+): expected (.*) arguments?$", r"\1 needs \2 values"),
    (r"^argument (\S+): not allowed with argument (\S+)$", r"\1 and \2 exclude each other; give one of them"),
    (r"^the following arguments are required: (.*)$", r"missing \1"),
    (r"^argument (\S+): (takes .*)$", r"\1 \2"),
    (r"^one of the arguments (.*) is required$", r"give one of \1"),
    (r"^argument (\S+): ", r"\1: "),
)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the fix, and which takes no
    abbreviated flags (``--step-size`` is not ``--step-sizes``).

    ``error`` prints ``<prog>: error: <what is wrong> (see <prog> --help)`` and exits with
    code 2 (:class:`UsageError`); sub-command parsers are of this class too, so every
    command of ``fmr`` and every sub-command of those (``fmr leaderboard run``) reports so.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        if text.startswith("the following arguments are required: "):
            for action in self._actions:  # a missing choice (a command, an action): name the valid ones
                if not action.option_strings and action.choices and action.dest in text:
                    text = re.sub(rf"\b{re.escape(action.dest)}\b",
                                  f"{action.dest} (one of {', '.join(map(str, action.choices))})", text, count=1)
        for pattern, replacement in _REWRITES:
            text, n = re.subn(pattern, replacement, text)
            if n:
                break
        sys.stderr.write(f"{self.prog}: error: {text} (see {self.prog} --help)\n")
        raise UsageError()

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        if not hasattr(namespace, "_parser"):  # the innermost parser returns first
            namespace._parser = self
        return namespace, extras

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = self.parse_known_args(args, namespace)
        owner = vars(namespace).pop("_parser", self)
        if extras:
            owner.unrecognized(extras)
        return namespace

    def unrecognized(self, extras: list[str]) -> NoReturn:
        """Refuse leftover arguments, on the parser of the command they were given to, with a
        suggestion for a misspelt flag."""
        flags = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        hints = {}
        for arg in extras:
            flag = arg.partition("=")[0]
            if flag.startswith("--"):  # compared without the dashes, which every flag shares
                close = difflib.get_close_matches(flag[2:], [f[2:] for f in flags], n=1, cutoff=0.75)
                if close:
                    hints[flag] = "--" + close[0]
        hint = ""
        if len(hints) == 1:
            hint = f" (did you mean {next(iter(hints.values()))}?)"
        elif hints:
            hint = " (" + "; ".join(f"{k}: did you mean {v}?" for k, v in hints.items()) + ")"
        self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")


def build_parser() -> Parser:
    from . import commands  # noqa: F401  (registration)
    from ..registry import COMMANDS

    from ..runtime import fmr_version

    parser = Parser(prog="fmr", description="Foundation-model-oriented robustness (FMR) benchmark.")
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
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:  # reported in one line already
        return e.code  # type: ignore[return-value]
    try:
        return COMMANDS.get(args.command).run(args)
    except FmrBenchError as e:
        print(f"fmr: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
