"""Static evaluators end to end on tiny random-weight models and synthetic image folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fmr_bench.cli import main
from fmr_bench.datasets import load_dataset
from fmr_bench.errors import ClassMappingError, DataError, SettingsError
from fmr_bench.evaluators import Context, EvalSettings, evaluate_suite, run_evaluator
from fmr_bench.metrics import static as M

FAST = dict(num_workers=0, batch_size=16)
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FMR_LOGITS_CACHE", str(tmp_path / "logits-cache"))


@pytest.fixture(scope="module")
def tiny_clip():
    import open_clip

    if "fmr-test-static-clip" not in open_clip.list_models():
        import tempfile
        from pathlib import Path

        folder = Path(tempfile.mkdtemp())
        (folder / "fmr-test-static-clip.json").write_text(json.dumps(TINY_CLIP))
        open_clip.add_model_config(folder)
    return "openclip:fmr-test-static-clip"


def _images(folder, n, seed=0, size=20, names=None):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        name = names[i] if names else f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)).save(folder / name)


def _r_wnids(k=2):
    from fmr_bench.datasets.imagenet_variants import _timm_info

    return _timm_info("imagenet_r_synsets.txt")[:k]


@pytest.fixture
def imagenet_family(tmp_path):
    from fmr_bench.datasets.imagenet import imagenet_wnids
    from fmr_bench.datasets.imagenet_variants import objectnet_metadata

    wn = _r_wnids()
    for k, w in enumerate(wn):
        _images(tmp_path / "val" / w, 3, seed=k)
        _images(tmp_path / "r" / w, 2, seed=10 + k)
        _images(tmp_path / "v2" / str(imagenet_wnids().index(w)), 2, seed=20 + k)
    folder_to_label, label_to_ids = objectnet_metadata()
    folders = [f for f, lab in sorted(folder_to_label.items()) if lab in label_to_ids][:2]
    for k, f in enumerate(folders):
        _images(tmp_path / "objectnet-1.0" / "images" / f, 2, seed=30 + k)
    _images(tmp_path / "ood", 4, seed=40)
    return {"val": f"imagenet:{tmp_path / 'val'}", "r": f"imagenet-r:{tmp_path / 'r'}",
            "v2": f"imagenet-v2:{tmp_path / 'v2'}", "objectnet": f"objectnet:{tmp_path / 'objectnet-1.0'}",
            "ood": f"textures:{tmp_path / 'ood'}", "root": tmp_path}


def _manual_logits(spec, dataset, **kw):
    from fmr_bench.models import load_model

    torch.manual_seed(0)
    m = load_model(spec, pretrained=False, **kw).eval()
    t = dataset.eval_transform(m.preprocess)  # the model's own eval transform
    with torch.no_grad():
        return m(torch.stack([dataset.load_eval(i, t) for i in range(len(dataset))])), torch.tensor(dataset.labels)


def test_ood_accuracy_projects_and_matches_a_plain_forward(imagenet_family, tmp_path):
    fam = imagenet_family
    res = run_evaluator("timm:test_resnet", "ood-accuracy", fam["val"], [fam["r"], fam["v2"], fam["objectnet"]],
                        out=tmp_path / "runs", pretrained=False, baseline="0.9,-0.2", **FAST)
    rec = json.loads((res.path / "record.json").read_text())
    assert rec["evaluator"] == "ood-accuracy" and rec["schema_version"] == 2 and rec["kind"] == "static"
    assert len(rec["model"]["weights_sha256_16"]) == 16 and rec["model"]["preprocess"]["input_size"] == [160, 160]
    assert all(isinstance(v, (int, float)) for v in rec["metrics"].values())
    r_ds = load_dataset(fam["r"])
    logits, labels = _manual_logits("timm:test_resnet", r_ds)
    sub = [g[0] for g in r_ds.projection.groups]
    assert rec["metrics"]["imagenet-r/acc"] == pytest.approx(M.accuracy(logits[:, sub], labels))
    on = load_dataset(fam["objectnet"])
    logits, labels = _manual_logits("timm:test_resnet", on)
    assert rec["metrics"]["objectnet/acc"] == pytest.approx(M.accuracy(M.max_project(logits, on.projection.groups), labels))
    accs = [rec["metrics"][f"{k}/acc"] for k in ("imagenet-r", "imagenet-v2", "objectnet")]
    assert rec["metrics"]["ood_avg"] == pytest.approx(sum(accs) / 3)
    er = M.effective_robustness(rec["metrics"]["id_acc"], rec["metrics"]["ood_avg"], (0.9, -0.2))
    assert rec["metrics"]["effective_robustness"] == pytest.approx(er)


def test_second_evaluator_is_served_from_the_logits_cache(imagenet_family, tmp_path):
    fam = imagenet_family
    first = run_evaluator("timm:test_resnet", "calibration", fam["val"], [fam["r"]], out=tmp_path / "a",
                          pretrained=False, **FAST)
    assert not any(p["cached"] for p in first.record["inference"])
    second = run_evaluator("timm:test_resnet", "ood-accuracy", fam["val"], [fam["r"]], out=tmp_path / "b",
                           pretrained=False, **FAST)
    assert [p["cached"] for p in second.record["inference"]] == [True, True]
    assert (first.path / "reliability.png").is_file()
    assert second.metrics["imagenet-r/acc"] == pytest.approx(first.metrics["imagenet-r/acc"])


def test_ood_detection_clip_mcm_matches_manual_scores(imagenet_family, tmp_path, tiny_clip):
    root = imagenet_family["root"]
    for k, c in enumerate(("cat", "dog")):
        _images(root / "pets" / c, 3, seed=50 + k)
    data, ood = f"folder:{root / 'pets'}", imagenet_family["ood"]
    ctx = Context(tiny_clip, EvalSettings(**FAST), pretrained=False)
    res = run_evaluator(tiny_clip, "ood-detection", data, [ood], out=tmp_path / "runs", pretrained=False,
                        context=ctx)
    assert res.record["scores"] == ["msp", "maxlogit", "energy", "mcm"]
    assert res.record["convention"]["positive"] == "in-distribution"
    id_ds, ood_ds = load_dataset(data), load_dataset(ood)
    a = ctx.logits(id_ds, templates="a photo of a {}")
    b = ctx.logits(ood_ds, space_of=id_ds, templates="a photo of a {}")
    scale = float(a.model.net.clip.logit_scale.detach().exp())
    expected = M.detection_metrics(M.mcm(a.logits / scale), M.mcm(b.logits / scale))
    for k, v in expected.items():
        assert res.metrics[f"mcm/textures/{k}"] == pytest.approx(v)
    assert res.record["model"]["heads"][0]["templates"] == "a photo of a {}"


def test_mcm_on_a_non_clip_model_is_a_clear_error(imagenet_family):
    with pytest.raises(SettingsError, match="MCM needs a CLIP"):
        run_evaluator("timm:test_resnet", "ood-detection", imagenet_family["val"], [imagenet_family["ood"]],
                      out=None, pretrained=False, scores="mcm", **FAST)


def test_zero_shot_and_group_robustness_on_tiny_clip(tmp_path, tiny_clip):
    import csv

    root = tmp_path / "wb"
    rows = []
    for i in range(8):
        y, place = i % 2, (i // 2) % 2
        rows.append({"img_id": i, "img_filename": f"imgs/{i}.png", "y": y, "split": 2, "place": place})
    for i in range(8):
        _images(root / "imgs", 1, seed=60 + i, names=[f"{i}.png"])
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ctx = Context(tiny_clip, EvalSettings(**FAST), pretrained=False)
    res = run_evaluator(tiny_clip, "group-robustness", f"waterbirds:{root}", out=None, pretrained=False, context=ctx)
    groups = res.record["per_group"]["waterbirds"]
    assert groups["prompt"] == "This is a picture of a {}." and [g["n"] for g in groups["groups"]] == [2, 2, 2, 2]
    assert res.metrics["waterbirds/worst_group_acc"] == min(g["acc"] for g in groups["groups"])
    zs = run_evaluator(tiny_clip, "zero-shot", f"waterbirds:{root}", out=None, pretrained=False, context=ctx)
    assert 0 <= zs.metrics["waterbirds/acc"] <= 100 and zs.record["templates"] == "openai"


def test_zero_shot_refuses_a_non_clip_model():
    with pytest.raises(ClassMappingError, match="not a zero-shot model"):
        run_evaluator("builtin:digits-cnn", "zero-shot", "digits", out=None, pretrained=False, **FAST)


def test_imagenet_x_matches_the_package_aggregation(tmp_path):
    import pandas as pd
    from imagenet_x import FACTORS, compute_factor_accuracies, load_annotations

    from fmr_bench.datasets.imagenet import imagenet_wnids

    ann = load_annotations(which_factor="top", partition="val", filter_prototypes=True)
    picked = ann.groupby("class").head(1).head(12)
    wnids = imagenet_wnids()
    for _, row in picked.iterrows():
        _images(tmp_path / "val" / wnids[row["class"]], 1, seed=int(row["class"]), names=[row["file_name"]])
    _images(tmp_path / "val" / wnids[picked["class"].iloc[0]], 1, seed=99, names=["not_annotated.JPEG"])
    res = run_evaluator("timm:test_resnet", "imagenet-x", f"imagenet:{tmp_path / 'val'}", out=tmp_path / "runs",
                        pretrained=False, **FAST)
    assert res.metrics["n_annotated"] == 12 and res.metrics["n"] == 13
    preds = pd.read_csv(res.path / res.record["files"]["predictions"])
    assert list(preds.columns) == ["file_name", "predicted_class", "predicted_probability"]
    merged = pd.merge(ann, preds, on="file_name").assign(model="m")
    merged["is_correct"] = merged["predicted_class"] == merged["class"]
    ref = compute_factor_accuracies(merged, FACTORS, "is_correct").loc["m"]
    assert res.metrics["acc"] == pytest.approx(100 * ref["average"])
    for f in FACTORS:
        if res.metrics[f"{f}/n"]:
            # the package yields NaN instead of 0 when a model gets no image right (a random model may not)
            expected = 0.0 if np.isnan(ref[f]) and not merged["is_correct"].any() else ref[f]
            assert res.metrics[f"{f}/acc"] == pytest.approx(100 * expected)


def test_digits_world_runs_every_evaluator_offline(tmp_path):
    results = evaluate_suite("builtin:digits-mlp", ["ood-accuracy", "calibration", "ood-detection", "imagenet-x",
                                                    "group-robustness"], "digits", out=tmp_path, pretrained=False)
    names = [r.record["evaluator"] for r in results]
    assert names == ["ood-accuracy", "calibration", "ood-detection", "imagenet-x", "group-robustness"]
    assert results[0].metrics["digits-shift:rotated/n"] == 360
    passes = results[1].record["inference"]  # same model, same sets: no new inference
    assert len(passes) == 8 and all(p["cached"] for p in passes)
    x = results[3]
    assert x.record["worst_factor"] in ("pose", "color", "texture", "shape", "smaller", "darker", "style")
    assert x.metrics["worst_factor_acc"] == x.metrics[f"{x.record['worst_factor']}/acc"]
    assert x.metrics["n_annotated"] == 7 * 360


def test_digits_shifts_are_deterministic_and_shifted():
    a, b = load_dataset("digits-shift:rotated"), load_dataset("digits-shift:rotated")
    clean = load_dataset("digits:test")
    assert torch.equal(a.images, b.images) and a.labels == clean.labels
    assert not torch.equal(a.images, clean.images)
    mixed = load_dataset("digits-shift:mixed")
    assert len(mixed) == 8 * len(clean) and mixed.group_names[0] == "clean"
    with pytest.raises(Exception, match="unknown digits shift"):
        load_dataset("digits-shift:upside")


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from fmr_bench.datasets.imagenet import imagenet_wnids

    for w in imagenet_wnids():
        (tmp_path / "full" / w).mkdir(parents=True)
    (tmp_path / "wb").mkdir()
    (tmp_path / "empty").mkdir()
    cases = [
        (["--data", "digits", "--ood", f"imagenet-r:{tmp_path / 'full'}"], "looks like full ImageNet"),
        (["--data", f"waterbirds:{tmp_path / 'wb'}"], "metadata.csv is missing"),
        (["--data", "digits", "--ood", f"ood:{tmp_path / 'empty'}"], "holds no images"),
        (["--data", "digits", "--evaluator", "calibrate"], "Did you mean 'calibration'"),
    ]
    for extra, msg in cases:
        args = ["evaluate", "--model", "builtin:digits-cnn", "--evaluator", "ood-accuracy", "--out", str(tmp_path)]
        code = main(args + extra)
        err = capsys.readouterr().err
        assert code == 2 and msg in err and err.count("\n") == 1, (extra, err)
    with pytest.raises(DataError, match="not among the 200 ImageNet-R classes"):
        pass_spec = tmp_path / "r"
        (pass_spec / "n99999999").mkdir(parents=True)
        load_dataset(f"imagenet-r:{pass_spec}")


def test_local_checkpoint_is_evaluated_by_class_names(tmp_path):
    from fmr_bench import load_model, save_model

    torch.manual_seed(0)
    m = load_model("timm:test_resnet?num_classes=2", pretrained=False)
    path = save_model(m, tmp_path / "m.safetensors", class_names=["dog", "cat"])  # other order than the folder
    for k, c in enumerate(("cat", "dog")):
        _images(tmp_path / "pets" / c, 2, seed=70 + k)
    _images(tmp_path / "ood", 3, seed=80)
    res = run_evaluator(f"file:{path}", "ood-detection", f"folder:{tmp_path / 'pets'}", [f"ood:{tmp_path / 'ood'}"],
                        out=None, **FAST)
    assert res.record["scores"] == ["msp", "maxlogit", "energy"]
    ds = load_dataset(f"folder:{tmp_path / 'pets'}")
    logits, labels = _manual_logits(f"file:{path}", ds)
    assert res.metrics["id_acc"] == pytest.approx(M.accuracy(logits[:, [1, 0]], labels))


def test_fine_tuned_clip_checkpoint_keeps_mcm(tmp_path, tiny_clip):
    from fmr_bench import load_model, save_model

    torch.manual_seed(0)
    m = load_model(tiny_clip, class_names=["cat", "dog"], pretrained=False, templates="a photo of a {}")
    path = save_model(m, tmp_path / "ft.safetensors")
    for k, c in enumerate(("cat", "dog")):
        _images(tmp_path / "pets" / c, 2, seed=90 + k)
    _images(tmp_path / "ood", 2, seed=95)
    res = run_evaluator(f"file:{path}", "ood-detection", f"folder:{tmp_path / 'pets'}", [f"ood:{tmp_path / 'ood'}"],
                        out=None, **FAST)
    assert "mcm" in res.record["scores"] and res.record["model"]["arch"] == tiny_clip


def test_cli_suite_on_a_saved_digits_model(tmp_path, capsys):
    from fmr_bench import save_model, wrap_module
    from fmr_bench.digits import CLASS_NAMES, MEAN, STD
    from fmr_bench.digits.nets import DigitsMLP

    torch.manual_seed(0)
    m = wrap_module(DigitsMLP(), input_size=32, mean=MEAN, std=STD, class_names=CLASS_NAMES, arch="builtin:digits-mlp")
    path = save_model(m, tmp_path / "mlp.safetensors")
    code = main(["evaluate", "--model", f"file:{path}", "--evaluator", "ood-accuracy,calibration", "--quiet",
                 "--option", "baseline=1,0", "--ood", "digits-shift:rotated", "--out", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 0 and "effective_robustness" in out and "ece_ts" in out
    records = sorted((tmp_path / "runs").glob("*/record.json"))
    assert [json.loads(p.read_text())["evaluator"] for p in records] == ["calibration", "ood-accuracy"]
    assert main(["list", "evaluators"]) == 0 and "group-robustness" in capsys.readouterr().out
