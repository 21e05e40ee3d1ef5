"""Errors raised for bad input.

Every error a user can fix is an :class:`FmrBenchError`; its message is one line that
names the fix. The CLI prints it and exits with code 2.
"""

from __future__ import annotations


class FmrBenchError(Exception):
    """Base class for errors caused by input the user can correct."""

    exit_code = 2


class SpecError(FmrBenchError, ValueError):
    """A spec string (``source:ident``) is malformed or names an unknown source/item."""


class DataError(FmrBenchError):
    """A dataset path is missing, has the wrong layout, or holds unreadable files."""


class ClassMappingError(FmrBenchError):
    """The classes of a model cannot be mapped onto the classes of a dataset."""


class WeightsError(FmrBenchError):
    """Weights are missing (e.g. offline), corrupt, or do not fit the architecture."""


class SettingsError(FmrBenchError, ValueError):
    """A setting is out of its valid range (budget <= 0, unknown optimiser, ...)."""


class OutputError(FmrBenchError):
    """Results cannot be written (unwritable folder, full disk, foreign run folder)."""

    disk_full: bool = False


class InterruptedRun(FmrBenchError):
    """Ctrl-C stopped a run; what finished is on disk and the same command resumes it."""


class MissingDependencyError(FmrBenchError, ImportError):
    """An optional backend is not installed."""


def from_worker(e: FmrBenchError) -> FmrBenchError:
    """The error itself, without the traceback a DataLoader worker wraps around its message.

    A worker re-raises our errors in the main process as ``type(e)`` with "Caught X in
    DataLoader worker process 0. Original Traceback ..." around the message; the CLI must
    still print one line.
    """
    text = str(e)
    if "\n" not in text:
        return e
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # the last line is "module.ErrorType: message"
    return type(e)(lines[-1].split(": ", 1)[-1] if lines else text)


def first_line(error: BaseException, limit: int = 400) -> str:
    """The first line of ``error``'s message (its type name when it has none), for quoting a
    library's error inside one of ours; past ``limit`` characters it is cut at a word boundary
    and ends with ``…``, never mid-word."""
    lines = str(error).strip().splitlines()
    text = lines[0].strip() if lines else type(error).__name__
    if len(text) <= limit:
        return text
    return text[:limit + 1].rsplit(" ", 1)[0].rstrip(" ,;:") + " …"
