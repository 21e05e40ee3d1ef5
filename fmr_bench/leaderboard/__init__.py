"""Leaderboards: board definitions and entries with provenance, built to Markdown, CSV and HTML.

Layout (see docs/leaderboards.md)::

    leaderboards/<board>/board.json        what is measured and shown
    leaderboards/<board>/entries/*.json    one model each, with provenance
    leaderboards/<board>/runs/             run records of `fmr leaderboard run`
    leaderboards/<board>/README.md         the built board (generated)

Library use::

    from fmr_bench.leaderboard import load_board, build_table, build_boards
    build_boards(["leaderboards/digits-fmr"], out="site")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .records import record_metrics
from .schema import Board, BoardError, Entry, load_board
from .table import BoardTable, build_table


def find_boards(root: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    """Board folders under ``root``: all of them, or the ones named (each must exist)."""
    root = Path(root)
    if not root.is_dir():
        raise BoardError(f"no leaderboards folder at {root}; run from the repository root or pass --root")
    available = sorted(p.parent.name for p in root.glob("*/board.json"))
    if not names:
        if not available:
            raise BoardError(f"{root} holds no board (no */board.json); see docs/leaderboards.md")
        return [root / n for n in available]
    out = []
    for n in names:
        if n not in available:
            import difflib

            close = difflib.get_close_matches(n, available, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise BoardError(f"no board {n!r} in {root}.{hint} Boards: {', '.join(available) or 'none'}")
        out.append(root / n)
    return out


def build_boards(folders: Sequence[str | Path], out: str | Path | None = None, *,
                 readme: bool = True) -> list[BoardTable]:
    """Build the boards in ``folders``: README.md beside each (``readme``), and the HTML site in ``out``.

    Every board is checked before anything is written, so a bad board leaves the others untouched.
    """
    from .render import write_board_readme, write_site

    tables = [build_table(*load_board(f)) for f in folders]
    if readme:
        for t in tables:
            write_board_readme(t)
    if out is not None:
        write_site(tables, out)
    return tables


__all__ = ["Board", "BoardError", "BoardTable", "Entry", "build_boards", "build_table", "find_boards", "load_board",
           "record_metrics"]
