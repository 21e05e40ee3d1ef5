"""Where weights come from: caches, checksummed downloads, and the offline check.

Before any heavy loading, :func:`preflight` asks each component which weight files it
needs and whether they are already on disk. Offline, a run with missing weights stops
at once with one line listing them and how to provide them, instead of after minutes of
download retries.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import re
import shutil
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import WeightsError
from .files import cache_dir, file_hashes, sha256_file  # noqa: F401  (cache_dir, sha256_file: re-exported)

HUB_HOST = "huggingface.co"


@functools.lru_cache(maxsize=8)
def host_reachable(host: str = HUB_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("FMR_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class WeightRef:
    """One weight file a component needs.

    Attributes:
        component: e.g. ``"model timm:resnet50"``.
        what: the file, e.g. ``"timm/resnet50.a1_in1k (Hugging Face Hub)"``.
        available: returns True when the file is already on disk.
        host: where it would be downloaded from.
        how: how to provide it by hand.
        files: local files whose content is these weights (for run identity); when empty,
            ``what`` itself is taken if it names an existing file.
    """

    component: str
    what: str
    available: Callable[[], bool]
    host: str = HUB_HOST
    how: str = ""
    files: tuple[str, ...] = ()

    def local_files(self) -> list[Path]:
        """The local files holding these weights, as far as they exist now."""
        candidates = self.files or (self.what,)
        return [Path(f).expanduser() for f in candidates if Path(f).expanduser().is_file()]


def weights_identity(refs: list[WeightRef]) -> dict[str, str]:
    """``component -> sha256`` (first 16 hex digits) of the local weight files of ``refs``.

    Part of a run's identity: the same spec pointing at other weights (``?weights=B``
    instead of ``A``, a retrained checkpoint under the same path, a card's URL file
    replaced in the cache) names another run. Digests are cached by path, size and
    mtime (:func:`fmr_bench.files.file_hashes`), so large files are read once.
    Weights that live only in a hub cache are identified by their spec.

    Raises:
        WeightsError: a weight file exists but cannot be read.
    """
    out: dict[str, str] = {}
    for ref in refs:
        files = ref.local_files()
        if not files:
            continue
        try:
            digests = file_hashes(files)
        except OSError as e:
            raise WeightsError(f"cannot read {e.filename} ({e.strerror}); check the weights path") from None
        h = hashlib.sha256("".join(f"{f.name}:{d}\n" for f, d in zip(files, digests)).encode()).hexdigest()
        out[ref.component] = h[:16]
    return out


def preflight(refs: list[WeightRef]) -> None:
    """Raise one :class:`WeightsError` listing every missing file that cannot be fetched."""
    absent = [r for r in refs if not r.available()]
    local = [r for r in absent if not r.host]
    offline = [r for r in absent if r.host and not host_reachable(r.host)]
    parts = [f"{r.component} needs {r.what}, which does not exist ({r.how})" for r in local]
    if offline:
        parts.append("missing weights and no network: " + "; ".join(f"{r.component} needs {r.what} ({r.how})"
                                                                     for r in offline))
    if parts:
        raise WeightsError("; ".join(parts))


def hf_cached(repo_id: str, filenames: tuple[str, ...]) -> bool:
    """Whether any of ``filenames`` of ``repo_id`` is in the Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str) and os.path.exists(hit):
            return True
    return False




def download(url: str, dest: Path, *, sha256: str | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically (``.part`` file) and check its sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(part, "wb") as f:  # noqa: S310
            total = int(r.headers.get("Content-Length") or 0)
            _copy_with_progress(r, f, total, dest.name if progress else None)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise WeightsError(
            f"download of {url} failed ({e}); download it by hand and pass its path as ?weights=PATH"
        ) from None
    digest = sha256_file(part)
    if sha256 and digest != sha256:
        part.unlink(missing_ok=True)
        raise WeightsError(f"{dest.name}: sha256 {digest} does not match the card's {sha256}; retry the download")
    part.replace(dest)
    dest.with_name(dest.name + ".sha256").write_text(digest + "\n")
    return dest


def _copy_with_progress(src, dst, total: int, label: str | None) -> None:
    if label is None:
        shutil.copyfileobj(src, dst)
        return
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(f"downloading {label}", total=total or None)
        for block in iter(lambda: src.read(1 << 20), b""):
            dst.write(block)
            bar.advance(task, len(block))


class _Inert:
    """Stands in for any class a checkpoint names but we do not need (e.g. Lightning's
    ``ModelCheckpoint`` callback key); it runs no code of the checkpoint."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)``; globals the file names beyond tensors and plain
    containers (training callbacks, hyper-parameter objects...) are replaced by an inert
    stand-in instead of being imported or called."""
    import torch

    stubs: list[tuple[type, str]] = []
    for _ in range(32):
        try:
            with torch.serialization.safe_globals(stubs):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            names = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            if not names or any(n == name for _, n in stubs for name in names):
                raise
            for n in names:  # builtins are reported without their module
                for full in {n, n if "." in n else f"builtins.{n}"}:
                    stubs.append((type(n.rsplit(".", 1)[-1], (_Inert,), {}), full))
    raise pickle.UnpicklingError(f"{path} names too many foreign classes")


def module_sha256(module: Any) -> str:
    """sha256 over a module's state dict (names, dtypes, values); first 16 hex digits.

    Identifies in-memory weights (a generator or oracle object handed to ``evaluate``).
    """
    import torch

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def load_state_strict(module: Any, state: dict[str, Any], *, what: str, fix: str) -> None:
    """``module.load_state_dict(state, strict=True)``; a mismatch is one line: ``what (first line of
    torch's message); fix``.

    Raises:
        WeightsError: missing, unexpected or mis-shaped keys.
    """
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise WeightsError(f"{what} ({first}); {fix}") from None


def canonical_safetensors_header(path: str | Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys, in place.

    safetensors writes its ``__metadata__`` in hash-map order, which changes from one write to
    the next when there are several entries; sorted, the same model gives the same bytes (a
    result can be checked by its hash). Tensor offsets are relative to the data that follows
    the header, so only the header is rewritten (padded with spaces to 8 bytes, as the format
    allows).
    """
    import json
    import struct

    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
        meta = header.pop("__metadata__", None)
        ordered = {**({"__metadata__": dict(sorted(meta.items()))} if meta else {}), **dict(sorted(header.items()))}
        text = json.dumps(ordered, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        f.seek(0)
        f.write(struct.pack("<Q", len(text)) + text + data)
        f.truncate()
