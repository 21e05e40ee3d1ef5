"""A board agrees with its files: each file of a committed board's copy tampered with, one at a time, is flagged.

Every test copies a committed board into tmp_path, changes one thing, and builds: the change is
a flag on the entry (Markdown, CSV, HTML), a problem line of `fmr leaderboard build --strict`
(exit 2), and a run of other settings is never the entry's measurement.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fmr_bench.cli import main
from fmr_bench.leaderboard import build_table, find_boards, load_board
from fmr_bench.leaderboard.schema import BoardError
from fmr_bench.results.rundir import settings_hash

REPO = Path(__file__).resolve().parents[1]
CNN_RUN = "builtin-digits-cnn__digits-test__a08cd37563"


def copy_board(tmp_path: Path, name: str) -> Path:
    shutil.copytree(REPO / "leaderboards" / name, tmp_path / name)
    return tmp_path / name


def edit_json(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj, indent=2))


def strict(root: Path, capsys) -> tuple[int, list[str]]:
    rc = main(["leaderboard", "build", "--root", str(root), "--out", str(root / "_site"), "--strict"])
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert all(line.startswith("fmr: error: ") and "Traceback" not in line for line in err)
    return rc, err


def row(folder: Path, name: str) -> pd.Series:
    return build_table(*load_board(folder)).frame.set_index("name").loc[name]


# --- the committed boards --------------------------------------------------------------------------

def test_committed_boards_build_clean_with_strict(tmp_path, capsys):
    for folder in find_boards(REPO / "leaderboards"):
        shutil.copytree(folder, tmp_path / folder.name)
    rc, err = strict(tmp_path, capsys)
    assert (rc, err) == (0, [])


# --- reported entries ------------------------------------------------------------------------------

def test_reported_fmr_that_is_not_pa_over_sa_is_flagged(tmp_path, capsys):
    folder = copy_board(tmp_path, "imagenet-fmr")
    edit_json(folder / "entries" / "resnet50.json", lambda e: e["reported"]["values"].update(fmr=90.0))
    rc, err = strict(tmp_path, capsys)
    assert rc == 2 and len(err) == 1
    assert "imagenet-fmr / ResNet50: reported fmr 90 is not 100·pa/sa = 43.47" in err[0]
    assert "43.47" in row(folder, "ResNet50")["flag"]
    md = (folder / "README.md").read_text()
    assert "ResNet50 ⚠ *reported fmr 90 is not" in md
    csv = pd.read_csv(tmp_path / "_site" / "imagenet-fmr.csv").set_index("name")
    assert "100·pa/sa" in csv.loc["ResNet50", "flag"]
    assert "reported fmr 90 is not" in (tmp_path / "_site" / "imagenet-fmr.html").read_text()


def test_rounding_of_printed_numbers_passes_and_a_paper_average_is_checked(tmp_path, capsys):
    folder = copy_board(tmp_path, "finetune-methods")
    # 59.1 printed for the mean 59.15 of (71.3, 44.5, 49.1, 71.7): within rounding, not flagged
    assert row(folder, "FT, CLIP ViT-B/16 (Kim et al.)")["flag"] == ""
    edit_json(folder / "entries" / "ft-clip-vit-b-16-kim-et-al.json",
              lambda e: e["reported"]["values"].update(ood_avg4=61.0))
    rc, err = strict(tmp_path, capsys)
    assert rc == 2 and len(err) == 1 and "reported ood_avg4 61 is not the mean of in_r, in_a, in_sketch, in_v2" in err[0]
    # the paper's own inconsistent CaRot average is kept as printed, with its reason; a stale waiver is a problem
    edit_json(folder / "entries" / "ft-clip-vit-b-16-kim-et-al.json",
              lambda e: e["reported"]["values"].update(ood_avg4=59.1))
    edit_json(folder / "entries" / "ft-clip-vit-b-16-kim-et-al.json",
              lambda e: e["reported"].update(as_printed={"ood_avg4": "no reason"}))
    rc, err = strict(tmp_path, capsys)
    assert rc == 2 and len(err) == 1 and "drop it from as_printed" in err[0]


@pytest.mark.parametrize("source, expect", [
    ("x", "is free text"),
    ("Zhang et al., ICLR 2024, Table 2", "is free text"),
    ({"paper": "x", "table": "Table 2", "row": "ResNet50"}, "does not name a paper"),
    ({"paper": "Zhang et al., ICLR 2024", "table": "x", "row": "ResNet50"}, "names no table or figure"),
    ({"paper": "Zhang et al., ICLR 2024", "table": "Table 2"}, "missing 'row'"),
    ({"paper": "Zhang et al., ICLR 2024", "table": "Table 2", "row": " "}, "names no row"),
])
def test_a_source_must_name_paper_table_and_row(tmp_path, capsys, source, expect):
    folder = copy_board(tmp_path, "imagenet-fmr")
    edit_json(folder / "entries" / "resnet50.json", lambda e: e["reported"].update(source=source))
    rc = main(["leaderboard", "build", "--root", str(tmp_path), "--out", str(tmp_path / "_site")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and expect in err, err
    with pytest.raises(BoardError, match="resnet50.json: reported.source"):
        load_board(folder)


def test_committed_sources_are_structured():
    for folder in find_boards(REPO / "leaderboards"):
        for e in load_board(folder)[1]:
            if e.reported:
                s = e.reported.source
                assert s.paper and s.table.split()[0] in ("Table", "Tables", "Figure", "Figures") and s.row, e.name


# --- measured entries: the record against its own folder -------------------------------------------

def _cnn_run(folder: Path) -> Path:
    return folder / "runs" / CNN_RUN


@pytest.mark.parametrize("tamper, expect", [
    (lambda run: edit_json(run / "record.json", lambda r: r["metrics"].update(fmr=99.0)),
     "record fmr 99.0 but its samples.jsonl gives 64.29"),
    (lambda run: edit_json(run / "record.json", lambda r: r["model"].update(weights_sha256_16="0" * 16)),
     "record has no weights hash ('0000000000000000')"),
    (lambda run: edit_json(run / "record.json", lambda r: r["model"].update(weights_sha256_16="1234567890abcdef")),
     "made with weights 1234567890abcdef, the entry pins 9bfbfc19092715a9"),
    (lambda run: (run / "samples.jsonl").write_text((run / "samples.jsonl").read_text().replace(
        '"final_pred": 7, "oracle_pred"', '"final_pred": 3, "oracle_pred"', 1)),
     "but its samples.jsonl gives"),
    (lambda run: (run / "samples.jsonl").write_text(
        (run / "samples.jsonl").read_text() + (run / "samples.jsonl").read_text().splitlines(keepends=True)[0]),
     "holds sample test/0037 2 times"),
    (lambda run: (run / "samples.jsonl").unlink(), "has no samples.jsonl"),
    (lambda run: edit_json(run / "settings.json", lambda s: s.update(budget=8)),
     "settings.json is not the settings this folder was made for"),
])
def test_a_tampered_run_folder_is_flagged_and_not_shown(tmp_path, capsys, tamper, expect):
    folder = copy_board(tmp_path, "digits-fmr")
    shown = row(folder, "digits-cnn")["fmr"]
    assert shown == pytest.approx(64.2857142857) and row(folder, "digits-cnn")["flag"] == ""
    tamper(_cnn_run(folder))
    r = row(folder, "digits-cnn")
    assert expect in r["flag"] and pd.isna(r["fmr"]) and not r["pending"]
    rc, err = strict(tmp_path, capsys)
    assert rc == 2 and any(expect in line and "digits-fmr / digits-cnn" in line for line in err), err
    assert expect in (folder / "README.md").read_text()


def test_a_tampered_static_record_weights_are_flagged(tmp_path, capsys):
    folder = copy_board(tmp_path, "digits-static")
    (run,) = (folder / "runs").glob("builtin-digits-cnn__calibration-*")
    edit_json(run / "record.json", lambda r: r["model"].update(weights_sha256_16="0" * 16))
    r = row(folder, "digits-cnn")
    assert "no weights hash" in r["flag"] and pd.isna(r["ece"]) and not pd.isna(r["id_acc"])


# --- measured entries: a run of other settings ------------------------------------------------------

def _other_run(folder: Path, change_settings, change_record) -> Path:
    """A consistent run folder of other settings (settings.json, its hash in the name, record, samples),
    as `fmr evaluate` with those settings would name it."""
    src = _cnn_run(folder)
    settings = json.loads((src / "settings.json").read_text())
    change_settings(settings)
    dst = folder / "runs" / f"builtin-digits-cnn__{settings['dataset'].replace(':', '-')}__{settings_hash(settings)}"
    shutil.copytree(src, dst)
    (dst / "settings.json").write_text(json.dumps(settings, indent=2))
    edit_json(dst / "record.json", lambda r: (change_record(r), r.update(run=dst.name)))
    return dst


OTHER_SETTINGS = [
    (lambda s: s.update(budget=8), lambda r: r["settings"].update(budget=8), "budget 8 (board: 50)"),
    (lambda s: s.update(accept="argmax"),
     lambda r: (r["settings"].update(accept="argmax"), r["defaults"].pop("accept")), "accept 'argmax' (board: 'margin:0.99')"),
    (lambda s: s.update(dataset="digits:train"), lambda r: r["dataset"].update(spec="digits:train"),
     "dataset 'digits:train' (board: 'digits:test')"),
    (lambda s: s.update(generator={"name": "pixel"}), lambda r: r["generator"].update(spec="pixel"), "generator 'pixel' (board: 'vqgan:digits')"),
    (lambda s: s.update(precision="bf16"), lambda r: r["settings"].update(precision="bf16"),
     "precision 'bf16' (board: 'fp32')"),
]


@pytest.mark.parametrize("change_settings, change_record, expect", OTHER_SETTINGS)
def test_a_run_of_other_settings_is_never_the_measurement(tmp_path, capsys, change_settings, change_record, expect):
    folder = copy_board(tmp_path, "digits-fmr")
    other = _other_run(folder, change_settings, change_record)
    edit_json(other / "record.json", lambda r: r["metrics"].update(fmr=12.5))  # what it would show if taken
    r = row(folder, "digits-cnn")
    assert r["fmr"] == pytest.approx(64.2857142857) and expect in r["flag"] and other.name in r["flag"]
    rc, err = strict(tmp_path, capsys)
    assert rc == 2 and len(err) == 1 and "not this board's fmr run, not counted" in err[0]
    # without the board's own run, the other run is not taken and the entry is not finished
    shutil.rmtree(_cnn_run(folder))
    r = row(folder, "digits-cnn")
    assert pd.isna(r["fmr"]) and r["pending"] and expect in r["flag"]


def test_leaderboard_run_does_not_count_a_run_of_other_settings_as_finished(tmp_path, monkeypatch):
    from fmr_bench.leaderboard import run as run_mod

    folder = copy_board(tmp_path, "digits-fmr")
    _other_run(folder, lambda s: s.update(budget=8), lambda r: r["settings"].update(budget=8))
    shutil.rmtree(_cnn_run(folder))
    calls = []

    def fake_task(board, entry, task, runs, **kw):  # stands in for the evaluation: restores the board's own run
        calls.append(entry.name)
        shutil.copytree(REPO / "leaderboards" / "digits-fmr" / "runs" / CNN_RUN, runs / CNN_RUN)

    monkeypatch.setattr(run_mod, "_run_task", fake_task)
    logs: list[str] = []
    table = run_mod.run_board(folder, log=logs.append)
    assert calls == ["digits-cnn"] and any(line.startswith("skip  digits-mlp") for line in logs)
    assert table.frame.set_index("name").loc["digits-cnn", "fmr"] == pytest.approx(64.2857142857)


def test_task_settings_pinned_on_the_board_are_matched(tmp_path):
    """A board that pins budget 8 takes the budget-8 run and flags the default one."""
    folder = copy_board(tmp_path, "digits-fmr")
    _other_run(folder, lambda s: s.update(budget=8), lambda r: r["settings"].update(budget=8))
    edit_json(folder / "board.json", lambda b: b["tasks"][0]["settings"].update(budget=8))
    r = row(folder, "digits-cnn")
    assert f"run {CNN_RUN} is not this board's fmr run" in r["flag"] and "budget 50 (board: 8)" in r["flag"]
    assert r["runs"].startswith("builtin-digits-cnn__digits-test__") and CNN_RUN not in r["runs"]


def test_an_edit_that_keeps_the_metrics_breaks_the_seal(tmp_path, capsys):
    """A sealed run whose samples.jsonl is edited without moving any metric (an oracle confidence) is flagged."""
    from fmr_bench.results.rundir import read_outcome_rows, samples_seal

    folder = copy_board(tmp_path, "digits-fmr")
    run = _cnn_run(folder)
    edit_json(run / "record.json", lambda r: r.update(seal={"samples_sha256": samples_seal(
        read_outcome_rows(run / "samples.jsonl"))}))
    assert row(folder, "digits-cnn")["flag"] == ""  # sealed and whole: shown
    lines = (run / "samples.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["oracle_conf"] = 0.5  # no metric reads it
    (run / "samples.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    r = row(folder, "digits-cnn")
    assert "does not match the seal" in r["flag"] and pd.isna(r["fmr"])


def test_measured_numbers_show_their_intervals_and_overlapping_ones_tie(tmp_path):
    """digits-fmr on 40 images: each measured FMR with its recorded 95 % interval; the intervals of all
    three models overlap, so the ranking says they tie; a reported number has no interval."""
    folder = copy_board(tmp_path, "digits-fmr")
    table = build_table(*load_board(folder))
    f = table.frame.set_index("name")
    for name in f.index:
        run = json.loads(next((folder / "runs").glob(f"*{f.loc[name, 'model'].split(':')[1]}__*/record.json")).read_text())
        assert [f.loc[name, "fmr_lo"], f.loc[name, "fmr_hi"]] == run["intervals"]["fmr"]
    ranks = dict(zip(table.frame["name"], table.frame["rank"]))
    others = sorted(ranks[n] for n in ("digits-cnn-aug", "digits-cnn"))
    assert f.loc["digits-mlp", "tie"] == ", ".join(f"#{r}" for r in others)
    assert all(f["tie"] != "")  # 40 images: none is told apart
    readme = (REPO / "leaderboards" / "digits-fmr" / "README.md").read_text()
    assert "(= #" in readme and f"[{f.loc['digits-cnn', 'fmr_lo']:.2f}, {f.loc['digits-cnn', 'fmr_hi']:.2f}]" in readme
    paper = build_table(*load_board(copy_board(tmp_path, "imagenet-fmr"))).frame
    assert paper["fmr_lo"].isna().all() and (paper["tie"] == "").all()  # reported in papers: no interval
