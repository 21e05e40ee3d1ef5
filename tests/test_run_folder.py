"""The one run-folder protocol (fmr_bench.results.rundir.RunFolder): every task's folder is locked
before anything is read, its settings are written first and checked, the record comes last."""

from __future__ import annotations

import json

import pytest

from fmr_bench.errors import OutputError
from fmr_bench.results.rundir import LOCK_FILE, RunFolder, RunLock


def test_a_second_opener_stops_at_once_naming_the_holder(tmp_path):
    with RunFolder(tmp_path / "run", {"a": 1}):
        with pytest.raises(OutputError, match=r"another run \(PID \d+\) is writing"):
            with RunFolder(tmp_path / "run", {"a": 1}):
                pass
    with RunFolder(tmp_path / "run", {"a": 1}) as run:  # released on leaving: open again
        assert not run.finished


def test_settings_are_written_first_and_another_runs_folder_is_refused(tmp_path):
    with RunFolder(tmp_path / "run", {"a": 1}) as run:
        assert json.loads((tmp_path / "run" / "settings.json").read_text()) == {"a": 1}  # before any work
        run.write_record({"kind": "x"})
    assert run.finished
    with pytest.raises(OutputError, match="belongs to a run with other settings"):
        with RunFolder(tmp_path / "run", {"a": 2}):
            pass


def test_fresh_sets_the_earlier_files_aside_and_keeps_them(tmp_path):
    with RunFolder(tmp_path / "run", {"a": 1}) as run:
        run.write_record({"kind": "x"})
    with RunFolder(tmp_path / "run", {"a": 1}, fresh=True) as run:
        assert not run.finished
    aside = [p for p in (tmp_path / "run").iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and (aside[0] / "record.json").is_file()


def test_a_failed_run_that_wrote_nothing_leaves_no_folder_when_asked(tmp_path):
    with pytest.raises(RuntimeError):
        with RunFolder(tmp_path / "run", {"a": 1}, discard_unfinished=True):
            raise RuntimeError("boom")
    assert not (tmp_path / "run").exists()
    with pytest.raises(RuntimeError):  # a folder that holds work of its own stays
        with RunFolder(tmp_path / "kept", {"a": 1}, discard_unfinished=True):
            (tmp_path / "kept" / "samples.jsonl").write_text("{}\n")
            raise RuntimeError("boom")
    assert (tmp_path / "kept" / "samples.jsonl").is_file() and (tmp_path / "kept" / "settings.json").is_file()


def test_a_static_evaluator_takes_the_lock_and_writes_settings_first(tmp_path, monkeypatch):
    from fmr_bench import run_evaluator
    from fmr_bench.registry import EVALUATORS

    res = run_evaluator("builtin:digits-mlp", "calibration", "digits-shift:mixed",
                        out=tmp_path)
    folder = res.path
    assert (folder / "settings.json").is_file() and (folder / "record.json").is_file()
    held = RunLock(folder).acquire()
    try:
        with pytest.raises(OutputError, match="another run"):
            run_evaluator("builtin:digits-mlp", "calibration", "digits-shift:mixed", out=tmp_path)
    finally:
        held.release()
    assert (folder / LOCK_FILE).exists()

    seen = {}
    fn = EVALUATORS.get("calibration")

    def spy(ctx, data, ood, **kw):  # while the evaluator runs, the settings are on disk already
        seen["settings"] = (ctx.folder / "settings.json").is_file()
        return fn(ctx, data, ood, **kw)

    spy.options = getattr(fn, "options", {})
    monkeypatch.setitem(EVALUATORS._entries, "calibration", EVALUATORS._entries["calibration"].__class__(
        "calibration", spy, "", None))
    run_evaluator("builtin:digits-mlp", "calibration", "digits-shift:mixed", out=tmp_path / "second")
    assert seen == {"settings": True}


def test_a_record_seals_its_samples_and_fmr_results_flags_a_broken_seal(tmp_path, capsys):
    from fmr_bench import evaluate, load_results
    from fmr_bench.cli import main
    from fmr_bench.results.rundir import read_outcome_rows, samples_seal, seal_problem

    res = evaluate("builtin:digits-mlp", "digits", limit=6, budget=2, out=tmp_path, write_grid=False)
    rec = res.to_dict()
    samples = res.path / "samples.jsonl"
    assert rec["seal"]["samples_sha256"] == samples_seal(read_outcome_rows(samples))
    assert seal_problem(res.path, rec) is None and list(load_results(tmp_path)["seal"]) == ["ok"]
    lines = samples.read_text().splitlines()
    first = json.loads(lines[0])
    first["validated"] = not first["validated"]  # one decision flipped after the run
    samples.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    assert "does not match the seal" in seal_problem(res.path, rec)
    assert main(["results", str(tmp_path), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert "seal=broken" in err and ",broken," in out
    samples.write_text("\n".join(lines) + "\n")  # put back: the seal holds again, whatever the line order
    samples.write_text("\n".join(reversed(lines)) + "\n")
    assert seal_problem(res.path, rec) is None
    samples.unlink()
    assert "missing" in seal_problem(res.path, rec)


def test_temporary_files_of_a_killed_writer_are_cleaned_on_the_next_start(tmp_path):
    run = tmp_path / "run"
    with RunFolder(run, {"a": 1}):
        pass
    for name in ("settings.json.4242.part", "samples.jsonl.4242.part", "record.json.99.w.part"):
        (run / name).write_text("torn")
    with RunFolder(run, {"a": 1}):
        assert not list(run.glob("*.part"))
