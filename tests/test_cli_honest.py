"""Issue 8: no option silently ignored, one clear line (never a traceback), numbers that do not
mislead (calibration T, Kendall tau over 2 models, FPR@95 threshold rules), conveniences."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
import torch

from fmr_bench.cli import main
from fmr_bench.datasets import load_dataset
from fmr_bench.errors import SpecError
from fmr_bench.metrics import static as M
from fmr_bench.registry import DATASETS, GENERATORS, MODEL_SOURCES, ORACLE_SOURCES
from fmr_bench.specs import Option, parse_options, parse_spec

MODEL = ["--model", "builtin:digits-cnn"]


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _png(img: torch.Tensor, path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr, "RGB").save(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("honest")
    (root / "plain.pkl").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    bad = root / "ood_bad" / "x"
    bad.mkdir(parents=True)
    for i in range(2):
        _png(torch.rand(3, 40, 40), bad / f"{i}.png")
    (bad / "broken.jpg").write_bytes(b"this is not an image")
    digits = load_dataset("digits")
    digits.set_resolution(32)
    folder = root / "digit_folder"
    for i in range(4):  # two images each of two classes, at the digits generator's 32 px
        _png(digits.load(i), folder / digits.class_names[digits.labels[i]] / f"{i}.png")
    return {"root": root, "pickle": root / "plain.pkl", "ood_bad": root / "ood_bad", "folder": folder}


# --- one clear line, exit 2, before any work -------------------------------------------------

BAD = [
    (["evaluate", *MODEL, "--generator", "noise?sigma=abc"], r"option sigma must be a number >= 0 \(got 'abc'\)"),
    (["evaluate", *MODEL, "--generator", "noise?sigma=-1"], r"sigma must be a number >= 0"),
    (["evaluate", *MODEL, "--generator", "diffusion:digits?strength=2"], r"strength must be a number > 0 and <= 1"),
    (["evaluate", *MODEL, "--generator", "diffusion:digits?class_cond=x"], r"class_cond must be none, label or"),
    (["evaluate", *MODEL, "--generator", "pixel?sigma=1"], r"unknown option\(s\) sigma for pixel"),
    (["evaluate", *MODEL, "--oracle", "builtin:digits-clip?promts=openai"], r"unknown option\(s\) promts"),
    (["evaluate", "--model", "timm:resnet18?num_classes=0"], r"num_classes must be an integer >= 1"),
    (["evaluate", *MODEL, "--data", "digits?crop_pct=1"], r"unknown option\(s\) crop_pct for digits"),
    (["evaluate", *MODEL, "--data", "folder:/nowhere?crop_pct=nan"], r"crop_pct must be a number > 0 and <= 1"),
    (["evaluate", *MODEL, "--data", "folder:/x?crop_pct=1&crop_pct=0.5"], r"crop_pct given more than once"),
    (["evaluate", *MODEL, "--ood", "digits-ood:noise"], r"--ood only applies to static evaluators and the FMR protocol would ignore it; drop it"),
    (["evaluate", *MODEL, "--option", "scores=msp"], r"--option only applies to static evaluators"),
    (["evaluate", *MODEL, "--no-cache"], r"--no-cache only applies to static evaluators"),
    (["evaluate", *MODEL, "--fgsm-eps", "0.01"], r"add --init fgsm or drop --fgsm-eps"),
    (["sweep", *MODEL, "--step-sizes", "0.1", "--budgets", "1", "--fgsm-eps", "0.01"], r"--init fgsm"),
    (["evaluate", *MODEL, "--evaluator", "calibration", "--budget", "5"],
     r"--budget only applies to the FMR protocol and calibration would ignore it.*--evaluator fmr,calibration"),
    (["evaluate", *MODEL, "--evaluator", "calibration", "--generator", "pixel", "--limit", "3"],
     r"--limit, --generator only apply to the FMR protocol and calibration would ignore them"),
    (["evaluate", *MODEL, "--evaluator", "fmr,nope"], r"unknown evaluator 'nope'"),
    (["evaluate", *MODEL, "--workers", "-1"], r"workers must be >= 0"),
    (["evaluate", *MODEL, "--evaluator", "ood-detection", "--ood", "digits-ood:noise", "--option", "fpr_rule=bottom"],
     r"unknown fpr_rule 'bottom'.*fpr_rule=mcm"),
    (["evaluate", *MODEL, "--evaluator", "fmr,calibration", "--option", "scores=msp"],
     r"no evaluator of calibration takes option\(s\) scores"),
    (["evaluate", *MODEL, "--evaluator", "fmr,ood-detection", "--ood", "digits-ood:noise?x=1"],
     r"unknown option\(s\) x for digits-ood"),
    (["evaluate", *MODEL, "--evaluator", ","], r"--evaluator is empty"),
    (["compare-generators", "--models", "builtin:digits-cnn", "--generators", "pixel,noise"],
     r"got 1 model \(builtin:digits-cnn\); pass at least 2"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a[3:] if len(a) > 3 else a)[:60] for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, argv, message):
    code, _, err = _run(capsys, [*argv, "--out", str(tmp_path), "--quiet"])
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("fmr: error: "), err
    assert re.search(message, err), err
    assert "Traceback" not in err


def test_plain_pickle_given_to_file_is_one_complete_line(capsys, tmp_path, files):
    code, _, err = _run(capsys, ["evaluate", "--model", f"file:{files['pickle']}", "--out", str(tmp_path), "--quiet"])
    assert code == 2 and err.count("\n") == 1, err
    assert "UserWarning" not in err and err.rstrip().endswith("fmr_bench.save_model"), err
    assert "plain pickle" in err


def test_corrupt_image_in_a_static_ood_folder_names_the_file(capsys, tmp_path, files):
    code, _, err = _run(capsys, ["evaluate", *MODEL, "--evaluator", "ood-detection", "--ood",
                                 f"ood:{files['ood_bad']}", "--workers", "1", "--no-cache", "--out", str(tmp_path),
                                 "--quiet"])
    assert code == 2 and err.count("\n") == 1, err
    assert "broken.jpg" in err and "replace or delete the file" in err and "Traceback" not in err


# --- the table-driven option parser -------------------------------------------------------------

@pytest.mark.parametrize("option, text, value", [
    (Option("float", low=0), "0", 0.0),
    (Option("float", low=0, low_open=True, high=1), "1", 1.0),
    (Option("int", low=1), "7", 7),
    (Option("bool"), "true", True),
    (Option("bool"), "0", False),
    (Option("choice", choices=("a", "b")), "b", "b"),
    (Option("path"), "/x/y.ckpt", "/x/y.ckpt"),
])
def test_option_parses_valid_values(option, text, value):
    assert option.parse(text) == value and type(option.parse(text)) is type(value)


@pytest.mark.parametrize("option, text", [
    (Option("float", low=0), "-0.1"), (Option("float", low=0, low_open=True), "0"), (Option("float"), "inf"),
    (Option("float"), "nan"), (Option("float", high=1), "1.5"), (Option("int", low=1), "2.5"),
    (Option("int", low=1), "0"), (Option("bool"), "yes"), (Option("choice", choices=("a",)), "c"),
    (Option("path"), ""),
])
def test_option_refuses_invalid_values(option, text):
    with pytest.raises(ValueError):
        option.parse(text)


def test_every_registered_source_declares_its_options():
    for registry in (GENERATORS, DATASETS, MODEL_SOURCES, ORACLE_SOURCES):
        for name in registry:
            assert registry.options(name) is not None, f"{registry.kind} {name} declares no option table"


def test_parse_options_types_values_and_takes_defaults():
    spec = parse_spec("diffusion:digits?steps=3&normalize=0", GENERATORS, what="generator")
    table = GENERATORS.options("diffusion")
    values = parse_options(spec, table, what="generator", defaults={"strength": 0.1})
    assert values["steps"] == 3 and values["normalize"] is False and values["strength"] == 0.1
    assert values["guidance"] == 1.0 and values["class_cond"] is None
    with pytest.raises(SpecError, match="valid options: .*strength"):
        parse_spec("diffusion:digits?strenght=0.2", GENERATORS, what="generator")


# --- defaults belong to the generator; mixed worlds say what they took ----------------------------

def test_step_size_defaults_come_from_the_generator_card():
    from fmr_bench.generators import default_step_size

    assert default_step_size("vqgan:digits", "vqgan:digits") == (0.05, "generator card vqgan-digits")
    assert default_step_size("vqgan:imagenet-f16-16384", "vqgan:digits")[0] == 0.001
    assert default_step_size("sparse-vqgan", "vqgan:digits")[0] == 0.05  # the dense card it was fitted on
    assert default_step_size("pixel", "vqgan:digits") is None


def test_folder_data_with_digits_generator_runs_at_the_cards_step_size(capsys, tmp_path, files):
    code, out, err = _run(capsys, [
        "evaluate", *MODEL, "--data", f"folder:{files['folder']}?crop_pct=1", "--generator", "vqgan:digits",
        "--oracle", "builtin:digits-clip", "--budget", "1", "--limit", "10", "--no-grid", "--workers", "0",
        "--out", str(tmp_path),
        "--quiet"])
    assert code == 0, err
    record = json.loads(next(tmp_path.rglob("record.json")).read_text())
    assert record["settings"]["step_size"] == 0.05  # not the folder (ImageNet) world's 0.001
    assert record["defaults"]["step_size"] == {"value": 0.05, "from": "generator card vqgan-digits"}
    assert set(record["defaults"]) <= {"step_size", "accept"}  # generator and oracle were given
    # the rule belongs to the oracle: the digits CLIP keeps its world's rule on folder: data
    assert record["defaults"]["accept"] == {"value": "margin:0.99",
                                            "from": "the default rule of oracle builtin:digits-clip"}
    notes = record["notes"]
    assert any("mixes worlds" in n and "step_size 0.05 from generator card vqgan-digits" in n for n in notes)
    assert any(n.startswith("limit 10 is more than the 4 images") and "all 4 ran" in n for n in notes)
    assert record["metrics"]["n"] == 4
    for n in notes:
        assert f"note: {n}" in out.replace("\n", " ") or f"note: {n}"[:60] in out


def test_library_refuses_fgsm_eps_without_fgsm_init(tmp_path):
    from fmr_bench import evaluate
    from fmr_bench.errors import SettingsError

    with pytest.raises(SettingsError, match="--init fgsm"):
        evaluate("builtin:digits-cnn", fgsm_eps=0.01, limit=1, out=None)


def test_world_defaults_are_recorded_without_a_note():
    from fmr_bench.config import FmrSettings
    from fmr_bench.engine.defaults import resolve_defaults

    ds = load_dataset("digits")
    r = resolve_defaults(FmrSettings().validated(), ds)
    assert (r.generator, r.oracle, r.settings.step_size) == ("vqgan:digits", "builtin:digits-clip", 0.05)
    assert set(r.taken) == {"generator", "oracle", "step_size", "accept"} and r.notes == []
    r = resolve_defaults(FmrSettings(step_size=0.2).validated(), ds, generator="pixel")
    assert r.settings.step_size == 0.2 and set(r.taken) == {"oracle", "accept"}
    assert r.notes and "oracle builtin:digits-clip from the dataset world of digits" in r.notes[0]


# --- fmr inside a suite; static progress; --workers ------------------------------------------

def test_fmr_and_a_static_evaluator_in_one_suite(capsys, tmp_path):
    code, out, err = _run(capsys, ["evaluate", *MODEL, "--evaluator", "fmr,calibration", "--limit", "3",
                                   "--budget", "1", "--no-grid", "--ood", "digits-shift:rotated", "--workers", "0",
                                   "--no-cache", "--out", str(tmp_path)])
    assert code == 0, err
    records = {json.loads(p.read_text())["evaluator"]: json.loads(p.read_text()) for p in tmp_path.rglob("record.json")}
    assert set(records) == {"fmr", "calibration"}
    assert records["fmr"]["metrics"]["n"] == 3
    assert records["calibration"]["settings"]["num_workers"] == 0
    assert "--limit 3 applies to the fmr run; the static evaluators (calibration) use every image" in out
    assert re.search(r"digits-shift:rotated .*360/360 +[\d.]+ img/s", out), out  # static inference progress


def test_samples_with_workers_0_decode_in_process(monkeypatch, files):
    from fmr_bench.engine import fmr as runner

    ds = load_dataset(f"folder:{files['folder']}")
    ds.set_resolution(32)

    def no_loader(*a, **k):
        raise AssertionError("a DataLoader was built with --workers 0")

    monkeypatch.setattr(torch.utils.data, "DataLoader", no_loader)
    got = list(runner._samples(ds, [0, 2], 0))
    assert [g[1] for g in got] == [0, 2]


# --- fmr export: the printed hint reads the pixels back exactly ----------------------------------

def test_export_read_back_hint_reads_the_exported_pixels_exactly(capsys, tmp_path):
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    to = tmp_path / "exp"
    code, out, err = _run(capsys, ["export", *MODEL, "--limit", "6", "--budget", "2", "--no-grid",
                                   "--out", str(tmp_path / "runs"), "--to", str(to), "--quiet"])
    assert code == 0, err
    spec = re.search(r"read back with --data (\S+)", out).group(1)
    assert spec.endswith("?crop_pct=1")
    back, plain = load_dataset(spec), load_dataset(f"folder:{to}")
    assert len(back) > 0
    differs = False
    for ds in (back, plain):
        ds.set_resolution(32)  # the generator's resolution, as fmr evaluate sets it
    for i, path in enumerate(back.paths):
        with Image.open(path) as im:
            written = to_tensor(im.convert("RGB"))
        assert torch.equal(back.load(i), written), path
        differs |= not torch.equal(plain.load(i), written)
    assert differs  # the hint matters: the default 0.875 crop reads other pixels


# --- numbers that do not mislead ----------------------------------------------------------------

def _fpr_top_sklearn(s_id, s_ood):
    from sklearn.metrics import roc_curve

    y = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
    fpr, tpr, _ = roc_curve(y, np.r_[s_id, s_ood], drop_intermediate=False)
    return fpr[np.argmax(tpr >= 0.95)]


def _fpr_mcm_brute(s_id, s_ood):
    """Every distinct threshold t from the lowest that accepts all ID upwards; TPR closest to 0.95,
    the first (lowest t) among equals; the list ends with the point (TPR 1, FPR 0)."""
    points = []
    for t in sorted(set(np.r_[s_id, s_ood].tolist())):
        if t < min(s_id):
            continue
        points.append((sum(1 for s in s_id if s >= t) / len(s_id), sum(1 for s in s_ood if s >= t)))
    points.append((1.0, 0))
    best = min(range(len(points)), key=lambda i: (abs(points[i][0] - 0.95), i))
    return points[best][1] / len(s_ood)


@pytest.mark.parametrize("seed", range(12))
def test_fpr_rules_match_independent_computations_on_scores_with_ties(seed):
    rng = np.random.default_rng(seed)
    n_id, n_ood = int(rng.integers(5, 140)), int(rng.integers(5, 140))
    levels = int(rng.integers(3, 40))  # few distinct values: many ties, within and across the sets
    s_id = rng.integers(0, levels, n_id) / levels + 0.1
    s_ood = rng.integers(0, levels, n_ood) / levels
    assert M.fpr_at_95(s_id, s_ood) == pytest.approx(_fpr_top_sklearn(s_id, s_ood), abs=1e-12)
    assert M.fpr_at_95(s_id, s_ood, rule="mcm") == pytest.approx(_fpr_mcm_brute(s_id, s_ood), abs=1e-12)


def test_fpr_rules_differ_by_the_ood_scores_inside_the_gap():
    s_id = np.arange(1, 101, dtype=float)  # the 95th highest ID score is 6, the 96th is 5
    s_ood = np.array([5.5, 5.7, 0.0, 0.5] + [-1.0] * 96)  # two OOD scores inside the gap (5, 6)
    assert M.fpr_at_95(s_id, s_ood) == 0.0
    assert M.fpr_at_95(s_id, s_ood, rule="mcm") == pytest.approx(0.02)
    with pytest.raises(ValueError, match="unknown FPR rule"):
        M.fpr_at_95(s_id, s_ood, rule="middle")


def test_calibration_says_when_t_is_not_identifiable(tmp_path):
    from fmr_bench.evaluators import EvalSettings, run_evaluator

    res = run_evaluator("builtin:digits-cnn", "calibration", "digits", ["digits-shift:rotated"], out=tmp_path,
                        settings=EvalSettings(cache=False))
    m = res.record["metrics"]
    assert m["id/acc"] == 100.0  # the premise: digits-cnn makes no error on the fit half either
    assert m["temperature"] is None and m["id/ece_ts"] is None and m["digits-shift:rotated/nll_ts"] is None
    assert m["id/ece"] is not None and m["digits-shift:rotated/nll"] is not None
    fit = res.record["temperature_fit"]
    assert fit["identifiable"] is False and fit["lbfgs_result"] < 0.1 and "not identifiable" in fit["why"]
    assert any("not identifiable" in n for n in res.record["notes"])
    assert (res.path / "reliability.png").is_file() and res.record["reliability"]["after"] is None


def test_calibration_fits_t_where_the_model_errs(tmp_path):
    from fmr_bench.evaluators import EvalSettings, run_evaluator

    res = run_evaluator("builtin:digits-cnn", "calibration", "digits-shift:noisy", out=tmp_path,
                        settings=EvalSettings(cache=False))
    m = res.record["metrics"]
    assert 0 < m["id/acc"] < 100
    assert 0.1 < m["temperature"] < 10 and m["id/nll_ts"] <= m["id/nll"] + 1e-9
    assert res.record["temperature_fit"]["identifiable"] is True and "notes" not in res.record


def test_compare_generators_with_2_models_warns_that_tau_is_plus_minus_1(capsys, tmp_path):
    code, out, err = _run(capsys, ["compare-generators", "--models", "builtin:digits-cnn,builtin:digits-mlp",
                                   "--generators", "pixel,noise", "--limit", "2", "--budget", "1", "--no-grid",
                                   "--out", str(tmp_path), "--to", str(tmp_path / "cmp"), "--quiet"])
    assert code == 0, err
    assert "note: Kendall tau over 2 models is +1 or -1 by construction" in out
    notes = json.loads((tmp_path / "cmp" / "compare.json").read_text())["notes"]
    assert any("2 models" in n for n in notes)
