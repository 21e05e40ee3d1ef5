"""The ``fmr`` command line: the entry point (:mod:`.main`), the sub-command registry
(:mod:`.commands`), shared argument groups (:mod:`.common`, :mod:`.static_options`) and one
module per command."""

from __future__ import annotations

from .main import build_parser, main

__all__ = ["build_parser", "main"]
