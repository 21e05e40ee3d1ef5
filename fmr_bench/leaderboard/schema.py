"""Board and entry definitions (``leaderboards/<board>/board.json``, ``entries/<name>.json``).

A board says what is measured (tasks: evaluator, data, settings), what is shown (columns,
sort key, plots) and how far a measured number may stray from a reported one before the
entry is flagged. An entry is one model with its provenance, RobustBench style: reported
numbers carry their source table, measured ones name the model spec to run.

Everything here is plain dataclasses with explicit checks; every problem is a
:class:`BoardError` whose one-line message names the file and the fix.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FmrBenchError

STATUSES = ("reported", "measured", "both")
#: Task of boards whose entries are fine-tuning methods: read from ``finetune`` records
#: (:func:`fmr_bench.results.record.finetune_record`), written by the script an entry's ``measured_by`` names.
FINETUNE_EVALUATOR = "finetune"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class BoardError(FmrBenchError):
    """A board definition, an entry or the records of a board are inconsistent."""


@dataclass(frozen=True)
class Task:
    """One evaluation every measurable entry of the board gets.

    Attributes:
        evaluator: ``fmr`` or a static evaluator name (``fmr list evaluators``).
        data: dataset spec; ``${VAR}`` is read from the environment when the board is run.
        ood: further dataset specs (static evaluators).
        settings: keyword settings (``limit``, ``budget``, ``batch_size``...).
        options: static-evaluator options (``baseline=``, ``scores=``...).
    """

    evaluator: str
    data: str = "digits"
    ood: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Column:
    """One number shown per entry.

    Attributes:
        key: column id, also the key of an entry's reported values.
        label: header text.
        evaluator: the task whose record gives the measured value (``None``: reported only).
        metric: key in that record's metrics (default: ``key``).
        fmt: Python format spec for Markdown and HTML.
        higher_is_better: direction, for the sort and the plots.
        mean_of: column keys this column is the mean of (computed by the build, for
            entries that have all of them; marked "computed" in headers).
        average_of: column keys a paper's own average in this column is the mean of: not
            computed, but checked at build time against the entry's reported values of them.
        ratio_of: ``[numerator, denominator]``: the reported value must be 100 * num / den
            (FMR = 100 * PA / SA), checked at build time.
    """

    key: str
    label: str
    evaluator: str | None = None
    metric: str | None = None
    fmt: str = ".2f"
    higher_is_better: bool = True
    mean_of: tuple[str, ...] = ()
    average_of: tuple[str, ...] = ()
    ratio_of: tuple[str, ...] = ()

    @property
    def metric_key(self) -> str:
        return self.metric or self.key


@dataclass(frozen=True)
class Plot:
    """A figure of the board: ``kind`` is a name in :data:`fmr_bench.leaderboard.plots.PLOTS`."""

    kind: str
    x: str | None = None
    y: tuple[str, ...] = ()
    title: str = ""


@dataclass(frozen=True)
class Board:
    """A leaderboard definition (``board.json``)."""

    name: str
    title: str
    description: str
    protocol_version: str
    columns: tuple[Column, ...]
    sort: str
    descending: bool = True
    tasks: tuple[Task, ...] = ()
    plots: tuple[Plot, ...] = ()
    tolerance: float = 1.0
    folder: Path | None = None

    def column(self, key: str) -> Column:
        for c in self.columns:
            if c.key == key:
                return c
        raise KeyError(key)


@dataclass(frozen=True)
class Paper:
    title: str
    venue: str
    url: str = ""
    authors: str = ""


#: A paper id names its year; a table id is "Table 2", "Tables 3 and 4", "Figure 5", "Fig. 3a".
_YEAR = re.compile(r"\b(19|20)\d\d\b")
_TABLE = re.compile(r"^(Table|Tables|Figure|Figures|Fig\.)\s*[A-Za-z]?\d")


@dataclass(frozen=True)
class Source:
    """Where reported numbers stand: the paper (authors, venue and year), its table or figure, and the row."""

    paper: str
    table: str
    row: str
    note: str = ""

    @property
    def text(self) -> str:
        return f"{self.paper}, {self.table}, row {self.row!r}" + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class Reported:
    """Numbers copied from a paper: column key -> value, and where they stand.

    ``as_printed``: column key -> why a number that fails the board's arithmetic check
    (``ratio_of``, ``average_of``) is kept as the paper prints it.
    """

    values: dict[str, float | None]
    source: Source
    protocol_version: str
    note: str = ""
    as_printed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Size:
    """Size and speed (FMR paper App. N). ``None`` where not known."""

    params_m: float | None = None
    gflops: float | None = None
    images_per_s: float | None = None
    speed_device: str = ""


@dataclass(frozen=True)
class Entry:
    """One model on a board, with its provenance."""

    name: str
    paper: Paper
    architecture: str
    pretraining_data: str
    extra_data: str
    status: str
    model: str | None = None
    reported: Reported | None = None
    size: Size = Size()
    group: str = ""
    notes: str = ""
    path: Path | None = None
    #: Fine-tuning boards: the method whose ``finetune:<method>`` record this entry reads.
    method: str | None = None
    #: The command that measures this entry when ``fmr leaderboard run`` does not (fine-tuning tables).
    measured_by: str = ""
    #: The model's weights hash (``weights_sha256_16`` of its records) every record of the entry must carry.
    weights: str | None = None

    @property
    def measurable(self) -> bool:
        return self.status in ("measured", "both")


# --- parsing ---------------------------------------------------------------------------------

def _read(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except OSError as e:
        raise BoardError(f"cannot read {path} ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise BoardError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); fix the file") from None
    if not isinstance(obj, dict):
        raise BoardError(f"{path} must hold a JSON object")
    return obj


class _Fields:
    """Typed reads from one JSON object, each failure naming the file and the key."""

    def __init__(self, obj: dict[str, Any], where: str, allowed: set[str]) -> None:
        self.obj, self.where = obj, where
        extra = set(obj) - allowed
        if extra:
            raise BoardError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; valid: {', '.join(sorted(allowed))}")

    def req(self, key: str, kind: type | tuple[type, ...] = str, fix: str = "") -> Any:
        v = self.obj.get(key)
        if v is None or v == "":
            raise BoardError(f"{self.where}: missing {key!r}" + (f"; {fix}" if fix else ""))
        return self._check(key, v, kind)

    def opt(self, key: str, default: Any, kind: type | tuple[type, ...] = str) -> Any:
        v = self.obj.get(key, default)
        return default if v is None else self._check(key, v, kind)

    def _check(self, key: str, v: Any, kind: type | tuple[type, ...]) -> Any:
        if kind is float:
            kind = (int, float)
        if not isinstance(v, kind) or isinstance(v, bool) and kind != bool:
            raise BoardError(f"{self.where}: {key!r} has the wrong type ({type(v).__name__}); fix the file")
        return v


def _number(v: Any, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BoardError(f"{where}: {v!r} is not a number; write numbers as JSON numbers (null when not reported)")
    return float(v)


def parse_board(obj: dict[str, Any], where: str, folder: Path | None = None) -> Board:
    f = _Fields(obj, where, {"name", "title", "description", "protocol_version", "columns", "sort", "descending",
                             "tasks", "plots", "tolerance"})
    name = f.req("name")
    if not _NAME.match(name):
        raise BoardError(f"{where}: board name {name!r} must be lower-case letters, digits, '.', '-', '_'")
    columns = []
    for i, c in enumerate(f.req("columns", list)):
        cf = _Fields(c, f"{where}: columns[{i}]", {"key", "label", "evaluator", "metric", "format", "higher_is_better",
                                                         "mean_of", "average_of", "ratio_of"})
        columns.append(Column(cf.req("key"), cf.opt("label", cf.req("key")), cf.opt("evaluator", None),
                              cf.opt("metric", None), cf.opt("format", ".2f"), cf.opt("higher_is_better", True, bool),
                              tuple(cf.opt("mean_of", [], list)), tuple(cf.opt("average_of", [], list)),
                              tuple(cf.opt("ratio_of", [], list))))
    keys = [c.key for c in columns]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise BoardError(f"{where}: column key(s) {', '.join(sorted(dup))} appear twice; give each column its own key")
    tasks = []
    for i, t in enumerate(f.opt("tasks", [], list)):
        tf = _Fields(t, f"{where}: tasks[{i}]", {"evaluator", "data", "ood", "settings", "options"})
        tasks.append(Task(tf.req("evaluator"), tf.opt("data", "digits"), tuple(tf.opt("ood", [], list)),
                          dict(tf.opt("settings", {}, dict)), dict(tf.opt("options", {}, dict))))
    plots = []
    for i, p in enumerate(f.opt("plots", [], list)):
        pf = _Fields(p, f"{where}: plots[{i}]", {"kind", "x", "y", "title"})
        y = pf.opt("y", [], (list, str))
        plots.append(Plot(pf.req("kind"), pf.opt("x", None), tuple([y] if isinstance(y, str) else y),
                          pf.opt("title", "")))
    sort = f.req("sort", fix="name the column key to rank by")
    board = Board(name, f.opt("title", name), f.opt("description", ""), f.req("protocol_version"), tuple(columns),
                  sort, f.opt("descending", True, bool), tuple(tasks), tuple(plots), float(f.opt("tolerance", 1.0, float)),
                  folder)
    check_board(board, where)
    return board


def check_board(board: Board, where: str) -> None:
    """Names that must exist: evaluators, columns the sort and plots use, task evaluators of columns."""
    from ..evaluators import TASKS
    from .plots import PLOTS

    keys = {c.key for c in board.columns}
    if board.sort not in keys:
        raise BoardError(f"{where}: sort key {board.sort!r} is not a column; use one of {', '.join(sorted(keys))}")
    task_evaluators = set()
    for t in board.tasks:
        if t.evaluator != FINETUNE_EVALUATOR and t.evaluator not in TASKS:
            raise BoardError(f"{where}: {TASKS.unknown_message(t.evaluator)} (or 'finetune'); fix the "
                             "task's evaluator")
        if t.evaluator in task_evaluators:
            raise BoardError(f"{where}: evaluator {t.evaluator!r} appears in two tasks; give each evaluator one task")
        task_evaluators.add(t.evaluator)
    for c in board.columns:
        if c.evaluator is not None and c.evaluator not in task_evaluators:
            raise BoardError(f"{where}: column {c.key!r} reads evaluator {c.evaluator!r}, which no task runs; "
                             "add the task or drop 'evaluator' from the column")
        if c.mean_of and (c.evaluator or set(c.mean_of) - keys or c.key in c.mean_of
                          or any(board.column(k).mean_of for k in c.mean_of if k in keys)):
            raise BoardError(f"{where}: column {c.key!r}: mean_of must list other, non-computed columns of the board "
                             "and the column must not read an evaluator")
        for what, keys_of, size in (("average_of", c.average_of, None), ("ratio_of", c.ratio_of, 2)):
            if keys_of and (set(keys_of) - keys or c.key in keys_of or (size and len(keys_of) != size) or c.mean_of
                            or any(board.column(k).mean_of for k in keys_of if k in keys)):
                raise BoardError(f"{where}: column {c.key!r}: {what} must list "
                                 + ("[numerator, denominator]" if size else "other") + " reported columns of the board "
                                 "(not computed ones)")
        try:
            format(1.0, c.fmt)
        except ValueError:
            raise BoardError(f"{where}: column {c.key!r} has format {c.fmt!r}, not a Python number format such as .2f")
    for p in board.plots:
        if p.kind not in PLOTS:
            raise BoardError(f"{where}: {PLOTS.unknown_message(p.kind)}")
        for k in ([p.x] if p.x else []) + list(p.y):
            if k not in keys:
                raise BoardError(f"{where}: plot {p.kind!r} uses {k!r}, which is not a column of the board")


def check_model_spec(spec: str, where: str) -> None:
    """A model spec must name a known source (and a shipped model for ``builtin:``)."""
    from ..models import MODEL_SOURCES
    from ..specs import parse_spec

    try:
        parsed = parse_spec(spec, MODEL_SOURCES, what="model")
    except FmrBenchError as e:
        raise BoardError(f"{where}: {e}") from None
    if parsed.source == "builtin":
        from ..registry import BUILTIN_MODELS

        if parsed.ident not in BUILTIN_MODELS:
            raise BoardError(f"{where}: {BUILTIN_MODELS.unknown_message(parsed.ident)}")


def parse_entry(obj: dict[str, Any], where: str, board: Board, path: Path | None = None) -> Entry:
    f = _Fields(obj, where, {"name", "paper", "architecture", "pretraining_data", "extra_data", "status", "model",
                             "reported", "size", "group", "notes", "method", "measured_by", "weights"})
    fix = "every entry needs provenance: name, paper {title, venue}, architecture, pretraining_data, extra_data, status"
    name = f.req("name", fix=fix)
    paper_obj = f.req("paper", dict, fix=fix)
    pf = _Fields(paper_obj, f"{where}: paper", {"title", "venue", "url", "authors"})
    paper = Paper(pf.req("title", fix=fix), pf.req("venue", fix=fix + " (write 'unpublished' if so)"),
                  pf.opt("url", ""), pf.opt("authors", ""))
    status = f.req("status", fix=f"one of {', '.join(STATUSES)}")
    if status not in STATUSES:
        raise BoardError(f"{where}: status {status!r} must be one of {', '.join(STATUSES)}")
    model = f.opt("model", None)
    if status in ("measured", "both") and not model:
        raise BoardError(f"{where}: a {status} entry needs 'model' (the spec to run, e.g. builtin:digits-cnn)")
    if model:
        check_model_spec(model, where)
    method, measured_by = f.opt("method", None), f.opt("measured_by", "")
    finetune_board = any(t.evaluator == FINETUNE_EVALUATOR for t in board.tasks)
    if finetune_board and status in ("measured", "both") and not (method and measured_by):
        raise BoardError(f"{where}: a {status} entry of a fine-tuning board needs 'method' (the row of its records, "
                         "e.g. lp) and 'measured_by' (the command that writes them)")
    if method and not finetune_board:
        raise BoardError(f"{where}: 'method' needs a board task with evaluator 'finetune'; drop it or add the task")
    reported = None
    rep = f.opt("reported", None, dict)
    if status in ("reported", "both") and rep is None:
        raise BoardError(f"{where}: a {status} entry needs 'reported' {{values, source, protocol_version}}")
    if status == "measured" and rep is not None:
        raise BoardError(f"{where}: a measured entry with reported numbers: set status to 'both'")
    if rep is not None:
        reported = _parse_reported(rep, where, board)
    size = _parse_size(f.opt("size", {}, dict), where)
    weights = f.opt("weights", None)
    if weights is not None and not re.fullmatch(r"[0-9a-f]{16}", weights):
        raise BoardError(f"{where}: 'weights' must be the 16 hex digits of the model's weights_sha256_16 "
                         f"(got {weights!r}); copy it from the model's record")
    return Entry(name, paper, f.req("architecture", fix=fix), f.req("pretraining_data", fix=fix),
                 f.req("extra_data", fix=fix + " ('none' if none)"), status, model, reported, size,
                 f.opt("group", ""), f.opt("notes", ""), path, method, measured_by, weights)


def _parse_reported(rep: dict[str, Any], where: str, board: Board) -> Reported:
    """An entry's ``reported`` block: values that are columns of ``board`` (not computed ones), their
    structured source, the protocol they follow, and why any is kept as printed."""
    rf = _Fields(rep, f"{where}: reported", {"values", "source", "protocol_version", "note", "as_printed"})
    source = parse_source(rf.req("source", (dict, str), fix=_SOURCE_FIX), f"{where}: reported.source")
    values = {k: _number(v, f"{where}: reported.values.{k}") for k, v in rf.req("values", dict).items()}
    keys = {c.key for c in board.columns}
    stray = set(values) - keys
    if stray:
        raise BoardError(f"{where}: reported value(s) {', '.join(sorted(stray))} are not columns of board "
                         f"{board.name}; valid: {', '.join(sorted(keys))}")
    computed = {k for k in values if board.column(k).mean_of}
    if computed:
        raise BoardError(f"{where}: {', '.join(sorted(computed))} are computed by the build (mean_of); "
                         "report their inputs instead")
    as_printed = rf.opt("as_printed", {}, dict)
    bad = [k for k, why in as_printed.items() if k not in values or not isinstance(why, str) or not why.strip()]
    if bad:
        raise BoardError(f"{where}: reported.as_printed {', '.join(sorted(bad))}: each key must be a reported "
                         "value and its text say why the paper's number is kept as printed")
    return Reported(values, source, rf.req("protocol_version", fix="name the protocol the numbers follow"),
                    rf.opt("note", ""), dict(as_printed))


def _parse_size(size_obj: dict[str, Any], where: str) -> Size:
    """An entry's ``size`` block: parameters, GFLOPs and throughput (which needs the device it was measured on)."""
    sf = _Fields(size_obj, f"{where}: size", {"params_m", "gflops", "images_per_s", "speed_device"})
    size = Size(_number(size_obj.get("params_m"), f"{where}: size.params_m"),
                _number(size_obj.get("gflops"), f"{where}: size.gflops"),
                _number(size_obj.get("images_per_s"), f"{where}: size.images_per_s"), sf.opt("speed_device", ""))
    if size.images_per_s is not None and not size.speed_device:
        raise BoardError(f"{where}: size.images_per_s needs speed_device (the idle machine it was measured on)")
    return size


_SOURCE_FIX = ("write the source as {\"paper\": \"Authors, Venue Year\", \"table\": \"Table 2\", \"row\": \"the row's "
               "label\"} (see docs/leaderboards.md)")


def parse_source(obj: dict[str, Any] | str, where: str) -> Source:
    """A structured source: ``paper`` naming its year, ``table`` ("Table 2", "Figure 3"), ``row``, optional ``note``."""
    if isinstance(obj, str):
        raise BoardError(f"{where}: {obj!r} is free text; {_SOURCE_FIX}")
    sf = _Fields(obj, where, {"paper", "table", "row", "note"})
    paper, table, row = (sf.req(k, fix=_SOURCE_FIX) for k in ("paper", "table", "row"))
    if not _YEAR.search(paper):
        raise BoardError(f"{where}: paper {paper!r} does not name a paper: give its authors, venue and year, "
                         "e.g. 'Zhang et al., ICLR 2024'")
    if not row.strip():
        raise BoardError(f"{where}: row {row!r} names no row: give the row's label as the table prints it")
    if not _TABLE.match(table):
        raise BoardError(f"{where}: table {table!r} names no table or figure: write e.g. 'Table 2' or 'Figure 3'")
    return Source(paper.strip(), table.strip(), row.strip(), sf.opt("note", ""))


def load_board(folder: str | Path) -> tuple[Board, list[Entry]]:
    """Read and check ``folder/board.json`` and every ``folder/entries/*.json``.

    Raises:
        BoardError: for a missing or malformed file, unknown names, missing provenance,
            a reported entry without a source, or two entries with the same name.
    """
    folder = Path(folder)
    bfile = folder / "board.json"
    if not bfile.is_file():
        raise BoardError(f"{folder} has no board.json; see docs/leaderboards.md for the layout")
    board = parse_board(_read(bfile), str(bfile), folder)
    if board.name != folder.name:
        raise BoardError(f"{bfile}: name {board.name!r} differs from its folder {folder.name!r}; make them equal")
    entries: list[Entry] = []
    seen: dict[str, Path] = {}
    models: dict[tuple[str | None, str | None], Path] = {}
    for path in sorted((folder / "entries").glob("*.json")):
        e = parse_entry(_read(path), str(path), board, path)
        if e.name in seen:
            raise BoardError(f"{path}: entry name {e.name!r} is also used by {seen[e.name]}; give each entry its own name")
        key = (e.model, e.method)  # fine-tuning boards: one base model, one entry per method
        if e.measurable and key in models:
            raise BoardError(f"{path}: model {e.model!r}" + (f" with method {e.method!r}" if e.method else "") +
                             f" is also measured by {models[key]}; keep one entry per model spec")
        seen[e.name] = path
        models.update({key: path} if e.measurable else {})
        entries.append(e)
    if not entries:
        raise BoardError(f"{folder}/entries holds no entry; add one JSON file per model")
    return board, entries


def expand(text: str, where: str) -> str:
    """``${VAR}`` from the environment; an unset one is an error naming it."""
    def sub(m: re.Match) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            raise BoardError(f"{where}: set the environment variable {m.group(1)} (e.g. export "
                             f"{m.group(1)}=/data/...) to run this board")
        return value

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, text)
