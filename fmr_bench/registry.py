"""One generic registry class, and the registries of the package.

Entries are registered either eagerly (a decorator on a factory) or lazily as a
``"module:attr"`` string, so that ``fmr list`` and spec parsing never import heavy
backends.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import SpecError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    name: str
    target: Any  # a callable, or a "module:attr" string resolved on first use
    help: str = ""
    options: Any = None  # {name: specs.Option} the spec source accepts after "?"; None: not declared

    def load(self) -> Any:
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            return getattr(importlib.import_module(module), attr)
        return self.target


class Registry(Generic[T]):
    """A named collection of factories with duplicate checks and suggestions."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: Any = None, *, help: str = "", options: Any = None) -> Any:
        """Register ``target`` under ``name``; used bare it acts as a decorator.

        ``options`` is the table of ``?key=value`` options a spec source accepts
        (``{name: fmr_bench.specs.Option}``); spec parsing checks every option against it.
        """
        if target is None:
            def deco(fn: Callable[..., T]) -> Callable[..., T]:
                self.register(name, fn, help=help or (fn.__doc__ or "").strip().split("\n")[0], options=options)
                return fn
            return deco
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, target, help, options)
        return target

    def options(self, name: str) -> Any:
        """The option table of source ``name`` (``None`` when it declared none)."""
        entry = self._entries.get(name)
        return entry.options if entry is not None else None

    def get(self, name: str) -> Any:
        try:
            return self._entries[name].load()
        except KeyError:
            raise SpecError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(sorted(self._entries))}."

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def items(self) -> list[Entry]:
        return [self._entries[k] for k in sorted(self._entries)]


MODEL_SOURCES: Registry = Registry("model source")
ORACLE_SOURCES: Registry = Registry("oracle source")
GENERATORS: Registry = Registry("generator")
DATASETS: Registry = Registry("dataset source")
BUILTIN_MODELS: Registry = Registry("builtin model")
EVALUATORS: Registry = Registry("evaluator")
COMMANDS: Registry = Registry("command")
