"""Fine-tuning runs on tiny random-weight models: losses fall, kill-and-resume reaches the
same weights, results load as ``file:`` models, the callback, the CLI's refusals."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest
import torch

from fmr_bench import load_model, save_model
from fmr_bench.cli import main
from fmr_bench.datasets import TensorImages, WorldDefaults
from fmr_bench.errors import FmrBenchError, InterruptedRun, OutputError
from fmr_bench.finetune import Callback, EvalCallback, finetune, load_train_data
from fmr_bench.results.record import load_record

# ruff: noqa: F811 (tests take the imported fixtures as same-named arguments)
# the tiny CLIP and one-thread fixtures are test_finetune's (pytest finds imported fixtures by name)
from test_finetune import CLIP_ARCH, TINY_CLIP, _planted, one_thread, tiny_clip  # noqa: F401

NAMES = ["red", "green", "blue"]


def world(n: int = 24, seed: int = 0) -> TensorImages:
    x, y, _ = _planted(n, torch.Generator().manual_seed(seed))
    return TensorImages(x, y.tolist(), NAMES, spec="planted",
                        world=WorldDefaults("pixel", "builtin:digits-clip", 0.05))


FAST = dict(lr=1e-3, warmup_steps=0, weight_decay=0.0, seed=0, caption="a {} square", star_lambda=1.0,
            star_decay=False, lp_lr=1e-2, checkpoint_every=1000)


def _mean(log, key, epoch):
    vals = [r[key] for r in log if r["epoch"] == epoch and key in r]
    return sum(vals) / len(vals)


@pytest.mark.parametrize("method, key", [("ft", "loss/ce"), ("lp", "loss/ce_features"), ("flyp", "loss/clip"),
                                         ("starft", "loss/clip"), ("maskcf", "loss/ce")])
def test_a_few_steps_on_a_tiny_open_clip_lower_the_loss(tiny_clip, method, key):
    res = finetune(tiny_clip, world(), method=method, epochs=4, lp_epochs=4, batch_size=12, pretrained=False,
                   mask_threshold=0.5, **FAST)
    assert res.steps == 8
    assert _mean(res.log, key, 3) < _mean(res.log, key, 0)
    if method == "starft":
        assert all(r["loss/star"] >= -1e-6 for r in res.log)
    if method == "maskcf":
        assert all("loss/feature_mse" in r and 0 <= r["mask_rate"] <= 1 for r in res.log)


@pytest.mark.parametrize("method", ["ft", "maskcf"])
def test_a_few_steps_on_a_tiny_timm_vit_lower_the_loss(method):
    import timm

    from fmr_bench.models import ImageClassifier, Preprocess

    torch.manual_seed(0)
    net = timm.create_model("test_vit", num_classes=3, img_size=32, patch_size=8)
    clf = ImageClassifier(net, Preprocess((32, 32)), class_names=NAMES, spec="timm:test_vit", arch="timm:test_vit")
    res = finetune(clf, world(), method=method, epochs=4, batch_size=12, fill="multi",
                   **FAST)
    assert _mean(res.log, "loss/ce", 3) < _mean(res.log, "loss/ce", 0)


class Crash(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer, logs) -> None:
        if trainer.global_step == self.at:
            raise KeyboardInterrupt("simulated kill")


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("method, crash_at", [("maskcf", 3), ("starft", 5), ("lp-ft", 4)])
def test_kill_and_resume_reaches_the_same_weights(tiny_clip, tmp_path, method, crash_at):
    kw = dict(method=method, epochs=2, lp_epochs=1, batch_size=8, pretrained=False,
              **{**FAST, "checkpoint_every": 2, "star_decay": True}, fill="multi", mask_threshold=0.5)
    full = finetune(tiny_clip, world(), out=tmp_path / "full", **kw)
    with pytest.raises(InterruptedRun, match=r"^interrupted; \d+/\d+ steps are saved in .*cut; re-run the same "
                                             "command to resume$"):
        finetune(tiny_clip, world(), out=tmp_path / "cut", callbacks=[Crash(crash_at)], **kw)
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    assert (tmp_path / "cut" / "checkpoints" / "latest.json").is_file()
    resumed = finetune(tiny_clip, world(), out=tmp_path / "cut", **kw)
    assert resumed.steps == full.steps
    a, b = _state(full.path), _state(resumed.path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes(tiny_clip, tmp_path, monkeypatch):
    import safetensors.torch as st

    kw = dict(method="ft", epochs=2, batch_size=8, pretrained=False, **{**FAST, "checkpoint_every": 1})
    full = finetune(tiny_clip, world(), out=tmp_path / "full", **kw)
    real, calls = st.save_file, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # θ₀ is call 1, checkpoint 1 calls 2-4 (model, optimiser, RNG): fail in checkpoint 2
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(st, "save_file", flaky)
    with pytest.raises(OutputError, match="disk is full"):
        finetune(tiny_clip, world(), out=tmp_path / "cut", **kw)
    monkeypatch.setattr(st, "save_file", real)
    latest = json.loads((tmp_path / "cut" / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 1 and not list((tmp_path / "cut" / "checkpoints").glob("*.part"))
    resumed = finetune(tiny_clip, world(), out=tmp_path / "cut", **kw)
    a, b = _state(full.path), _state(resumed.path)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["ft", "flyp"])
def test_the_result_loads_as_a_file_model_with_its_head(tiny_clip, tmp_path, method):
    res = finetune(tiny_clip, world(), out=tmp_path / "run", method=method, epochs=1, batch_size=12,
                   pretrained=False, **FAST)
    back = load_model(f"file:{res.path}").eval()
    x = world(6, seed=1).images
    with torch.no_grad():
        assert torch.allclose(back(x), res.model.eval()(x), atol=1e-5)
    meta = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert meta["settings"]["method"] == method and meta["provenance"]["versions"]["fmr_bench"] and meta["steps"] == 2
    rec = load_record(tmp_path / "run" / "finetune.json")
    assert (rec.kind, rec.evaluator, rec.model["weights_sha256_16"]) == ("finetune", f"finetune:{method}",
                                                                          back.weights_hash())
    zs = load_model(f"file:{tmp_path / 'run' / 'zeroshot.safetensors'}")
    assert not torch.equal(zs.net.clip.visual.conv1.weight, back.net.clip.visual.conv1.weight)
    if method == "flyp":  # the head was rebuilt from the fine-tuned text tower
        assert not torch.allclose(zs.net.class_embeddings, back.net.class_embeddings)


def test_eval_callback_appends_subset_records_without_moving_training(tiny_clip, tmp_path):
    kw = dict(method="maskcf", epochs=2, batch_size=12, pretrained=False, mask="random", fill="single", **FAST)
    plain = finetune(tiny_clip, world(), **kw)
    cb = EvalCallback("fmr", world(8, seed=2), every=1, unit="epoch", limit=4, budget=2, log=tmp_path / "ev.jsonl")
    tracked = finetune(tiny_clip, world(), callbacks=[cb], **kw)
    assert [r["epoch"] for r in cb.records] == [1, 2]
    assert all(r["subset"] == {"limit": 4, "budget": 2} and r["metrics"]["n"] == 4 for r in cb.records)
    assert len((tmp_path / "ev.jsonl").read_text().splitlines()) == 2
    a, b = plain.model.state_dict(), tracked.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_csv_and_concatenated_training_sets(tmp_path):
    from PIL import Image

    rows = ["path,label"]
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(tmp_path / f"im{i}.png")
        rows.append(f"im{i}.png,{'cat' if i % 2 else 'dog'}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    ds = load_train_data(f"csv:{tmp_path / 'train.csv'}")
    assert ds.class_names == ["cat", "dog"] and ds.labels == [1, 0, 1, 0]
    ds.set_resolution(8)
    assert ds.load(1).shape == (3, 8, 8)
    (tmp_path / "bad.csv").write_text("file,y\na.png,0\n")
    with pytest.raises(FmrBenchError, match="needs path and label"):
        load_train_data(f"csv:{tmp_path / 'bad.csv'}")
    from fmr_bench.finetune import ConcatImages

    both = ConcatImages([ds, TensorImages(torch.zeros(2, 3, 8, 8), [0, 1], ["dog", "cat"])])
    assert both.labels == [1, 0, 1, 0, 1, 0] and len(both) == 6


def _one_line_exit_2(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fmr: error: ")
    return err[0]


@pytest.mark.parametrize("flags, match", [
    (["--mask-threshold", "1.5"], r"\[0, 1\]"),
    (["--beta", "-1"], "beta must be >= 0"),
    (["--star-lambda", "-0.5"], "star-lambda must be >= 0"),
    (["--wise", "0,1.5"], r"\[0, 1\]"),
    (["--method", "starft", "--concepts", "colour"], "unknown descriptor concept"),
])
def test_cli_bad_settings_are_one_line_and_exit_2(capsys, tmp_path, flags, match):
    line = _one_line_exit_2(capsys, ["finetune", "--model", "builtin:digits-clip", "--out", str(tmp_path / "o"), *flags])
    assert __import__("re").search(match, line)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_cli_refuses_text_methods_without_text_and_mixes_across_architectures(capsys, tmp_path):
    pools = tmp_path / "pools.json"
    pools.write_text('{"colour": []}')
    line = _one_line_exit_2(capsys, ["finetune", "--model", "builtin:digits-clip", "--method", "starft", "--concepts",
                                     "colour", "--descriptors", str(pools), "--out", str(tmp_path / "p")])
    assert "empty" in line
    line = _one_line_exit_2(capsys, ["finetune", "--model", "timm:test_resnet?num_classes=10", "--random-weights",
                                     "--method", "flyp", "--out", str(tmp_path / "f")])
    assert "text tower" in line
    save_model(load_model("timm:test_resnet?num_classes=10", pretrained=False), tmp_path / "r.safetensors")
    line = _one_line_exit_2(capsys, ["finetune", "--mix", "builtin:digits-cnn", f"file:{tmp_path / 'r.safetensors'}",
                                     "--wise", "0.5", "--out", str(tmp_path / "m")])
    assert "different architectures" in line


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_never_overwrites_another_run(capsys, tiny_clip, tmp_path):
    out = tmp_path / "run"
    finetune(tiny_clip, world(), out=out, method="ft", epochs=1, batch_size=12, pretrained=False, **FAST)
    before = _digest(out)
    line = _one_line_exit_2(capsys, ["finetune", "--model", "builtin:digits-clip", "--preset", "digits",
                                     "--out", str(out)])
    assert "other settings" in line and _digest(out) == before
    with pytest.raises(OutputError, match="already holds the finished model"):
        finetune(tiny_clip, world(), out=out, method="ft", epochs=1, batch_size=12, pretrained=False, **FAST)
    assert _digest(out) == before


def test_wise_kd_distils_towards_the_wise_ft_mix(tiny_clip, tmp_path):
    ft = finetune(tiny_clip, world(), out=tmp_path / "ft", method="ft", epochs=1, batch_size=12, pretrained=False, **FAST)
    res = finetune(tiny_clip, world(), method="maskcf", epochs=1, batch_size=12, pretrained=False, wise_kd=1.0,
                   wise_kd_teacher=f"file:{ft.path}", mask="random", **FAST)
    assert all(r["loss/wise_kd"] >= 0 for r in res.log)
    total = [r["loss"] for r in res.log]
    parts = [r["loss/ce"] + 30 * r["loss/feature_mse"] + r["loss/wise_kd"] for r in res.log]
    assert total == pytest.approx(parts, rel=1e-5)


@pytest.mark.parametrize("flag", [["--eval-limit", "8"], ["--eval-data", "digits:test"], ["--eval-unit", "step"]])
def test_evaluation_flags_without_eval_are_refused(flag, tmp_path, capsys):
    from fmr_bench.cli import main

    code = main(["finetune", "--model", "builtin:digits-clip", "--method", "ft", "--data", "digits:train",
                 "--out", str(tmp_path / "ft"), *flag])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "only applies with --eval" in err[0], err
    assert not (tmp_path / "ft").exists()  # refused before any work


def _png_set(folder: Path, n: int = 20) -> str:
    """``world(n)`` written as PNG files listed in a CSV: a file dataset the trainer decodes."""
    from PIL import Image

    data, rows = world(n), ["path,label"]
    for i in range(n):
        arr = (data.images[i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"im{i}.png")
        rows.append(f"im{i}.png,{NAMES[data.labels[i]]}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return f"csv:{folder / 'train.csv'}"


@pytest.mark.parametrize("method", ["ft", "lp"])
def test_dataloader_workers_give_the_same_batches_and_weights(tiny_clip, tmp_path, method, monkeypatch):
    import os

    from fmr_bench.finetune import trainer as trainer_mod

    spec = _png_set(tmp_path)
    pids = tmp_path / "pids"
    real = trainer_mod._Loads.__getitem__

    def spy(self, i):  # records which process decoded the file
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(self, i)

    monkeypatch.setattr(trainer_mod._Loads, "__getitem__", spy)
    kw = dict(method=method, epochs=2, lp_epochs=2, batch_size=6, pretrained=False, **FAST)
    plain = finetune(tiny_clip, spec, workers=0, **kw)
    assert not pids.exists()  # workers=0 decodes in the main process, as before
    loaded = finetune(tiny_clip, spec, workers=2, **kw)
    seen = {int(p) for p in pids.read_text().split()}
    assert seen and os.getpid() not in seen  # decoded in worker processes
    assert [r["loss"] for r in plain.log] == [r["loss"] for r in loaded.log]
    a, b = plain.model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_feature_cache_that_would_not_fit_is_refused_before_it_is_built(tiny_clip, monkeypatch):
    from fmr_bench.errors import SettingsError
    from fmr_bench.finetune import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "available_memory", lambda: 24 * 32 * 4)  # room for the whole cache x 1
    with pytest.raises(SettingsError, match=r"linear probe would cache .* use --method ft"):
        finetune(tiny_clip, world(24), method="lp", epochs=1, batch_size=6, pretrained=False, **FAST)
    monkeypatch.setattr(trainer_mod, "available_memory", lambda: 2 * 24 * 32 * 4)  # exactly the allowed share
    finetune(tiny_clip, world(24), method="lp", epochs=1, batch_size=6, pretrained=False, **FAST)
    monkeypatch.setattr(trainer_mod, "available_memory", lambda: None)  # platform does not say: no check
    finetune(tiny_clip, world(24), method="lp", epochs=1, batch_size=6, pretrained=False, **FAST)


def test_a_full_disk_while_writing_checkpoint_json_or_the_log_is_one_line_and_loses_nothing(tiny_clip, tmp_path,
                                                                                              monkeypatch):
    from fmr_bench import files

    kw = dict(method="ft", epochs=2, batch_size=8, pretrained=False, **{**FAST, "checkpoint_every": 1})
    full = finetune(tiny_clip, world(), out=tmp_path / "full", **kw)
    real_replace, calls = files.os.replace, {"latest": 0}

    def flaky_replace(src, dst, *a, **k):  # the second latest.json cannot be written
        if Path(dst).name == "latest.json":
            calls["latest"] += 1
            if calls["latest"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(files.os, "replace", flaky_replace)
    with pytest.raises(OutputError, match="disk is full") as err:
        finetune(tiny_clip, world(), out=tmp_path / "cut", **kw)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(files.os, "replace", real_replace)
    root = tmp_path / "cut" / "checkpoints"
    assert json.loads((root / "latest.json").read_text())["step"] == 1
    assert (root / "step-0000001" / "state.json").is_file() and not list(root.glob("*.part"))

    real_open = open

    def full_log(path, mode="r", *a, **k):  # the training log cannot grow
        if str(path).endswith("train_log.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", full_log)
    with pytest.raises(OutputError, match="disk full while writing .*train_log.jsonl"):
        finetune(tiny_clip, world(), out=tmp_path / "cut", **kw)
    monkeypatch.setattr("builtins.open", real_open)
    resumed = finetune(tiny_clip, world(), out=tmp_path / "cut", **kw)
    a, b = _state(full.path), _state(resumed.path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in json.loads("[" + ",".join((tmp_path / "cut" / "train_log.jsonl").read_text()
                                                          .splitlines()) + "]")] == list(range(1, full.steps + 1))


def test_an_unreadable_file_read_by_a_worker_is_one_line(tiny_clip, tmp_path):
    from fmr_bench.errors import DataError

    spec = _png_set(tmp_path, n=8)
    (tmp_path / "im5.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"^cannot read image .*im5.png") as err:
        finetune(tiny_clip, spec, workers=2, method="ft", epochs=1, batch_size=4, pretrained=False, **FAST)
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


# --- a fine-tuning run is as safe as an FMR run -------------------------------------------------
def test_two_identical_runs_write_byte_identical_models(tiny_clip, tmp_path):
    kw = dict(method="ft", epochs=1, batch_size=8, pretrained=False, **FAST)
    a = finetune(tiny_clip, world(), out=tmp_path / "a", **kw)
    b = finetune(tiny_clip, world(), out=tmp_path / "b", **kw)
    assert a.path.read_bytes() == b.path.read_bytes()  # no finish time in the header: a hash checks a result
    rec = load_record(tmp_path / "a" / "finetune.json")
    assert rec.provenance.timestamp and rec.dataset["fingerprint"]  # the time went to the record


def test_training_images_changed_under_the_same_names_are_refused(tiny_clip, tmp_path):
    kw = dict(method="ft", epochs=2, batch_size=8, pretrained=False, **{**FAST, "checkpoint_every": 1})
    with pytest.raises(InterruptedRun):
        finetune(tiny_clip, world(), out=tmp_path / "run", callbacks=[Crash(2)], **kw)
    other = world(seed=1)  # same spec, ids, size and class names; other pixels
    assert other.spec == world().spec and other.ids == world().ids
    with pytest.raises(OutputError, match="other training data") as e:
        finetune(tiny_clip, other, out=tmp_path / "run", **kw)
    assert len(str(e.value).splitlines()) == 1
    finetune(tiny_clip, world(), out=tmp_path / "run", **kw)  # the same images again: it resumes


def test_a_kill_before_the_first_checkpoint_leaves_one_log_line_per_step(tiny_clip, tmp_path):
    kw = dict(method="ft", epochs=2, batch_size=8, pretrained=False, **FAST)  # checkpoint_every=1000: none
    with pytest.raises(InterruptedRun):
        finetune(tiny_clip, world(), out=tmp_path / "run", callbacks=[Crash(2)], **kw)
    res = finetune(tiny_clip, world(), out=tmp_path / "run", **kw)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, res.steps + 1))
