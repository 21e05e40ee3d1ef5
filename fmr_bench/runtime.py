"""Where a run happens: device, seeding, package versions and provenance for records.

Shared by the FMR runner, the static evaluators and the studies, so that none of them
imports another for these helpers (see tests/test_imports.py).
"""

from __future__ import annotations

import datetime as _dt
import platform
import random
import sys

import torch

from .errors import SettingsError

#: Packages whose versions every record carries.
VERSIONED = ("fmr_bench", "torch", "torchvision", "timm", "open_clip_torch", "taming-transformers-rom1504")


def versions() -> dict[str, str]:
    """Python and the installed versions of :data:`VERSIONED` (absent ones are left out)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def fmr_version() -> str:
    """The installed fmr_bench version (``"unknown"`` for a checkout that is not installed)."""
    import importlib.metadata as md

    try:
        return md.version("fmr_bench")
    except md.PackageNotFoundError:
        return "unknown"


def resolve_device(name: str) -> torch.device:
    """``auto`` (cuda when visible, else cpu), ``cpu`` or ``cuda[:N]``.

    Raises:
        SettingsError: an unknown device name, or cuda without a visible GPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SettingsError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device cuda requested but no GPU is visible; use --device cpu")
    return dev


def describe_device(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA ...)`` for records."""
    return str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")


def seed_everything(seed: int) -> None:
    """Seed torch and Python's ``random`` (random-weight models and splits are reproducible)."""
    torch.manual_seed(seed)
    random.seed(seed)


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def command_line() -> str | None:
    """The ``fmr ...`` / ``python -m fmr_bench ...`` command that started this process, if any."""
    if not sys.argv:
        return None
    head = sys.argv[0]
    if head.endswith("fmr"):
        return " ".join(["fmr", *sys.argv[1:]])
    if head.endswith("__main__.py") and "fmr_bench" in head:
        return " ".join(["python -m fmr_bench", *sys.argv[1:]])
    return None
