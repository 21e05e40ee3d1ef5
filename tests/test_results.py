"""``fmr results`` / ``load_results``, ``fmr evaluate`` on several models, and the digits-finetune board."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from fmr_bench import load_results
from fmr_bench.cli import main
from fmr_bench.cli.results import render
from fmr_bench.leaderboard import build_table, load_board
from fmr_bench.registry import MODEL_SOURCES
from fmr_bench.results.table import matches
from fmr_bench.specs import split_specs

REPO = Path(__file__).resolve().parents[1]
MODELS = ("builtin:digits-cnn", "builtin:digits-mlp")
FAST = ["--limit", "3", "--budget", "2", "--no-grid", "--quiet"]


def _run(capsys, argv) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err.strip()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two builtin digits models evaluated by one ``fmr evaluate --model a,b`` call."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["evaluate", "--model", ",".join(MODELS), "--out", str(out), *FAST]) == 0
    return out


def test_multi_model_evaluate_runs_each_in_its_own_folder_and_resumes(two_runs, tmp_path, capsys):
    folders = sorted(p.parent.name for p in two_runs.rglob("record.json"))
    assert [f.split("__")[0] for f in folders] == ["builtin-digits-cnn", "builtin-digits-mlp"]
    stamps = {p: p.stat().st_mtime_ns for p in two_runs.rglob("samples.jsonl")}
    models_file = tmp_path / "models.txt"
    models_file.write_text("# the shipped digits models\n\nbuiltin:digits-cnn   # a CNN\nbuiltin:digits-mlp\n")
    code, out, err = _run(capsys, ["evaluate", "--models", str(models_file), "--out", str(two_runs), *FAST])
    assert code == 0 and err == ""
    assert out.count("reused") >= 2 and "summary" in out
    assert {p: p.stat().st_mtime_ns for p in two_runs.rglob("samples.jsonl")} == stamps  # nothing recomputed


def test_multi_model_bad_spec_stops_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "runs"
    for models in ("builtin:digits-cnn,builtin:digits-nope", "builtin:digits-cnn,timm:resnet18?bogus=1",
                   "builtin:digits-cnn,nosuch:x"):
        code, _, err = _run(capsys, ["evaluate", "--model", models, "--out", str(out), *FAST])
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("fmr: error: ")
        assert not out.exists()
    code, _, err = _run(capsys, ["evaluate", "--models", str(tmp_path / "absent.txt"), "--out", str(out), *FAST])
    assert code == 2 and "cannot read the models file" in err and not out.exists()
    code, _, err = _run(capsys, ["evaluate", "--model", ",".join(MODELS), "--data", "digits:nope", "--out", str(out),
                                 *FAST])
    assert code == 2 and len(err.splitlines()) == 1 and not out.exists()


def test_a_model_failing_at_run_time_keeps_the_others(two_runs, tmp_path, capsys):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    code, out, _ = _run(capsys, ["evaluate", "--model", f"builtin:digits-cnn,file:{bad},builtin:digits-mlp",
                                 "--out", str(two_runs), *FAST])
    assert code == 2 and "failed" in out and "broken.safetensors" in out
    assert out.index("model 3/3: builtin:digits-mlp") > out.index("failed")  # the list went on after the failure
    assert len(list(two_runs.rglob("record.json"))) == 2


def test_split_specs_keeps_commas_inside_a_spec():
    assert split_specs("builtin:digits-cnn, builtin:digits-mlp,", MODEL_SOURCES) == list(MODELS)
    assert split_specs("timm:a?weights=/w/x,y.pt,file:/m/a,b.safetensors,builtin:digits-cnn", MODEL_SOURCES) == [
        "timm:a?weights=/w/x,y.pt", "file:/m/a,b.safetensors", "builtin:digits-cnn"]


def _folder_with_junk(two_runs, tmp_path) -> Path:
    root = tmp_path / "mixed"
    shutil.copytree(two_runs, root)
    (root / "torn").mkdir()
    (root / "torn" / "record.json").write_text('{"schema_version": 2, "kind": ')
    (root / "other").mkdir()
    (root / "other" / "record.json").write_text(json.dumps({"name": "a board entry", "status": "measured"}))
    return root


def test_load_results_skips_malformed_and_foreign_files_by_name(two_runs, tmp_path):
    root = _folder_with_junk(two_runs, tmp_path)
    seen = []
    frame = load_results(root, on_skip=seen.append)
    assert len(frame) == 2 and sorted(frame["model"]) == list(MODELS)
    assert sorted(Path(s.path).parent.name for s in seen) == ["other", "torn"]
    assert [Path(p).parent.name for p, _ in frame.attrs["skipped"]] == [Path(s.path).parent.name for s in seen]
    row = frame.set_index("model").loc["builtin:digits-cnn"]
    rec = json.loads(next(two_runs.glob("builtin-digits-cnn__*/record.json")).read_text())
    assert row["fmr"] == rec["metrics"]["fmr"] and row["sa"] == rec["metrics"]["sa"] and row["metric_set"] == "main"
    assert (row["limit"], row["budget"], row["seed"], row["init"], row["precision"]) == (3, 2, 0, "none", "fp32")
    assert row["generator"] == rec["generator"]["spec"] and row["oracle"] == rec["oracle"]["spec"]
    assert row["accept"] == rec["settings"]["accept"] and pd.isna(row["judge"]) and pd.isna(row["shard"])
    part = root / "part" / "record.json"  # a shard's partial record says which shard it is
    part.parent.mkdir()
    part.write_text(json.dumps({**rec, "shard": {"index": 1, "count": 3, "n_selected": 3}}))
    assert list(load_results(part)["shard"]) == ["1/3"]


def test_load_results_filters_and_metric_sets(two_runs):
    assert list(load_results(two_runs, model="mlp")["model"]) == ["builtin:digits-mlp"]  # substring
    assert list(load_results(two_runs, model="builtin:digits-c*")["model"]) == ["builtin:digits-cnn"]  # glob
    assert load_results(two_runs, model="digits-c*").empty  # a glob matches the whole value
    assert len(load_results(two_runs, evaluator="fmr", data="digits")) == 2
    assert load_results(two_runs, evaluator="calibration").empty
    assert matches("timm:x?weights=a", ["x?weights"])  # '?' is literal: specs use it for options
    static = load_results(REPO / "leaderboards" / "digits-static", evaluator="calibration", model="*:digits-cnn")
    sets = set(static["metric_set"])
    assert {"main", "id", "digits-shift:rotated"} <= sets and len(static) == len(sets)  # one row per metric set
    rec = json.loads(next((REPO / "leaderboards" / "digits-static" / "runs").glob(
        "builtin-digits-cnn__calibration*/record.json")).read_text())
    assert static.set_index("metric_set").loc["digits-shift:rotated", "ece"] == rec["metrics"]["digits-shift:rotated/ece"]


def test_every_format_parses_back(two_runs, tmp_path, capsys):
    frame = load_results(two_runs)
    back = pd.read_csv(io.StringIO(render(frame, "csv")))
    assert list(back["model"]) == list(frame["model"]) and list(back["fmr"]) == pytest.approx(list(frame["fmr"]))
    rows = json.loads(render(frame, "json"))
    assert [r["model"] for r in rows] == list(frame["model"]) and rows[0]["judge"] is None
    md = render(frame, "markdown").splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    assert header == list(frame.columns) and len(md) == 2 + len(frame)
    for fmt, suffix in (("csv", ".csv"), ("json", ".json"), ("markdown", ".md")):
        target = tmp_path / f"table{suffix}"
        code, out, err = _run(capsys, ["results", str(two_runs), "--out", str(target)])
        assert code == 0 and target.read_text() == render(frame, fmt), fmt
    code, out, err = _run(capsys, ["results", str(_folder_with_junk(two_runs, tmp_path)), "--format", "json"])
    assert code == 0 and len(json.loads(out)) == 2
    assert len(err.splitlines()) == 2 and all(line.startswith("fmr: skipped ") for line in err.splitlines())
    code, out, _ = _run(capsys, ["results", str(two_runs)])
    assert code == 0 and "builtin:digits-mlp" in out and "same in every row" in out


def test_results_without_records_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv, fragment in (([str(tmp_path / "empty")], "no run records"), ([str(tmp_path / "nope")], "does not exist"),
                           ([str(REPO / "leaderboards" / "digits-fmr"), "--model", "zzz"], "no run records match"),
                           ([str(tmp_path / "empty"), "--out", str(tmp_path / "x.txt")], "cannot tell the format")):
        code, _, err = _run(capsys, ["results", *argv])
        assert code == 2 and fragment in err and len(err.splitlines()) == 1, argv


def test_digits_finetune_board_reads_the_scripts_records(tmp_path, capsys):
    """A smoke run of the table script (two rows), its records on a copy of the committed board."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import finetune_digits_table as script
    finally:
        sys.path.remove(str(REPO / "scripts"))
    out = tmp_path / "ft"
    assert script.main(["--out", str(out), "--seeds", "0", "--epochs", "1", "--train-limit", "32", "--eval-limit",
                        "20", "--fmr-limit", "2", "--fmr-budget", "1", "--methods", "zero-shot", "lp"]) == 0
    rows = {r["method"]: r["metrics"] for r in map(json.loads, (out / "rows.jsonl").read_text().splitlines())}
    board_dir = tmp_path / "digits-finetune"
    shutil.copytree(REPO / "leaderboards" / "digits-finetune", board_dir, ignore=shutil.ignore_patterns("runs"))
    shutil.copytree(out / "records", board_dir / "runs")
    table = build_table(*load_board(board_dir))
    f = table.frame.set_index("name")
    for method in ("zero-shot", "lp"):
        assert f.loc[method, "wg"] == rows[method]["WG"] and f.loc[method, "fmr"] == rows[method]["FMR"]
        assert f.loc[method, "shift_avg"] == rows[method]["shift avg"] and not f.loc[method, "pending"]
        assert f.loc[method, "source"].startswith("measured by `python scripts/finetune_digits_table.py")
    assert f.loc["starft", "pending"] and pd.isna(f.loc["starft", "wg"])
    rec = json.loads((out / "records" / "lp" / "record.json").read_text())
    assert rec["kind"] == "finetune" and rec["evaluator"] == "finetune:lp" and rec["seeds"] == [0]
    assert rec["provenance"]["command"].startswith("python scripts/finetune_digits_table.py --out")
    code, _, err = _run(capsys, ["leaderboard", "run", "digits-finetune", "--root", str(tmp_path)])
    assert code == 2 and "is measured by `python scripts/finetune_digits_table.py" in err  # CI never trains


def test_runs_differing_in_one_identity_setting_are_told_apart(tmp_path, capsys):
    """adam vs sgd, or another FGSM step: a column says which row is which (a real run for each)."""
    out = tmp_path / "runs"
    base = ["evaluate", "--model", "builtin:digits-mlp", "--out", str(out), *FAST]
    assert main([*base, "--optimizer", "adam"]) == 0 and main([*base, "--optimizer", "sgd"]) == 0
    assert main([*base, "--init", "fgsm", "--fgsm-eps", "0.01"]) == 0
    capsys.readouterr()
    frame = load_results(out)
    assert sorted(frame["optimizer"]) == ["adam", "adam", "sgd"]
    assert sorted(frame["fgsm_eps"].dropna()) == [0.01]  # only the FGSM run reads its step
    code, shown, _ = _run(capsys, ["results", str(out)])
    assert code == 0 and "sgd" in shown and "adam" in shown and "0.01" in shown  # the terminal shows them too
    for run in frame["run"]:  # and which folder each row is (by the settings hash its name ends with)
        assert run.rpartition("__")[2] in shown


def test_every_fine_tuning_setting_of_the_identity_is_a_column():
    from fmr_bench.results.record import Record
    from fmr_bench.results.table import record_rows

    rec = Record.from_dict(json.loads(next((REPO / "leaderboards" / "digits-finetune").rglob("record.json")).read_text()))
    row = record_rows(rec)[0]
    own = {k for k in rec.settings if isinstance(rec.settings[k], (str, int, float, bool)) or rec.settings[k] is None}
    shown = {k.removeprefix("setting.") for k in row} | {"device", "batch_size", "workers", "checkpoint_every"}
    assert own <= shown, f"settings without a column: {sorted(own - shown)}"
