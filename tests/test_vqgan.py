"""The VQGAN generator: official checkpoint layout, quantisation, gradients."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_vqgan
from fmr_bench.errors import SpecError, WeightsError
from fmr_bench.generators import generator_weight_refs, load_generator


def _official_checkpoint(g, path):
    """Write ``g`` the way taming's Lightning training saves it."""
    state = {k: v.clone() for k, v in g.state_dict().items()}
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)  # ignored on load
    state["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(2, 3, 3, 3)
    torch.save({"epoch": 4, "global_step": 1000, "state_dict": state,
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6}]}]}, path)


def _card(tmp_path, g):
    card = {"name": "vqgan-test-tiny", "kind": "vqgan", "resolution": 16,
            "config": {"ddconfig": g.ddconfig, "n_embed": g.n_embed, "embed_dim": g.embed_dim},
            "weights": {"url": "https://example.invalid/last.ckpt", "filename": "tiny.ckpt", "sha256": None}}
    path = tmp_path / "vqgan-test-tiny.json"
    path.write_text(json.dumps(card))
    return path


def test_official_checkpoint_loads_back_exactly(tmp_path):
    g = tiny_vqgan(seed=1)
    ckpt = tmp_path / "last.ckpt"
    _official_checkpoint(g, ckpt)
    card = _card(tmp_path, g)
    loaded = load_generator(f"vqgan:{card}?weights={ckpt}")
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode(x)), g.decode(g.encode(x)))
    assert loaded.resolution == 16 and not any(p.requires_grad for p in loaded.parameters())


def test_checkpoint_that_does_not_fit_the_card_is_a_clear_error(tmp_path):
    g = tiny_vqgan()
    ckpt = tmp_path / "last.ckpt"
    _official_checkpoint(g, ckpt)
    card = json.loads(_card(tmp_path, g).read_text())
    card["config"]["n_embed"] = 64
    other = tmp_path / "other.json"
    other.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="do not fit the card"):
        load_generator(f"vqgan:{other}?weights={ckpt}")
    with pytest.raises(WeightsError, match="does not exist"):
        load_generator(f"vqgan:{other}?weights={tmp_path / 'nope.ckpt'}")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read VQGAN weights"):
        load_generator(f"vqgan:{other}?weights={bad}")


def test_unknown_card_lists_the_available_ones():
    with pytest.raises(SpecError, match="imagenet-f16-16384"):
        load_generator("vqgan:nonexistent")


def test_missing_download_is_reported_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("FMR_CACHE", str(tmp_path))
    (ref,) = generator_weight_refs("vqgan:imagenet-f16-16384", "vqgan:imagenet-f16-16384")
    assert not ref.available()
    assert "heibox.uni-heidelberg.de" == ref.host
    assert "?weights=" in ref.how and str(tmp_path) in ref.how


def test_quantisation_matches_taming_vectorquantizer2():
    g = tiny_vqgan()
    z = torch.randn(3, g.embed_dim, 4, 4)
    with torch.no_grad():
        zq_taming, _, (_, _, idx) = g.quantize(z)
        ours = g.final_latent(z)
    torch.testing.assert_close(ours, zq_taming)
    assert torch.equal(g.code_indices(z).flatten(), idx.flatten())


def test_decode_passes_gradients_straight_through_to_the_latent():
    g = tiny_vqgan()
    z = g.encode(torch.rand(1, 3, 16, 16)).detach().requires_grad_(True)
    img = g.decode(z)
    assert img.min() >= 0 and img.max() <= 1 and img.shape == (1, 3, 16, 16)
    img.mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_lightning_callback_classes_in_the_checkpoint_do_not_block_loading(tmp_path, monkeypatch):
    # Old Lightning checkpoints key their callback states by the ModelCheckpoint class;
    # weights_only loading must not import or run it.
    import sys
    import types

    pkg, mod = types.ModuleType("fakelightning"), types.ModuleType("fakelightning.callbacks")
    ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": "fakelightning.callbacks"})
    mod.ModelCheckpoint, pkg.callbacks = ModelCheckpoint, mod
    monkeypatch.setitem(sys.modules, "fakelightning", pkg)
    monkeypatch.setitem(sys.modules, "fakelightning.callbacks", mod)
    g = tiny_vqgan(seed=2)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": g.state_dict(), "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.1)}}},
               ckpt)
    monkeypatch.delitem(sys.modules, "fakelightning.callbacks")
    monkeypatch.delitem(sys.modules, "fakelightning")
    loaded = load_generator(f"vqgan:{_card(tmp_path, g)}?weights={ckpt}")
    z = torch.randn(1, g.embed_dim, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z), g.decode(z))
