"""Run folders: identity (weights, sample content), the lock, appends, read-only loads,
full disks, --fresh, warnings; the reference loop's latent; fit-sparse outputs; entry points."""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BrightnessOracle, brightness_world, identity_pre, tiny_vqgan
from fmr_bench import evaluate
from fmr_bench.cli import main
from fmr_bench.errors import OutputError
from fmr_bench.generators.noise import NoiseGenerator, PixelGenerator
from fmr_bench.models import ImageClassifier
from fmr_bench.oracles import Oracle
from fmr_bench.results.rundir import FmrResult, read_outcomes

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Content hashes and caches go to a folder of this test, not the user's cache."""
    monkeypatch.setenv("FMR_CACHE", str(tmp_path / "cache"))


def _run(out, n=10, progress=False, **kw):
    data, model, oracle = brightness_world(n)
    # no grid unless a test is about it: drawing it costs more than these tiny runs
    kw = {"generator": PixelGenerator(), "budget": 6, "step_size": 0.02, "batch_size": 4, "write_grid": False, **kw}
    return evaluate(model, data, oracle=oracle, out=out, progress=progress, **kw)


def _counting():
    seen = []
    return seen, lambda done, total: seen.append(done)


# --- weights are part of the identity -------------------------------------------------------------

def _vqgan_card(tmp_path, g, url=False):
    weights = ({"url": "https://example.invalid/tiny.ckpt", "filename": "tiny.ckpt", "sha256": None} if url
               else {"url": "https://example.invalid/x", "filename": "unused.ckpt", "sha256": None})
    card = {"name": "vqgan-test-tiny", "kind": "vqgan", "resolution": 16,
            "config": {"ddconfig": g.ddconfig, "n_embed": g.n_embed, "embed_dim": g.embed_dim}, "weights": weights}
    path = tmp_path / "vqgan-test-tiny.json"
    path.write_text(json.dumps(card))
    return path


def test_other_weights_under_the_same_spec_are_another_run(tmp_path):
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    torch.save({"state_dict": tiny_vqgan(seed=1).state_dict()}, a)
    torch.save({"state_dict": tiny_vqgan(seed=2).state_dict()}, b)
    card = _vqgan_card(tmp_path, tiny_vqgan())
    ra = _run(tmp_path / "runs", n=4, budget=3, generator=f"vqgan:{card}?weights={a}")
    seen, cb = _counting()
    rb = _run(tmp_path / "runs", n=4, budget=3, generator=f"vqgan:{card}?weights={b}", progress=cb)
    assert rb.path != ra.path and seen == list(range(1, 5))  # B ran every sample itself
    fresh_b = _run(tmp_path / "alone", n=4, budget=3, generator=f"vqgan:{card}?weights={b}")
    assert rb.metrics == fresh_b.metrics and ra.record["weights"] != rb.record["weights"]
    # The same path with other content (a retrained checkpoint) is another run too.
    a.write_bytes(b.read_bytes())
    assert _run(tmp_path / "runs", n=4, budget=3, generator=f"vqgan:{card}?weights={a}").path != ra.path


def test_a_cards_downloaded_file_is_identified_by_its_content(tmp_path, monkeypatch):
    from fmr_bench.generators import generator_weight_refs
    from fmr_bench.weights import weights_identity

    card = _vqgan_card(tmp_path, tiny_vqgan(), url=True)
    cached = tmp_path / "cache" / "tiny.ckpt"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"first weights")
    first = weights_identity(generator_weight_refs(f"vqgan:{card}", "pixel"))
    cached.write_bytes(b"other weights")
    second = weights_identity(generator_weight_refs(f"vqgan:{card}", "pixel"))
    assert first and first != second


def test_content_hashes_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    import hashlib

    from fmr_bench import files

    calls = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p: calls.append(p) or real(p))
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 1000)
    digest = files.file_sha256(f)
    assert digest == hashlib.sha256(b"x" * 1000).hexdigest() and len(calls) == 1
    assert files.file_sha256(f) == digest and len(calls) == 1  # read once
    f.write_bytes(b"y" * 1000)
    os.utime(f, ns=(1, 1))
    assert files.file_sha256(f) == hashlib.sha256(b"y" * 1000).hexdigest() and len(calls) == 2
    cache = tmp_path / "cache" / files.HASH_CACHE
    cache.write_text('{"' + str(f.resolve()) + '": [1000, 1, "tor')  # torn by a crash
    assert files.file_sha256(f) == hashlib.sha256(b"y" * 1000).hexdigest()


# --- a sample's identity covers its content -----------------------------------------------------

def _folder_world(root: Path, shades: dict[str, list[int]]):
    from PIL import Image

    for c, values in shades.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i, v in enumerate(values):
            Image.new("RGB", (20, 20), (v, v, v)).save(root / c / f"{i}.png")
    names = sorted(shades)
    model = ImageClassifier(BrightnessOracle(len(names)), identity_pre(16), class_names=names, spec="module:b")
    oracle = Oracle([ImageClassifier(BrightnessOracle(len(names)), identity_pre(16), class_names=names)], "b", "single")
    return model, oracle


def _folder_run(root, out, model, oracle, progress=False):
    return evaluate(model, f"folder:{root}", generator=PixelGenerator(), oracle=oracle, out=out, budget=3,
                    step_size=0.05, batch_size=2, progress=progress, write_grid=False)


def _key(res):
    return sorted((o.id, o.index, o.clean_pred, o.final_pred, o.steps, o.validated) for o in res.outcomes)


def test_changed_added_and_removed_images_keep_the_record_exact(tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    model, oracle = _folder_world(root, {"a_dark": [40, 60, 80], "b_light": [170, 190, 210]})
    first = _folder_run(root, tmp_path / "runs", model, oracle)
    assert first.metrics["n"] == 6
    # An image replaced by one of the other class under the same name is evaluated again.
    Image.new("RGB", (20, 20), (200, 200, 200)).save(root / "a_dark" / "1.png")
    seen, cb = _counting()
    changed = _folder_run(root, tmp_path / "runs", model, oracle, progress=cb)
    assert len(seen) == 1 and changed.path == first.path
    assert _key(changed) == _key(_folder_run(root, tmp_path / "fresh1", model, oracle))
    # An added image shifts indices: reused outcomes carry the current ones.
    Image.new("RGB", (20, 20), (50, 50, 50)).save(root / "a_dark" / "0a.png")
    added = _folder_run(root, tmp_path / "runs", model, oracle)
    assert _key(added) == _key(_folder_run(root, tmp_path / "fresh2", model, oracle))
    # A removed image is no longer counted; its outcome stays on disk, set aside.
    (root / "b_light" / "2.png").unlink()
    removed = _folder_run(root, tmp_path / "runs", model, oracle)
    assert removed.metrics["n"] == 6 and _key(removed) == _key(_folder_run(root, tmp_path / "fresh3", model, oracle))
    lines = (removed.path / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 6 and len(FmrResult.load(removed.path).outcomes) == 6
    stale = read_outcomes(removed.path / "samples.stale.jsonl")
    assert "b_light/2.png" in stale
    # Put back, it is reused from the set-aside outcomes (nothing recomputed).
    Image.new("RGB", (20, 20), (210, 210, 210)).save(root / "b_light" / "2.png")
    seen, cb = _counting()
    back = _folder_run(root, tmp_path / "runs", model, oracle, progress=cb)
    assert back.metrics["n"] == 7 and seen == []


def test_in_memory_images_of_the_same_name_are_told_apart(tmp_path):
    from fmr_bench.datasets import TensorImages

    data, model, oracle = brightness_world(6)
    other = TensorImages(1 - data.images, data.labels, data.class_names, spec=data.spec, world=data.world)
    kw = dict(generator=PixelGenerator(), oracle=oracle, out=tmp_path, budget=3, step_size=0.02, write_grid=False)
    a = evaluate(model, data, **kw)
    b = evaluate(model, other, **kw)
    alone = evaluate(model, other, generator=PixelGenerator(), oracle=oracle, out=None, budget=3, step_size=0.02)
    assert a.path == b.path and _key(b) == _key(alone)


# --- the lock ---------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from fmr_bench.results.rundir import RunLock
lock = RunLock(Path(sys.argv[1])).acquire()  # held while the process lives
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_process_on_the_same_folder_stops_naming_the_first(tmp_path):
    first = _run(tmp_path, n=4)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(first.path)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"another run \\(PID {holder.pid}\\) is writing") as err:
            _run(tmp_path, n=4)
        assert "\n" not in str(err.value)
        before = (first.path / "samples.jsonl").read_bytes()
        holder.send_signal(signal.SIGKILL)  # kill -9: the kernel drops the lock
        holder.wait(30)
        again = _run(tmp_path, n=4)
        assert again.metrics == first.metrics and (first.path / "samples.jsonl").read_bytes() == before
    finally:
        holder.kill()
        holder.wait(30)


# --- appends and loads ---------------------------------------------------------------------------

def test_a_last_line_without_its_newline_is_kept_and_not_glued(tmp_path):
    full = _run(tmp_path, n=8)
    path = full.path / "samples.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5]))  # 5 finished outcomes, the last lost only its newline
    assert len(read_outcomes(path)) == 5
    seen, cb = _counting()
    resumed = _run(tmp_path, n=8, progress=cb)
    assert seen == [6, 7, 8] and resumed.metrics == full.metrics
    text = path.read_text()
    assert text.endswith("\n") and all(json.loads(x) for x in text.splitlines()) and len(text.splitlines()) == 8


def test_glued_lines_of_an_older_writer_are_both_read(tmp_path):
    full = _run(tmp_path, n=6)
    path = full.path / "samples.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2] + lines[3] + "\n" + "\n".join(lines[4:]) + "\n")
    assert len(read_outcomes(path)) == 6
    assert len(FmrResult.load(full.path).outcomes) == 6


def test_loading_never_writes(tmp_path, monkeypatch):
    import builtins

    full = _run(tmp_path, n=6)
    path = full.path / "samples.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 20])  # torn last line
    before = path.read_bytes(), path.stat().st_mtime_ns
    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kw):
        if any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kw)

    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.setattr(os, "truncate", lambda *a: (_ for _ in ()).throw(OSError(errno.EROFS, "read-only")))
    loaded = FmrResult.load(full.path)
    monkeypatch.undo()
    assert len(loaded.outcomes) == 5 and (path.read_bytes(), path.stat().st_mtime_ns) == before


# --- full disks ----------------------------------------------------------------------------------

def _fail_fsync_for(monkeypatch, name):
    real = os.fsync

    def fsync(fd):
        if name in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_disk_full_at_every_write_point_ends_cleanly_and_resumes(tmp_path, monkeypatch):
    clean = _run(tmp_path / "clean", n=3, write_grid=True)
    for target in ("settings.json", "samples.jsonl", "grid.png", "record.json"):
        out = tmp_path / target
        with monkeypatch.context() as m:
            _fail_fsync_for(m, target)
            with pytest.raises(OutputError, match="disk full while writing .*re-run the same command") as err:
                _run(out, n=3, write_grid=True)
        assert "\n" not in str(err.value) and target in str(err.value)
        # a folder that got nothing but its lock (settings.json failed) is removed again
        folders = list(out.iterdir()) if out.exists() else []
        assert len(folders) == (target != "settings.json")
        assert not any((f / "record.json").exists() or list(f.glob("*.part")) for f in folders)
        resumed = _run(out, n=3, write_grid=True)
        (folder,) = out.iterdir()
        assert resumed.metrics == clean.metrics and resumed.record["files"] == clean.record["files"], target
        # the grid of a resumed run shows the same first samples as an uninterrupted one
        assert (folder / "grid.png").read_bytes() == (clean.path / "grid.png").read_bytes(), target


def test_disk_full_through_the_cli_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    argv = ["evaluate", "--model", "builtin:digits-cnn", "--limit", "2", "--budget", "2", "--out", str(tmp_path),
            "--quiet", "--no-grid"]
    with monkeypatch.context() as m:
        _fail_fsync_for(m, "record.json")
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmr: error: disk full while writing") and len(err.splitlines()) == 1
    assert main(argv) == 0
    (folder,) = [p for p in tmp_path.iterdir() if p.name != "cache"]
    assert json.loads((folder / "record.json").read_text())["metrics"]["n"] == 2


# --- reuse and --fresh ---------------------------------------------------------------------------

def test_a_finished_run_is_reused_visibly_and_fresh_redoes_it(tmp_path, capsys):
    first = _run(tmp_path, n=5)
    capsys.readouterr()
    again = _run(tmp_path, n=5, progress=True)
    err = capsys.readouterr().err
    assert again.reused and "reused finished run" in err and str(first.path) in err.replace("\n", "")
    assert "img/s" not in err
    seen, cb = _counting()
    redone = _run(tmp_path, n=5, progress=cb, fresh=True)
    assert seen == [1, 2, 3, 4, 5] and not redone.reused and redone.metrics == first.metrics
    (aside,) = first.path.glob("replaced-*")
    assert len((aside / "samples.jsonl").read_text().splitlines()) == 5 and (aside / "record.json").is_file()


# --- records -------------------------------------------------------------------------------------

def test_pandas_rows_tell_runs_apart(tmp_path):
    plain = _run(tmp_path, n=6).to_pandas()
    limited = _run(tmp_path, n=6, limit=3, seed=2).to_pandas()
    fgsm = _run(tmp_path, n=6, init="fgsm", fgsm_eps=0.01).to_pandas()
    assert plain["limit"] is None and limited["limit"] == 3 and limited["seed"] == 2
    assert plain["init"] == "none" and fgsm["init"] == "fgsm" and fgsm["fgsm_eps"] == 0.01
    assert plain["fgsm_eps"] is None and plain["precision"] == "fp32"
    assert len({plain["run"], limited["run"], fgsm["run"]}) == 3 and Path(plain["path"]).is_dir()


def test_sa_near_chance_is_flagged_in_record_and_console(tmp_path, capsys):
    from fmr_bench.metrics.fmr import fmr_warnings

    assert fmr_warnings({"sa": 6.25, "n": 160}, 10)  # the untrained net of the issue: SA 6.25 %, FMR 100
    assert fmr_warnings({"sa": 90.0, "n": 5}, 10)  # too few correct clean images
    assert fmr_warnings({"sa": 90.0, "n": 100}, 10) == []
    data, _, oracle = brightness_world(12)
    wrong = ImageClassifier(BrightnessOracle(3), identity_pre(16), class_names=data.class_names[::-1], spec="m:w")
    res = evaluate(wrong, data, generator=PixelGenerator(), oracle=oracle, out=tmp_path, budget=2, step_size=0.02,
                   write_grid=False)
    assert res.metrics["sa"] < 2 * 100 / 3 and any("near chance" in w for w in res.record["warnings"])
    assert json.loads((res.path / "record.json").read_text())["warnings"] == res.record["warnings"]


# --- the reference loop ---------------------------------------------------------------------------

@pytest.mark.parametrize("make", [PixelGenerator, lambda: NoiseGenerator(sigma=0.01)])
def test_reference_returns_the_latent_of_its_final_image(make):
    from fmr_bench.protocol import reference_one
    from fmr_bench.protocol.loop import exact_fp32

    data, model, oracle = brightness_world(6)
    data.set_resolution(16)
    gen = make().freeze()
    stopped = 0
    with exact_fp32():
        for i in range(len(data)):
            sample = (data.ids[i], i, data.load(i), data.labels[i])
            o, x_hat, z_hat = reference_one(sample, model=model, oracle=oracle, generator=gen, target=data.labels[i],
                                            budget=12, step_size=0.05)
            stopped += o.validated and o.steps < 12
            torch.testing.assert_close(gen.decode(z_hat[None])[0], x_hat, rtol=0, atol=0)
    assert stopped  # samples the oracle stopped are the ones a live latent would get wrong


def test_both_loops_flush_denormals_alike_and_leave_the_flag_as_found():
    from fmr_bench.protocol import LoopConfig, run_batched, run_reference

    def flushing() -> bool:
        return torch.tensor([1e-40]).item() == 0.0

    data, model, oracle = brightness_world(3)
    data.set_resolution(16)
    seen = {}
    hook = model.register_forward_hook(lambda *a: seen.setdefault(loop, flushing()) and None)
    samples = [(data.ids[i], i, data.load(i), data.labels[i]) for i in range(3)]
    assert not flushing()
    loop = "reference"
    run_reference(samples, model=model, oracle=oracle, generator=PixelGenerator(), target_of=torch.arange(3),
                  budget=2, step_size=0.02)
    assert not flushing()
    loop = "batched"
    run_batched(iter(samples), model=model, oracle=oracle, generator=PixelGenerator(), target_of=torch.arange(3),
                cfg=LoopConfig(2, 0.02, "adam", 2, "fp32"), device=torch.device("cpu"), on_sample=lambda *a: None)
    hook.remove()
    assert not flushing() and seen["reference"] == seen["batched"] is True


# --- fit-sparse never writes shipped files ----------------------------------------------------------

def _latents(path):
    from fmr_bench.studies.fit_sparse import LatentSet

    rng = np.random.default_rng(0)
    n, shape = 20, (4, 2, 2)
    orig = rng.normal(size=(n, 16)).astype(np.float32)
    fin = orig.copy()
    fin[:, 3] += 3.0  # one dim tells perturbed from original
    meta = {"generator": "vqgan:digits", "generator_settings": {"card": "vqgan-digits"}, "dataset": "digits:train",
            "model": "builtin:digits-cnn", "settings": {}, "loop_metrics": {}}
    return LatentSet(orig, orig, fin, [f"s{i}" for i in range(n)], np.ones(n, bool), np.ones(n, int), shape,
                     meta).save(path)


def test_fit_sparse_writes_to_a_user_folder_by_default(tmp_path, monkeypatch, capsys):
    import shutil

    from fmr_bench.generators import cards

    # a copy stands in for the shipped cards folder, so that a regression writes there, not into the checkout
    shipped = tmp_path / "shipped"
    shutil.copytree(cards.cards_dir(), shipped)
    monkeypatch.setattr(cards, "cards_dir", lambda: shipped)
    before = {p.name: p.stat().st_mtime_ns for p in shipped.iterdir()}
    latents = _latents(tmp_path / "lat.npz")
    monkeypatch.chdir(tmp_path)
    assert main(["fit-sparse", "--model", "builtin:digits-cnn", "--from-latents", str(latents), "--lam", "0.5"]) == 0
    assert (tmp_path / "masks" / "sparse-vqgan-digits.json").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in shipped.iterdir()} == before
    out = capsys.readouterr().out
    assert "sparse-vqgan:masks/sparse-vqgan-digits.json" in out.replace("\n", "")


def test_fit_sparse_refit_hint_is_a_command_that_runs(tmp_path, capsys):
    latents = _latents(tmp_path / "lat.npz")
    out = tmp_path / "my masks"
    assert main(["fit-sparse", "--model", "builtin:digits-cnn", "--from-latents", str(latents), "--lam", "1e7",
                 "--out", str(out), "--name", "mine", "--max-iter", "200"]) == 2
    err = capsys.readouterr().err.strip()
    hint = shlex.split(err.split("smaller --lam: ", 1)[1])
    assert hint[:2] == ["fmr", "fit-sparse"] and "--out" in hint and str(out) in hint
    assert main(hint[1:]) == 2  # it parses and reaches the fit (still too strong a lambda)
    assert "kept no latent dim" in capsys.readouterr().err
    hint[hint.index("--lam") + 1] = "0.5"
    assert main(hint[1:]) == 0 and (out / "sparse-vqgan-mine.json").is_file()


# --- entry points --------------------------------------------------------------------------------

def test_version_and_python_dash_m(tmp_path, capsys):
    from fmr_bench.runtime import fmr_version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"fmr_bench {fmr_version()}"
    # python -m fmr_bench runs the same command line and hands its exit code to the shell
    bad = subprocess.run([sys.executable, "-m", "fmr_bench", "evaluate", "--model", "builtin:nope", "--out",
                          str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("fmr: error:") and len(bad.stderr.strip().splitlines()) == 1
