"""Runs that meet a full disk, Ctrl-C or a held run folder end in one line and keep their work;
written files get the umask's mode; progress in a log file is plain lines with rate and ETA."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest

# ruff: noqa: F811 (tests take the imported fixtures as same-named arguments)
from test_finetune import tiny_clip  # noqa: F401
from test_finetune_train import FAST, world

from fmr_bench.cli import main
from fmr_bench.errors import InterruptedRun, OutputError
from fmr_bench.finetune import finetune

EVAL = ["evaluate", "--model", "builtin:digits-cnn", "--limit", "3", "--budget", "2", "--no-grid", "--quiet"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FMR_CACHE", str(tmp_path / "cache"))


def _run_folder(out: Path) -> Path:
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


# --- full disks --------------------------------------------------------------------------------

def _fail_nth_fsync_of(monkeypatch, name: str, n: int) -> None:
    """ENOSPC at the n-th fsync (1-based) of a file whose name contains ``name``."""
    real, seen = os.fsync, {"n": 0}

    def fsync(fd):
        if name in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            seen["n"] += 1
            if seen["n"] == n:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("target, n", [("settings.json", 1), ("samples.jsonl", 2), ("record.json", 1)])
def test_evaluate_on_a_full_disk_is_one_line_exit_2_keeps_finished_samples_and_resumes(tmp_path, monkeypatch, capsys,
                                                                                      target, n):
    out = tmp_path / "runs"
    argv = [*EVAL, "--out", str(out)]
    with monkeypatch.context() as m:
        _fail_nth_fsync_of(m, target, n)
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fmr: error: disk full while writing") and target in err
    kept = b""
    if target != "settings.json":
        kept = (_run_folder(out) / "samples.jsonl").read_bytes()
        # what finished before the failing write is on disk (the failing line may be there too)
        assert len(kept.splitlines()) >= (1 if target == "samples.jsonl" else 3)
    assert main(argv) == 0
    folder = _run_folder(out)
    assert json.loads((folder / "record.json").read_text())["metrics"]["n"] == 3
    assert (folder / "samples.jsonl").read_bytes().startswith(kept)  # resumed, not redone


def test_releasing_the_run_lock_never_raises_even_when_close_fails(tmp_path, monkeypatch):
    from fmr_bench.results import rundir as results

    lock = results.RunLock(tmp_path / "run").acquire()
    (tmp_path / "run" / "samples.jsonl").write_text("")  # the folder holds work: it stays
    fd = lock._fd
    with monkeypatch.context() as m:
        m.setattr(results.os, "close", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
        lock.release()  # the bug: ENOSPC from close() chained a second traceback onto the first error
    os.close(fd)
    assert not lock.held and (tmp_path / "run" / "samples.jsonl").is_file()


def test_a_lock_on_a_folder_it_created_leaves_nothing_when_nothing_was_written(tmp_path):
    from fmr_bench.results.rundir import RunLock

    with RunLock(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b" / ".lock").is_file()
    assert not (tmp_path / "a").exists()


def test_finetune_on_a_full_disk_is_one_line_and_resumes(tiny_clip, tmp_path, monkeypatch):
    import safetensors.torch as st
    from safetensors import SafetensorError

    kw = dict(method="ft", epochs=2, batch_size=8, pretrained=False, **{**FAST, "checkpoint_every": 1})
    real, calls = st.save_file, {"n": 0}

    def full(*a, **k):  # what safetensors raises on ENOSPC: its own error, not an OSError
        calls["n"] += 1
        if calls["n"] == 5:  # θ₀ is call 1, checkpoint 1 calls 2-4: fail in checkpoint 2
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(*a, **k)

    monkeypatch.setattr(st, "save_file", full)
    with pytest.raises(OutputError, match="disk is full") as err:
        finetune(tiny_clip, world(), out=tmp_path / "ft", **kw)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(st, "save_file", real)
    assert json.loads((tmp_path / "ft" / "checkpoints" / "latest.json").read_text())["step"] == 1
    assert finetune(tiny_clip, world(), out=tmp_path / "ft", **kw).steps == 6


def test_a_safetensors_error_that_is_not_io_is_not_called_a_full_disk(tmp_path):
    from safetensors import SafetensorError

    from fmr_bench.files import atomic_write_file

    def broken(p):
        raise SafetensorError("some tensors share memory")

    with pytest.raises(SafetensorError):
        atomic_write_file(tmp_path / "x.safetensors", broken)
    assert not list(tmp_path.iterdir())


# --- Ctrl-C ------------------------------------------------------------------------------------

def test_ctrl_c_in_finetune_through_the_cli_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    from fmr_bench.finetune import trainer as trainer_mod

    argv = ["finetune", "--model", "builtin:digits-clip", "--random-weights", "--data", "digits:train", "--method",
            "lp", "--epochs", "1", "--lp-epochs", "1", "--batch-size", "512", "--checkpoint-every", "1", "--quiet",
            "--out", str(tmp_path / "ft")]
    real_step = trainer_mod.Trainer._step

    def step_then_stop(self, *a, **k):
        if self.global_step == 1:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(trainer_mod.Trainer, "_step", step_then_stop)
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fmr: error: interrupted; 1/") and "steps are saved in" in err and err.endswith(
        "re-run the same command to resume")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "resuming at step 1" not in out  # --quiet
    assert (tmp_path / "ft" / "model.safetensors").is_file()


def test_ctrl_c_without_an_output_folder_says_nothing_is_saved():
    from fmr_bench.files import keep_on_interrupt

    with pytest.raises(InterruptedRun, match=r"^interrupted after 2/5 samples; nothing is saved"):
        with keep_on_interrupt(lambda: "2/5 samples", None):
            raise KeyboardInterrupt


# --- the lock comes before loading ---------------------------------------------------------------

def test_a_second_evaluate_on_a_held_run_stops_before_loading_the_model(tmp_path, monkeypatch, capsys):
    from fmr_bench.engine import fmr as runner

    argv = [*EVAL, "--out", str(tmp_path / "runs")]
    real_load, loads, second = runner.load_model, [], {}

    def load_model(*a, **k):
        loads.append(a[0])
        if len(loads) == 1:  # the first command is loading: a second one starts now
            second["code"] = main(argv)
            second["err"] = capsys.readouterr().err.strip()
        return real_load(*a, **k)

    monkeypatch.setattr(runner, "load_model", load_model)
    assert main(argv) == 0
    assert loads == ["builtin:digits-cnn"]  # the second command never loaded anything
    assert second["code"] == 2 and len(second["err"].splitlines()) == 1
    assert f"another run (PID {os.getpid()}) is writing the run of the same command" in second["err"]


def test_a_second_finetune_on_a_held_folder_stops_before_loading_the_model(tiny_clip, tmp_path, monkeypatch):
    from fmr_bench.finetune import trainer as trainer_mod

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded although the folder is held")

    monkeypatch.setattr(trainer_mod, "load_model", must_not_load)
    monkeypatch.setattr(trainer_mod, "load_train_data", must_not_load)
    from fmr_bench.results.rundir import RunLock

    with RunLock(tmp_path / "ft"):
        with pytest.raises(OutputError, match=f"another run \\(PID {os.getpid()}\\) is writing .*ft") as err:
            finetune("builtin:digits-clip", "digits:train", out=tmp_path / "ft", method="lp")
    assert "\n" not in str(err.value)


# --- file modes --------------------------------------------------------------------------------

def _plain_mode(folder: Path) -> int:
    """The mode a plain open() gives a new file now: the reference."""
    p = folder / "plain.txt"
    with open(p, "w") as f:
        f.write("x")
    mode = p.stat().st_mode & 0o777
    p.unlink()
    return mode


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_written_safetensors_gets_the_mode_of_the_umask(tiny_clip, tmp_path, mask):
    from fmr_bench import save_model
    from fmr_bench.finetune import uniform_soup
    from fmr_bench.finetune.wise import wise_grid

    old = os.umask(mask)
    try:
        want = _plain_mode(tmp_path)
        res = finetune(tiny_clip, world(), out=tmp_path / "ft", method="ft", epochs=1, batch_size=12,
                       pretrained=False, **{**FAST, "checkpoint_every": 1})
        wise_grid(f"file:{tmp_path / 'ft' / 'zeroshot.safetensors'}", f"file:{res.path}", [0.5], tmp_path / "wise")
        save_model(uniform_soup([f"file:{res.path}", f"file:{res.path}"]), tmp_path / "soup.safetensors")
    finally:
        os.umask(old)
    written = sorted(tmp_path.rglob("*.safetensors"))
    names = {p.name for p in written}
    assert {"model.safetensors", "zeroshot.safetensors", "optimizer.safetensors", "rng.safetensors",
            "wise-alpha0.50.safetensors", "soup.safetensors"} <= names
    assert {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in written} == \
        {str(p.relative_to(tmp_path)): oct(want) for p in written}
    assert want == 0o666 & ~mask


# --- progress in a log -------------------------------------------------------------------------

def test_plain_progress_prints_a_line_every_few_percent_with_rate_and_eta():
    from fmr_bench.progress import PLAIN_STEP, Progress

    log = io.StringIO()
    with Progress("FMR", 200, 20, stream=log, plain=True) as bar:  # 20 resumed from the folder
        for _ in range(180):
            bar.advance()
    lines = log.getvalue().splitlines()
    assert len(lines) == pytest.approx(0.9 / PLAIN_STEP, abs=1)
    assert lines[-1].startswith("FMR: 200/200 samples (100%), ") and " img/s" in lines[-1]
    assert all("ETA " in ln and "elapsed " in ln for ln in lines)
    done = [int(ln.split(": ")[1].split("/")[0]) for ln in lines]
    assert done == sorted(done) and done[0] == 30  # the first line after the first 5 % of the total


def test_evaluate_and_finetune_print_plain_progress_when_stderr_is_not_a_terminal(tiny_clip, tmp_path, capsys):
    assert main([*EVAL[:-1], "--out", str(tmp_path / "runs")]) == 0  # without --quiet
    err = capsys.readouterr().err
    assert "FMR: 3/3 samples (100%), " in err and " img/s" in err and "ETA " in err
    finetune(tiny_clip, world(), out=tmp_path / "ft", method="ft", epochs=2, batch_size=12, pretrained=False,
             progress=True, **FAST)
    err = capsys.readouterr().err
    assert "train: 4/4 steps (100%), " in err and " step/s" in err and "loss " in err and "ETA " in err


def test_leaderboard_run_passes_progress_to_each_run(tmp_path, monkeypatch):
    from fmr_bench.leaderboard import run as run_mod

    seen = []
    monkeypatch.setattr("fmr_bench.engine.fmr.evaluate", lambda *a, **k: seen.append(k.get("progress")))

    class Task:
        evaluator, data, settings, ood, options = "fmr", "digits", {}, [], {}

    class Entry:
        model = "builtin:digits-cnn"

    class Board:
        folder = tmp_path

    run_mod._run_task(Board(), Entry(), Task(), tmp_path)
    assert seen == [True]
    from fmr_bench.progress import dataset_passes

    updates = dataset_passes()
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    for d in range(1, 11):
        updates("digits", d, 10)
    assert "digits: 10/10 images (100%)" in log.getvalue()
