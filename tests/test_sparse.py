"""Sparse VQGAN: masked steps, mask cards and their errors, the L1 fit, ``fmr fit-sparse``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import brightness_world, tiny_vqgan

from fmr_bench.cli import main
from fmr_bench.errors import SettingsError, SpecError
from fmr_bench.generators import load_generator
from fmr_bench.generators.sparse import SparseGenerator
from fmr_bench.protocol import LoopConfig, run_batched, run_reference
from fmr_bench.studies.fit_sparse import LatentSet, fit_mask


class Recording(SparseGenerator):
    """Remembers every encoder latent (in sample order) and every latent after a step."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.encoded: list[torch.Tensor] = []
        self.stepped: list[tuple[int, torch.Tensor]] = []

    def encode(self, x):
        z = super().encode(x)
        self.encoded.append(z.detach().clone())
        return z

    def post_step(self, z, sample_ids, steps):
        self.stepped += [(int(i), row.detach().clone()) for i, row in zip(sample_ids, z)]
        return z


def _samples(data):
    return [(data.ids[i], i, data.load(i), data.labels[i]) for i in range(len(data))]


def _random_mask(seed: int = 0, share: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(8, 8, 8, generator=g) < share  # tiny_vqgan: 8 channels, 16 px / 2


@pytest.mark.parametrize("opt,lr", [("adam", 0.3), ("sgd", 2.0), ("sign", 0.05)])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_unmasked_dims_stay_exactly_at_the_encoder_value(opt, lr, batch_size):
    data, model, oracle = brightness_world(8)
    mask = _random_mask()
    samples = _samples(data)
    gen = Recording(tiny_vqgan(), mask).freeze()
    outcomes = []
    run_batched(iter(samples), model=model, oracle=oracle, generator=gen, target_of=torch.arange(3),
                cfg=LoopConfig(6, lr, opt, batch_size), device=torch.device("cpu"),
                on_sample=lambda o, *_: outcomes.append(o))
    start = torch.cat(gen.encoded)  # row i = sample i (refills take samples in order)
    assert gen.stepped, "no step was taken"
    moved = False
    for i, z in gen.stepped:
        assert torch.equal(z[~mask], start[i][~mask])
        moved |= not torch.equal(z[mask], start[i][mask])
    assert moved

    ref_gen = Recording(tiny_vqgan(), mask).freeze()
    ref = run_reference(samples, model=model, oracle=oracle, generator=ref_gen, target_of=torch.arange(3), budget=6,
                        step_size=lr, optimizer=opt)
    ref_start = torch.cat(ref_gen.encoded)
    for i, z in ref_gen.stepped:
        assert torch.equal(z[~mask], ref_start[i][~mask])
    assert [o.key() for o in sorted(outcomes, key=lambda o: o.index)] == [o.key() for o in ref]


def test_full_mask_is_the_dense_vqgan():
    data, model, oracle = brightness_world(6)
    samples = _samples(data)
    kw = {"model": model, "oracle": oracle, "target_of": torch.arange(3), "budget": 5, "step_size": 0.3,
          "optimizer": "adam"}
    dense = run_reference(samples, generator=tiny_vqgan(), **kw)
    full = run_reference(samples, generator=SparseGenerator(tiny_vqgan(), torch.ones(8, 8, 8, dtype=bool)).freeze(), **kw)
    assert [o.key() for o in full] == [o.key() for o in dense]


def test_mask_of_another_latent_shape_is_a_clear_error():
    gen = SparseGenerator(tiny_vqgan(), torch.ones(4, 8, 8, dtype=bool), card="sparse-vqgan-x").freeze()
    with pytest.raises(SettingsError, match="fmr fit-sparse"):
        gen.decode(gen.encode(torch.rand(1, 3, 16, 16)))


def _write_card(tmp_path, *, generator="vqgan:digits", generator_card="vqgan-digits", shape=(16, 8, 8)):
    np.save(tmp_path / "m.mask.npy", np.ones(shape, np.uint8))
    card = {"name": "sparse-vqgan-t", "kind": "sparse-vqgan", "generator": generator, "generator_card": generator_card,
            "dataset": "x:train", "latent_shape": list(shape), "mask": {"file": "m.mask.npy", "sha256": None}}
    path = tmp_path / "sparse-vqgan-t.json"
    path.write_text(json.dumps(card))
    return path


def test_card_mask_shape_mismatch_names_the_fix(tmp_path):
    card = _write_card(tmp_path, shape=(4, 8, 8))
    with pytest.raises(SettingsError, match="fmr fit-sparse"):
        load_generator(f"sparse-vqgan:{card}", default="vqgan:digits")


def test_card_for_another_generator_is_a_clear_error(tmp_path):
    card = _write_card(tmp_path, generator="vqgan:imagenet-f16-16384", generator_card="vqgan-imagenet-f16-16384")
    with pytest.raises(SettingsError, match="fitted for generator vqgan:imagenet-f16-16384.*fmr fit-sparse"):
        load_generator(f"sparse-vqgan:{card}", default="vqgan:digits")


def test_card_loads_and_records_its_mask(tmp_path):
    card = _write_card(tmp_path)
    gen = load_generator(f"sparse-vqgan:{card}", default="vqgan:digits")
    s = gen.settings()
    assert (s["name"], s["mask_card"], s["mask_dims"], s["card"]) == ("sparse-vqgan", "sparse-vqgan-t", 1024,
                                                                      "vqgan-digits")


def test_unknown_mask_name_lists_the_cards():
    with pytest.raises(SpecError, match="no sparse-vqgan card"):
        load_generator("sparse-vqgan:no-such-mask", default="vqgan:digits")


def test_l1_fit_recovers_the_dims_that_differ():
    rng = np.random.default_rng(0)
    n, shape = 300, (2, 4, 4)
    originals = rng.normal(size=(n, 32)).astype(np.float32)
    finals = rng.normal(size=(n, 32)).astype(np.float32)
    finals[:, [3, 17]] += 1.5
    latents = LatentSet(originals, originals, finals, [str(i) for i in range(n)], np.ones(n, bool), np.ones(n, int),
                        shape)
    fit = fit_mask(latents, seed=0, lam=36.36)  # the paper's strength, fixed
    assert set(np.flatnonzero(fit.mask.ravel())) == {3, 17}
    assert fit.sparsity == pytest.approx(100 * 30 / 32)
    assert fit.test_score > 80 and fit.converged
    assert (fit.n_train_images, fit.n_test_images) == (240, 60)


def test_fit_split_too_small_is_one_line(capsys, tmp_path):
    code = main(["fit-sparse", "--model", "builtin:digits-cnn", "--data", "digits:train", "--limit", "1",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "digits:train" in err


def test_cli_fit_then_evaluate_with_the_mask(tmp_path, capsys):
    latents = tmp_path / "lat.npz"
    code = main(["fit-sparse", "--model", "builtin:digits-cnn", "--data", "digits:train", "--limit", "10",
                 "--budget", "3", "--lam", "0.05", "--out", str(tmp_path), "--name", "tiny", "--latents", str(latents),
                 "--quiet"])
    assert code == 0 and latents.is_file()
    card_path = tmp_path / "sparse-vqgan-tiny.json"
    card = json.loads(card_path.read_text())
    mask = np.load(tmp_path / card["mask"]["file"])
    assert mask.shape == (16, 8, 8) and mask.dtype == np.uint8
    assert card["n"] == 10 and card["generator"] == "vqgan:digits" and card["dataset"] == "digits:train"
    assert 0 <= card["sparsity"] <= 100 and card["mask"]["dims"] == int(mask.sum())
    # A refit from the saved latents needs no loop and writes the same mask.
    assert main(["fit-sparse", "--model", "builtin:digits-cnn", "--from-latents", str(latents), "--lam", "0.05",
                 "--out", str(tmp_path / "refit"), "--name", "tiny"]) == 0
    assert np.array_equal(np.load(tmp_path / "refit" / "sparse-vqgan-tiny.mask.npy"), mask)
    # A regularisation so strong that no dim survives: one-line error, no card, latents kept.
    capsys.readouterr()
    assert main(["fit-sparse", "--model", "builtin:digits-cnn", "--from-latents", str(latents), "--lam", "1e6",
                 "--out", str(tmp_path / "empty"), "--name", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert "kept no latent dim" in err and "--from-latents" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "empty" / "sparse-vqgan-tiny.json").exists() and latents.is_file()
    code = main(["evaluate", "--model", "builtin:digits-cnn", "--data", "digits", "--generator",
                 f"sparse-vqgan:{card_path}", "--limit", "4", "--budget", "3", "--out", str(tmp_path / "runs"),
                 "--quiet", "--no-grid"])
    assert code == 0
    record = json.loads(next((tmp_path / "runs").rglob("record.json")).read_text())
    assert record["generator"]["name"] == "sparse-vqgan" and record["generator"]["mask_card"] == "sparse-vqgan-tiny"


def test_step_size_comes_from_the_per_source_card_table(monkeypatch):
    from fmr_bench import generators as G

    assert G.default_step_size("vqgan:digits", "vqgan:digits") == (0.05, "generator card vqgan-digits")
    assert G.default_step_size("sparse-vqgan:digits", "vqgan:digits") == (0.05, "generator card vqgan-digits")
    assert G.default_step_size("pixel", "vqgan:digits") is None
    # a source gains a card by one table entry, not by another branch
    monkeypatch.setattr(G.GENERATORS.get("pixel"), "card", lambda spec, default: {"name": "pixel-card", "step_size": 0.3})
    assert G.default_step_size("pixel", "vqgan:digits") == (0.3, "generator card pixel-card")


# --- fit-sparse end to end: --out first, resumable collection, C chosen on held-out data -----------

def _separable(n=200, d=256, signal=(5, 11, 40, 77, 130, 201), scale=0.05, seed=0):
    """Clean vs perturbed rows that differ in ``signal`` dims only, on a scale so small that
    the paper's absolute L1 strength (36.36) zeroes every weight at this n."""
    rng = np.random.default_rng(seed)
    orig = (scale * rng.normal(size=(n, d))).astype(np.float32)
    fin = (scale * rng.normal(size=(n, d))).astype(np.float32)
    fin[:, list(signal)] += 3 * scale
    meta = {"generator": "vqgan:digits", "generator_settings": {"card": "vqgan-digits"}, "dataset": "digits:train",
            "model": "builtin:digits-cnn", "settings": {"accept": "margin:0.99"}, "loop_metrics": {}}
    return LatentSet(orig, orig, fin, [str(i) for i in range(n)], np.ones(n, bool), np.ones(n, int), (4, 8, 8), meta)


def test_c_chosen_on_validation_gives_a_mask_that_is_neither_empty_nor_trivial():
    from fmr_bench.studies.fit_sparse import C_GRID, PAPER_LAMBDA

    latents = _separable()
    assert fit_mask(latents, lam=PAPER_LAMBDA).mask.sum() == 0  # the paper's C alone: an empty mask here
    fit = fit_mask(latents, seed=0)
    dims = set(np.flatnonzero(fit.mask.ravel()))
    assert {5, 11, 40, 77, 130, 201} <= dims and len(dims) <= 25  # the signal, not every dim (10 % at most)
    assert fit.test_score > 80 and fit.selection["rule_met"]
    grid = fit.selection["grid"]
    assert [r["C"] for r in grid] == sorted(C_GRID) and fit.params["C"] == fit.selection["chosen_C"]
    in_range = [r for r in grid if 4 <= r["dims"] <= 25]
    best = max(r["val_accuracy"] for r in in_range)
    chosen = next(r for r in grid if r["C"] == fit.params["C"])
    assert chosen in in_range and chosen["val_accuracy"] >= best - 1.0
    # every smaller C misses the rule: it is the most regularised one that meets it
    assert all(r not in in_range or r["val_accuracy"] < best - 1.0 for r in grid if r["C"] < chosen["C"])
    # the three splits are disjoint images
    s = fit.selection
    assert s["n_fit_images"] + s["n_val_images"] + fit.n_test_images == 200


def test_choose_c_rule():
    from fmr_bench.studies.fit_sparse import choose_c

    grid = [{"C": 0.01, "val_accuracy": 50.0, "dims": 0}, {"C": 0.1, "val_accuracy": 89.5, "dims": 3},
            {"C": 1.0, "val_accuracy": 90.0, "dims": 6}, {"C": 10.0, "val_accuracy": 90.2, "dims": 60}]
    assert choose_c(grid, tolerance=1.0, min_dims=2) == (0.1, True)
    assert choose_c(grid, tolerance=1.0, min_dims=4) == (1.0, True)
    assert choose_c(grid, tolerance=0.1, min_dims=4) == (10.0, True)
    assert choose_c(grid, tolerance=0.1, min_dims=4, max_dims=10) == (1.0, True)  # 60 dims: too many
    assert choose_c(grid, tolerance=5.0, min_dims=4, max_dims=10) == (1.0, True)  # 3 dims: too few
    assert choose_c(grid, tolerance=1.0, min_dims=100) == (10.0, False)  # none keeps 100: the one keeping most
    assert choose_c(grid, min_dims=4, max_dims=5) == (0.1, False)  # none in 4..5: the most below 5
    assert choose_c(grid, min_dims=1, max_dims=2) == (0.1, False)  # every kept set is too big: the smallest
    assert choose_c([{"C": 0.1, "val_accuracy": 50.0, "dims": 0}, {"C": 1.0, "val_accuracy": 50.0, "dims": 0}],
                    min_dims=1) == (1.0, False)


def test_card_records_held_out_accuracy_dims_kept_and_the_grid(tmp_path):
    from fmr_bench.studies.fit_sparse import PAPER_C, write_mask_card

    latents = _separable()
    fit = fit_mask(latents, seed=0)
    card = json.loads(write_mask_card(fit, latents, tmp_path, "syn").read_text())
    mask = np.load(tmp_path / card["mask"]["file"])
    assert card["dims_kept"] == card["mask"]["dims"] == int(mask.sum()) == int(fit.mask.sum()) > 0
    assert card["held_out_accuracy"] == round(fit.test_score, 2) > 80
    sel = card["selection"]
    assert sel["chosen_C"] == card["fit"]["C"] and sel["paper_C"] == card["fit"]["paper_C"] == PAPER_C
    assert PAPER_C in [r["C"] for r in sel["grid"]] and {"val_accuracy", "dims"} <= set(sel["grid"][0])
    assert card["accept"] == "margin:0.99"


def test_latent_log_drops_a_torn_tail_and_appends_after_it(tmp_path):
    from fmr_bench.studies.fit_sparse import LatentLog

    log = LatentLog(tmp_path / "l.jsonl")
    a = np.arange(8, dtype=np.float32)
    log.append("x", 0, (2, 2, 2), a, a + 1, a + 2)
    log.close()
    with open(log.path, "ab") as f:
        f.write(b'{"id": "y", "index": 1, "shape": [2, 2, 2], "z": "AAAA')  # kill -9 mid-line
    assert list(log.read()) == ["x"]
    log.append("y", 1, (2, 2, 2), a, a, a)
    log.append("x", 0, (2, 2, 2), a * 2, a, a)  # a later line for the same image wins
    log.close()
    rows = log.read()
    assert list(rows) == ["x", "y"] and np.array_equal(rows["x"]["z"], a * 2) and np.array_equal(rows["x"]["final"], a)
    assert log.path.read_bytes().count(b"\n") == 3


@pytest.mark.parametrize("bad", ["file", "under-file", "proc"])
def test_out_is_checked_before_any_work(tmp_path, monkeypatch, capsys, bad):
    import fmr_bench.datasets
    import fmr_bench.models
    import fmr_bench.studies.fit_sparse

    def boom(*a, **kw):
        raise AssertionError("work started before --out was checked")

    for mod, name in [(fmr_bench.studies.fit_sparse, "collect_latents"), (fmr_bench.datasets, "load_dataset"),
                      (fmr_bench.models, "load_model"), (fmr_bench.studies.fit_sparse.LatentSet, "load")]:
        monkeypatch.setattr(mod, name, boom)
    (tmp_path / "f").write_text("x")
    out = {"file": tmp_path / "f", "under-file": tmp_path / "f" / "masks", "proc": "/proc/fmr-masks"}[bad]
    for extra in ([], ["--from-latents", str(tmp_path / "l.npz")]):
        assert main(["fit-sparse", "--model", "builtin:digits-cnn", "--data", "digits:train", "--out", str(out),
                     *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--out" in err and str(out) in err


def _fit_cli(out, *extra):
    return main(["fit-sparse", "--model", "builtin:digits-cnn", "--data", "digits:train", "--limit", "10",
                 "--budget", "3", "--out", str(out), "--name", "tiny", "--quiet", *extra])


def test_interrupted_collection_resumes_and_fits_the_same_mask(tmp_path, monkeypatch, capsys):
    import fmr_bench.studies.fit_sparse as S

    assert _fit_cli(tmp_path / "straight") == 0
    straight = S.LatentSet.load(next((tmp_path / "straight" / "work").glob("fit-*/latents.npz")))
    capsys.readouterr()

    appended = []
    real = S.LatentLog.append

    def ctrl_c_after_4(self, image_id, *a):
        if len(appended) == 4:
            raise KeyboardInterrupt
        appended.append(image_id)
        real(self, image_id, *a)

    monkeypatch.setattr(S.LatentLog, "append", ctrl_c_after_4)
    out = tmp_path / "resumed"
    assert _fit_cli(out) == 2
    err = capsys.readouterr().err.strip()
    log = next((out / "work").glob("fit-*/latents.jsonl"))
    assert len(err.splitlines()) == 1 and f"the latents of 4/10 images are saved in {log}" in err
    assert "re-run the same command" in err and not (out / "sparse-vqgan-tiny.json").exists()
    assert len(S.LatentLog(log).read()) == 4
    with open(log, "ab") as f:  # and a process killed mid-line
        f.write(b'{"id": "torn", "z": "AA')

    def count(self, image_id, *a):
        appended.append(image_id)
        real(self, image_id, *a)

    monkeypatch.setattr(S.LatentLog, "append", count)
    appended.clear()
    assert _fit_cli(out) == 0
    assert len(appended) == len(set(appended)) == 6  # only the 6 missing images ran again
    resumed = S.LatentSet.load(log.parent / "latents.npz")
    assert resumed.ids == straight.ids
    for key in ("originals", "originals_quantised", "finals", "validated", "steps"):
        assert np.array_equal(getattr(resumed, key), getattr(straight, key)), key
    masks = [np.load(d / "sparse-vqgan-tiny.mask.npy") for d in (tmp_path / "straight", out)]
    assert np.array_equal(*masks)
    cards = [json.loads((d / "sparse-vqgan-tiny.json").read_text()) for d in (tmp_path / "straight", out)]
    assert cards[0]["selection"]["grid"] == cards[1]["selection"]["grid"]
