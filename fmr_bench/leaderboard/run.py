"""``fmr leaderboard run``: evaluate every measurable entry of a board, then rebuild it.

Runs go to ``<board>/runs/`` through the public entry points (:func:`fmr_bench.evaluate`
for the FMR task, :func:`fmr_bench.run_evaluator` for static ones), so they resume as
those do; a task whose record is already there is skipped. Model size (parameters and
FLOPs of one forward pass) is counted once per model into ``runs/sizes.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .schema import FINETUNE_EVALUATOR, Board, BoardError, Entry, expand, load_board
from .table import RUNS, SIZES, BoardTable, build_table, measured_records


def count_size(model: str) -> dict[str, float]:
    """Parameters (millions) and GFLOPs of one forward pass on one image at the model's input size.

    FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is
    two FLOPs), so GFLOPs here are twice the "GMACs" some tables print.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..models import load_model

    clf = load_model(model).eval()
    params = sum(p.numel() for p in clf.net.parameters())
    h, w = clf.preprocess.input_size
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        clf.net(torch.zeros(1, 3, h, w))
    return {"params_m": float(f"{params / 1e6:.6g}"), "gflops": float(f"{counter.get_total_flops() / 1e9:.6g}")}


def _run_task(board: Board, entry: Entry, task, runs: Path, progress: bool = True) -> None:
    where = f"{board.folder}/board.json task {task.evaluator}"
    data = expand(task.data, where)
    from ..evaluators import TASKS

    TASKS.get(task.evaluator).run(entry.model, data, [expand(o, where) for o in task.ood], out=runs, grid=False,
                                  progress=progress, options=task.options, **task.settings)



def run_board(folder: str | Path, *, log: Callable[[str], None] = print, progress: bool = True) -> BoardTable:
    """Measure what is missing on the board in ``folder`` and rebuild its README.

    Each task's line ends in ``[k/N]``; ``progress`` shows each run's progress
    (:class:`fmr_bench.progress.Progress`: a bar, or plain lines in a log).

    Raises:
        BoardError: a board without tasks or measurable entries, or an invalid definition.
        FmrBenchError: from the runs themselves (finished work stays on disk).
    """
    from .render import write_board_readme

    board, entries = load_board(folder)
    todo = [e for e in entries if e.measurable]
    if not board.tasks or not todo:
        raise BoardError(f"board {board.name} has no tasks or no measured entries, so there is nothing to run; "
                         "use `fmr leaderboard build` to render it")
    runs = Path(folder) / RUNS
    if any(t.evaluator == FINETUNE_EVALUATOR for t in board.tasks):  # training is a script's job, not the runner's
        commands = sorted({e.measured_by for e in todo})
        raise BoardError(f"board {board.name} is measured by `{'`, `'.join(commands)}`; run that, put its records "
                         f"in {runs}, then `fmr leaderboard build {board.name}`")
    n, k = len(todo) * len(board.tasks), 0
    for entry in todo:
        for task in board.tasks:
            k += 1
            if (entry.model, task.evaluator, entry.method) in measured_records(board, entries, runs):
                log(f"skip  {entry.name} / {task.evaluator}: finished run in {runs} [{k}/{n}]")
                continue
            log(f"run   {entry.name} / {task.evaluator} ({entry.model} on {task.data}) [{k}/{n}]")
            _run_task(board, entry, task, runs, progress=progress)
    sizes_path = runs / SIZES
    sizes: dict[str, Any] = json.loads(sizes_path.read_text()) if sizes_path.is_file() else {}
    for entry in todo:
        if entry.model not in sizes:
            sizes[entry.model] = count_size(entry.model)
    from ..files import write_text

    write_text(sizes_path, json.dumps(sizes, indent=2, sort_keys=True) + "\n", fix="make the board folder writable")
    table = build_table(board, entries)
    write_board_readme(table)
    return table
