"""Fetching the evaluation sets into a data root, in the layouts the dataset sources read.

The table of sources is data (``sources.json`` beside this module, or the file that
``FMR_DATA_SOURCES`` names). A fetch downloads each file of an entry (resuming a partial
download with an HTTP Range request), refuses an HTML page or a truncated file, checks the
size and the published checksum *before* anything is extracted, extracts into a temporary
folder under the data root (members outside the target, absolute paths, links and device
files refused), checks the layout with the dataset's own builder, writes a manifest, and
only then renames the folder into place: a set folder exists only when it is complete.

The data root is ``--root``, else ``$FMR_DATA``, else ``<cache dir>/data`` (the cache dir is
``$FMR_CACHE`` or ``~/.cache/fmr_bench``), so ``--ood imagenet-r`` without a path reads
``<root>/imagenet-r``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import DataError, FmrBenchError, InterruptedRun, OutputError, SettingsError
from ..files import DISK_FULL

#: Name of the manifest a fetch writes inside the set folder; ``fmr data verify`` reads it.
MANIFEST = ".fmr-manifest.json"
#: Where partial downloads live under the data root (kept between runs, for resuming).
DOWNLOADS = ".downloads"
ARCHIVES = ("tar", "tar.gz", "zip", "file")
CHUNK = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    """One file to download for a set, and where its contents go."""

    name: str
    urls: tuple[str, ...]
    archive: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    subdir: str = ""
    target: str = "."


@dataclass(frozen=True)
class DataSource:
    """One set of the table: a folder under the data root and how to fill it.

    ``manual`` sets (a licence or a login) carry the instructions instead of files.
    """

    name: str
    title: str
    folder: str = ""
    files: tuple[SourceFile, ...] = ()
    source: str = ""
    manual: str = ""
    package: str = ""
    unverified_because: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fetchable(self) -> bool:
        return bool(self.files)

    @property
    def published(self) -> bool:
        """Every file has a published checksum (sha256 or md5)."""
        return all(f.sha256 or f.md5 for f in self.files)

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if None in sizes or not sizes else sum(sizes)  # type: ignore[arg-type]


def sources_path() -> Path:
    """The table in use: ``$FMR_DATA_SOURCES`` or the one shipped with fmr_bench."""
    env = os.environ.get("FMR_DATA_SOURCES")
    return Path(env).expanduser() if env else Path(str(resources.files("fmr_bench") / "datasets" / "sources.json"))


def load_sources(path: str | Path | None = None) -> dict[str, DataSource]:
    """The table of sources, checked field by field.

    Raises:
        SettingsError: the file is missing, is not JSON, or an entry is malformed.
    """
    path = Path(path) if path is not None else sources_path()
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise SettingsError(f"cannot read the data sources table {path} ({e.strerror}); fix FMR_DATA_SOURCES") from None
    except json.JSONDecodeError as e:
        raise SettingsError(f"data sources table {path} is not valid JSON (line {e.lineno}); fix the file") from None
    out = {}
    for name, entry in raw.items():
        if name.startswith("_"):
            continue
        try:
            files = tuple(SourceFile(name=f["name"], urls=tuple(f["urls"]), archive=f["archive"], size=f.get("size"),
                                     sha256=f.get("sha256"), md5=f.get("md5"), subdir=f.get("subdir", ""),
                                     target=f.get("target", ".")) for f in entry.get("files", ()))
            known = {"title", "folder", "files", "source", "manual", "package", "unverified_because"}
            out[name] = DataSource(name=name, title=entry.get("title", name), folder=entry.get("folder", name),
                                   files=files, source=entry.get("source", ""), manual=entry.get("manual", ""),
                                   package=entry.get("package", ""),
                                   unverified_because=entry.get("unverified_because", ""),
                                   extra={k: v for k, v in entry.items() if k not in known})
        except (KeyError, TypeError) as e:
            raise SettingsError(f"entry {name!r} of {path} lacks field {e}; each file needs name, urls and archive") \
                from None
        bad = [f.archive for f in files if f.archive not in ARCHIVES]
        if bad:
            raise SettingsError(f"entry {name!r} of {path}: archive {bad[0]!r}; use one of {', '.join(ARCHIVES)}")
    return out


def get_source(name: str, sources: dict[str, DataSource] | None = None) -> DataSource:
    sources = load_sources() if sources is None else sources
    if name not in sources:
        raise SettingsError(f"unknown data set {name!r}; fmr data list shows the sets ({', '.join(sources)})")
    return sources[name]


def data_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$FMR_DATA``, else ``<cache dir>/data``."""
    from ..files import cache_dir

    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("FMR_DATA")
    return Path(env).expanduser() if env else cache_dir() / "data"


def default_path(source: str, root: str | Path | None = None) -> Path | None:
    """Where the data root holds the set that dataset source ``source`` reads, or None when
    the table has no folder for it (``digits``, ``folder:``...)."""
    try:
        entry = load_sources().get(source)
    except SettingsError:
        return None
    if entry is None or entry.package or not entry.folder:
        return None
    return data_root(root) / entry.folder


def missing_message(source: str, path: Path) -> str:
    """The fix for a spec without a path whose set is not under the data root."""
    entry = load_sources()[source]
    if entry.manual:
        how = entry.manual.format(path=path)
        return f"{source}: no path given and {path} is missing; it {how} (or pass {source}:PATH)"
    return (f"{source}: no path given and {path} is missing; run fmr data fetch {source} "
            f"(data root: --root, FMR_DATA or the cache dir), or pass {source}:PATH")


# --- downloading -------------------------------------------------------------------------

class _Bar:
    """Size, rate and ETA of one download (a rich bar; silent when ``show`` is False)."""

    def __init__(self, label: str, total: int | None, done: int, show: bool) -> None:
        self.progress = None
        if show:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.progress = Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(), transient=False)
            self.progress.start()
            self.task = self.progress.add_task(label, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=n)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _looks_like_html(head: bytes, content_type: str) -> bool:
    start = head.lstrip()[:64].lower()
    return "text/html" in content_type.lower() or start.startswith((b"<!doctype html", b"<html", b"<head"))


def download(f: SourceFile, dest: Path, *, progress: bool = True, timeout: float = 60.0,
             opener: Callable[..., Any] = urllib.request.urlopen) -> str:
    """Download ``f`` to ``dest``, resuming ``dest`` if a previous run left part of it.

    Tries each URL in turn (primary, then mirrors) and returns the URL that served it.

    Raises:
        DataError: every URL failed, served an HTML page, or stopped early (one line naming the URL).
        OutputError: the disk is full or ``dest`` cannot be written (the partial file is kept).
    """
    errors = []
    for url in f.urls:
        try:
            _download_one(url, f, dest, progress=progress, timeout=timeout, opener=opener)
            return url
        except _UrlFailed as e:
            errors.append(str(e))
    if len(errors) == 1:
        raise DataError(errors[0])
    raise DataError(f"no URL of {f.name} worked: " + "; ".join(errors))


class _UrlFailed(Exception):
    pass


def _download_one(url: str, f: SourceFile, dest: Path, *, progress: bool, timeout: float,
                  opener: Callable[..., Any]) -> None:
    have = dest.stat().st_size if dest.exists() else 0
    if f.size is not None and have == f.size:
        return  # complete from an earlier run; the checksum decides whether it is good
    if f.size is not None and have > f.size:
        dest.unlink()
        have = 0
    req = urllib.request.Request(url, headers={"User-Agent": "fmr_bench", **({"Range": f"bytes={have}-"} if have else {})})
    try:
        resp = opener(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have and f.size is None:
            return  # the server has nothing past what we hold: the file is complete
        raise _UrlFailed(f"{url} answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise _UrlFailed(f"cannot reach {url} ({reason}); check the connection, or download it by hand and "
                         f"pass --archive FILE") from None
    with resp:
        status = getattr(resp, "status", 200)
        ctype = resp.headers.get("Content-Type", "")
        length = resp.headers.get("Content-Length")
        if status == 200 and have:  # the server ignored the Range header: start over
            have = 0
        mode = "ab" if have else "wb"
        expected = f.size if f.size is not None else (have + int(length) if length is not None else None)
        first = resp.read(min(CHUNK, 4096))
        if _looks_like_html(first, ctype):
            raise _UrlFailed(f"{url} served an HTML page (a login, quota or error page), not {f.name}; download it "
                             "in a browser and pass --archive FILE, or try again later")
        bar = _Bar(f.name, expected, have, progress)
        got = have
        try:
            with open(dest, mode) as out:
                chunk = first
                while chunk:
                    out.write(chunk)
                    got += len(chunk)
                    bar.advance(len(chunk))
                    try:
                        chunk = resp.read(CHUNK)
                    except (OSError, http_incomplete()) as e:  # connection cut mid-stream
                        raise _UrlFailed(f"download of {url} stopped at {got} of {expected or '?'} bytes ({e}); "
                                         "run the same command again to resume") from None
        except OSError as e:
            raise _write_error(e, dest) from None
        finally:
            bar.close()
    if expected is not None and got < expected:
        raise _UrlFailed(f"download of {url} stopped at {got} of {expected} bytes (truncated); "
                         "run the same command again to resume")
    if f.size is not None and got != f.size:
        raise _UrlFailed(f"{url} served {got} bytes, the table says {f.size}; the file at that URL changed")


def http_incomplete():
    import http.client

    return http.client.IncompleteRead


def _write_error(e: OSError, path: Path) -> OutputError:
    if e.errno in DISK_FULL:
        err = OutputError(f"disk full while writing {path}; free space (or pick another --root) and run the same "
                          "command again (a partial download resumes)")
        err.disk_full = True
        return err
    return OutputError(f"cannot write {path} ({e.strerror or e}); pick a writable --root or FMR_DATA")


def file_digest(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_archive(f: SourceFile, path: Path, url: str) -> tuple[str, bool]:
    """(sha256, verified against a published value) of a downloaded ``f``.

    Raises:
        DataError: the size or a published checksum does not match (nothing is extracted).
    """
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        raise DataError(f"{f.name} from {url} has {size} bytes, the table says {f.size}; it is truncated or another "
                        "file; delete it and fetch again")
    sha = file_digest(path)
    if f.sha256 and sha != f.sha256.lower():
        raise DataError(f"sha256 of {f.name} from {url} is {sha}, the published value is {f.sha256}; the file is "
                        "corrupt or changed, it was removed: fetch again or use another mirror")
    if f.md5 and not f.sha256 and file_digest(path, "md5") != f.md5.lower():
        raise DataError(f"md5 of {f.name} from {url} does not match the published {f.md5}; the file is corrupt or "
                        "changed, it was removed: fetch again or use another mirror")
    return sha, bool(f.sha256 or f.md5)


# --- extracting --------------------------------------------------------------------------

def _unsafe_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")


def extract(archive: Path, kind: str, dest: Path) -> None:
    """Extract ``archive`` into ``dest`` (which must be empty), refusing unsafe members.

    Raises:
        DataError: a member is absolute, climbs out with ``..``, is a link or a device file,
            or the archive is unreadable; nothing is extracted in that case.
    """
    try:
        if kind in ("tar", "tar.gz"):
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for m in members:
                    if _unsafe_name(m.name):
                        raise DataError(f"{archive.name} holds member {m.name!r} outside the target folder; refused, "
                                        "nothing extracted")
                    if m.issym() or m.islnk():
                        link = m.linkname
                        base = PurePosixPath(m.name).parent if m.issym() else PurePosixPath()
                        if _unsafe_name(link) or ".." in PurePosixPath(os.path.normpath(base / link)).parts:
                            raise DataError(f"{archive.name} holds link {m.name!r} -> {link!r} out of the tree; "
                                            "refused, nothing extracted")
                    if m.isdev() or m.isfifo():
                        raise DataError(f"{archive.name} holds device file {m.name!r}; refused, nothing extracted")
                tar.extractall(dest, members=members, filter="data")  # the stdlib's own checks, a second guard
        elif kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                for info in infos:
                    if _unsafe_name(info.filename):
                        raise DataError(f"{archive.name} holds member {info.filename!r} outside the target folder; "
                                        "refused, nothing extracted")
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                        raise DataError(f"{archive.name} holds link or device {info.filename!r}; refused, nothing "
                                        "extracted")
                for info in infos:
                    zf.extract(info, dest)
        else:
            raise SettingsError(f"archive kind {kind!r}; use one of {', '.join(ARCHIVES)}")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{archive.name} is not a readable {kind} archive ({e}); delete it and fetch again") from None


# --- the fetch ---------------------------------------------------------------------------

def _place(f: SourceFile, archive: Path, work: Path, set_dir: Path) -> None:
    """Put the contents of one downloaded file into ``set_dir`` per the table."""
    target = (set_dir / f.target) if f.target != "." else set_dir
    if f.archive == "file":
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(archive, target)
        return
    unpack = work / ("x-" + f.name)
    unpack.mkdir()
    extract(archive, f.archive, unpack)
    src = unpack / f.subdir if f.subdir else unpack
    if not src.is_dir():
        found = sorted(p.name for p in unpack.iterdir())[:5]
        raise DataError(f"{f.name} has no folder {f.subdir!r} (its top holds {found}); the archive's layout changed, "
                        "fix subdir in the sources table")
    if target == set_dir and not set_dir.exists():
        src.rename(set_dir)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            for child in src.iterdir():
                child.rename(target / child.name)
        else:
            src.rename(target)
    shutil.rmtree(unpack, ignore_errors=True)


def file_list(folder: Path) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` of every file under ``folder`` but the manifest."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(folder).as_posix()] = [p.stat().st_size, file_digest(p)]
    return out


def check_layout(entry: DataSource, folder: Path) -> int:
    """Build the dataset from ``folder`` with its own source; the number of images it reads.

    Raises:
        DataError: the folder is not in the layout that source reads.
    """
    from . import load_dataset

    ds = load_dataset(f"{entry.name}:{folder}")
    return len(ds)


@dataclass
class FetchResult:
    name: str
    path: Path
    verified: bool
    warnings: list[str]
    reused: bool = False
    n_images: int | None = None


def fetch(name: str, root: str | Path | None = None, *, archives: dict[str, Path] | None = None,
          force: bool = False, keep_archives: bool = False, progress: bool = True,
          sources: dict[str, DataSource] | None = None, warn: Callable[[str], None] | None = None) -> FetchResult:
    """Fetch set ``name`` into the data root; see the module docstring for the steps.

    Args:
        archives: file name (or the entry's only file) -> a local copy already downloaded, used
            instead of downloading (checked the same way).
        force: replace a set that is already present.

    Raises:
        SettingsError: unknown set, or a set that needs a manual download (the message says how).
        DataError, OutputError: a failed download, check or extraction; the set folder is untouched.
    """
    entry = get_source(name, sources)
    root = data_root(root)
    final = root / entry.folder
    _check_fetchable(entry, name, final)
    if final.is_dir() and not force:
        return FetchResult(name, final, (final / MANIFEST).is_file() and _manifest(final).get("verified", False),
                           [], reused=True)
    _prepare_root(root)
    warnings: list[str] = []
    archives = _archive_table(entry, name, archives)
    got = _get_files(entry, name, root, archives, progress=progress, say=warn or (lambda s: None), warnings=warnings)
    manifest = _install(entry, name, root, final, got)
    if not keep_archives:
        for f, path, *_ in got:
            if f.name not in archives:
                path.unlink(missing_ok=True)
    return FetchResult(name, final, manifest["verified"], warnings, n_images=manifest["n_images"])


#: What :func:`_get_files` has of one file: the entry's file, the local path, where it came
#: from, its sha256 and whether that matched a published checksum.
_Got = tuple[SourceFile, Path, str, str, bool]


def _check_fetchable(entry: DataSource, name: str, final: Path) -> None:
    """Refuse a set that is installed with a package or must be downloaded by hand."""
    if entry.package:
        raise SettingsError(f"{name}: {entry.manual}")
    if entry.manual:
        raise SettingsError(f"{name} cannot be fetched: it {entry.manual.format(path=final)}; then fmr data verify "
                            f"{name} checks the layout")


def _prepare_root(root: Path) -> None:
    """Create the data root and its downloads folder, and check that it is writable."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write-test"
        probe.write_text("")
        probe.unlink()
        (root / DOWNLOADS).mkdir(exist_ok=True)
    except OSError as e:
        raise _write_error(e, root) from None


def _archive_table(entry: DataSource, name: str, archives: dict[str, Path] | None) -> dict[str, Path]:
    """``--archive`` copies by the entry's file names (a lone copy names the entry's only file)."""
    archives = dict(archives or {})
    if len(archives) == 1 and len(entry.files) == 1 and entry.files[0].name not in archives:
        archives = {entry.files[0].name: next(iter(archives.values()))}
    unknown = sorted(set(archives) - {f.name for f in entry.files})
    if unknown:
        shown = archives[unknown[0]] if unknown[0].startswith("_") else unknown[0]
        raise SettingsError(f"--archive {shown}: {name} has files {', '.join(f.name for f in entry.files)}; "
                            "pass --archive NAME=PATH")
    return archives


def _get_files(entry: DataSource, name: str, root: Path, archives: dict[str, Path], *, progress: bool,
               say: Callable[[str], None], warnings: list[str]) -> list[_Got]:
    """Download (or take from ``archives``) and check every file of the entry, before any extraction."""
    got: list[_Got] = []
    for f in entry.files:
        if f.name in archives:
            path, url = Path(archives[f.name]).expanduser(), f"file {archives[f.name]}"
            if not path.is_file():
                raise DataError(f"--archive {path} does not exist; give the path of the downloaded {f.name}")
        else:
            path = root / DOWNLOADS / f"{name}--{f.name}"
            try:
                url = download(f, path, progress=progress)
            except KeyboardInterrupt:
                raise InterruptedRun(f"interrupted while downloading {f.name}; the part is kept in {path}, run the "
                                     "same command again to resume") from None
        try:
            sha, verified = check_archive(f, path, url)
        except DataError:
            if f.name not in archives:
                path.unlink(missing_ok=True)  # a wrong file must not be resumed
            raise
        if not verified:
            msg = (f"warning: {name}: {f.name} has no published checksum ({entry.unverified_because or 'none known'}); "
                   f"recorded its sha256 {sha} but could not verify it against a published value")
            warnings.append(msg)
            say(msg)
        got.append((f, path, url, sha, verified))
    return got


def _install(entry: DataSource, name: str, root: Path, final: Path, got: list[_Got]) -> dict[str, Any]:
    """Extract into a temporary folder, check the layout, write the manifest, rename into place.

    Returns:
        the manifest written.
    """
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    try:
        set_dir = work / "set"
        for f, path, *_ in got:
            _place(f, path, work, set_dir)
        set_dir.mkdir(exist_ok=True)
        n_images = check_layout(entry, set_dir)
        manifest = {"name": name, "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "verified": all(v for *_, v in got), "table": str(sources_path()),
                    "archives": [{"name": f.name, "url": url, "sha256": sha, "published_sha256": f.sha256,
                                  "published_md5": f.md5, "verified": v} for f, _, url, sha, v in got],
                    "n_images": n_images, "files": file_list(set_dir)}
        (set_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if final.exists():
            final.rename(work / "old")  # removed with the work folder
        final.parent.mkdir(parents=True, exist_ok=True)
        set_dir.rename(final)
    except OSError as e:
        raise _write_error(e, work) from None
    except KeyboardInterrupt:
        raise InterruptedRun(f"interrupted while extracting {name}; nothing was left under {root}, run the same "
                             "command again (the download is kept)") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def _manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


@dataclass
class SetStatus:
    name: str
    title: str
    state: str  # "verified", "present, not verified", "missing", "package"
    path: Path | None
    size: int | None
    note: str = ""


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def status(root: str | Path | None = None, sources: dict[str, DataSource] | None = None) -> list[SetStatus]:
    """Each set of the table: present and verified / present, not verified / missing, with its size.

    No file is re-hashed here (``verify`` does that); a present set's size is the manifest's
    sum, or the folder's when it has no manifest.
    """
    sources = load_sources() if sources is None else sources
    out = []
    for entry in sources.values():
        if entry.package:
            out.append(SetStatus(entry.name, entry.title, "package", None, None, entry.manual))
            continue
        path = data_root(root) / entry.folder
        if not path.is_dir():
            note = "manual: " + entry.manual.format(path=path) if entry.manual else f"fmr data fetch {entry.name}"
            out.append(SetStatus(entry.name, entry.title, "missing", path, entry.size, note))
            continue
        man = _manifest(path)
        if man:
            size = sum(v[0] for v in man.get("files", {}).values())
            state = "verified" if man.get("verified") else "present, not verified"
            note = "" if man.get("verified") else "no published checksum; sha256 recorded at fetch"
        else:
            size, state, note = folder_size(path), "present, not verified", "no manifest (put there by hand)"
        out.append(SetStatus(entry.name, entry.title, state, path, size, note))
    return out


@dataclass
class VerifyReport:
    name: str
    path: Path
    n_files: int
    problems: list[str]
    n_images: int | None
    verified_archives: bool


def verify(name: str, root: str | Path | None = None, sources: dict[str, DataSource] | None = None) -> VerifyReport:
    """Re-check a set's files against its manifest (sizes and sha256), then its layout.

    Raises:
        DataError: the set is missing.
    """
    entry = get_source(name, sources)
    if entry.package:
        raise SettingsError(f"{name}: {entry.manual}")
    path = data_root(root) / entry.folder
    if not path.is_dir():
        raise DataError(missing_message_for(entry, path))
    man = _manifest(path)
    problems = []
    files = man.get("files")
    if files is not None:
        now = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != MANIFEST}
        for rel, (size, sha) in files.items():
            p = path / rel
            if not p.is_file():
                problems.append(f"missing {rel}")
            elif p.stat().st_size != size:
                problems.append(f"{rel} has {p.stat().st_size} bytes, the manifest {size}")
            elif file_digest(p) != sha:
                problems.append(f"{rel} changed (sha256 differs from the manifest)")
        problems += [f"extra file {rel}" for rel in sorted(now - set(files))]
    try:
        n_images = check_layout(entry, path)
    except FmrBenchError as e:
        problems.append(f"layout: {e}")
        n_images = None
    return VerifyReport(name, path, len(files or ()), problems, n_images, bool(man.get("verified")))


def missing_message_for(entry: DataSource, path: Path) -> str:
    if entry.manual:
        return f"{entry.name} is not at {path}; it {entry.manual.format(path=path)}"
    return f"{entry.name} is not at {path}; run fmr data fetch {entry.name} (or pass --root to the folder holding it)"


__all__ = ["DataSource", "FetchResult", "SourceFile", "data_root", "default_path", "download", "extract", "fetch",
           "load_sources", "status", "verify"]
