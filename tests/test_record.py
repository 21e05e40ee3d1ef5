"""The typed run record (schema version 2): one builder, round trips, and version-1 records read back."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import brightness_world
from fmr_bench import evaluate, run_evaluator
from fmr_bench.datasets import TensorImages, load_dataset
from fmr_bench.finetune.trainer import last_scores
from fmr_bench.generators.noise import PixelGenerator
from fmr_bench.results.record import (
    Provenance,
    Record,
    RecordError,
    code_commit,
    finetune_record,
    fmr_descriptions,
    fmr_record,
    load_record,
    sample_set_fingerprint,
)

REPO = Path(__file__).resolve().parents[1]
V1 = Path(__file__).parent / "data" / "v1"
V1_FMR = V1 / "builtin-digits-cnn__digits-test__a08cd37563"
V1_STATIC = V1 / "builtin-digits-cnn__calibration-digits-test__74f4db76b9"


def _fmr_run(out, n=10):
    data, model, oracle = brightness_world(n)
    return evaluate(model, data, generator=PixelGenerator(), oracle=oracle, out=out, budget=4, step_size=0.05,
                    batch_size=4)


def test_v1_fmr_record_reads_back_as_the_same_runs_v2_record(tmp_path):
    """A committed version-1 FMR run: resumed by today's code (nothing recomputed), its v2 record
    holds what the upgraded v1 record holds."""
    old_raw = json.loads((V1_FMR / "record.json").read_text())
    old = load_record(V1_FMR)
    folder = tmp_path / V1_FMR.name
    shutil.copytree(V1_FMR, folder)
    res = evaluate("builtin:digits-cnn", "digits", limit=40, out=tmp_path, write_grid=False)
    assert res.path == folder and res.reused  # same run identity: found and reused, not recomputed
    new = res.typed
    assert (old.schema_version, old.upgraded_from, new.upgraded_from) == (2, 1, None)
    assert old.kind == new.kind == "fmr" and old.evaluator == new.evaluator == "fmr"
    assert old.metrics == new.metrics and old.settings == new.settings and old.run == new.run
    assert old.n == new.n == 40 and old.seed == new.seed == 0
    for key in ("per_class", "warnings", "generator", "oracle", "weights"):
        assert old.sections[key] == new.sections[key], key
    assert {k: v for k, v in old.model.items()} == {k: new.model[k] for k in old.model}
    assert old.dataset["spec"] == new.dataset["spec"] and old.dataset["fingerprint"] is None
    assert len(new.dataset["fingerprint"]) == 16 and new.dataset["content_fingerprinted"]
    # provenance moved, not lost
    assert old.provenance.versions == old_raw["versions"] and old.provenance.command == old_raw["command"]
    assert old.provenance.timestamp == old_raw["timestamp"] and old.provenance.device == old_raw["device"]
    assert old.provenance.fmr_bench == old_raw["versions"]["fmr_bench"] and old.provenance.commit is None
    assert not set(old.sections) & {"versions", "device", "timestamp", "command"}


def test_v1_static_record_reads_back_as_the_same_runs_v2_record():
    """The same static run, recorded by the version-1 writer (fixture) and by today's (committed board)."""
    committed = REPO / "leaderboards" / "digits-static" / "runs" / V1_STATIC.name / "record.json"
    old, new = load_record(V1_STATIC / "record.json"), load_record(committed)
    assert old.kind == new.kind == "static" and old.upgraded_from == 1 and new.upgraded_from is None
    assert old.evaluator == new.evaluator == "calibration" and old.run == new.run
    assert old.settings == new.settings and old.model == new.model
    assert old.metrics.keys() == new.metrics.keys()
    for k in old.metrics:  # metrics the run could not identify are null (None) in both records
        if new.metrics[k] is None:
            assert old.metrics[k] is None, k
        else:
            assert old.metrics[k] == pytest.approx(new.metrics[k], rel=1e-6), k
    assert old.n == new.n == 180 and old.seed == new.seed == 0
    assert {k: v for k, v in old.dataset.items() if k != "fingerprint"} == {k: new.dataset[k] for k in old.dataset
                                                                             if k != "fingerprint"}
    assert old.sections["reliability"].keys() == new.sections["reliability"].keys()


def test_fmr_record_round_trips_and_rebuilds_bit_for_bit(tmp_path):
    res = _fmr_run(tmp_path)
    rec = res.typed
    on_disk = json.loads((res.path / "record.json").read_text())
    assert on_disk == res.record == rec.to_dict()
    assert Record.from_dict(json.loads(rec.to_json())).to_dict() == on_disk
    # The shard merge's path: the same builder, fed the run's descriptions and its outcomes in any order.
    shuffled = list(res.outcomes)
    random.Random(1).shuffle(shuffled)
    again = fmr_record(rec.settings, fmr_descriptions(rec), shuffled, provenance=rec.provenance, run=rec.run,
                       files=rec.sections["files"], seal=rec.sections["seal"]["samples_sha256"])
    assert json.dumps(again.to_dict()) == json.dumps(on_disk)
    # a different outcome set is a different record
    fewer = fmr_record(rec.settings, fmr_descriptions(rec), shuffled[1:], provenance=rec.provenance, run=rec.run)
    assert fewer.n == rec.n - 1 and fewer.metrics != rec.metrics


def _small_sets():
    digits = load_dataset("digits")
    names = digits.class_names
    clean = TensorImages(digits.images[:24], digits.labels[:24], names, spec="digits-first24", label_space="digits")
    dark = TensorImages(digits.images[24:48] * 0.3, digits.labels[24:48], names, spec="digits-dark24",
                        label_space="digits")
    return clean, dark


def test_static_and_finetune_records_round_trip(tmp_path):
    clean, dark = _small_sets()
    static = run_evaluator("builtin:digits-cnn", "ood-accuracy", clean, [dark], out=tmp_path, cache=False)
    rec = load_record(static.path)
    assert rec.to_dict() == static.record and rec.kind == "static" and rec.n == static.metrics["id/n"] == 24
    assert rec.dataset["fingerprint"] == sample_set_fingerprint(clean.ids, clean.labels)
    assert Record.from_dict(json.loads(rec.to_json())).to_dict() == static.record
    evals = [{"evaluator": "fmr", "metrics": {"fmr": 10.0, "n": 4}, "step": 1},
             {"evaluator": "fmr", "metrics": {"fmr": 20.0, "n": 4, "note": "text"}, "step": 2},
             {"evaluator": "ood-accuracy", "metrics": {"id_acc": 90.0}, "step": 2}]
    prov = Provenance("0.1.0", None, None, "fmr finetune ...", "2026-01-01T00:00:00+00:00", "cpu", {"python": "3"})
    ft = finetune_record("ft", {"method": "ft", "seed": 3}, model={"spec": "builtin:digits-clip", "weights_sha256_16": "ab"},
                         dataset={"spec": "digits:train", "n": 100}, metrics=last_scores(evals), provenance=prov,
                         sections={"evaluations": evals})
    assert ft.metrics == {"fmr/fmr": 20.0, "fmr/n": 4, "ood-accuracy/id_acc": 90.0}  # the last of each, numbers only
    assert ft.seed == 3 and ft.evaluator == "finetune:ft" and ft.n == 100
    back = load_record(json.loads(ft.to_json()))
    assert back == ft


def test_bad_records_name_the_problem(tmp_path):
    cases = {"foreign.json": '{"name": "not a record"}', "list.json": "[1, 2]", "torn.json": '{"schema_version": 2,',
             "future.json": '{"schema_version": 7, "model": {"spec": "m"}, "dataset": {"spec": "d"}, "metrics": {}}',
             "nometrics.json": '{"schema_version": 2, "kind": "fmr", "model": {"spec": "m"}, "dataset": {"spec": "d"}}',
             "badkind.json": '{"schema_version": 2, "kind": "x", "model": {"spec": "m"}, "dataset": {"spec": "d"}, '
                             '"metrics": {}}',
             "badtype.json": '{"schema_version": 2, "kind": "fmr", "model": {"spec": "m"}, "dataset": {"spec": "d"}, '
                             '"metrics": {}, "provenance": 5}'}
    expect = {"foreign.json": "no schema_version", "list.json": "JSON object", "torn.json": "not readable JSON",
              "future.json": "upgrade fmr_bench", "nometrics.json": "lacks its metrics", "badkind.json": "kind 'x'",
              "badtype.json": "malformed run record"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(RecordError, match=expect[name]) as e:
            load_record(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(RecordError, match="no record at"):
        load_record(tmp_path / "missing")
    with pytest.raises(RecordError, match="not a version-2 FMR record"):
        fmr_descriptions(load_record(V1_STATIC))


def test_sample_set_fingerprint_matches_a_plain_hash():
    ids, labels, fps = ["a", "b"], [0, 1], ["f1", None]
    plain = hashlib.sha256(b"a\t0\tf1\nb\t1\t-\n").hexdigest()[:16]
    assert sample_set_fingerprint(ids, labels, fps) == plain
    assert sample_set_fingerprint(ids, [0, 2], fps) != plain and sample_set_fingerprint(ids, labels) != plain


def test_code_commit_is_known_in_a_checkout_and_never_an_error(monkeypatch):
    code_commit.cache_clear()
    commit, _ = code_commit()
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
        assert commit == head.stdout.strip()

    def broken(*a, **k):
        raise OSError("no git")

    code_commit.cache_clear()
    monkeypatch.setattr(subprocess, "run", broken)
    try:
        assert code_commit() == (None, None)
    finally:
        code_commit.cache_clear()
