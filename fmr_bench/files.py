"""Writing files so that a crash or a full disk never leaves a half-written one behind.

Every file the toolkit writes (records, settings, CSV tables, images, plots, checkpoints,
caches) goes through :func:`atomic_write`: the content is written to a temporary file in
the same folder, flushed to disk (fsync), then renamed over the target with
``os.replace``. A reader therefore sees either the old file or the complete new one, and
a file that exists with size 0 can only be one that was written empty on purpose.

An ``OSError`` while writing (or a safetensors error that wraps one) becomes an
:class:`~fmr_bench.errors.OutputError` whose one line says what to do: free space
(``ENOSPC``, ``EDQUOT``) or pick a writable folder. Written files get the permissions the
umask implies, as a plain ``open()`` gives them (0644 under umask 022), whatever the
library that wrote the temporary file chose.

Ctrl-C in a long run goes through :func:`keep_on_interrupt`: one line saying how much is
saved where, and that the same command resumes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import InterruptedRun, OutputError

#: errno values that mean "the disk (or the user's quota) is full".
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
#: Suffix of temporary files; not an image or JSON suffix, so folder readers skip them.
PART = ".part"


def output_error(e: OSError, path: str | Path, *, resume: bool = True,
                 fix: str = "pass --out to a writable folder") -> OutputError:
    """The one-line error for an ``OSError`` raised while writing ``path``; ``fix`` names the
    way out when the folder is not writable."""
    if e.errno in DISK_FULL:
        tail = "; free space and re-run the same command to resume (finished work is kept)" if resume else \
            "; free space and re-run the same command"
        err = OutputError(f"disk full while writing {path}{tail}")
    else:
        err = OutputError(f"cannot write {path} ({e.strerror or e}); {fix}")
    err.disk_full = e.errno in DISK_FULL  # callers that may go on without the file (caches) ask this
    return err


def as_os_error(e: BaseException) -> OSError | None:
    """``e`` if it is an ``OSError``; the ``OSError`` a writer library wrapped in its own error
    (safetensors: "I/O error: No space left on device (os error 28)"); else None."""
    if isinstance(e, OSError):
        return e
    m = re.search(r"\(os error (\d+)\)", str(e))
    if m is None:
        return None
    code = int(m.group(1))
    return OSError(code, os.strerror(code))


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: 0666 without the umask's bits."""
    try:  # Linux: read it without changing it (os.umask would, for every thread, for a moment)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def require_writable(folder: str | Path, fix: str = "pick a writable --out") -> Path:
    """Create ``folder`` and check a file can be written in it, before any work starts.

    Raises:
        OutputError: naming the folder, the reason and ``fix``.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"  # per process: several may share one folder
        probe.write_text("")
        probe.unlink(missing_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write to {folder} ({e.strerror or type(e).__name__}); {fix}") from None
    return folder


def make_dir(folder: str | Path, fix: str = "pass --out to a writable folder") -> Path:
    """Create ``folder`` and its parents; an ``OSError`` becomes one line naming ``fix``.

    Raises:
        OutputError: the folder cannot be created (a file in the way, no permission, a full disk).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno in DISK_FULL:
            raise output_error(e, folder) from None
        raise OutputError(f"cannot create {folder} ({e.strerror or e}); {fix}") from None
    return folder


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None] | bytes | str, *,
                 resume: bool = True, fix: str = "pass --out to a writable folder") -> Path:
    """Write ``path`` through a temporary file + fsync + ``os.replace``.

    Args:
        path: the target file; its folder is created if needed.
        write: the bytes or text to write, or a callable that writes into an open binary file.
        resume: whether the disk-full message should say that re-running resumes.
        fix: what the message tells the user to do when the folder is not writable.

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
        raise output_error(e, path, resume=resume, fix=fix) from None
    except BaseException:
        _discard(tmp)
        raise
    return path


def atomic_write_file(path: str | Path, write_to: Callable[[Path], None], **kw: Any) -> Path:
    """Like :func:`atomic_write` for writers that need a file name (e.g. safetensors):
    ``write_to(tmp_path)`` writes the temporary file, which then gets the umask's mode (see
    :func:`file_mode`; safetensors writes 0600), is fsynced and renamed.

    Raises:
        OutputError: as :func:`atomic_write`, also for a writer's error that wraps an ``OSError``.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.w{PART}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to(tmp)
        os.chmod(tmp, file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        _discard(tmp)
        os_error = as_os_error(e)
        if os_error is None:
            raise
        raise output_error(os_error, path, resume=kw.get("resume", True),
                           fix=kw.get("fix", "pass --out to a writable folder")) from None
    except BaseException:
        _discard(tmp)
        raise
    return path


@contextlib.contextmanager
def keep_on_interrupt(saved: Callable[[], str], folder: Callable[[], str | Path | None] | str | Path | None
                      ) -> Iterator[None]:
    """Turn Ctrl-C inside the block into one :class:`~fmr_bench.errors.InterruptedRun` line:
    ``interrupted; 3/10 samples are saved in FOLDER; re-run the same command to resume``.

    Args:
        saved: what is on disk when Ctrl-C comes (``"3/10 samples"``), asked only then.
        folder: where it is (or a callable giving it then); None: the run keeps nothing on disk.
    """
    try:
        yield
    except KeyboardInterrupt:
        where = folder() if callable(folder) else folder
        if where is None:
            raise InterruptedRun(f"interrupted after {saved()}; nothing is saved (no output folder), so running "
                                 "again starts over") from None
        raise InterruptedRun(f"interrupted; {saved()} are saved in {where}; re-run the same command to "
                             "resume") from None


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


def append_jsonl(path: str | Path, records: list[dict[str, Any]] | tuple[dict[str, Any], ...], **kw: Any) -> Path:
    """Append one JSON line per record to ``path`` (created with its folder if needed).

    Appending is not atomic: a kill can leave a torn last line, which readers skip (a
    torn line is never a finished record). Training logs and evaluation records use it.

    Raises:
        OutputError: the folder is not writable or the disk is full (as :func:`atomic_write`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, default=str) + "\n" for r in records))
    except OSError as e:
        raise output_error(e, path, resume=kw.get("resume", True),
                           fix=kw.get("fix", "pass --out to a writable folder")) from None
    return path


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


def cache_dir() -> Path:
    """Our own download cache (VQGAN checkpoints): ``$FMR_CACHE`` or ``~/.cache/fmr_bench``."""
    return Path(os.environ.get("FMR_CACHE", Path.home() / ".cache" / "fmr_bench")).expanduser()


# --- content hashes ------------------------------------------------------------------------
#: Name of the hash cache under the FMR cache folder (``$FMR_CACHE`` or ``~/.cache/fmr_bench``).
HASH_CACHE = "content-sha256.json"


def _hash_cache_path() -> Path:
    return cache_dir() / HASH_CACHE


def _read_hash_cache(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, unreadable or torn: the cache only saves time
        return {}
    return data if isinstance(data, dict) else {}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Full sha256 of a file's content, read in chunks (uncached: see :func:`file_sha256`)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(paths: list[str | Path]) -> list[str]:
    """Full sha256 of each file's content.

    Digests are cached under the FMR cache folder, keyed by absolute path, size and
    ``st_mtime_ns``: a file is read again only when one of them changed, so large weight
    files and big image folders are hashed once. A torn, foreign or unwritable cache is
    ignored (the digests are then computed again, never taken from it blindly).

    Raises:
        OSError: a file cannot be read (callers turn it into their own one-line error).
    """
    cache_path = _hash_cache_path()
    cache = _read_hash_cache(cache_path)
    out, fresh = [], {}
    for p in paths:
        p = Path(p).resolve()
        st = p.stat()
        key = str(p)
        hit = cache.get(key)
        if isinstance(hit, list) and len(hit) == 3 and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            out.append(str(hit[2]))
            continue
        digest = sha256_file(p)
        fresh[key] = [st.st_size, st.st_mtime_ns, digest]
        out.append(digest)
    if fresh:
        merged = {**_read_hash_cache(cache_path), **fresh}  # keep what other processes added meanwhile
        try:
            atomic_write(cache_path, json.dumps(merged, separators=(",", ":")))
        except OutputError:
            pass  # a cache we cannot write only costs time
    return out


def file_sha256(path: str | Path) -> str:
    """Full sha256 of one file's content, cached as in :func:`file_hashes`."""
    return file_hashes([path])[0]


def truncate_jsonl(path: Path, step: int) -> list[dict[str, Any]]:
    """Keep the records of ``path`` up to ``step`` (a resumed run redoes the later ones); returns them."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by the kill
        if rec.get("step", 0) <= step:
            kept.append(rec)
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept
