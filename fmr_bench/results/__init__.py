"""Results: the typed record (:mod:`.record`), the run folder protocol (:mod:`.rundir`: folder,
lock, outcome writer, torn-line repair, set-aside), shards and their merge (:mod:`.shards`),
and records as one table (:mod:`.table`)."""

from __future__ import annotations

from .record import Record, RecordError, load_record
from .rundir import FmrResult
from .table import load_results

__all__ = ["FmrResult", "Record", "RecordError", "load_record", "load_results"]
