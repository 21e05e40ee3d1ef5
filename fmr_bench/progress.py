"""Progress of long loops: done/total, rate, elapsed time and ETA, on a terminal or in a log.

:class:`Progress` is the one progress display of ``fmr evaluate``, ``fmr finetune`` and
``fmr leaderboard run`` (and of each torchrun rank). On a terminal (or in Jupyter) it is
a rich bar redrawn in place; when its stream is a file or a pipe (``fmr ... > log 2>&1``,
a SLURM job's output) it prints a plain line each time another :data:`PLAIN_STEP` of the
total is done, and at the end::

    FMR: 120/500 samples (24%), 3.10 img/s, elapsed 0:00:38, ETA 0:02:02

The rate counts only the work done since the display started, so samples resumed from
a run folder do not inflate it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import IO, Any

#: Share of the total between two plain lines (a log file gets about 20 lines per loop).
PLAIN_STEP = 0.05


def rate_bar(label: str, *extra: str, console: Any = None, unit: str = "img"):
    """A rich ``Progress`` with ``label`` (a column template), a bar, done/total, the task's
    ``rate`` field in ``unit``/s, ``extra`` text columns (templates), elapsed time and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress as RichProgress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return RichProgress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]} " + unit + "/s"),
                        *(TextColumn(e) for e in extra), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=console, transient=False)


def interactive(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: stderr) is a terminal or a Jupyter output, where a bar can redraw."""
    from rich.console import Console

    console = Console(file=stream or sys.stderr)
    return console.is_terminal or console.is_jupyter


def clock(seconds: float | None) -> str:
    """``H:MM:SS`` (``-`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """A progress display for ``total`` items, ``done`` of them already finished.

    Args:
        label: what runs (``FMR``, ``train``, ``rank 1/4``).
        total, done: items in all, and finished before this display started (resumed).
        noun, unit: what the items are in a plain line (``samples``) and in the rate (``img``/s).
        fields: names of extra values shown after the rate (passed to :meth:`update`).
        stream: where it writes (default stderr).
        plain: force plain lines (True) or a rich bar (False); default: a bar on a terminal.
        step: share of the total between plain lines.
        suffix: called for more text at the end of each plain line (a torchrun job's total).
    """

    def __init__(self, label: str, total: int, done: int = 0, *, noun: str = "samples", unit: str = "img",
                 fields: tuple[str, ...] = (), stream: IO[str] | None = None, plain: bool | None = None,
                 step: float = PLAIN_STEP, suffix: Callable[[], str] | None = None) -> None:
        self.label, self.total, self.done = label, total, done
        self.noun, self.unit, self.field_names = noun, unit, fields
        self.fields: dict[str, Any] = {k: "-" for k in fields}
        self.stream = stream
        self.plain = plain
        self.step, self.suffix = step, suffix
        self._bar = self._task = None
        self._start = self._start_done = None
        self._next = 0
        self._printed_at: int | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Progress:
        self._start, self._start_done = time.monotonic(), self.done
        plain = self.plain if self.plain is not None else not interactive(self.stream)
        if not plain:
            from rich.console import Console

            self._bar = rate_bar(self.label, *(f"{k} {{task.fields[{k}]}}" for k in self.field_names),
                                 console=Console(file=self.stream or sys.stderr), unit=self.unit)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.done, rate="-",
                                            **self.fields)
        else:
            self._next = self._threshold(self.done)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
        elif exc[0] is None and self._printed_at != self.done and self.done > (self._start_done or 0):
            self._print()  # the last line says where the loop ended

    # ------------------------------------------------------------------ updates
    def advance(self, n: int = 1, **fields: Any) -> None:
        self.update(self.done + n, **fields)

    def update(self, done: int | None = None, *, total: int | None = None, **fields: Any) -> None:
        if self._start is None:  # used without ``with``: the clock starts at the first update
            self._start, self._start_done = time.monotonic(), self.done if done is None else done
            self._next = self._threshold(self._start_done)
        if done is not None:
            self.done = done
        if total is not None:
            self.total = total
        self.fields.update(fields)
        if self._bar is not None:
            rate = self.rate()
            self._bar.update(self._task, completed=self.done, total=self.total,
                             rate="-" if rate is None else f"{rate:.2f}", **self.fields)
        elif self.done != self._printed_at and self.done >= min(self._next, self.total):
            self._print()

    # ------------------------------------------------------------------ text
    def rate(self) -> float | None:
        """Items per second since the display started (None before the first one)."""
        elapsed = time.monotonic() - (self._start or time.monotonic())
        worked = self.done - (self._start_done or 0)
        return worked / elapsed if worked > 0 and elapsed > 0 else None

    def line(self) -> str:
        """The plain line: ``LABEL: done/total noun (pct), rate, fields, elapsed, ETA``."""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.label}: {self.done}/{self.total} {self.noun}{pct}"]
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:.2f} {self.unit}/s")
        parts += [f"{k} {v}" for k, v in self.fields.items()]
        parts.append(f"elapsed {clock(time.monotonic() - (self._start or time.monotonic()))}")
        parts.append(f"ETA {clock((self.total - self.done) / rate if rate else None)}")
        return ", ".join(parts) + (self.suffix() if self.suffix is not None else "")

    def _threshold(self, done: int) -> int:
        """The count at which the next plain line is due: another ``step`` of the total on."""
        return done + max(1, math.ceil(self.step * self.total - 1e-9))

    def _print(self) -> None:
        self._printed_at = self.done
        self._next = self._threshold(self.done)
        print(self.line(), file=self.stream or sys.stderr, flush=True)


__all__ = ["PLAIN_STEP", "Progress", "clock", "interactive", "rate_bar"]


def dataset_passes():
    """The static evaluators' progress callback ``(dataset spec, done, total)``: one
    :class:`~fmr_bench.progress.Progress` per pass over a dataset."""
    bars: dict[str, Progress] = {}

    def update(spec: str, done: int, total: int) -> None:
        bar = bars.get(spec)
        if bar is None or done < bar.done:  # a new pass (another head of a zero-shot model)
            if bar is not None:
                bar.__exit__(None, None, None)
            bar = bars[spec] = Progress(spec, total, 0, noun="images").__enter__()
        bar.update(done, total=total)
        if done >= total:
            bar.__exit__(None, None, None)
            del bars[spec]

    return update
