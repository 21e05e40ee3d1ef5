"""Leaderboards: build from a fixture folder (order, columns, flags), bad inputs, committed digits boards."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest

from fmr_bench.cli import main
from fmr_bench.leaderboard import build_boards, build_table, find_boards, load_board, record_metrics
from fmr_bench.leaderboard.plots import fit_baseline, logit
from fmr_bench.leaderboard.render import render_markdown
from fmr_bench.leaderboard.schema import BoardError

REPO = Path(__file__).resolve().parents[1]

BOARD = {
    "name": "toy",
    "title": "Toy board",
    "description": "fixture",
    "protocol_version": "2",
    "tasks": [{"evaluator": "fmr", "data": "digits", "settings": {"limit": 8}},
              {"evaluator": "calibration", "data": "digits"}],
    "columns": [
        {"key": "sa", "label": "SA", "evaluator": "fmr"},
        {"key": "fmr", "label": "FMR", "evaluator": "fmr"},
        {"key": "ece", "label": "ECE", "evaluator": "calibration", "metric": "id/ece", "higher_is_better": False},
        {"key": "extra", "label": "Extra (reported only)"},
        {"key": "mean", "label": "Mean of SA and FMR", "mean_of": ["sa", "fmr"]},
    ],
    "sort": "fmr",
    "tolerance": 1.0,
    "plots": [{"kind": "scatter", "x": "sa", "y": ["fmr"]},
              {"kind": "effective-robustness", "x": "sa", "y": ["fmr"]},
              {"kind": "bars", "y": ["sa", "fmr"]},
              {"kind": "reliability"}],
}
PAPER = {"title": "A paper", "venue": "Venue 2024", "url": "https://example.org/paper"}


def entry(name: str, status: str, model: str | None = None, reported: dict | None = None, **extra) -> dict:
    e = {"name": name, "status": status, "paper": PAPER, "architecture": "CNN", "pretraining_data": "digits",
         "extra_data": "none", **extra}
    if model:
        e["model"] = model
    if reported is not None:
        e["reported"] = {"values": reported, "source": SOURCE, "protocol_version": "paper protocol"}
    return e


FMR_RUN = REPO / "leaderboards" / "digits-fmr" / "runs" / "builtin-digits-cnn__digits-test__a08cd37563"
CALIBRATION_RUN = next((REPO / "leaderboards" / "digits-static" / "runs").glob("builtin-digits-cnn__calibration-*"))
SOURCE = {"paper": "Someone et al., Venue 2024", "table": "Table 9", "row": "the row"}


def fmr_record(model: str, clean: int, final: int, *, limit: int = 8) -> dict:
    """An FMR run of ``limit`` images, all validated: ``clean`` right on the clean image, ``final`` on x-hat."""
    return {"kind": "fmr", "model": model, "clean": clean, "final": final, "limit": limit}


def calib_record(model: str, ece: float) -> dict:
    """A calibration run (the committed digits-cnn one) with another model spec and ECE."""
    return {"kind": "calibration", "model": model, "ece": ece}


def write_run(runs: Path, run: dict) -> Path:
    """A consistent run folder, as the toolkit writes it: settings.json (its hash in the folder's name),
    record.json and, for FMR, the samples.jsonl its metrics come from (made from a committed run)."""
    from fmr_bench.metrics.fmr import fmr_metrics
    from fmr_bench.protocol.outcome import SampleOutcome
    from fmr_bench.results.rundir import outcome_line, run_dir, samples_seal

    template = FMR_RUN if run["kind"] == "fmr" else CALIBRATION_RUN
    settings = json.loads((template / "settings.json").read_text())
    record = json.loads((template / "record.json").read_text())
    settings["model"] = record["model"]["spec"] = run["model"]
    samples = None
    if run["kind"] == "fmr":
        n = settings["limit"] = record["settings"]["limit"] = run["limit"]
        outcomes = [SampleOutcome(f"test/{i:04d}", i, 0, 0, 0 if i < run["clean"] else 1, 0, True, 3,
                                  0 if i < run["final"] else 1) for i in range(n)]
        record["metrics"], record["n"] = fmr_metrics(outcomes), n
        record.pop("intervals", None)  # the template's, of other outcomes
        if "seal" in record:  # sealed as the toolkit seals what it writes
            record["seal"]["samples_sha256"] = samples_seal((o, None) for o in outcomes)
        samples = "".join(outcome_line(o, None) for o in outcomes)
        folder = run_dir(runs, run["model"], "digits:test", settings)
    else:
        record["metrics"]["id/ece"] = run["ece"]
        folder = run_dir(runs, run["model"], "calibration-digits:test", settings)
    record["run"] = folder.name
    write(folder / "settings.json", settings)
    write(folder / "record.json", record)
    if samples is not None:
        (folder / "samples.jsonl").write_text(samples)
    return folder


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def make_board(root: Path, board: dict | None = None, entries: list[dict] | None = None,
               records: list[dict] | None = None) -> Path:
    folder = root / (board or BOARD)["name"]
    write(folder / "board.json", board or BOARD)
    entries = entries if entries is not None else [
        entry("paper-only", "reported", reported={"sa": 90.0, "fmr": 50.0, "extra": 7.0}),
        entry("measured-a", "measured", "builtin:digits-cnn",
              size={"params_m": 1.5, "images_per_s": 1234.0, "speed_device": "an idle test machine"}),
        entry("both-close", "both", "builtin:digits-mlp", reported={"sa": 88.0, "fmr": 42.4}),
        entry("both-far", "both", "builtin:digits-cnn-aug", reported={"sa": 99.0, "fmr": 80.0}, group="baseline"),
        entry("pending", "measured", "builtin:digits-clip"),
    ]
    for i, e in enumerate(entries):
        write(folder / "entries" / f"e{i}.json", e)
    records = records if records is not None else [
        fmr_record("builtin:digits-cnn", 8, 5),  # SA 100, FMR 62.5
        fmr_record("builtin:digits-mlp", 7, 3),  # SA 87.5, PA 37.5, FMR 42.86
        fmr_record("builtin:digits-cnn-aug", 8, 6),  # SA 100, FMR 75
        fmr_record("builtin:digits-cnn", 8, 1, limit=9),  # another setting: not this board's run
        calib_record("builtin:digits-cnn", 4.0),
    ]
    for i, r in enumerate(records):
        write_run(folder / "runs" / f"run{i}", r)
    return folder


def test_build_order_columns_flags_from_fixture(tmp_path):
    folder = make_board(tmp_path)
    table = build_table(*load_board(folder))
    f = table.frame
    assert list(f["name"]) == ["both-far", "measured-a", "paper-only", "both-close", "pending"]
    assert list(f["rank"]) == [1, 2, 3, 4, 5]
    row = f.set_index("name")
    # measured wins over reported, both are kept
    assert row.loc["both-far", "fmr"] == 75.0 and row.loc["both-far", "fmr_reported"] == 80.0
    assert row.loc["both-far", "flag"] == "unreliable: fmr"  # 5 points > tolerance 1
    assert row.loc["both-close", "flag"] == ""  # 0.5 and 0.46 points: within tolerance
    # the limit-9 run of digits-cnn is named on its entry, and not taken
    assert row.loc["measured-a", "fmr"] == 62.5 and "limit 9 (board: 8)" in row.loc["measured-a", "flag"]
    assert row.loc["measured-a", "ece"] == 4.0 and pd.isna(row.loc["paper-only", "ece"])
    assert row.loc["paper-only", "extra"] == 7.0 and row.loc["paper-only", "source"] == "Someone et al., Venue 2024, Table 9, row 'the row'"
    assert row.loc["measured-a", "mean"] == pytest.approx((100.0 + 62.5) / 2)
    assert bool(row.loc["pending", "pending"]) and pd.isna(row.loc["pending", "fmr"])
    assert not bool(row.loc["measured-a", "pending"])
    assert set(table.reliability) == {"measured-a"}
    assert (row.loc["measured-a", "params_m"], row.loc["measured-a", "images_per_s"]) == (1.5, 1234.0)

    out = tmp_path / "site"
    build_boards([folder], out)
    csv = pd.read_csv(out / "toy.csv")
    assert list(csv.columns[:9]) == ["rank", "name", "status", "flag", "sa", "fmr", "ece", "extra", "mean"]
    assert {"sa_reported", "sa_measured", "params_m", "gflops", "images_per_s", "paper", "venue", "source",
            "architecture", "pretraining_data", "extra_data"} <= set(csv.columns)
    assert list(csv["name"]) == list(f["name"])
    md = (folder / "README.md").read_text()
    assert md.index("both-far") < md.index("measured-a") < md.index("paper-only")
    assert "| 1.5 | – | 1234 (an idle test machine) |" in md
    assert "75.00 (reported 80.00)" in md and "unreliable: fmr" in md and "(not yet run)" in md
    assert len(list(out.glob("toy-*.png"))) == 4  # scatter, effective robustness, bars, reliability
    html = (out / "toy.html").read_text()
    assert "toy.csv" in html and "both-far" in html


def test_descending_false_and_missing_last(tmp_path):
    board = {**BOARD, "name": "asc", "sort": "ece", "descending": False}
    records = [fmr_record("builtin:digits-cnn", 8, 5), calib_record("builtin:digits-cnn", 9.0),
               calib_record("builtin:digits-mlp", 2.0)]
    entries = [entry("a", "measured", "builtin:digits-cnn"), entry("b", "measured", "builtin:digits-mlp"),
               entry("c", "reported", reported={"sa": 1.0})]
    table = build_table(*load_board(make_board(tmp_path, board, entries, records)))
    assert list(table.frame["name"]) == ["b", "a", "c"]


def test_record_metrics_reads_real_records():
    """The adapter reads what today's code writes: the committed FMR, static and fine-tuning records of the digits boards."""
    seen = set()
    for path in sorted((REPO / "leaderboards").glob("digits-*/runs/*/record.json")):
        raw = json.loads(path.read_text())
        view = record_metrics(raw)
        evaluator, _, method = raw["evaluator"].partition(":")
        assert view["model"] == raw["model"]["spec"] and view["evaluator"] == evaluator
        assert view["method"] == (method or None) and (raw["kind"] == "finetune") == bool(method)
        assert view["protocol_version"] == str(raw["schema_version"])
        assert view["metrics"] == {k: v for k, v in raw["metrics"].items() if not isinstance(v, (list, dict, str))}
        if raw["evaluator"] == "fmr":
            assert view["settings"]["limit"] == 40 and view["n"] == raw["metrics"]["n"] == 40
        if raw["evaluator"] == "calibration":
            assert view["reliability"]["before"] and view["n"] == raw["metrics"]["id/n"]
        seen.add(evaluator)
    assert seen == {"fmr", "ood-accuracy", "imagenet-x", "ood-detection", "calibration", "finetune"}
    with pytest.raises(BoardError, match="schema version 7"):
        record_metrics({**raw, "schema_version": 7})


def test_baseline_fit_matches_plain_least_squares():
    import numpy as np

    x, y = [60.0, 70.0, 80.0, 90.0], [30.0, 42.0, 55.0, 71.0]
    a, b = fit_baseline(x, y)
    lx = np.log(np.array(x) / (100 - np.array(x)))
    ly = np.log(np.array(y) / (100 - np.array(y)))
    slope = ((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum()
    assert a == pytest.approx(slope) and b == pytest.approx(ly.mean() - slope * lx.mean())
    assert logit([50.0])[0] == pytest.approx(0.0)


def _cli_error(capsys, root: Path, *args: str) -> str:
    rc = main(["leaderboard", "build", *args, "--root", str(root), "--out", str(root / "_site")])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fmr: error: ") and "Traceback" not in err
    return err


def _bad_board(tmp_path, **change) -> Path:
    board = copy.deepcopy(BOARD)
    board.update(change)
    make_board(tmp_path, board)
    return tmp_path


@pytest.mark.parametrize("change, expect", [
    ({"tasks": [{"evaluator": "fmr"}, {"evaluator": "calibraton"}]}, "Did you mean 'calibration'"),
    ({"sort": "nope"}, "sort key 'nope' is not a column"),
    ({"plots": [{"kind": "pie"}]}, "unknown plot kind 'pie'"),
    ({"protocol_version": "1"}, "protocol-version 2 record but board toy holds version 1"),
    ({"columns": BOARD["columns"] + [{"key": "sa", "label": "again"}]}, "appear twice"),
])
def test_bad_board_definitions(tmp_path, capsys, change, expect):
    err = _cli_error(capsys, _bad_board(tmp_path, **change))
    assert expect in err


def _entries_with(bad: dict) -> list[dict]:
    return [entry("fine", "reported", reported={"sa": 1.0}), bad]


@pytest.mark.parametrize("bad, expect", [
    (entry("m", "measured", "resnet50"), "unknown model source 'resnet50'"),
    (entry("m", "measured", "builtin:digits-nope"), "unknown builtin model 'digits-nope'"),
    (entry("m", "measured"), "needs 'model'"),
    ({k: v for k, v in entry("p", "reported", reported={"sa": 1.0}).items() if k != "architecture"},
     "missing 'architecture'; every entry needs provenance"),
    ({**entry("p", "reported"), "paper": {"title": "t"}}, "missing 'venue'"),
    (entry("r", "reported"), "needs 'reported'"),
    ({**entry("r", "reported"), "reported": {"values": {"sa": 1.0}, "protocol_version": "p"}}, "missing 'source'"),
    (entry("r", "reported", reported={"sa": "81.2"}), "is not a number"),
    (entry("r", "reported", reported={"nope": 1.0}), "not columns of board toy"),
    (entry("r", "reported", reported={"mean": 1.0}), "computed by the build"),
    (entry("fine", "reported", reported={"sa": 2.0}), "also used by"),
    (entry("s", "wished"), "status 'wished' must be one of"),
    (entry("s", "reported", reported={"sa": 1.0}, size={"images_per_s": 9.0}), "needs speed_device"),
    (entry("m", "measured", "builtin:digits-cnn", reported={"sa": 1.0}), "set status to 'both'"),
    ({**entry("x", "reported", reported={"sa": 1.0}), "colour": "red"}, "unknown key(s) colour"),
])
def test_bad_entries(tmp_path, capsys, bad, expect):
    make_board(tmp_path, entries=_entries_with(bad))
    assert expect in _cli_error(capsys, tmp_path)


def test_same_model_twice(tmp_path, capsys):
    make_board(tmp_path, entries=[entry("a", "measured", "builtin:digits-cnn"), entry("b", "measured", "builtin:digits-cnn")])
    assert "is also measured by" in _cli_error(capsys, tmp_path)


def test_bad_records_and_names(tmp_path, capsys):
    make_board(tmp_path, records=[fmr_record("builtin:digits-cnn", 8, 4), fmr_record("builtin:digits-cnn", 8, 3)])
    assert "two runs of builtin:digits-cnn for fmr" in _cli_error(capsys, tmp_path)
    assert "no board 'tyo' in" in _cli_error(capsys, tmp_path, "tyo") and "Did you mean 'toy'" in _cli_error(
        capsys, tmp_path, "tyo")
    next((tmp_path / "toy" / "runs" / "run1").glob("*/record.json")).write_text("{not json")
    assert "is not a readable run record" in _cli_error(capsys, tmp_path)
    (tmp_path / "toy" / "board.json").write_text("[1]")
    assert "must hold a JSON object" in _cli_error(capsys, tmp_path)


def test_run_needs_data_variables(tmp_path, capsys, monkeypatch):
    board = {**BOARD, "tasks": [{"evaluator": "fmr", "data": "imagenet:${FMR_TEST_NO_SUCH_VAR}"}],
             "columns": BOARD["columns"][:2] + BOARD["columns"][3:]}
    make_board(tmp_path, board, records=[])
    monkeypatch.delenv("FMR_TEST_NO_SUCH_VAR", raising=False)
    rc = main(["leaderboard", "run", "toy", "--root", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "set the environment variable FMR_TEST_NO_SUCH_VAR" in err and len(err.splitlines()) == 1


def test_run_board_runs_what_is_missing_then_skips(tmp_path, monkeypatch):
    from fmr_bench.leaderboard import run as run_mod

    board = {**BOARD, "tasks": BOARD["tasks"][:1], "columns": BOARD["columns"][:2], "plots": []}
    entries = [entry("mlp", "measured", "builtin:digits-mlp"), entry("paper", "reported", reported={"sa": 1.0})]
    folder = make_board(tmp_path, board, entries, records=[])
    calls = []

    def fake_task(board, entry, task, runs, progress=True):  # stands in for fmr_bench.evaluate: writes the record it would
        calls.append((entry.name, task.evaluator))
        write_run(runs, fmr_record(entry.model, 8, 3))

    monkeypatch.setattr(run_mod, "_run_task", fake_task)
    logs: list[str] = []
    table = run_mod.run_board(folder, log=logs.append)
    assert calls == [("mlp", "fmr")] and table.frame.set_index("name").loc["mlp", "fmr"] == 37.5
    run_mod.run_board(folder, log=logs.append)
    assert calls == [("mlp", "fmr")] and logs[-1].startswith("skip  mlp / fmr")
    assert "| mlp |" in (folder / "README.md").read_text()
    # size counted independently: 3072-128-128-10 MLP, a multiply-add is two FLOPs
    sizes = json.loads((folder / "runs" / "sizes.json").read_text())["builtin:digits-mlp"]
    macs = 3072 * 128 + 128 * 128 + 128 * 10
    assert sizes["params_m"] == pytest.approx((macs + 128 + 128 + 10) / 1e6)
    assert sizes["gflops"] == pytest.approx(2 * macs / 1e9, rel=1e-5)


def test_unwritable_and_full_disk_outputs(tmp_path, capsys, monkeypatch):
    make_board(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["leaderboard", "build", "--root", str(tmp_path), "--out", str(blocker / "site"), "--no-readme"])
    err = capsys.readouterr().err
    assert rc == 2 and "pass --out to a writable folder" in err
    import errno
    import os

    def full(fd):  # every atomic write of the toolkit fsyncs before its rename
        raise OSError(errno.ENOSPC, "No space left on device")

    readme = tmp_path / "toy" / "README.md"
    readme.write_text("previous board\n")
    monkeypatch.setattr(os, "fsync", full)
    rc = main(["leaderboard", "build", "--root", str(tmp_path), "--out", str(tmp_path / "site")])
    err = capsys.readouterr().err
    assert rc == 2 and "disk full while writing" in err and len(err.strip().splitlines()) == 1
    assert readme.read_text() == "previous board\n"  # the last good board is kept
    assert not list((tmp_path / "toy").glob("*.part"))


# --- the committed boards ------------------------------------------------------------------------

def test_committed_boards_load_and_match_their_readme():
    """Every committed board is valid, and its README.md is what a rebuild from its files gives."""
    folders = find_boards(REPO / "leaderboards")
    names = {f.name for f in folders}
    assert {"imagenet-fmr", "imagenet-ood", "imagenet-x", "ood-detection", "calibration", "finetune-methods",
            "digits-fmr", "digits-static"} <= names
    for folder in folders:
        table = build_table(*load_board(folder))
        assert (folder / "README.md").read_text() == render_markdown(table), (
            f"{folder.name}/README.md is stale: run `fmr leaderboard build {folder.name}`")


def test_committed_digits_boards_come_from_the_shipped_models():
    """Each measured digits entry has its records, made by the weights the package ships today."""
    from fmr_bench.models import load_model

    for name in ("digits-fmr", "digits-static"):
        board, entries = load_board(REPO / "leaderboards" / name)
        table = build_table(board, entries)
        assert not table.frame["pending"].any(), f"run `fmr leaderboard run {name}`"
        for e in entries:
            shipped = load_model(e.model).weights_hash()
            for rec_file in (board.folder / "runs").rglob("record.json"):
                rec = json.loads(rec_file.read_text())
                if rec["model"]["spec"] == e.model:
                    assert rec["model"]["weights_sha256_16"] == shipped, (
                        f"{rec_file} was made with other weights: run `fmr leaderboard run {name}` after deleting runs/")


def test_imagenet_fmr_numbers_are_the_papers():
    """Spot checks of numbers copied from the FMR paper (seed 002), Tables 1 and 2."""
    table = build_table(*load_board(REPO / "leaderboards" / "imagenet-fmr"))
    row = table.frame.set_index("name")
    assert tuple(row.loc["Swin", ["sa", "pa", "fmr"]]) == (81.67, 56.95, 69.73)
    assert tuple(row.loc["DAT", ["sa", "sa_c", "pa", "fmr"]]) == (76.57, 68.00, 54.63, 71.35)
    assert tuple(row.loc["ResNet50", ["sa", "sa_c", "pa", "fmr"]]) == (76.26, 39.20, 33.15, 43.47)
    assert list(table.frame["name"][:2]) == ["DAT", "Swin"]
    # FMR = 100 PA / SA holds for every reported row up to the paper's rounding
    for _, r in table.frame.iterrows():
        assert 100 * r["pa"] / r["sa"] == pytest.approx(r["fmr"], abs=0.05), r["name"]


def test_plots_draw_each_measured_interval_as_an_error_bar(tmp_path, monkeypatch):
    """The committed digits-finetune board: every scatter point's WG and ID bars are its recorded interval."""
    import matplotlib.axes

    from fmr_bench.leaderboard.plots import PLOTS

    board, entries = load_board(REPO / "leaderboards" / "digits-finetune")
    table = build_table(board, entries)
    calls = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda ax, *a, **k: calls.append((a, k)) or real(ax, *a, **k))
    plot = board.plots[0]
    assert PLOTS.get("scatter")(table, plot, tmp_path / "s.png").is_file()
    (args, kw), = calls
    f = table.frame.dropna(subset=["id", "wg"])
    assert list(args[1]) == list(f["wg"])
    assert kw["yerr"][0] == pytest.approx(list(f["wg"] - f["wg_lo"]))
    assert kw["yerr"][1] == pytest.approx(list(f["wg_hi"] - f["wg"]))
    assert kw["xerr"][1] == pytest.approx(list(f["id_hi"] - f["id"]))
    # the logit plot bars the same intervals on its axes; a board of reported numbers only draws none
    calls.clear()
    from fmr_bench.leaderboard.schema import Plot

    assert PLOTS.get("effective-robustness")(table, Plot(kind="effective-robustness", x="id", y=["wg"]),
                                            tmp_path / "e.png").is_file()
    (args, kw), = calls
    assert kw["yerr"][1] == pytest.approx(list(logit(f["wg_hi"]) - logit(f["wg"])))
    calls.clear()
    bare = table.frame.drop(columns=[c for c in table.frame if c.endswith(("_lo", "_hi"))])
    monkeypatch.setattr(table, "frame", bare)
    assert PLOTS.get("scatter")(table, plot, tmp_path / "r.png").is_file() and not calls
