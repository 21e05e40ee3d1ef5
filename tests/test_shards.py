"""Scale-out: shards merge into exactly the single run, merge refusals, a 2-rank gloo torchrun job
killed mid-run and restarted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import brightness_world

from fmr_bench import evaluate
from fmr_bench.cli import main
from fmr_bench.engine.distributed import World, rank_device, world_from_env
from fmr_bench.errors import OutputError, SettingsError
from fmr_bench.generators.noise import PixelGenerator
from fmr_bench.results.rundir import FmrResult, read_outcome_rows
from fmr_bench.results.shards import Shard, merge_folders, parse_shard, resolve_shard, shard_from_env

REPO = Path(__file__).resolve().parents[1]
N = 10
#: Record fields that say where and when, not what: they may differ between a merge and a single run.
CIRCUMSTANCES = ("provenance", "merged_from")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FMR_CACHE", str(tmp_path / "cache"))


def _run(out, shard=None, **kw):
    data, model, oracle = brightness_world(N)
    kw = {"generator": PixelGenerator(), "budget": 6, "step_size": 0.02, "batch_size": 4, "write_grid": False,
          "limit": 9, "seed": 3, **kw}
    return evaluate(model, data, oracle=oracle, out=out, shard=shard, **kw)


def _same_record(merged: dict, single: dict) -> None:
    a = {k: v for k, v in merged.items() if k not in CIRCUMSTANCES}
    b = {k: v for k, v in single.items() if k not in CIRCUMSTANCES}
    assert a == b


# --- which samples a shard takes ---------------------------------------------------------------

@pytest.mark.parametrize("text,index,count", [("0/1", 0, 1), ("3/4", 3, 4), (" 2/10 ", 2, 10)])
def test_shard_parses(text, index, count):
    assert parse_shard(text) == Shard(index, count)


@pytest.mark.parametrize("text", ["4/4", "-1/4", "0/0", "1", "a/b", "1/2/3", "", "1.5/4"])
def test_bad_shard_is_one_line_naming_the_form(text):
    with pytest.raises(SettingsError, match=r"--shard|shard") as err:
        parse_shard(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 25])
def test_shards_partition_the_selection(count):
    items = list(range(20))
    parts = [Shard(i, count).take(items) for i in range(count)]
    assert sorted(x for p in parts for x in p) == items  # each once, none padded in
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_slurm_array_gives_the_shard_and_an_explicit_flag_wins():
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "3"}
    assert shard_from_env(env) == Shard(2, 4)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}) == Shard(1, 2)
    assert shard_from_env({}) is None
    assert resolve_shard(None, env) == (Shard(2, 4), None)
    shard, note = resolve_shard("0/2", env)
    assert shard == Shard(0, 2) and "overrides SLURM array task shard 2/4" in note and "\n" not in note
    assert resolve_shard("2/4", env) == (Shard(2, 4), None)
    for bad in ({"SLURM_ARRAY_TASK_ID": "1"}, {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"},
                {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "2"}):
        with pytest.raises(SettingsError):
            shard_from_env(bad)


def test_torch_distributed_environment():
    assert world_from_env({}) is None and world_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert world_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == World(3, 4, 1)
    for bad in ({"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "two", "RANK": "0"}):
        with pytest.raises(SettingsError):
            world_from_env(bad)
    with pytest.raises(SettingsError, match="every rank on one GPU"):
        rank_device("cuda:0", World(0, 2, 0))
    assert str(rank_device("cpu", World(1, 2, 1))) == "cpu"


# --- n shards merged equal the single run --------------------------------------------------------

@pytest.mark.parametrize("count", [1, 3, 13])  # 13 > the 9 selected samples: empty shards
def test_merged_shards_equal_the_single_run(tmp_path, count):
    single = _run(tmp_path / "single")
    for i in range(count):
        part = _run(tmp_path / "sharded", shard=f"{i}/{count}")
        assert part.path.name == f"shard-{i}-of-{count}" and part.path.parent.name == single.path.name
        assert part.record["shard"] == {"index": i, "count": count, "n_selected": 9}
    _, folder = merge_folders([tmp_path / "sharded" / single.path.name])
    assert folder.name == single.path.name
    loaded = FmrResult.load(folder)
    assert loaded.outcomes == single.outcomes  # every field of every sample, in dataset order
    assert loaded.record["metrics"] == single.record["metrics"] and loaded.record["per_class"] == single.record[
        "per_class"]
    _same_record(loaded.record, single.record)
    assert [d["shard"] for d in loaded.record["merged_from"]] == [f"{i}/{count}" for i in range(count)]
    # the merged folder is a finished single run: the same command reuses it and computes nothing
    again = _run(tmp_path / "sharded")
    assert again.reused and again.outcomes == single.outcomes


def test_a_shard_resumes_from_its_own_log_and_is_not_the_run_identity(tmp_path):
    first = _run(tmp_path, shard="1/2")
    log = (first.path / "samples.jsonl").read_bytes()
    again = _run(tmp_path, shard="1/2")
    assert again.reused and (first.path / "samples.jsonl").read_bytes() == log
    assert json.loads((first.path / "settings.json").read_text()) == json.loads(
        (first.path.parent / "shard-1-of-2" / "settings.json").read_text())
    assert not (first.path.parent / "settings.json").exists()  # the run folder is the merge's to write


# --- merge refusals ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def _three_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMR_CACHE", str(root / "cache"))
        for i in range(3):
            part = _run(root / "runs", shard=f"{i}/3")
    return part.path.parent


@pytest.fixture
def shards(_three_shards, tmp_path):
    """A finished 3-shard run (a fresh copy for each test): its run folder."""
    return Path(shutil.copytree(_three_shards, tmp_path / "runs" / _three_shards.name))


def _edit(path: Path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _refused(paths, match, tmp_path):
    with pytest.raises(OutputError, match=match) as err:
        merge_folders(paths, tmp_path / "merged")
    assert "\n" not in str(err.value)
    return str(err.value)


def test_merge_refuses_a_missing_shard(shards, tmp_path):
    msg = _refused([shards / "shard-0-of-3", shards / "shard-2-of-3"], r"shard\(s\) 1/3 missing", tmp_path)
    assert "all 3 shards" in msg


def test_merge_refuses_a_shard_given_twice(shards, tmp_path):
    twin = _copy(shards / "shard-1-of-3", tmp_path / "elsewhere" / "shard-1-of-3")
    _refused([shards, twin], r"shard 1/3 is given 2 times", tmp_path)


def test_merge_refuses_shards_of_other_settings_or_weights(shards, tmp_path):
    other = _copy(shards / "shard-2-of-3", tmp_path / "other" / "shard-2-of-3")
    _edit(other / "settings.json", model_weights="0123456789abcdef")
    msg = _refused([shards / "shard-0-of-3", shards / "shard-1-of-3", other], "shards of different runs", tmp_path)
    assert "model_weights" in msg


def test_merge_refuses_other_datasets_versions_and_overlaps(shards, tmp_path):
    base = [shards / "shard-0-of-3", shards / "shard-1-of-3"]
    other = _copy(shards / "shard-2-of-3", tmp_path / "a" / "shard-2-of-3")
    _edit(other / "shard.json", selection_sha256="ffffffffffffffff")
    _refused([*base, other], r"differ in dataset", tmp_path)
    other = _copy(shards / "shard-2-of-3", tmp_path / "b" / "shard-2-of-3")
    record = json.loads((other / "record.json").read_text())
    _edit(other / "record.json", provenance={**record["provenance"], "fmr_bench": "0.0.0-other"})
    _refused([*base, other], r"ran fmr_bench", tmp_path)
    other = _copy(shards / "shard-2-of-3", tmp_path / "c" / "shard-2-of-3")
    _edit(other / "record.json", schema_version=999)
    _refused([*base, other], r"schema version 999", tmp_path)
    other = _copy(shards / "shard-2-of-3", tmp_path / "d" / "shard-2-of-3")
    line = (shards / "shard-0-of-3" / "samples.jsonl").read_text().splitlines()[0]
    stolen = json.loads(line)["id"]
    manifest = json.loads((other / "shard.json").read_text())
    _edit(other / "shard.json", ids=manifest["ids"] + [stolen])
    with (other / "samples.jsonl").open("a") as f:
        f.write(line + "\n")
    msg = _refused([*base, other], r"in more than one shard", tmp_path)
    assert stolen in msg


def test_merge_refuses_an_unfinished_shard_naming_its_missing_samples(shards, tmp_path):
    cut = _copy(shards / "shard-1-of-3", tmp_path / "cut" / "shard-1-of-3")
    lines = (cut / "samples.jsonl").read_text().splitlines(keepends=True)
    (cut / "samples.jsonl").write_text("".join(lines[1:]))
    lost = json.loads(lines[0])["id"]
    msg = _refused([shards / "shard-0-of-3", cut, shards / "shard-2-of-3"], r"shard 1/3 .* is unfinished", tmp_path)
    assert lost in msg and "re-run its command" in msg
    (cut / "samples.jsonl").write_text("".join(lines))
    (cut / "record.json").unlink()  # killed after its last sample, before its record
    _refused([shards / "shard-0-of-3", cut, shards / "shard-2-of-3"], "no record.json", tmp_path)


def test_merge_refuses_a_folder_holding_other_outcomes(shards, tmp_path):
    merge_folders([shards])
    merge_folders([shards])  # again: the same outcomes, harmless
    assert not list(shards.glob("replaced-*"))
    # a partial run in one piece left outcomes whose p(y) differs in the last bits: set aside, not lost
    lines = (shards / "samples.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    (shards / "samples.jsonl").write_text(json.dumps({**first, "oracle_conf": first["oracle_conf"] + 1e-7}) + "\n")
    merge_folders([shards])
    assert len(list(shards.glob("replaced-*/samples.jsonl"))) == 1
    assert (shards / "samples.jsonl").read_text().splitlines() == lines
    other = _run(tmp_path / "elsewhere", budget=2)  # another run's outcomes, under the same folder name
    target = tmp_path / "target" / shards.name
    shutil.copytree(other.path, target)
    shutil.copy(shards / "settings.json", target / "settings.json")
    with pytest.raises(OutputError, match="already holds other outcomes"):
        merge_folders([shards], tmp_path / "target")


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_merge_never_modifies_a_shard_even_read_only(shards, tmp_path, capsys):
    before = _snapshot(shards)
    modes = {}
    for p in [shards, *shards.rglob("*")]:
        modes[p] = p.stat().st_mode
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        assert main(["merge", str(shards), "--out", str(tmp_path / "merged")]) == 0
        capsys.readouterr()
        root = os.geteuid() == 0  # root writes through modes: the refusal only shows for other users
        assert main(["merge", str(shards)]) == (0 if root else 2)  # a read-only run folder: one line, exit 2
        err = capsys.readouterr().err
        assert root or (err.count("\n") == 1 and "cannot write" in err)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    after = _snapshot(shards)
    assert {k: v for k, v in after.items() if k.startswith("shard-")} == {
        k: v for k, v in before.items() if k.startswith("shard-")}
    assert (tmp_path / "merged" / shards.name / "record.json").is_file()


def test_cli_shard_flag_and_refusals(tmp_path, capsys):
    base = ["evaluate", "--model", "builtin:digits-cnn", "--limit", "2", "--budget", "1", "--out", str(tmp_path),
            "--no-grid", "--quiet", "--device", "cpu"]
    for bad, match in ((["--shard", "2/2"], "does not exist"), (["--shard", "x"], "is not i/n"),
                       (["--shard", "0/2", "--evaluator", "fmr,calibration"], "FMR protocol only"),
                       (["--shard", "0/2", "--evaluator", "calibration"], "only apply to the FMR protocol")):
        assert main(base + bad) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1
    assert main(["merge", str(tmp_path / "nothing")]) == 2
    assert "neither a shard folder" in capsys.readouterr().err


# --- torchrun: 2 gloo ranks, one killed mid-run, the job restarted ---------------------------------

TORCHRUN_ARGS = ["--model", "builtin:digits-cnn", "--limit", "8", "--budget", "20", "--batch-size", "1",
                 "--device", "cpu", "--no-grid"]


def _torchrun(out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "--standalone", "-m", "fmr_bench", "evaluate", *TORCHRUN_ARGS, "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_torchrun_rank_killed_mid_run_resumes_and_equals_the_single_run(tmp_path):
    out = tmp_path / "job"
    job = _torchrun(out)
    try:
        log = lock = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and job.poll() is None:
            logs = list(out.glob("*/shard-1-of-2/samples.jsonl"))
            if logs and logs[0].read_text().count("\n") >= 1:
                log, lock = logs[0], logs[0].parent / ".lock"
                break
            time.sleep(0.02)
        assert log is not None, job.communicate()[0][-3000:]
        os.kill(int(lock.read_text().split()[0]), signal.SIGKILL)  # kill -9 rank 1 (its PID is in its lock)
        done_before = log.read_text()
        job.wait(120)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(30)
    assert job.returncode != 0 and not (log.parent.parent / "record.json").exists()
    assert 1 <= done_before.count("\n") < 4  # killed mid-shard
    restarted = _torchrun(out)
    text = restarted.communicate(timeout=300)[0]
    assert restarted.returncode == 0, text[-3000:]
    rows = read_outcome_rows(log)
    assert log.read_text().startswith(done_before.rsplit("\n", 1)[0])  # nothing lost
    assert len(rows) == len({o.id for o, _ in rows}) == 4  # nothing repeated
    job_result = FmrResult.load(log.parent.parent)
    single = evaluate("builtin:digits-cnn", "digits", out=tmp_path / "single", limit=8, budget=20, device="cpu",
                      write_grid=False)
    assert job_result.path.name == single.path.name  # the same run, by identity
    assert job_result.record["metrics"] == single.record["metrics"]
    assert job_result.record["per_class"] == single.record["per_class"]
    by_id = {o.id: o for o in job_result.outcomes}
    # every decision is identical; the oracle's p(y) may differ in the last float bits with the batch (see docs)
    assert [by_id[o.id].key() for o in single.outcomes] == [o.key() for o in single.outcomes]
    assert all(abs(by_id[o.id].oracle_conf - o.oracle_conf) < 1e-5 for o in single.outcomes)
    assert "rank 1/2: 4/4 samples" in text and "all 2 ranks: 8/8 samples done" in text and "reused" not in text


# --- static evaluators: the forward pass spread over ranks -----------------------------------------

def test_static_logits_over_two_ranks_equal_one_pass_and_only_the_whole_set_is_cached(tmp_path, monkeypatch):
    import threading

    import fmr_bench.engine.distributed as dist_mod
    from fmr_bench.engine.logits import compute_logits

    monkeypatch.setenv("FMR_LOGITS_CACHE", str(tmp_path / "logits"))
    data, model, _ = brightness_world(N)
    single = compute_logits(model, data, batch_size=1, cache=False)
    box: list = [None, None]
    barrier = threading.Barrier(2)

    def fake_all_gather(obj, world):  # what torch.distributed.all_gather_object does, between two threads
        box[world.rank] = obj
        barrier.wait()
        out = list(box)
        barrier.wait()
        return out

    monkeypatch.setattr(dist_mod, "all_gather", fake_all_gather)
    results: dict[int, object] = {}

    def rank(r):
        results[r] = compute_logits(model, data, batch_size=1, world=World(r, 2, r))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in range(2):
        assert torch.equal(results[r].logits, single.logits) and torch.equal(results[r].labels, single.labels)
        assert results[r].ids == single.ids and not results[r].cached
    assert len(list((tmp_path / "logits").glob("*.pt"))) == 1  # the whole set's, written once (rank 0)
    again = compute_logits(model, data, batch_size=1)
    assert again.cached and torch.equal(again.logits, single.logits) and again.ids == single.ids


def test_a_full_disk_during_the_merge_leaves_the_target_whole_and_a_rerun_completes(shards, tmp_path, monkeypatch):
    import errno

    from fmr_bench import files

    real = os.replace

    def full(src, dst, *a, **k):
        if str(dst).endswith("record.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(OutputError, match="disk full while writing") as err:
        merge_folders([shards])
    assert "\n" not in str(err.value) and not (shards / "record.json").exists()
    assert not list(shards.glob("*.part"))
    monkeypatch.setattr(files.os, "replace", real)
    merged, folder = merge_folders([shards])
    assert FmrResult.load(folder).outcomes == merged.outcomes


def test_a_slurm_array_task_with_static_evaluators_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert main(["evaluate", "--model", "builtin:digits-cnn", "--evaluator", "fmr,calibration", "--out",
                 str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "shard 0/2 (from --shard or a SLURM array task)" in err and err.count("\n") == 1


# --- the merge verifies each shard before using it ---------------------------------------------------
def _rewrite_first_line(samples: Path, change) -> None:
    lines = samples.read_text().splitlines()
    first = json.loads(lines[0])
    change(first)
    samples.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")


@pytest.mark.parametrize("tamper, match", [
    (lambda s: _rewrite_first_line(s, lambda d: d.update(validated=not d["validated"], steps=3)),
     r"shard 1/3 .*samples.jsonl does not match the seal"),
    (lambda s: _rewrite_first_line(s, lambda d: d.update(label=(d["label"] + 1) % 10)),
     r"shard 1/3 .*does not match the seal"),
    (lambda s: s.write_text(s.read_text() + json.dumps({**json.loads(s.read_text().splitlines()[0]),
                                                         "validated": False}) + "\n"),
     r"shard 1/3 .*two different outcomes for sample"),
])
def test_merge_refuses_a_shard_whose_samples_were_edited(shards, tmp_path, tamper, match):
    tamper(shards / "shard-1-of-3" / "samples.jsonl")
    _refused([shards], match, tmp_path)


def test_merge_recomputes_a_shard_without_a_seal_and_checks_the_selection(shards, tmp_path):
    """A shard record of before seals: its metrics are recomputed from its samples, and the merged
    ids and labels must be the selection shard.json pins."""
    part = shards / "shard-1-of-3"
    rec = json.loads((part / "record.json").read_text())
    rec.pop("seal")
    (part / "record.json").write_text(json.dumps(rec))
    _rewrite_first_line(part / "samples.jsonl", lambda d: d.update(validated=not d["validated"], steps=3))
    _refused([shards], r"shard 1/3 .*its record says \w+ .* but its samples.jsonl gives", tmp_path)


def test_a_killed_merge_leaves_no_temporary_files_after_the_next_start(shards, tmp_path):
    _, target = merge_folders([shards], tmp_path / "merged")
    (target / "samples.jsonl.4242.part").write_text("torn")  # what a kill -9 between write and rename leaves
    (target / "settings.json.4242.part").write_text("torn")
    merge_folders([shards], tmp_path / "merged")
    assert not list(target.glob("*.part")) and (target / "record.json").is_file()
