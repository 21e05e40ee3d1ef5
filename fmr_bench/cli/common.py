"""Argument groups shared by several commands, derived from :class:`FmrSettings`."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from typing import Any

from ..config import FmrSettings, check_given
from ..registry import GENERATORS

_TYPES = {"budget": int, "batch_size": int, "limit": int, "seed": int, "step_size": float, "fgsm_eps": float,
          "workers": int}


def add_settings_arguments(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per :class:`FmrSettings` field (default ``None`` = the world's default)."""
    defaults = FmrSettings()
    for f in fields(FmrSettings):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f.metadata.get("help", "") + (f" (default: {default})" if default is not None else "")
        parser.add_argument(flag, type=_TYPES.get(f.name, str), default=None, help=help_text)


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, as keyword overrides for :func:`fmr_bench.evaluate`.

    Raises:
        SettingsError: a flag that the other flags make meaningless (``--fgsm-eps`` without ``--init fgsm``).
    """
    given = {f.name: getattr(args, f.name) for f in fields(FmrSettings) if getattr(args, f.name, None) is not None}
    check_given(given)
    return given


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_world_arguments(parser: argparse.ArgumentParser, *, model: bool = True) -> None:
    """``--model`` (optional), ``--data``, ``--generator``, ``--oracle``, ``--out``, ``--cache-dir``, ``--quiet``."""
    if model:
        parser.add_argument("--model", required=True,
                            help="timm:NAME, openclip:ARCH/TAG, hf:ORG/REPO, file:PATH, builtin:NAME")
    parser.add_argument("--data", default="digits", help="digits, imagenet:PATH or folder:PATH (default: digits)")
    parser.add_argument("--generator", default=None,
                        help=f"{GENERATORS.usage()} (default: the dataset world's; see fmr list generators)")
    parser.add_argument("--oracle", default=None,
                        help="openclip:ARCH/TAG or builtin:digits-clip (default: the dataset world's)")
    parser.add_argument("--out", default="runs", help="folder for run folders (default: runs)")
    parser.add_argument("--cache-dir", default=None,
                        help="where downloaded weights live (sets FMR_CACHE, HF_HOME, TORCH_HOME)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_audit_argument(parser: argparse.ArgumentParser) -> None:
    """``--audit JUDGE``: an independent judge scores every validated perturbed image."""
    parser.add_argument("--audit", default=None, metavar="JUDGE",
                        help="score every validated perturbed image with an independent judge (any oracle spec or "
                             "A+B ensemble, e.g. builtin:digits-judge, openclip:ViT-L-14/openai); not part of the "
                             "run's identity")


def set_cache(path: str | None) -> None:
    if not path:
        return
    os.environ["FMR_CACHE"] = path
    os.environ.setdefault("HF_HOME", os.path.join(path, "huggingface"))
    os.environ.setdefault("TORCH_HOME", os.path.join(path, "torch"))
