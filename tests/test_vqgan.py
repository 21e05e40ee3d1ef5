"""The VQGAN generator: official checkpoint layout, quantisation, gradients."""

from __future__ import annotations

import json
from pathlib import Path

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


# -- decoder levers (fmr_bench.generators.fastpath): each the same function as the plain module --
def test_subpixel_upsample_equals_nearest_upsample_then_conv():
    from taming.modules.diffusionmodules.model import Upsample

    from fmr_bench.generators.fastpath import SubpixelUpsample

    torch.manual_seed(0)
    up = Upsample(6, True)
    fast = SubpixelUpsample(up.conv)
    for shape in [(2, 6, 5, 7), (1, 6, 1, 1), (3, 6, 4, 4)]:
        x = torch.randn(shape, requires_grad=True)
        y_plain, y_fast = up(x), fast(x)
        assert y_fast.shape == y_plain.shape
        torch.testing.assert_close(y_fast, y_plain, rtol=1e-5, atol=1e-5)  # fp32, sums of taps reordered
        (g_plain,) = torch.autograd.grad(y_plain.square().sum(), x)
        (g_fast,) = torch.autograd.grad(y_fast.square().sum(), x)
        torch.testing.assert_close(g_fast, g_plain, rtol=1e-4, atol=1e-4)
    x = torch.randn(2, 6, 5, 7).to(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(x), up(x), rtol=1e-5, atol=1e-5)


def test_group_norm_silu_equals_the_plain_pair_and_keeps_dtype_and_layout():
    from fmr_bench.generators.fastpath import group_norm_silu

    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(3, 16, 6, 5) * 3 + 1
    torch.testing.assert_close(group_norm_silu(x, norm), torch.nn.functional.silu(norm(x)), rtol=1e-5, atol=1e-5)
    xc = x.to(memory_format=torch.channels_last)
    y = group_norm_silu(xc, norm)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, torch.nn.functional.silu(norm(x)), rtol=1e-5, atol=1e-5)
    xb = x.bfloat16()
    yb = group_norm_silu(xb, norm)
    assert yb.dtype == torch.bfloat16  # plain GroupNorm under autocast returns fp32
    torch.testing.assert_close(yb.float(), torch.nn.functional.silu(norm(xb.float())), rtol=2e-2, atol=2e-2)


def test_decoder_levers_keep_the_decoder_function_and_its_weights():
    import copy

    from fmr_bench.errors import SettingsError
    from fmr_bench.generators.fastpath import apply_levers

    g = tiny_vqgan(seed=2)
    fast = copy.deepcopy(g)
    changed = apply_levers(fast, ["subpixel", "groupnorm"])
    assert changed["subpixel"] >= 1 and changed["groupnorm"] >= 1
    x = torch.rand(2, 3, 16, 16)
    z = g.encode(x).detach()
    za, zb = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    ya, yb = g.decode(za), fast.decode(zb)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(yb.sum(), zb)[0], torch.autograd.grad(ya.sum(), za)[0],
                               rtol=1e-4, atol=1e-5)
    assert set(dict(fast.named_parameters())) != set()  # weights are the plain modules' own
    assert sum(p.numel() for p in fast.parameters()) == sum(p.numel() for p in g.parameters())
    with pytest.raises(SettingsError, match="unknown decoder lever"):
        apply_levers(fast, ["warp"])


def test_an_edited_copy_of_shipped_weights_is_refused_with_a_fix_that_works(tmp_path):
    """vqgan:digits?weights=COPY with the copy changed: the message names the copy, not a reinstall."""
    import fmr_bench
    from fmr_bench.errors import WeightsError
    from fmr_bench.generators import load_generator

    shipped = Path(fmr_bench.__file__).parent / "digits" / "weights" / "vqgan-digits.safetensors"
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(shipped.read_bytes() + b" ")
    with pytest.raises(WeightsError) as e:
        load_generator(f"vqgan:digits?weights={copy}", default="vqgan:digits")
    msg = str(e.value)
    assert str(copy) in msg and "drop ?weights=" in msg and "reinstall" not in msg and len(msg.splitlines()) == 1
