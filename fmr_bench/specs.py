"""Parsing of ``source:ident[?key=value&...]`` spec strings (no heavy imports).

Examples: ``timm:resnet50``, ``timm:resnet50?weights=/ckpt/resnet50.safetensors``,
``openclip:ViT-B-32/openai``, ``file:runs/model.safetensors``, ``builtin:digits-cnn``,
``imagenet:/data/imagenet/val``, ``digits``, ``vqgan``, ``sparse-vqgan:mask.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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
    return Spec(source, ident if colon else "", tuple(options))
