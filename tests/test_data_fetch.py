"""``fmr data``: fetching the evaluation sets from a real HTTP server on the loopback address.

The server (``http.server`` in a thread) serves small synthetic archives in each set's real
layout and honours Range requests; the real source table is swapped for one pointing at it
through ``FMR_DATA_SOURCES``, as a user would point fmr at a mirror.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmr_bench.cli import main
from fmr_bench.datasets import fetch as fx
from fmr_bench.datasets import load_dataset
from fmr_bench.datasets.imagenet_variants import _timm_info


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _tar(members: dict[str, bytes], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


WNIDS = _timm_info("imagenet_r_synsets.txt")[:3]


def imagenet_r_tar() -> bytes:
    return _tar({f"imagenet-r/{w}/{k}.jpg": _jpeg(i * 10 + k) for i, w in enumerate(WNIDS) for k in range(2)})


def waterbirds_tgz() -> bytes:
    rows, files = ["img_id,img_filename,y,split,place,place_filename"], {}
    for i in range(8):
        name = f"{i:03d}.Bird/img_{i}.jpg"
        rows.append(f"{i},{name},{i % 2},2,{(i // 2) % 2},x.jpg")
        files[f"waterbird_complete95_forest2water2/{name}"] = _jpeg(100 + i)
    files["waterbird_complete95_forest2water2/metadata.csv"] = ("\n".join(rows) + "\n").encode()
    return _tar(files, gz=True)


def pacs_zip() -> bytes:
    return _zip({f"kfold/{d}/{c}/{k}.jpg": _jpeg(200 + k) for d in ("photo", "sketch") for c in ("dog", "horse")
                 for k in range(2)})


def cifar_tgz() -> bytes:
    d = {b"data": np.random.default_rng(0).integers(0, 255, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    return _tar({"cifar-10-batches-py/test_batch": pickle.dumps(d)}, gz=True)


def cifar102_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((3, 32, 32, 3), np.uint8), labels=np.array([4, 5, 6]))
    return buf.getvalue()


class Server:
    """Files by path; ``cut`` paths send half their bytes then drop the connection, once."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.cut: set[str] = set()
        self.ranges: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.ranges.append(self.headers.get("Range"))
                if self.path not in outer.files:
                    self.send_error(404)
                    return
                data, ctype = outer.files[self.path]
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in outer.cut:
                    outer.cut.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, data: bytes, ctype: str = "application/octet-stream") -> str:
        self.files[path] = (data, ctype)
        return self.url + path


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def table(server, tmp_path, monkeypatch):
    """A source table for the test server, in the shipped table's form; FMR_DATA points at tmp."""
    r, wb, pacs, c10, c102 = imagenet_r_tar(), waterbirds_tgz(), pacs_zip(), cifar_tgz(), cifar102_npz()
    entries = {
        "imagenet-r": {"title": "R", "folder": "imagenet-r", "files": [
            {"name": "imagenet-r.tar", "urls": [server.add("/r.tar", r)], "size": len(r), "sha256": _sha(r),
             "archive": "tar", "subdir": "imagenet-r", "target": "."}]},
        "waterbirds": {"title": "W", "folder": "waterbirds", "unverified_because": "none published", "files": [
            {"name": "wb.tar.gz", "urls": [server.add("/wb.tar.gz", wb)], "size": None, "sha256": None,
             "archive": "tar.gz", "subdir": "waterbird_complete95_forest2water2", "target": "."}]},
        "pacs": {"title": "P", "folder": "pacs", "files": [
            {"name": "PACS.zip", "urls": [server.add("/missing.zip", b""), server.add("/pacs.zip", pacs)],
             "sha256": _sha(pacs), "archive": "zip", "subdir": "kfold", "target": "."}]},
        "cifar10.02": {"title": "C", "folder": "cifar10.02", "files": [
            {"name": "c10.tar.gz", "urls": [server.add("/c10.tgz", c10)], "size": len(c10), "sha256": _sha(c10),
             "archive": "tar.gz", "subdir": "cifar-10-batches-py", "target": "cifar-10-batches-py"},
            {"name": "cifar102_test.npz", "urls": [server.add("/c102.npz", c102)], "sha256": _sha(c102),
             "archive": "file", "target": "cifar102_test.npz"}]},
        "objectnet": {"title": "O", "folder": "objectnet", "manual": "needs a licence: put it at {path}"},
    }
    server.files.pop("/missing.zip")  # the first mirror answers 404: the second one serves
    path = tmp_path / "sources.json"
    path.write_text(json.dumps(entries))
    monkeypatch.setenv("FMR_DATA_SOURCES", str(path))
    monkeypatch.setenv("FMR_DATA", str(tmp_path / "data"))
    return entries


def _leftovers(root: Path) -> list[str]:
    """Anything under the root that is neither a complete set nor the downloads folder."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp")) if root.exists() else []


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmr: error:") and "\n" not in err, err
    return err


def test_shipped_table_parses_and_cites_every_source():
    sources = fx.load_sources(Path(fx.__file__).with_name("sources.json"))
    assert {"imagenet-r", "imagenet-a", "imagenet-sketch", "imagenet-v2", "waterbirds", "pacs", "cifar10.02",
            "imagenet-vid-robust", "imagenet", "objectnet"} <= set(sources)
    for s in sources.values():
        assert s.source or s.manual, s.name
        for f in s.files:
            assert f.urls and all(u.startswith("https://") for u in f.urls)
            assert f.sha256 is None or len(f.sha256) == 64
            if not (f.sha256 or f.md5):
                assert s.unverified_because, f"{s.name}: a missing checksum needs its reason"


def test_clean_fetch_then_the_loader_reads_it(table, tmp_path, capsys):
    assert main(["data", "fetch", "imagenet-r", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "6 images" in out and "verified against the published checksum" in out
    ds = load_dataset("imagenet-r")  # no path: the data root
    assert len(ds) == 6 and Path(ds.root) == tmp_path / "data" / "imagenet-r"
    synsets = _timm_info("imagenet_r_synsets.txt")
    assert sorted(set(ds.labels)) == sorted(synsets.index(w) for w in WNIDS)
    ds.set_resolution(32)
    _, img, label = ds[0]
    assert tuple(img.shape) == (3, 32, 32) and label in ds.labels
    man = json.loads((tmp_path / "data" / "imagenet-r" / fx.MANIFEST).read_text())
    assert man["verified"] and len(man["files"]) == 6
    assert not (tmp_path / "data" / ".downloads" / "imagenet-r--imagenet-r.tar").exists()
    assert main(["data", "verify", "imagenet-r"]) == 0
    assert "6 files match the manifest" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    assert "verified" in listing and "missing" in listing
    # a changed file is caught by verify
    victim = next((tmp_path / "data" / "imagenet-r").rglob("*.jpg"))
    victim.write_bytes(_jpeg(999))
    err = _one_line_error(capsys, ["data", "verify", "imagenet-r"])
    assert "1 problem" in err and victim.relative_to(tmp_path / "data" / "imagenet-r").as_posix() in err


def test_other_layouts_fetch_and_load(table, tmp_path, capsys):
    assert main(["data", "fetch", "waterbirds", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "warning: waterbirds" in out and "could not verify" in out and "NOT verified" in out
    ds = load_dataset("waterbirds")
    assert len(ds) == 8 and sorted(set(ds.groups)) == [0, 1, 2, 3]
    assert main(["data", "fetch", "pacs", "--quiet"]) == 0  # first mirror 404s
    ds = load_dataset("pacs")
    assert len(ds) == 8 and ds.group_names == ["photo", "sketch"]
    assert main(["data", "fetch", "cifar10.02", "--quiet"]) == 0
    ds = load_dataset("cifar10.02")
    assert len(ds) == 7 and ds.groups == [0] * 4 + [1] * 3
    rows = {s.name: s for s in fx.status()}
    assert rows["waterbirds"].state == "present, not verified" and rows["pacs"].state == "verified"
    assert rows["imagenet-r"].state == "missing"
    capsys.readouterr()
    err = _one_line_error(capsys, ["data", "fetch", "objectnet"])
    assert "licence" in err


def test_cut_connection_resumes_to_the_same_sha256(table, server, tmp_path, capsys):
    server.cut.add("/r.tar")
    err = _one_line_error(capsys, ["data", "fetch", "imagenet-r", "--quiet"])
    assert "/r.tar" in err and "resume" in err
    part = tmp_path / "data" / ".downloads" / "imagenet-r--imagenet-r.tar"
    full = server.files["/r.tar"][0]
    assert 0 < part.stat().st_size < len(full)
    assert not (tmp_path / "data" / "imagenet-r").exists() and not _leftovers(tmp_path / "data")
    server.ranges.clear()
    assert main(["data", "fetch", "imagenet-r", "--quiet", "--keep-archive"]) == 0
    assert server.ranges == [f"bytes={len(full) // 2}-"]
    assert fx.file_digest(part) == _sha(full)


def test_wrong_checksum_is_refused_before_extraction(table, tmp_path, capsys, monkeypatch):
    table["imagenet-r"]["files"][0]["sha256"] = "0" * 64
    Path(os.environ["FMR_DATA_SOURCES"]).write_text(json.dumps(table))
    err = _one_line_error(capsys, ["data", "fetch", "imagenet-r", "--quiet"])
    assert "sha256" in err and "/r.tar" in err
    root = tmp_path / "data"
    assert not (root / "imagenet-r").exists() and not _leftovers(root)
    assert not (root / ".downloads" / "imagenet-r--imagenet-r.tar").exists()  # never resumed


def test_html_page_is_refused(table, server, tmp_path, capsys):
    url = server.add("/quota", b"<!DOCTYPE html><html><body>Quota exceeded</body></html>", "text/html; charset=utf-8")
    table["imagenet-r"]["files"][0]["urls"] = [url]
    Path(os.environ["FMR_DATA_SOURCES"]).write_text(json.dumps(table))
    err = _one_line_error(capsys, ["data", "fetch", "imagenet-r", "--quiet"])
    assert "HTML" in err and url in err
    assert not (tmp_path / "data" / "imagenet-r").exists()
    assert not list((tmp_path / "data" / ".downloads").iterdir())


@pytest.mark.parametrize("member", ["../escape.txt", "/abs/escape.txt", "imagenet-r/../../escape.txt"])
def test_unsafe_tar_members_are_refused(table, server, tmp_path, capsys, member):
    bad = _tar({f"imagenet-r/{WNIDS[0]}/0.jpg": _jpeg(0), member: b"x"})
    table["imagenet-r"]["files"][0].update(urls=[server.add("/bad.tar", bad)], size=len(bad), sha256=_sha(bad))
    Path(os.environ["FMR_DATA_SOURCES"]).write_text(json.dumps(table))
    err = _one_line_error(capsys, ["data", "fetch", "imagenet-r", "--quiet"])
    assert "refused" in err and member in err
    root = tmp_path / "data"
    assert not (root / "imagenet-r").exists() and not _leftovers(root)
    assert not list(tmp_path.rglob("escape.txt")) and not Path("/abs/escape.txt").exists()


def test_tar_link_out_of_the_tree_and_zip_escape_are_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("set/link")
        info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tar.addfile(info)
    (tmp_path / "l.tar").write_bytes(buf.getvalue())
    (tmp_path / "out").mkdir()
    with pytest.raises(fx.DataError, match="out of the tree"):
        fx.extract(tmp_path / "l.tar", "tar", tmp_path / "out")
    (tmp_path / "z.zip").write_bytes(_zip({"ok.txt": b"1", "../z.txt": b"2"}))
    with pytest.raises(fx.DataError, match="outside the target"):
        fx.extract(tmp_path / "z.zip", "zip", tmp_path / "out")
    assert not list((tmp_path / "out").iterdir()) and not (tmp_path / "z.txt").exists()


def test_full_disk_is_one_line_and_leaves_no_half_set(table, tmp_path, capsys, monkeypatch):
    real_open = open
    written = {"n": 0}

    def full_open(path, mode="r", *a, **k):
        fh = real_open(path, mode, *a, **k)
        if "downloads" in str(path) and ("w" in mode or "a" in mode):
            orig = fh.write

            def write(b):
                written["n"] += 1
                if written["n"] > 1:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return orig(b)

            fh.write = write
        return fh

    monkeypatch.setattr("builtins.open", full_open)
    from fmr_bench.datasets import fetch as mod

    monkeypatch.setattr(mod, "CHUNK", 64)
    err = _one_line_error(capsys, ["data", "fetch", "imagenet-r", "--quiet"])
    assert "disk full" in err and "resume" in err
    monkeypatch.setattr("builtins.open", real_open)
    assert not (tmp_path / "data" / "imagenet-r").exists() and not _leftovers(tmp_path / "data")
    assert main(["data", "fetch", "imagenet-r", "--quiet"]) == 0  # space freed: the same command finishes


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_root(table, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        err = _one_line_error(capsys, ["data", "fetch", "imagenet-r", "--quiet", "--root", str(ro)])
        assert str(ro) in err and "writable" in err
    finally:
        ro.chmod(0o700)


def test_read_only_root_injected(table, tmp_path, capsys, monkeypatch):
    """The same refusal where the tests run as root (chmod does not bind root)."""
    real = Path.write_text

    def deny(self, *a, **k):
        if self.name == ".write-test":
            raise OSError(errno.EROFS, "Read-only file system")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", deny)
    err = _one_line_error(capsys, ["data", "fetch", "imagenet-r", "--quiet"])
    assert "Read-only" in err and "writable" in err
    assert not (tmp_path / "data" / "imagenet-r").exists()


def test_local_archive_and_missing_set_messages(table, server, tmp_path, capsys):
    local = tmp_path / "r.tar"
    local.write_bytes(server.files["/r.tar"][0])
    server.ranges.clear()
    assert main(["data", "fetch", "imagenet-r", "--quiet", "--archive", str(local)]) == 0
    assert server.ranges == [] and local.exists()  # no download; the user's file is kept
    with pytest.raises(fx.DataError, match="fmr data fetch pacs"):
        load_dataset("pacs")
    with pytest.raises(fx.DataError, match="licence"):
        load_dataset("objectnet")
