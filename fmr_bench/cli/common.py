"""Argument groups shared by several commands, derived from :class:`FmrSettings`."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..config import FmrSettings, check_given
from ..errors import SettingsError

_TYPES = {"budget": int, "batch_size": int, "limit": int, "seed": int, "step_size": float, "fgsm_eps": float,
          "workers": int}


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number >= 1 (the flag is named in the one-line error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"takes a whole number >= 1, not {text!r}")
    return value


def add_settings_arguments(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = (),
                           static: bool = False) -> None:
    """One ``--flag`` per :class:`FmrSettings` field (default ``None`` = the world's default).

    ``static``: the command also runs static evaluators, so a flag they share whose default is
    another there (:class:`~fmr_bench.config.EvalSettings`, e.g. ``--batch-size``) names both defaults.
    """
    from ..config import EvalSettings

    defaults, other = FmrSettings(), EvalSettings()
    for f in fields(FmrSettings):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = f" (default: {default})" if default is not None else ""
        theirs = getattr(other, f.name, default)
        if static and theirs != default:
            shown = f" (default: {default} for the FMR protocol, {theirs} for static evaluators)"
        parser.add_argument(flag, type=_TYPES.get(f.name, str), default=None, help=f.metadata.get("help", "") + shown)


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


def only_apply(flags: list[str]) -> tuple[str, str]:
    """``("--a, --b only apply", "them")`` or ``("--a only applies", "it")``: a refusal's subject
    and its pronoun, in the number the flags take."""
    one = len(flags) == 1
    return f"{', '.join(flags)} only appl{'ies' if one else 'y'}", "it" if one else "them"


def _register() -> None:
    """Import the parts whose registrations the help texts read (no heavy backend)."""
    from .. import datasets, generators, models, oracles  # noqa: F401  (registration)
    from ..models import builtin  # noqa: F401


def spec_forms(registry) -> str:
    """The spec forms of a registry's sources, from the head of each entry's help
    (``timm:NAME[.TAG]``, ``folder:PATH``...), ``?options`` left to ``fmr list``."""
    _register()
    forms = []
    for entry in registry.items():
        head = entry.help.partition(" — ")[0].strip() or entry.name
        forms.append(re.sub(r"\[\?[^\]]*\]|\?.*$", "", head))
    return ", ".join(forms)


def _builtin_names() -> str:
    from ..registry import BUILTIN_MODELS

    _register()
    return ", ".join(BUILTIN_MODELS)


def model_help(what: str = "model spec") -> str:
    """``--model`` help: every model source's form and every builtin name, from the registries."""
    from ..registry import MODEL_SOURCES

    return f"{what}: {spec_forms(MODEL_SOURCES)}; builtin NAME: {_builtin_names()} (see fmr list models)"


def data_help(default: str = "digits") -> str:
    """``--data`` help: every dataset source, from the registry."""
    from ..registry import DATASETS

    _register()
    return (f"dataset spec SOURCE[:ARG][?OPTIONS], SOURCE one of {', '.join(DATASETS)} (forms and options: "
            f"fmr list datasets; default: {default})")


def generator_help(default: str = "the dataset world's") -> str:
    """``--generator`` help: every generator's form, from the registry."""
    from ..registry import GENERATORS

    return f"{spec_forms(GENERATORS)} (default: {default}; options and cards: fmr list generators)"


def oracle_help() -> str:
    """``--oracle`` help: every oracle source's form, the builtin names and ``+`` ensembles."""
    from ..registry import ORACLE_SOURCES

    return (f"{spec_forms(ORACLE_SOURCES)} (builtin NAME: {_builtin_names()}), or an ensemble A+B[+...] averaging their "
            "probabilities (default: the dataset world's; see fmr list oracles)")


def add_world_arguments(parser: argparse.ArgumentParser, *, model: bool = True) -> None:
    """``--model`` (optional), ``--data``, ``--generator``, ``--oracle``, ``--out``, ``--cache-dir``, ``--quiet``."""
    if model:
        parser.add_argument("--model", required=True, help=model_help())
    parser.add_argument("--data", default="digits", help=data_help())
    parser.add_argument("--generator", default=None, help=generator_help())
    parser.add_argument("--oracle", default=None, help=oracle_help())
    parser.add_argument("--out", default="runs", help="folder for run folders (default: runs)")
    add_cache_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_cache_argument(parser: argparse.ArgumentParser) -> None:
    """``--cache-dir DIR`` (read by :func:`set_cache`)."""
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="where downloaded weights live (sets FMR_CACHE, HF_HOME, TORCH_HOME); a folder, "
                             "created when missing")


def add_audit_argument(parser: argparse.ArgumentParser) -> None:
    """``--audit JUDGE``: an independent judge scores every validated perturbed image."""
    parser.add_argument("--audit", default=None, metavar="JUDGE",
                        help="score every validated perturbed image with an independent judge (any oracle spec or "
                             "A+B ensemble, e.g. builtin:digits-judge, openclip:ViT-L-14/openai); not part of the "
                             "run's identity")


def set_cache(path: str | None) -> None:
    """Point the weight caches at ``--cache-dir`` (nothing when not given).

    Raises:
        SettingsError: the path, or the nearest part of it that exists, is not a folder.
    """
    if not path:
        return
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == Path(path) else f"lies under {existing}, a file"
        raise SettingsError(f"--cache-dir {path} {where}, not a folder; pass a folder (created when missing)")
    os.environ["FMR_CACHE"] = path
    os.environ.setdefault("HF_HOME", os.path.join(path, "huggingface"))
    os.environ.setdefault("TORCH_HOME", os.path.join(path, "torch"))
