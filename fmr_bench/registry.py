"""One generic registry class, and the registries of the package.

Two ways to register, no others:

* eagerly, ``@REG.register("name", help=...)`` on a definition (or ``REG.register("name", obj)``
  for an object that is not a definition of its own);
* lazily, ``REG.register("name", "module:attr", help=...)``: the module is imported on first
  use (``"module"`` alone stands for the module itself), so ``fmr list`` and spec parsing never
  import heavy backends.

A registry knows the modules that fill it (its ``providers``): the first lookup imports them
(:meth:`Registry.load_all`), so no caller imports a package for its side effect.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import SpecError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    name: str
    target: Any  # a callable, or a "module:attr" string resolved on first use
    help: str = ""
    options: Any = None  # {name: specs.Option} the spec source accepts after "?"; None: not declared

    def load(self) -> Any:
        """The registered object; a ``"module:attr"`` target is imported here (``"module"``: the module)."""
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            loaded = importlib.import_module(module)
            return getattr(loaded, attr) if attr else loaded
        return self.target


class Registry(Generic[T]):
    """A named collection of factories with duplicate checks and suggestions.

    Args:
        kind: what an entry is, for messages (``"generator"``).
        providers: modules whose import registers the entries; imported on the first lookup.
    """

    def __init__(self, kind: str, providers: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.providers = tuple(providers)
        self._entries: dict[str, Entry] = {}
        self._loaded = not self.providers

    def load_all(self) -> Registry[T]:
        """Import the provider modules (once), so that every entry is registered; returns self."""
        if not self._loaded:
            for module in self.providers:
                importlib.import_module(module)
            self._loaded = True
        return self

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
        entry = self.entry(name, None)
        return entry.options if entry is not None else None

    def entry(self, name: str, missing: Any = ...) -> Entry:
        """The :class:`Entry` of ``name`` (target not loaded); unknown: ``missing`` if given, else a SpecError."""
        self.load_all()
        if name in self._entries:
            return self._entries[name]
        if missing is not ...:
            return missing
        raise SpecError(self.unknown_message(name))

    def get(self, name: str) -> Any:
        return self.entry(name).load()

    def unknown_message(self, name: str) -> str:
        self.load_all()
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(sorted(self._entries))}."

    def usage(self) -> str:
        """The entries' spec forms for a flag's help: each help's text before " — " (else the name),
        without its ``?options`` (``fmr list`` shows those)."""
        forms = (e.help.partition(" — ")[0] if " — " in e.help else e.name for e in self.items())
        return ", ".join(f.partition("[?")[0].partition("?")[0] for f in forms)

    def __contains__(self, name: object) -> bool:
        self.load_all()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self.load_all()
        return iter(sorted(self._entries))

    def items(self) -> list[Entry]:
        self.load_all()
        return [self._entries[k] for k in sorted(self._entries)]


MODEL_SOURCES: Registry = Registry("model source", ("fmr_bench.models",))
ORACLE_SOURCES: Registry = Registry("oracle source", ("fmr_bench.oracles",))
GENERATORS: Registry = Registry("generator", ("fmr_bench.generators",))
DATASETS: Registry = Registry("dataset source", ("fmr_bench.datasets",))
BUILTIN_MODELS: Registry = Registry("builtin model", ("fmr_bench.models.builtin",))
EVALUATORS: Registry = Registry("evaluator", ("fmr_bench.evaluators",))
COMMANDS: Registry = Registry("command", ("fmr_bench.cli.commands",))
