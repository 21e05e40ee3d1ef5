"""``evaluate`` end to end on in-memory components: records, resume, errors."""

from __future__ import annotations

import json

import pytest

from conftest import brightness_world
from fmr_bench import FmrBenchError, evaluate
from fmr_bench.errors import OutputError, SettingsError
from fmr_bench.generators.noise import PixelGenerator
from fmr_bench.results.rundir import FmrResult, read_outcomes


def _run(out, progress=False, **kw):
    data, model, oracle = brightness_world(14)
    return evaluate(model, data, generator=PixelGenerator(), oracle=oracle, out=out, budget=8, step_size=0.02,
                    batch_size=4, progress=progress, **kw)


def test_record_has_settings_metrics_and_per_class(tmp_path):
    res = _run(tmp_path)
    rec = json.loads((res.path / "record.json").read_text())
    assert rec == res.record
    assert rec["schema_version"] == 2 and rec["evaluator"] == "fmr" and rec["kind"] == "fmr"
    assert rec["settings"]["budget"] == 8 and rec["settings"]["step_size"] == 0.02
    assert rec["settings"]["optimizer"] == "adam" and rec["settings"]["seed"] == 0
    assert rec["metrics"]["n"] == 14 and isinstance(rec["metrics"]["sa"], float)
    assert sum(r["n"] for r in rec["per_class"]) == 14
    assert "torch" in rec["provenance"]["versions"] and rec["model"]["weights_sha256_16"]
    assert rec["n"] == 14 and rec["seed"] == 0 and rec["upgraded_from"] is None
    lines = (res.path / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 14
    assert (res.path / "grid.png").stat().st_size > 1000
    row = res.to_pandas()
    assert row["fmr"] == rec["metrics"]["fmr"] and row["budget"] == 8
    assert len(res.samples_frame()) == 14 and len(res.per_class_frame()) == 3
    again = FmrResult.load(res.path)
    assert again.record == rec and len(again.outcomes) == 14


def test_interrupted_run_resumes_to_the_same_numbers(tmp_path):
    full = _run(tmp_path / "a")

    def stop_after_five(done, total):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(FmrBenchError, match="re-run the same command to resume"):
        _run(tmp_path / "b", progress=stop_after_five)
    (folder,) = (tmp_path / "b").iterdir()
    assert len(read_outcomes(folder / "samples.jsonl")) == 5
    assert not (folder / "record.json").exists()
    seen = []
    resumed = _run(tmp_path / "b", progress=lambda d, t: seen.append(d))
    assert seen[0] == 6 and seen[-1] == 14  # only the 9 missing samples ran
    assert resumed.metrics == full.metrics
    assert resumed.record["per_class"] == full.record["per_class"]
    assert len((folder / "samples.jsonl").read_text().splitlines()) == 14


def test_torn_last_line_is_skipped_on_load_and_redone_on_resume(tmp_path):
    res = _run(tmp_path)
    path = res.path / "samples.jsonl"
    text = path.read_text().splitlines(keepends=True)
    torn = "".join(text[:-1]) + text[-1][: len(text[-1]) // 2]
    path.write_text(torn)
    assert len(read_outcomes(path)) == 13
    assert path.read_text() == torn  # reading never writes
    again = _run(tmp_path)
    assert again.metrics == res.metrics
    lines = path.read_text().splitlines()
    assert len(lines) == 14 and all(json.loads(x) for x in lines)


def test_limit_takes_a_seeded_subset(tmp_path):
    a = _run(None, limit=5, seed=1)
    b = _run(None, limit=5, seed=1)
    c = _run(None, limit=5, seed=2)
    ids = lambda r: [o.id for o in r.outcomes]  # noqa: E731
    assert ids(a) == ids(b) and len(ids(a)) == 5 and ids(a) != ids(c)


def test_bad_settings_and_outputs_are_one_line_errors(tmp_path):
    with pytest.raises(SettingsError, match="budget must be >= 1"):
        evaluate("builtin:digits-cnn", "digits", budget=0)
    with pytest.raises(SettingsError, match="step size must be > 0"):
        evaluate("builtin:digits-cnn", "digits", step_size=-1.0)
    with pytest.raises(SettingsError, match="unknown setting"):
        evaluate("builtin:digits-cnn", "digits", budgte=3)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="--out"):
        _run(blocker)


def test_in_memory_module_is_evaluated_and_handed_back_unchanged():
    from conftest import BrightnessModel

    data, model, oracle = brightness_world(6)
    net = BrightnessModel(3)
    net.train()
    net.cnn[0].weight.requires_grad_(False)  # e.g. a partly frozen backbone
    flags = [p.requires_grad for p in net.parameters()]
    res = evaluate(net, data, generator=PixelGenerator(), oracle=oracle, out=None, budget=4, step_size=0.02,
                   preprocess=dict(input_size=16, mean=(0, 0, 0), std=(1, 1, 1), class_names=data.class_names))
    assert res.metrics["n"] == 6 and res.path is None
    assert net.training and [p.requires_grad for p in net.parameters()] == flags
    with pytest.raises(SettingsError, match="preprocess"):
        evaluate(net, data, generator=PixelGenerator(), oracle=oracle, out=None)


def test_unreadable_image_stops_with_one_line_and_keeps_finished_samples(tmp_path):
    from PIL import Image

    from conftest import BrightnessOracle, identity_pre
    from fmr_bench.errors import DataError
    from fmr_bench.models import ImageClassifier
    from fmr_bench.oracles import Oracle

    root = tmp_path / "data"
    for c, shade in (("band0", 50), ("band1", 200)):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (shade + i, shade, shade)).save(root / c / f"{i}.png")
    (root / "band1" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    names = ["band0", "band1"]
    model = ImageClassifier(BrightnessOracle(2), identity_pre(16), class_names=names, spec="module:b")
    oracle = Oracle([ImageClassifier(BrightnessOracle(2), identity_pre(16), class_names=names)], "b", "single")
    with pytest.raises(DataError) as err:
        evaluate(model, f"folder:{root}", generator=PixelGenerator(), oracle=oracle, out=tmp_path / "runs",
                 budget=2, step_size=0.01, batch_size=1)
    msg = str(err.value)
    assert "band1/2.png" in msg and "re-run" in msg and "\n" not in msg
    (folder,) = (tmp_path / "runs").iterdir()
    done = read_outcomes(folder / "samples.jsonl")
    assert len(done) >= 4 and "band1/2.png" not in done
