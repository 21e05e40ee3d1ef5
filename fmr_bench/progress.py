"""The rich progress bar every long loop shows: done/total, images/s, elapsed and ETA."""

from __future__ import annotations

from typing import Any


def rate_bar(label: str, *extra: str, console: Any = None):
    """A rich ``Progress`` with ``label`` (a column template), a bar, done/total, the task's
    ``rate`` field in img/s, ``extra`` text columns (templates), elapsed time and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} img/s"),
                    *(TextColumn(e) for e in extra), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, transient=False)
