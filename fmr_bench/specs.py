"""Parsing of ``source:ident[?key=value&...]`` spec strings (no heavy imports).

Examples: ``timm:resnet50``, ``timm:resnet50?weights=/ckpt/resnet50.safetensors``,
``openclip:ViT-B-32/openai``, ``file:runs/model.safetensors``, ``builtin:digits-cnn``,
``imagenet:/data/imagenet/val``, ``digits``, ``vqgan``, ``sparse-vqgan:mask.json``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from .errors import SpecError
from .registry import Registry


@dataclass(frozen=True)
class Spec:
    """A parsed spec: ``source``, optional ``ident`` and ``options``."""

    source: str
    ident: str = ""
    options: tuple[tuple[str, str], ...] = field(default=())

    @property
    def opts(self) -> dict[str, str]:
        return dict(self.options)

    def __str__(self) -> str:
        text = f"{self.source}:{self.ident}" if self.ident else self.source
        if self.options:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.options)
        return text


@dataclass(frozen=True)
class Option:
    """One ``?key=value`` option a spec source accepts: its type, range and default.

    Every source declares a table ``{name: Option}`` when it registers, and
    :func:`parse_spec` checks each option against it, so a typo or a bad value is one
    line naming the fix before any work starts (never a ``float()`` traceback mid-run).

    Attributes:
        kind: ``"float"``, ``"int"``, ``"bool"`` (0/1/true/false), ``"str"``, ``"path"``
            or ``"choice"`` (one of ``choices``).
        default: the value when the option is absent.
        low, high: inclusive bounds for numbers; ``low_open`` / ``high_open`` make them strict.
        choices: the valid values of a ``"choice"`` option.
        convert: for values no kind covers, a function ``str -> value`` raising ``ValueError``.
        expect: what a valid value looks like (for ``convert`` options).
        example: a valid value, used in the fix the error names.
        help: one line for ``fmr list``.
    """

    kind: str = "str"
    default: Any = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    convert: Callable[[str], Any] | None = None
    expect: str = ""
    example: str = ""
    help: str = ""

    def describe(self) -> str:
        """What a valid value looks like, e.g. ``"a number > 0 and <= 1"``."""
        if self.expect:
            return self.expect
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "0 or 1 (or true / false)"
        if self.kind in ("str", "path"):
            return "a non-empty " + ("path" if self.kind == "path" else "text")
        text = "an integer" if self.kind == "int" else "a number"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return text + (" " + " and ".join(bounds) if bounds else "")

    def parse(self, text: str) -> Any:
        """The typed value of ``text``; raises ``ValueError`` when it is not valid."""
        text = text.strip()
        if self.convert is not None:
            return self.convert(text)
        if self.kind in ("str", "path"):
            if not text:
                raise ValueError(text)
            return text
        if self.kind == "choice":
            if text not in self.choices:
                raise ValueError(text)
            return text
        if self.kind == "bool":
            if text.lower() not in ("0", "1", "true", "false"):
                raise ValueError(text)
            return text.lower() in ("1", "true")
        value: float | int = int(text) if self.kind == "int" else float(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(text)
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise ValueError(text)
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise ValueError(text)
        return value


def parse_options(spec: Spec, table: Mapping[str, Option], *, what: str,
                  defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The typed options of ``spec`` checked against ``table``, absent ones at their default.

    Args:
        spec: a parsed spec.
        table: the options its source accepts.
        what: a word for error messages (``"generator"``...).
        defaults: replace the table's defaults (e.g. a card's), given as text or values.

    Raises:
        SpecError: an option the source does not take, or a value out of its range; the
            message names the valid options or the valid range and an example.
    """
    given = spec.opts
    keys = [k for k, _ in spec.options]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise SpecError(f"{what} spec {str(spec)!r}: option(s) {', '.join(twice)} given more than once; keep one")
    unknown = sorted(set(given) - set(table))
    if unknown:
        valid = ", ".join(f"{k}={o.example or o.default}" for k, o in table.items()) or "none"
        raise SpecError(f"{what} spec {str(spec)!r}: unknown option(s) {', '.join(unknown)} for {spec.source}; "
                        f"valid options: {valid}")
    values: dict[str, Any] = {}
    for key, opt in table.items():
        if key in given:
            try:
                values[key] = opt.parse(given[key])
            except (ValueError, TypeError):
                example = opt.example or (opt.choices[0] if opt.choices else opt.default)
                raise SpecError(f"{what} spec {str(spec)!r}: option {key} must be {opt.describe()} "
                                f"(got {given[key]!r}); e.g. ?{key}={example}") from None
        elif defaults is not None and key in defaults:
            default = defaults[key]
            values[key] = opt.parse(str(default)) if isinstance(default, str) else default
        else:
            values[key] = opt.default
    return values


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or os.path.exists(text)


def parse_spec(text: str | Spec, registry: Registry, *, what: str) -> Spec:
    """Parse ``text`` against the sources of ``registry``.

    Args:
        text: the spec string, e.g. ``"timm:resnet50"``.
        registry: the registry whose names are the valid sources.
        what: a word for error messages (``"model"``, ``"dataset"``...).

    Raises:
        SpecError: for an empty string, a bare path, or an unknown source.
    """
    if isinstance(text, Spec):
        return text
    text = (text or "").strip()
    valid = ", ".join(f"{name}:" for name in registry)
    if not text:
        raise SpecError(f"empty {what} spec; use one of the forms {valid}")
    head, sep, query = text.partition("?")
    source, colon, ident = head.partition(":")
    # A Windows drive letter or a bare path is never silently accepted.
    if source not in registry and (_looks_like_path(head) or len(source) == 1):
        raise SpecError(
            f"{what} spec {text!r} is a bare path; prefix it with a source, e.g. "
            f"{'file' if what == 'model' else 'folder'}:{head} (valid sources: {valid})"
        )
    if source not in registry:
        raise SpecError(f"{what} spec {text!r}: " + registry.unknown_message(source))
    options: list[tuple[str, str]] = []
    if sep:
        try:
            options = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise SpecError(
                f"{what} spec {text!r}: options after '?' must be key=value pairs joined by '&'"
            ) from None
    spec = Spec(source, ident if colon else "", tuple(options))
    table = registry.options(source)
    if isinstance(table, WrappedOptions) and ident:  # gray:SPEC?opts: the wrapped spec checks its own options
        parse_spec(f"{ident}?{query}" if sep else ident, registry, what=what)
    elif table is not None:
        parse_options(spec, table, what=what)  # every option is checked before any work starts
    return spec


class WrappedOptions(dict):
    """The option table of a source whose ident is another spec (``gray:SPEC``): the options after
    ``?`` belong to the wrapped spec, which is parsed, and so checked, in their place. Empty as a
    table, so listings show no options of its own."""


#: The table such a wrapping source registers.
WRAPPED_OPTIONS = WrappedOptions()


def split_specs(text: str, registry: Registry) -> list[str]:
    """Split a comma-separated list of specs, keeping commas that belong to a spec.

    A comma separates two specs only where the text after it starts a new spec: a source of
    ``registry`` followed by ``:`` or ``?``, or a bare source name. Any other comma stays in
    the spec before it, so ``timm:a?weights=x,y.pt,builtin:digits-cnn`` is two specs. A spec
    whose own text holds ``,<source>:`` cannot be told apart; list it in a models file.
    """
    pieces = [p.strip() for p in (text or "").split(",")]
    out: list[str] = []
    for piece in pieces:
        if not piece:
            continue  # "a,,b" or a trailing comma
        source = piece.split("?", 1)[0].split(":", 1)[0]
        starts = source in registry and (piece == source or piece[len(source)] in ":?")
        if out and not starts:
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out
