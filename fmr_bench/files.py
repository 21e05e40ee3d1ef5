"""Writing files so that a crash or a full disk never leaves a half-written one behind.

Every file the toolkit writes (records, settings, CSV tables, images, plots, checkpoints,
caches) goes through :func:`atomic_write`: the content is written to a temporary file in
the same folder, flushed to disk (fsync), then renamed over the target with
``os.replace``. A reader therefore sees either the old file or the complete new one, and
a file that exists with size 0 can only be one that was written empty on purpose.

An ``OSError`` while writing becomes an :class:`~fmr_bench.errors.OutputError` whose one
line says what to do: free space (``ENOSPC``, ``EDQUOT``) or pick a writable folder.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import IO, Any, Callable

from .errors import OutputError

#: errno values that mean "the disk (or the user's quota) is full".
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
#: Suffix of temporary files; not an image or JSON suffix, so folder readers skip them.
PART = ".part"


def output_error(e: OSError, path: str | Path, *, resume: bool = True) -> OutputError:
    """The one-line error for an ``OSError`` raised while writing ``path``."""
    if e.errno in DISK_FULL:
        tail = "; free space and re-run the same command to resume (finished work is kept)" if resume else \
            "; free space and re-run the same command"
        return OutputError(f"disk full while writing {path}{tail}")
    return OutputError(f"cannot write {path} ({e.strerror or e}); pass --out to a writable folder")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None] | bytes | str, *,
                 resume: bool = True) -> Path:
    """Write ``path`` through a temporary file + fsync + ``os.replace``.

    Args:
        path: the target file; its folder is created if needed.
        write: the bytes or text to write, or a callable that writes into an open binary file.
        resume: whether the disk-full message should say that re-running resumes.

    Raises:
        OutputError: the folder is not writable or the disk is full; the target is untouched
            and no temporary file is left behind.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{PART}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            if callable(write):
                write(f)
            else:
                f.write(write.encode() if isinstance(write, str) else write)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise output_error(e, path, resume=resume) from None
    except BaseException:
        _discard(tmp)
        raise
    return path


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def write_json(path: str | Path, obj: Any, **kw: Any) -> Path:
    """``obj`` as indented JSON (non-JSON values via ``str``), atomically."""
    return atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n", **kw)


def write_text(path: str | Path, text: str, **kw: Any) -> Path:
    return atomic_write(path, text, **kw)


def save_torch(obj: Any, path: str | Path, **kw: Any) -> Path:
    """``torch.save(obj)`` atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f), **kw)


def save_figure(fig: Any, path: str | Path, **savefig_kw: Any) -> Path:
    """A matplotlib figure, atomically; the format follows ``path``'s suffix."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **savefig_kw))


def save_image(image: Any, path: str | Path, fmt: str = "PNG", **kw: Any) -> Path:
    """A PIL image, atomically."""
    return atomic_write(path, lambda f: image.save(f, format=fmt), **kw)
