"""``fmr leaderboard build|run``: render boards to Markdown, CSV and HTML; measure their entries."""

from __future__ import annotations

import argparse

from .commands import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="render boards: README.md beside each, and the HTML site (with CSV, plots) in --out",
                       description="Render boards: README.md beside each board, plus one static HTML site in --out.")
    b.add_argument("boards", nargs="*", metavar="BOARD", help="board names (default: every board under --root)")
    b.add_argument("--out", default="leaderboards/_site", help="folder of the HTML site (default: leaderboards/_site)")
    b.add_argument("--root", default="leaderboards", help="folder holding the boards (default: leaderboards)")
    b.add_argument("--no-readme", action="store_true", help="do not rewrite the boards' README.md")
    b.add_argument("--strict", action="store_true",
                   help="exit 2 when a check flags an entry (arithmetic of reported numbers, a run of other "
                        "settings, a record that disagrees with its samples or settings), one line per problem "
                        "on stderr; the boards are still written, flags shown")
    r = sub.add_parser("run", help="evaluate every measurable entry of a board (resuming), then rebuild its README",
                       description="Evaluate every measurable entry of a board (finished runs are skipped, "
                                   "interrupted ones resume), then rebuild the board's README.md.")
    r.add_argument("board", metavar="BOARD")
    r.add_argument("--root", default="leaderboards", help="folder holding the boards (default: leaderboards)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..leaderboard import build_boards, find_boards

    console = Console()
    if args.action == "run":
        from ..leaderboard.run import run_board

        (folder,) = find_boards(args.root, [args.board])
        table = run_board(folder, log=console.print)
        console.print(f"board {table.board.name}: {len(table.frame)} entries -> {folder / 'README.md'}")
        return 0
    folders = find_boards(args.root, args.boards)
    tables = build_boards(folders, args.out, readme=not args.no_readme)
    for t in tables:
        flagged = int((t.frame["flag"] != "").sum())
        console.print(f"{t.board.name}: {len(t.frame)} entries" + (f", {flagged} flagged" if flagged else ""))
    console.print(f"site: {args.out}/index.html")
    problems = [f"{t.board.name} / {name}: {p}" for t in tables for name, p in t.problems]
    if args.strict and problems:
        import sys

        for line in problems:
            print(f"fmr: error: {line}", file=sys.stderr)
        return 2
    return 0


COMMAND = Command(help="build leaderboards (Markdown, CSV, HTML) or run a board's evaluations",
                  add_arguments=add_arguments, run=run)
