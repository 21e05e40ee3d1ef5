"""Built boards to Markdown (committed beside each board), CSV, and one static HTML site.

Pages come from the jinja2 templates in ``templates/``; the site is self-contained
(``site.css``, ``site.js``, PNG plots, one CSV per board) and works offline from disk.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..files import atomic_write, make_dir, write_text
from .plots import PLOTS
from .table import BoardTable, csv_columns

TEMPLATES = Path(__file__).with_name("templates")
STATIC = ("site.css", "site.js")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt(v: Any, spec: str = ".2f") -> str:
    """A number in ``spec``, or an en dash when missing."""
    if _missing(v) or v == "":
        return "–"
    if isinstance(v, (int, float)):
        return format(v, spec)
    return str(v)


def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             autoescape=jinja2.select_autoescape(["html.j2"]), keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["md"] = lambda s: "" if _missing(s) else str(s).replace("|", "\\|").replace("\n", " ")
    env.globals["value"] = lambda v: "" if _missing(v) else repr(float(v))
    env.globals["both"] = lambda r, c: not _missing(r[f"{c.key}_reported"]) and not _missing(r[f"{c.key}_measured"])
    return env


def _rows(table: BoardTable) -> list[dict[str, Any]]:
    return [{k: (None if _missing(v) else v) for k, v in r.items()} for r in table.frame.to_dict("records")]


def _notes(table: BoardTable) -> list[tuple[str, str]]:
    out = []
    for e in table.entries:
        kept = [f"{k} as printed: {why}." for k, why in (e.reported.as_printed.items() if e.reported else ())]
        parts = [p for p in (e.notes, e.reported.note if e.reported else "", *kept) if p]
        if parts:
            out.append((e.name, " ".join(parts)))
    return out


def render_markdown(table: BoardTable) -> str:
    env = _env()

    def cell(r: dict[str, Any], c) -> str:
        text = fmt(r[c.key], c.fmt)
        lo, hi = r.get(f"{c.key}_lo"), r.get(f"{c.key}_hi")
        if not _missing(lo) and not _missing(hi) and not _missing(r[f"{c.key}_measured"]):
            text += f" [{fmt(lo, c.fmt)}, {fmt(hi, c.fmt)}]"
        if not _missing(r[f"{c.key}_reported"]) and not _missing(r[f"{c.key}_measured"]):
            text += f" (reported {fmt(r[f'{c.key}_reported'], c.fmt)})"
        return text

    return env.get_template("board.md.j2").render(board=table.board, rows=_rows(table), cell=cell,
                                                  notes=_notes(table))


def write_csv(table: BoardTable, path: Path) -> None:
    write_text(path, table.frame[csv_columns(table)].to_csv(index=False), resume=False)


def write_figures(table: BoardTable, out: Path) -> list[dict[str, str]]:
    figures = []
    for i, plot in enumerate(table.board.plots):
        name = f"{table.board.name}-{i}-{plot.kind}.png"
        made = PLOTS.get(plot.kind)(table, plot, out / name)
        if made is not None:
            figures.append({"file": name, "alt": plot.title or f"{plot.kind} plot of {table.board.title}"})
    return figures


def write_site(tables: list[BoardTable], out: str | Path) -> Path:
    """Write ``index.html``, one page + CSV + plots per board, and the static files, into ``out``."""
    out = Path(out)
    make_dir(out)
    env = _env()
    for name in STATIC:
        atomic_write(out / name, (TEMPLATES / name).read_bytes(), resume=False)
    summary = []
    for t in tables:
        write_csv(t, out / f"{t.board.name}.csv")
        figures = write_figures(t, out)
        write_text(out / f"{t.board.name}.html", resume=False, text=env.get_template("page.html.j2").render(
            board=t.board, rows=_rows(t), figures=figures, notes=_notes(t)))
        f = t.frame
        summary.append({"name": t.board.name, "title": t.board.title, "description": t.board.description,
                        "n": len(f), "measured": int((f["runs"] != "").sum()), "flagged": int((f["flag"] != "").sum())})
    write_text(out / "index.html", env.get_template("index.html.j2").render(boards=summary), resume=False)
    return out / "index.html"


def write_board_readme(table: BoardTable) -> Path | None:
    """``leaderboards/<board>/README.md``, the committed Markdown board."""
    if table.board.folder is None:
        return None
    path = table.board.folder / "README.md"
    write_text(path, render_markdown(table), resume=False, fix="make the board folder writable")
    return path
