"""The fine-tuning testbed: its data options, its table preset, and reproducibility
(the same fine-tuning config gives the same weights and metrics, in any process order)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from fmr_bench.datasets import load_dataset
from fmr_bench.datasets.digits_spurious import CORRELATION, noisy_labels
from fmr_bench.errors import SpecError


# the one-thread fixture is test_finetune's (pytest finds imported fixtures by name)
from test_finetune import one_thread  # noqa: E402, F401


def _table_script():
    from conftest import load_script

    return load_script("finetune_digits_table")


# ---------------------------------------------------------------- data options
def test_default_options_give_the_plain_split():
    plain = load_dataset("digits-spurious:train")
    same = load_dataset(f"digits-spurious:train?correlation={CORRELATION}&noise=0")
    assert torch.equal(plain.images, same.images)
    assert plain.labels == same.labels and plain.backgrounds == same.backgrounds


def test_noise_flips_an_exact_share_and_the_background_follows_the_given_label():
    clean = load_dataset("digits-spurious:train")
    noisy = load_dataset("digits-spurious:train?correlation=1&noise=0.2")
    y0, y = np.array(clean.labels), np.array(noisy.labels)
    for c, n in Counter(y0.tolist()).items():
        flipped = ((y0 == c) & (y != c)).sum()
        assert flipped == round(0.2 * n)  # per class, exactly
    assert (np.array(noisy.backgrounds) == y).all()  # correlation 1 with the label given, not the digit
    assert noisy.groups == (10 * y + np.array(noisy.backgrounds)).tolist()


def test_noisy_labels_never_keep_the_class_and_spread_over_the_others():
    y = np.repeat(np.arange(10), 90)
    out = noisy_labels(y, 0.5, np.random.default_rng(0))
    for c in range(10):
        moved = out[(y == c) & (out != c)]
        assert len(moved) == 45
        counts = Counter(moved.tolist())
        assert c not in counts and max(counts.values()) - min(counts.values()) <= 1


def test_correlation_one_puts_every_image_on_its_class_background():
    ds = load_dataset("digits-spurious:id?correlation=1")
    assert ds.labels == ds.backgrounds


@pytest.mark.parametrize("spec,match", [("digits-spurious:test?noise=0.1", "takes no options"),
                                        ("digits-spurious:train?noise=1", "noise"),
                                        ("digits-spurious:train?correlation=1.5", "correlation"),
                                        ("digits-spurious:train?colour=1", "unknown option")])
def test_bad_options_are_one_line(spec, match):
    with pytest.raises(SpecError, match=match):
        load_dataset(spec)


# ---------------------------------------------------------------- table preset
def test_testbed_preset_and_flags():
    mod = _table_script()
    cfg, _ = mod.parse_args(["--preset", "testbed"])
    assert (cfg.lr, cfg.fmr_limit, cfg.train) == (1e-3, 360, "digits-spurious:train")
    assert mod.parse_args(["--preset", "testbed", "--fmr-limit", "8"])[0].fmr_limit == 8  # a flag wins
    cfg, _ = mod.parse_args(["--preset", "testbed", "--lr", "3e-4", "--beta", "1",
                             "--train", "digits-spurious:train?noise=0.1", "--seeds", "4", "5"])
    assert (cfg.lr, cfg.beta, cfg.seeds) == (3e-4, 1.0, (4, 5))
    assert cfg.id_data == "digits-spurious:id?noise=0.1"
    # the first table's rows keep their key: lr / beta of None are left out of it
    table = mod.Table.__new__(mod.Table)
    table.cfg = mod.TableSettings()
    assert "lr" not in table._key() and "beta" not in table._key()
    assert "threads" not in table._key()
    table.cfg = cfg
    assert table._key()["lr"] == 3e-4
    # another thread count gives other float sums, so other weights: its rows do not mix
    table.cfg = mod.TableSettings(threads=2)
    assert table._key()["threads"] == 2


def test_table_refuses_a_bad_train_spec(tmp_path, capsys):
    mod = _table_script()
    assert mod.main(["--out", str(tmp_path / "a"), "--train", "digits-spurious:train?noise=2"]) == 2
    err = capsys.readouterr().err
    assert "--train" in err and "noise" in err and len(err.strip().splitlines()) == 1
    assert mod.main(["--out", str(tmp_path / "b"), "--train", "digits:train"]) == 2
    assert "digits-spurious:train" in capsys.readouterr().err


# ---------------------------------------------------------------- reproducibility
def _short(method: str, seed: int = 3):
    from fmr_bench.finetune import finetune

    small = _table_script().subset(load_dataset("digits-spurious:train?correlation=1"), 60)
    res = finetune("builtin:digits-clip-captions", small, preset="digits", method=method, seed=seed, epochs=1,
                   batch_size=16, warmup_steps=1, lr=1e-3, caption="a photo of a {}", templates="a photo of a {}",
                   out=None)
    return res


def _logits(model) -> torch.Tensor:
    ds = load_dataset("digits-spurious:id")
    x = torch.stack([ds.load(i) for i in range(0, len(ds), 9)])
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("method", ["ft", "maskcf"])
def test_the_same_config_gives_identical_weights_and_metrics(method):
    a, b = _short(method), _short(method)
    assert a.steps == b.steps >= 3
    assert a.model.weights_hash() == b.model.weights_hash()
    assert [r["loss"] for r in a.log] == [r["loss"] for r in b.log]
    assert torch.equal(_logits(a.model), _logits(b.model))
    # and the run moved the weights: the check is not comparing two untouched models
    from fmr_bench import load_model

    zs = load_model("builtin:digits-clip-captions", templates="a photo of a {}")
    assert a.model.weights_hash() != zs.weights_hash()


def test_a_run_does_not_depend_on_what_ran_before_it_in_the_process():
    first = _short("maskcf").model.weights_hash()
    _short("flyp", seed=5)  # trains the text tower too
    _short("ft", seed=6)
    assert _short("maskcf").model.weights_hash() == first


def test_fmr_per_epoch_script_writes_one_row_per_method_and_epoch_and_a_plot(tmp_path):
    from conftest import load_script

    script = load_script("fmr_per_epoch")
    out = tmp_path / "e"
    assert script.main(["--out", str(out), "--epochs", "2", "--fmr-limit", "6", "--fmr-budget", "2",
                        "--train-limit", "48", "--methods", "ft", "--threads", "1"]) == 0
    doc = json.loads((out / "fmr_per_epoch.json").read_text())
    assert doc["kind"] == "study" and doc["provenance"]["fmr_bench"]
    assert [(r["method"], r["epoch"]) for r in doc["rows"]] == [("zero-shot", 0), ("ft", 1), ("ft", 2)]
    assert all(r["n"] == 6 for r in doc["rows"])
    assert all(r["fmr_lo"] <= r["fmr"] <= r["fmr_hi"] for r in doc["rows"] if r["fmr"] is not None)
    assert (out / "fmr_per_epoch.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "file").write_text("x")  # an --out under a file: one line, exit 2, before any work
    assert script.main(["--out", str(tmp_path / "file" / "e")]) == 2
