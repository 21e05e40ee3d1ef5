"""The appendix studies: static export (App. O), transfer matrix (App. D/F/G), sweep and
per-class tables (App. J), the FGSM start from the CLI (App. E), and their bad-input errors.

All on the digits world with a few images and a budget of 2-3 steps; one module-scoped
export is shared, and later studies reuse its run folder as a user's would.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from fmr_bench.cli import main
from fmr_bench.datasets import load_dataset
from fmr_bench.errors import FmrBenchError, OutputError
from fmr_bench.results.rundir import FmrResult
from fmr_bench.studies import export as export_mod
from fmr_bench.studies.exported import read_export
from fmr_bench.studies.export import class_folders, export_run, image_name

CNN, MLP = "builtin:digits-cnn", "builtin:digits-mlp"
SMALL = {"limit": 8, "budget": 3}
SMALL_ARGS = ["--limit", "8", "--budget", "3"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One export of the digits CNN (8 images, B = 3) in its default place under ``runs``."""
    root = tmp_path_factory.mktemp("studies")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMR_LOGITS_CACHE", str(root / "logits"))
        exp = export_run(CNN, "digits", out=root / "runs", write_grid=False, **SMALL)
        yield {"root": root, "runs": root / "runs", "export": exp}


@pytest.fixture(autouse=True)
def _logits_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FMR_LOGITS_CACHE", str(tmp_path / "logits"))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _pixels(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def _same_image(a: Path, b: Path) -> bool:
    """Equal up to one grey level: another batch composition may round a pixel the other way."""
    return bool(abs(_pixels(a) - _pixels(b)).max() <= 1)


def _run(capsys, argv) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err.strip()


# --- export (App. O) -------------------------------------------------------------------

def test_export_layout(world):
    exp = world["export"]
    gen = json.loads((exp.path / "generation.json").read_text())
    rows = _rows(exp.path / "labels.csv")
    assert gen["status"] == "complete" and gen["format"] == "fmr-static-benchmark"
    assert gen["model"]["spec"] == CNN and gen["settings"]["budget"] == 3 and gen["settings"]["step_size"] == 0.05
    assert gen["generator"]["spec"] == "vqgan:digits" and gen["oracle"]["spec"] == "builtin:digits-clip"
    outcomes = exp.result.outcomes
    assert [r["id"] for r in rows] == [o.id for o in outcomes] and len(rows) == 8
    assert gen["counts"] == {"selected": 8, "validated": sum(o.validated for o in outcomes),
                             "images": sum(o.validated for o in outcomes), "regenerated": 0}
    names = load_dataset("digits").class_names
    pngs = sorted(p.relative_to(exp.path).as_posix() for p in exp.path.rglob("*.png"))
    assert pngs == sorted(r["file"] for r in rows if r["file"])
    for r, o in zip(rows, outcomes):
        assert (r["validated"] == "True") == o.validated and (r["file"] != "") == o.validated
        assert int(r["label"]) == o.label and r["class"] == names[o.label]
        assert int(r["final_pred"]) == o.final_pred and int(r["steps"]) == o.steps
        if o.validated:
            assert r["file"] == f"{names[o.label]}/{image_name(o.id)}"
            from PIL import Image

            with Image.open(exp.path / r["file"]) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)


def test_folder_reads_the_export_back(world):
    exp = world["export"]
    by_file = {r["file"]: r for r in _rows(exp.path / "labels.csv") if r["file"]}
    ds = load_dataset(f"folder:{exp.path}")
    assert len(ds) == len(by_file)
    # folder: numbers classes in sorted folder order; the class names are the source's
    for sid, label in zip(ds.ids, ds.labels):
        assert ds.class_names[label] == by_file[sid]["class"]
    assert json.loads((exp.path / "generation.json").read_text())["read_back"] == f"folder:{exp.path}?crop_pct=1"
    # read_export keeps the source's label indices and the PNG pixels as written
    back = read_export(exp.path)
    assert back.class_names == load_dataset("digits").class_names
    assert [(i, y) for i, y in zip(back.ids, back.labels)] == [(r["id"], int(r["label"])) for r in by_file.values()]
    x = back.load(0)
    assert x.shape == (3, 32, 32) and torch.allclose(x * 255, (x * 255).round(), atol=1e-4)


def test_class_folders_keep_wnid_folders_and_clean_names(tmp_path):
    from PIL import Image

    for wnid in ("n01443537", "n01440764"):
        (tmp_path / wnid).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / wnid / "a.png")
    assert class_folders(load_dataset(f"folder:{tmp_path}")) == ["n01440764", "n01443537"]
    from fmr_bench.datasets import TensorImages

    data = TensorImages(torch.zeros(3, 3, 4, 4), [0, 1, 2], ["great white shark", "AC/DC", "Crane"], spec="t")
    data.class_names.append("crane")
    assert class_folders(data) == ["great_white_shark", "AC-DC", "Crane", "crane_3"]
    assert image_name("test/0001") == "test__0001.png"
    assert image_name("a b/c") != image_name("a_b/c") and image_name("x__y").startswith("x__y-")


def test_export_resumes_and_regenerates_missing_images(world, tmp_path):
    exp = world["export"]
    victim = next(p for p in sorted(exp.path.rglob("*.png")))
    before = victim.with_name("before.bin")
    victim.replace(before)
    again = export_run(CNN, "digits", exp.path, out=world["runs"], write_grid=False, **SMALL)
    assert again.n_regenerated == 1 and _same_image(victim, before)
    before.unlink()
    assert [o.key() for o in again.result.outcomes] == [o.key() for o in exp.result.outcomes]
    with pytest.raises(OutputError, match="other settings"):
        export_run(CNN, "digits", exp.path, out=world["runs"], limit=8, budget=2)
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "x.txt").write_text("mine")
    with pytest.raises(OutputError, match="not an fmr export folder"):
        export_run(CNN, "digits", tmp_path / "stuff", out=tmp_path / "runs", **SMALL)
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_interrupted_export_resumes_to_the_same_folder(world, tmp_path, monkeypatch):
    real, calls = export_mod.save_png, []

    def flaky(image, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(image, path)

    monkeypatch.setattr(export_mod, "save_png", flaky)
    to = tmp_path / "exp"
    with pytest.raises(FmrBenchError, match="interrupted"):
        export_run(CNN, "digits", to, out=tmp_path / "runs", write_grid=False, **SMALL)
    assert json.loads((to / "generation.json").read_text())["status"] == "incomplete"
    monkeypatch.setattr(export_mod, "save_png", real)
    done = export_run(CNN, "digits", to, out=tmp_path / "runs", write_grid=False, **SMALL)
    assert done.generation["status"] == "complete" and done.n_regenerated == 0
    assert (to / "labels.csv").read_text() == (world["export"].path / "labels.csv").read_text()
    for p in world["export"].path.rglob("*.png"):
        assert _same_image(to / p.relative_to(world["export"].path), p)


# --- transfer (App. D, F, G) -----------------------------------------------------------

def test_transfer_matrix(world, capsys):
    to = world["root"] / "transfer"
    code, out, err = _run(capsys, ["transfer", "--sources", f"{CNN},{MLP}", *SMALL_ARGS, "--out", str(world["runs"]),
                                   "--to", str(to), "--quiet"])
    assert code == 0, err
    res = json.loads((to / "transfer.json").read_text())
    assert res["sources"] == [CNN, MLP] and res["models"] == [CNN, MLP]
    assert all(len(res["matrices"][k]) == 2 and len(res["matrices"][k][0]) == 2 for k in ("sa", "pa", "fmr"))
    # the CNN's run is the fixture's: the diagonal is each source's normal run
    assert res["runs"][CNN] == str(world["export"].result.path)
    for i, src in enumerate(res["sources"]):
        run = FmrResult.load(res["runs"][src]).metrics
        assert [res["matrices"][k][i][i] for k in ("sa", "pa", "fmr")] == [run["sa"], run["pa"], run["fmr"]]
    cells = {(c["source"], c["model"]): c for c in res["cells"]}
    assert cells[(CNN, CNN)]["pa_export"] == cells[(CNN, CNN)]["pa"]  # the PNGs reproduce the run
    # off-diagonal: the MLP scored independently on the CNN's exported PNGs and clean images
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    from fmr_bench.models import load_model

    mlp = load_model(MLP).eval()
    rows = _rows(world["export"].path / "labels.csv")
    files = [r for r in rows if r["file"]]
    with torch.no_grad():
        x = torch.stack([to_tensor(Image.open(world["export"].path / r["file"]).convert("RGB")) for r in files])
        pa = 100.0 * sum(int(p) == int(r["label"]) for p, r in zip(mlp(x).argmax(-1), files)) / len(files)
        data = load_dataset("digits")
        idx = [data.ids.index(r["id"]) for r in rows]
        clean = torch.stack([data.load(i) for i in idx])
        sa = 100.0 * sum(int(p) == int(r["label"]) for p, r in zip(mlp(clean).argmax(-1), rows)) / len(rows)
    assert cells[(CNN, MLP)]["pa"] == pytest.approx(pa) and cells[(CNN, MLP)]["sa"] == pytest.approx(sa)
    assert cells[(CNN, MLP)]["fmr"] == pytest.approx(100 * pa / sa)
    wide = _rows(to / "fmr_matrix.csv")
    assert [r["source"] for r in wide] == [CNN, MLP] and float(wide[0][MLP]) == pytest.approx(100 * pa / sa)
    assert len(_rows(to / "transfer.csv")) == 4
    assert "FMR" in out and "diagonal" in out
    # every cell with its 95 % intervals: the diagonal the run's own, the others around their point
    for (src, model), c in cells.items():
        assert c["pa_lo"] <= c["pa"] <= c["pa_hi"] and c["fmr_lo"] <= c["fmr"] <= c["fmr_hi"], (src, model)
        if src == model:
            own = FmrResult.load(res["runs"][src]).record["intervals"]
            assert [c["pa_lo"], c["pa_hi"], c["fmr_lo"], c["fmr_hi"]] == [*own["pa"], *own["fmr"]]
    # the transfer gap: each off-diagonal cell of a source's column minus that column's diagonal, paired over
    # the same clean images; none on the diagonal
    for (src, model), c in cells.items():
        if src == model:
            assert c["fmr_delta"] is None and c["pa_delta"] is None
            continue
        diag = cells[(model, model)]
        for m in ("pa", "fmr"):
            assert c[f"{m}_delta"] == pytest.approx(c[m] - diag[m]), (src, model, m)
            assert c[f"{m}_delta_lo"] <= c[f"{m}_delta"] <= c[f"{m}_delta_hi"] and 0 < c[f"{m}_delta_p"] <= 1
    assert res["paired_method"]["resamples"] == 1000 and "sign-flip" in res["paired_method"]["p_value"]


# --- sweep and per-class tables (App. J) -----------------------------------------------

def test_sweep_table_plot_and_per_class(world, capsys):
    to = world["root"] / "sweep"
    code, out, err = _run(capsys, ["sweep", "--model", CNN, "--step-sizes", "0.05,0.5", "--budgets", "2,3",
                                   "--limit", "8", "--out", str(world["runs"]), "--to", str(to), "--per-class",
                                   "--no-grid", "--quiet"])
    assert code == 0, err
    rows = _rows(to / "sweep.csv")
    assert [(float(r["step_size"]), int(r["budget"])) for r in rows] == [(0.05, 2), (0.5, 2), (0.05, 3), (0.5, 3)]
    with_iv = [r for r in rows if r["fmr_lo"]]  # each run's interval (none where FMR is undefined)
    assert with_iv and all(float(r["fmr_lo"]) <= float(r["fmr"]) <= float(r["fmr_hi"]) for r in with_iv)
    assert (to / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # each pair's paired difference from the first pair is what fmr compare prints for the two run folders
    from fmr_bench.studies.paired import compare_runs

    assert all(rows[0][f"{m}_delta{e}"] == "" for m in ("pa", "fmr") for e in ("", "_lo", "_hi", "_p"))
    for r in rows[1:]:
        by = {x["metric"]: x for x in compare_runs(r["run"], rows[0]["run"]).rows()}
        for m in ("pa", "fmr"):
            if by[m]["delta"] is None:
                assert r[f"{m}_delta"] == ""
                continue
            assert float(r[f"{m}_delta"]) == pytest.approx(float(r[m]) - float(rows[0][m]))
            assert [float(r[f"{m}_delta{e}"]) for e in ("", "_lo", "_hi", "_p")] == pytest.approx(
                [by[m]["delta"], by[m]["lo"], by[m]["hi"], by[m]["p_value"]])
    assert json.loads((to / "sweep.json").read_text())["reference"] == {"step_size": 0.05, "budget": 2}
    fixture_run = world["export"].result
    reused = next(r for r in rows if (float(r["step_size"]), int(r["budget"])) == (0.05, 3))
    assert reused["run"] == str(fixture_run.path)  # the sweep resumes through normal run folders
    assert float(reused["fmr"]) == pytest.approx(fixture_run.metrics["fmr"])
    per_class = _rows(to / "per_class.csv")
    assert {(r["step_size"], r["budget"]) for r in per_class} == {(r["step_size"], r["budget"]) for r in rows}
    # fmr per-class on one run: the record's own table plus a total row
    csv_path = world["root"] / "pc.csv"
    code, out, err = _run(capsys, ["per-class", str(fixture_run.path), "--csv", str(csv_path)])
    assert code == 0, err
    table = _rows(csv_path)
    record = fixture_run.record
    assert [r["class"] for r in table] == [c["class"] for c in record["per_class"]] + ["total"]
    for r, c in zip(table, record["per_class"]):
        assert float(r["vr"]) == pytest.approx(c["vr"]) and float(r["sa"]) == pytest.approx(c["sa"])
    assert float(table[-1]["fmr"]) == pytest.approx(record["metrics"]["fmr"]) and "total" in out


# --- FGSM start from the CLI (App. E) --------------------------------------------------

def test_fgsm_init_from_the_cli(world, capsys):
    code, _, err = _run(capsys, ["evaluate", "--model", CNN, *SMALL_ARGS, "--init", "fgsm", "--fgsm-eps", "0.003",
                                 "--out", str(world["runs"]), "--no-grid", "--quiet"])
    assert code == 0, err
    plain = world["export"].result
    folders = [p for p in world["runs"].iterdir() if (p / "settings.json").is_file()
               and json.loads((p / "settings.json").read_text()).get("init") == "fgsm"]
    assert len(folders) == 1 and folders[0] != plain.path
    fgsm = FmrResult.load(folders[0])
    assert fgsm.record["settings"]["init"] == "fgsm" and fgsm.record["settings"]["fgsm_eps"] == 0.003
    assert plain.record["settings"]["init"] == "none"
    # same samples, another start (stored in the order they finished, which the start changes)
    assert sorted(o.id for o in fgsm.outcomes) == sorted(o.id for o in plain.outcomes)


# --- bad input: one line, exit 2, before any work --------------------------------------

@pytest.mark.parametrize("argv,fragment", [
    (["sweep", "--model", CNN, "--step-sizes", "0,0.1", "--budgets", "2"], "every value must be > 0"),
    (["sweep", "--model", CNN, "--step-sizes", "-0.1", "--budgets", "2"], "every value must be > 0"),
    (["sweep", "--model", CNN, "--step-sizes", "0.1", "--budgets", "0"], "every value must be > 0"),
    (["sweep", "--model", CNN, "--step-sizes", "", "--budgets", "2"], "--step-sizes is empty"),
    (["sweep", "--model", CNN, "--step-sizes", "0.1", "--budgets", ","], "--budgets is empty"),
    (["sweep", "--model", CNN, "--step-sizes", "0.1", "--budgets", "2.5"], "is not an integer"),
    (["sweep", "--model", CNN, "--step-sizes", "fast", "--budgets", "2"], "is not a number"),
    (["sweep", "--model", CNN, "--step-sizes", "0.1", "--budgets", "2", "--optimizer", "rmsprop"], "unknown optimizer"),
    (["transfer", "--source", CNN, "--models", "resnet50"], "unknown model source 'resnet50'"),
    (["transfer", "--sources", ",", "--models", MLP], "at least one source model"),
    (["export", "--model", CNN, "--budget", "0"], "budget must be >= 1"),
    (["export", "--model", CNN, "--generator", "vqgn", "--to", "{tmp}/exp"], "Did you mean 'vqgan'"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, argv, fragment):
    out = tmp_path / "runs"
    code, _, err = _run(capsys, [*[a.format(tmp=tmp_path) for a in argv], "--out", str(out), "--quiet"])
    assert code == 2 and fragment in err
    assert len(err.splitlines()) == 1 and err.startswith("fmr: error: ")
    assert not out.exists() and not (tmp_path / "exp").exists()


def test_per_class_errors(tmp_path, capsys):
    code, _, err = _run(capsys, ["per-class", str(tmp_path / "nowhere")])
    assert code == 2 and "no record" in err and len(err.splitlines()) == 1
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "record.json").write_text(json.dumps({"evaluator": "calibration", "run": "x",
                                                                 "metrics": {}}))
    code, _, err = _run(capsys, ["per-class", str(tmp_path / "static")])
    assert code == 2 and "no schema_version: not an fmr_bench run record" in err and len(err.splitlines()) == 1
    (tmp_path / "static" / "record.json").write_text(json.dumps({
        "schema_version": 2, "kind": "static", "evaluator": "calibration", "run": "x", "model": {"spec": "m"},
        "dataset": {"spec": "d"}, "metrics": {}}))
    code, _, err = _run(capsys, ["per-class", str(tmp_path / "static")])
    assert code == 2 and "no per-class table" in err


def test_folder_crop_pct_option(tmp_path):
    from PIL import Image

    from fmr_bench.datasets import load_dataset
    from fmr_bench.errors import SpecError

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        img = torch.zeros(3, 32, 32)
        img[:, :2, :] = 1.0  # a bright border row that a 0.875 centre crop cuts away
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / c / "x.png")
    whole = load_dataset(f"folder:{tmp_path}?crop_pct=1")
    whole.set_resolution(32)
    cropped = load_dataset(f"folder:{tmp_path}")
    cropped.set_resolution(32)
    assert whole.load(0)[:, 0, :].mean() > 0.99
    assert cropped.load(0)[:, 0, :].mean() < 0.99
    with pytest.raises(SpecError, match="crop_pct"):
        load_dataset(f"folder:{tmp_path}?crop_pct=2")


def test_sweep_with_a_judge_adds_each_runs_audited_metrics(tmp_path, capsys):
    code, out, err = _run(capsys, ["sweep", "--model", CNN, "--step-sizes", "0.05", "--budgets", "2", "--limit", "3",
                                   "--out", str(tmp_path / "runs"), "--to", str(tmp_path / "sweep"), "--no-grid",
                                   "--quiet", "--audit", "builtin:digits-clip"])
    assert code == 0, err
    assert "validity" in out and "aud. FMR" in out
    (row,) = _rows(tmp_path / "sweep" / "sweep.csv")
    record = json.loads((Path(row["run"]) / "record.json").read_text())
    for key in ("audit_validity", "audit_pa", "audit_fmr", "n_confirmed"):
        assert row[key] == ("" if record["metrics"][key] is None else str(record["metrics"][key])), key
    assert int(row["n_confirmed"]) == record["metrics"]["n_validated"]  # the oracle confirms its own images
