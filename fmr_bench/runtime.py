"""Where a run happens: device, seeding, package versions and provenance for records.

Shared by the FMR runner, the static evaluators and the studies, so that none of them
imports another for these helpers (see tests/test_imports.py).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import platform
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass

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


# -- precision -------------------------------------------------------------------------
@contextlib.contextmanager
def tf32_allowed(allowed: bool) -> Iterator[None]:
    """Set cuDNN's and cuBLAS's TF32 flags for the block, restoring the previous ones on exit.

    PyTorch lets cuDNN use TF32 (10-bit mantissa) for fp32 convolutions by default; the
    result then depends on the kernel cuDNN picks for each batch size, so the oracle's
    accept/reject decisions drift between batch sizes (a GPU run measured 59-77 % of
    outcomes agreeing with the one-image loop). The flags are read when a kernel is
    launched (a convolution's backward keeps the flag of its forward).
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def exact_fp32() -> contextlib.AbstractContextManager:
    """fp32 that is fp32 on a GPU too: no TF32 in cuDNN convolutions and cuBLAS matmuls."""
    return tf32_allowed(False)


@dataclass(frozen=True)
class Precision:
    """A named precision of the FMR loop (``--precision``), recorded in the run's settings.

    Only the decoder's and the evaluated model's forward and backward run reduced (inside
    :meth:`reduced`); everything else — encoding, clean predictions, the codebook search and
    every oracle decision — runs under :meth:`exact`, in fp32 without TF32.

    Attributes:
        name: ``fp32`` (exact), ``tf32`` (fp32 tensors, TF32 tensor-core maths on a GPU) or
            ``bf16`` (bf16 autocast).
        autocast_dtype: the autocast dtype of the reduced part (``None``: no autocast).
        tf32: whether the reduced part may use TF32 (only GPUs have it; a CPU runs fp32).
    """

    name: str
    autocast_dtype: torch.dtype | None = None
    tf32: bool = False

    def exact(self) -> contextlib.AbstractContextManager:
        return exact_fp32()

    @contextlib.contextmanager
    def reduced(self, device: torch.device) -> Iterator[None]:
        """The block in which the decoder and the evaluated model run (forward and backward)."""
        with contextlib.ExitStack() as stack:
            if self.tf32:
                stack.enter_context(tf32_allowed(True))
            if self.autocast_dtype is not None:
                stack.enter_context(torch.autocast(device_type=device.type, dtype=self.autocast_dtype))
            yield


#: The precisions by name; config.PRECISIONS lists the same names for the settings' check
#: (tests/test_protocol.py checks that they agree).
PRECISION_MODES = {p.name: p for p in (Precision("fp32"), Precision("tf32", tf32=True),
                                       Precision("bf16", autocast_dtype=torch.bfloat16))}


def precision(name: str) -> Precision:
    """The :class:`Precision` called ``name``.

    Raises:
        SettingsError: an unknown name.
    """
    try:
        return PRECISION_MODES[name]
    except KeyError:
        raise SettingsError(f"unknown precision {name!r}; use one of {', '.join(PRECISION_MODES)}") from None
