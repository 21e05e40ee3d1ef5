"""``fmr compare-generators``: every (model, generator) pair, tables, Kendall's tau, resume."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from fmr_bench.cli import main
from fmr_bench.errors import SettingsError, SpecError
from fmr_bench.studies.compare import compare_generators, kendall_tau, split_list

MODELS = "builtin:digits-mlp,builtin:digits-cnn"
FAST = {"limit": 3, "budget": 2, "batch_size": 8}


def _tau_by_hand(a, b):
    """Kendall's tau-a by counting pairs (equals tau-b without ties)."""
    s = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        s += (a[i] - a[j]) * (b[i] - b[j]) > 0
        s -= (a[i] - a[j]) * (b[i] - b[j]) < 0
    return s / (len(a) * (len(a) - 1) / 2)


def test_kendall_tau_matches_pair_counting():
    rng = random.Random(0)
    for n in (2, 3, 5, 9):
        a = rng.sample(range(100), n)
        b = rng.sample(range(100), n)
        tau, _, used = kendall_tau(a, b)
        assert used == n and tau == pytest.approx(_tau_by_hand(a, b))
    assert kendall_tau([1, None, 3], [2, 5, 1])[2] == 2  # models without a value are left out
    assert kendall_tau([1, 1, 1], [1, 2, 3])[0] is None  # a constant side has no ranking


def test_compare_writes_tables_and_resumes(tmp_path):
    res = compare_generators(MODELS, "pixel,noise?sigma=0.01", "digits", out=tmp_path / "runs", to=tmp_path / "cmp",
                             write_grid=False, **FAST)
    assert [(r["model"], r["generator"]) for r in res.rows] == [
        ("builtin:digits-mlp", "pixel"), ("builtin:digits-cnn", "pixel"),
        ("builtin:digits-mlp", "noise?sigma=0.01"), ("builtin:digits-cnn", "noise?sigma=0.01")]
    assert all(r["n"] == 3 and r["run"] for r in res.rows)
    assert [(t["generator_a"], t["generator_b"], t["n_models"]) for t in res.tau] == [("pixel", "noise?sigma=0.01", 2)]
    for name in ("compare.csv", "table.csv", "tau.csv", "compare.json"):
        assert (tmp_path / "cmp" / name).is_file()
    table = (tmp_path / "cmp" / "table.csv").read_text().splitlines()
    assert table[0] == "model,pixel PA,pixel FMR,noise?sigma=0.01 PA,noise?sigma=0.01 FMR" and len(table) == 3
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert summary["request"]["generators"] == ["pixel", "noise?sigma=0.01"]
    # one pair of models under each generator: A − B as fmr compare gives it for the two run folders
    from fmr_bench.studies.paired import compare_runs

    assert [(p["generator"], p["model_a"], p["model_b"]) for p in res.pairs] == [
        ("pixel", "builtin:digits-mlp", "builtin:digits-cnn"),
        ("noise?sigma=0.01", "builtin:digits-mlp", "builtin:digits-cnn")]
    runs = {(r["model"], r["generator"]): r["run"] for r in res.rows}
    for p in res.pairs:
        by = {x["metric"]: x for x in compare_runs(runs[(p["model_a"], p["generator"])],
                                                   runs[(p["model_b"], p["generator"])]).rows()}
        assert [p["fmr_delta"], p["fmr_delta_lo"], p["fmr_delta_hi"], p["fmr_delta_p"]] == [
            by["fmr"]["delta"], by["fmr"]["lo"], by["fmr"]["hi"], by["fmr"]["p_value"]]
        assert p["settled"] == (None if p["fmr_delta_lo"] is None else
                                1 if p["fmr_delta_lo"] > 0 else -1 if p["fmr_delta_hi"] < 0 else 0)
    assert summary["pairs"] == json.loads(json.dumps(res.pairs)) and len(_csv(tmp_path / "cmp" / "pairs.csv")) == 2
    both = [p["settled"] for p in res.pairs]
    assert res.tau[0]["settled_pairs"] == int(all(both)) and res.tau[0]["settled_discordant"] == int(
        all(both) and both[0] != both[1])
    # a second call finds every run folder complete and redoes nothing
    again = compare_generators(MODELS, ["pixel", "noise?sigma=0.01"], "digits", out=tmp_path / "runs",
                               to=tmp_path / "cmp", write_grid=False, **FAST)
    assert again.rows == res.rows


def _csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_settled_pairs_count_only_orders_both_generators_settle():
    from fmr_bench.studies.compare import count_settled

    models = ("a", "b", "c")
    settle = {"g": {("a", "b"): 1, ("a", "c"): -1, ("b", "c"): 0},
              "h": {("a", "b"): -1, ("a", "c"): -1, ("b", "c"): 1}}
    pairs = [{"generator": g, "model_a": ma, "model_b": mb, "settled": settle[g][(ma, mb)]}
             for g in settle for ma, mb in itertools.combinations(models, 2)]
    taus = [{"generator_a": "g", "generator_b": "h"}]
    count_settled(taus, pairs)
    # (a, b) settled both ways and opposite, (a, c) settled and concordant, (b, c) a tie under g
    assert taus[0]["settled_pairs"] == 2 and taus[0]["settled_discordant"] == 1


def test_bad_generator_fails_before_any_run(tmp_path):
    with pytest.raises(SpecError, match="unknown generator 'vqgn'"):
        compare_generators(MODELS, "pixel,vqgn", "digits", out=tmp_path / "runs", **FAST)
    with pytest.raises(Exception, match="config.json and .*diffusion_pytorch_model.safetensors, which does not exist"):
        compare_generators(MODELS, f"pixel,vae:{tmp_path}", "digits", out=tmp_path / "runs", **FAST)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SettingsError, match="--generators is empty"):
        split_list(" , ", "--generators")


def test_cli_prints_table_and_tau(tmp_path, capsys):
    code = main(["compare-generators", "--models", MODELS, "--generators", "pixel", "--generators", "noise",
                 "--limit", "2", "--budget", "1", "--out", str(tmp_path / "runs"), "--to", str(tmp_path / "cmp"),
                 "--quiet", "--no-grid"])
    out = capsys.readouterr().out
    assert code == 0 and "rank agreement" in out and "tau.csv" in out
    code = main(["compare-generators", "--models", MODELS, "--generators", "pixel,nope", "--out", str(tmp_path)])
    assert code == 2 and "unknown generator 'nope'" in capsys.readouterr().err


def test_audit_adds_the_judges_columns_from_each_runs_record(tmp_path, capsys):
    # The judge is the oracle itself: a validated x-hat passed its margin rule, so its argmax is y and the
    # judge confirms every one.
    res = compare_generators(MODELS, "pixel", "digits", out=tmp_path / "runs", to=tmp_path / "cmp", write_grid=False,
                             audit="builtin:digits-clip", **FAST)
    for row in res.rows:
        record = json.loads((Path(row["run"]) / "record.json").read_text())
        assert {k: row[k] for k in ("audit_validity", "audit_pa", "audit_fmr", "n_confirmed")} == \
            {k: record["metrics"][k] for k in ("audit_validity", "audit_pa", "audit_fmr", "n_confirmed")}
        assert row["n_confirmed"] == row["n_validated"] and row["audit_validity"] in (100.0, None)
    header = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()[0].split(",")
    assert {"audit_validity", "audit_fmr"} <= set(header)
    assert "tau_audit_fmr" in (tmp_path / "cmp" / "tau.csv").read_text().splitlines()[0]
    # the same runs without a judge: no audited values, and the runs are reused, not redone
    plain = compare_generators(MODELS, "pixel", "digits", out=tmp_path / "runs", write_grid=False, **FAST)
    assert [r["run"] for r in plain.rows] == [r["run"] for r in res.rows]
    assert all("audit_validity" not in r for r in plain.rows)
    code = main(["compare-generators", "--models", MODELS, "--generators", "pixel", "--limit", "3", "--budget", "2",
                 "--batch-size", "8", "--out", str(tmp_path / "runs"), "--audit", "builtin:digits-clip", "--quiet",
                 "--no-grid"])
    out = capsys.readouterr().out
    assert code == 0 and "validity" in out and "aud. FMR" in out and "tau aud. FMR" in out


def test_a_study_carries_provenance_and_fmr_results_lists_its_rows(tmp_path):
    """compare.json is a study document: the record's provenance block, and one fmr results row per run."""
    from fmr_bench import load_results
    from fmr_bench.results.scan import iter_record_files

    res = compare_generators(MODELS, "pixel,noise?sigma=0.01", "digits", out=tmp_path / "runs", to=tmp_path / "cmp",
                             write_grid=False, **FAST)
    doc = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert doc["kind"] == "study" and doc["study"] == "compare-generators"
    assert doc["provenance"]["fmr_bench"] and doc["provenance"]["timestamp"] and "versions" in doc["provenance"]
    assert tmp_path / "cmp" / "compare.json" in [p for p in iter_record_files([tmp_path])]
    frame = load_results(tmp_path / "cmp")
    assert list(frame["evaluator"]) == ["study:compare-generators"] * len(res.rows)
    assert [(m, g) for m, g in zip(frame["model"], frame["generator"])] == [(r["model"], r["generator"]) for r in res.rows]
    assert list(frame["fmr"]) == pytest.approx([r["fmr"] for r in res.rows])
    # the runs themselves are listed as well when their folder is searched, each once
    both = load_results(tmp_path)
    assert (both["kind"] == "fmr").sum() == len(res.rows) and (both["kind"] == "study").sum() == len(res.rows)
