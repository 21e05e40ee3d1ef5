"""diffusers generators (``diffusion:``, ``vae:``): loading, steering, agreement with the reference loop."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import brightness_world

from fmr_bench.errors import SpecError, WeightsError
from fmr_bench.generators import generator_weight_refs, load_generator
from fmr_bench.protocol import LoopConfig, run_batched, run_reference
from fmr_bench.weights import preflight

diffusers = pytest.importorskip("diffusers")

BLOCKS = {"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4}


def _unet(folder, seed=0, scheduler=True, **extra):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2, **BLOCKS, **extra)
    unet.save_pretrained(folder)
    if scheduler:
        diffusers.DDIMScheduler(num_train_timesteps=1000).save_config(folder)
    return folder


def _autoencoder(folder, kind, seed=0):
    torch.manual_seed(seed)
    common = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, sample_size=16, **BLOCKS)
    if kind == "kl":
        model = diffusers.AutoencoderKL(**common)
    else:
        model = diffusers.VQModel(num_vq_embeddings=32, vq_embed_dim=4, **common)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    return _unet(tmp_path_factory.mktemp("unet"))


def _samples(data):
    return [(data.ids[i], i, data.load(i), data.labels[i]) for i in range(len(data))]


def _batched(samples, model, oracle, gen, budget, lr, bs):
    out = []
    run_batched(iter(samples), model=model, oracle=oracle, generator=gen, target_of=torch.arange(3),
                cfg=LoopConfig(budget, lr, "adam", bs), device=torch.device("cpu"),
                on_sample=lambda o, clean, final, latent: out.append(o))
    return sorted(out, key=lambda o: o.index)


def _loss_of(model, labels):
    return lambda img: torch.nn.functional.cross_entropy(model(img), labels, reduction="none")


@pytest.mark.parametrize("batch_size", [1, 4])
def test_diffusion_batched_loop_matches_reference(unet_dir, batch_size):
    data, model, oracle = brightness_world(10, size=16)
    gen = load_generator(f"diffusion:{unet_dir}?strength=0.04&steps=2&guidance=20", seed=3)
    assert gen.steers and gen.settings()["timesteps"] == [40, 20]
    samples = _samples(data)
    ref = run_reference(samples, model=model, oracle=oracle, generator=gen, target_of=torch.arange(3), budget=6,
                        step_size=0.1)
    out = _batched(samples, model, oracle, gen, 6, 0.1, batch_size)
    assert [o.key() for o in out] == [o.key() for o in ref]
    assert len({o.steps for o in ref}) >= 2  # not a degenerate world where every sample behaves alike


@pytest.mark.parametrize("kind", ["kl", "vq"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_vae_batched_loop_matches_reference(tmp_path, kind, batch_size):
    data, model, oracle = brightness_world(8, size=16)
    gen = load_generator(f"vae:{_autoencoder(tmp_path / kind, kind)}")
    samples = _samples(data)
    ref = run_reference(samples, model=model, oracle=oracle, generator=gen, target_of=torch.arange(3), budget=5,
                        step_size=0.2, optimizer="adam")
    out = _batched(samples, model, oracle, gen, 5, 0.2, batch_size)
    assert [o.key() for o in out] == [o.key() for o in ref]


def test_each_diffusion_step_changes_the_image_and_noise_is_seeded(unet_dir):
    data, model, _ = brightness_world(4, size=16)
    gen = load_generator(f"diffusion:{unet_dir}?strength=0.1&steps=3&guidance=0", seed=0)
    x = torch.stack([data.load(i) for i in range(4)])
    loss = _loss_of(model, torch.tensor(data.labels))
    ids = torch.arange(4)
    z0 = gen.encode(x)
    z1 = gen.steer(z0, loss, ids, torch.ones(4, dtype=torch.long))
    z2 = gen.steer(z1, loss, ids, torch.full((4,), 2))
    for a, b in ((z0, z1), (z1, z2)):
        assert (gen.decode(a) - gen.decode(b)).abs().mean(dim=(1, 2, 3)).min() > 1e-3
    # the same (seed, sample id, step) gives the same edit, alone or in a batch; another step, another one
    torch.testing.assert_close(gen.steer(z0[2:3], loss, ids[2:3], torch.ones(1, dtype=torch.long)), z1[2:3])
    assert not torch.allclose(gen.steer(z0, loss, ids, torch.full((4,), 7)), z1)
    other_seed = load_generator(f"diffusion:{unet_dir}?strength=0.1&steps=3&guidance=0", seed=1)
    assert not torch.allclose(other_seed.steer(z0, loss, ids, torch.ones(4, dtype=torch.long)), z1)


def test_guidance_increases_the_loss(unet_dir):
    data, model, _ = brightness_world(12, size=16)
    x = torch.stack([data.load(i) for i in range(12)])
    loss = _loss_of(model, torch.tensor(data.labels))
    ids, step = torch.arange(12), torch.ones(12, dtype=torch.long)
    plain = load_generator(f"diffusion:{unet_dir}?strength=0.1&steps=2&guidance=0")
    guided = load_generator(f"diffusion:{unet_dir}?strength=0.1&steps=2&guidance=2")
    with torch.no_grad():
        l_plain = loss(plain.decode(plain.steer(plain.encode(x), loss, ids, step)))
        l_guided = loss(guided.decode(guided.steer(guided.encode(x), loss, ids, step)))
    assert l_guided.mean() > l_plain.mean() + 0.05
    # rows whose softmax is saturated have no gradient and stay at a loss of ~0 either way
    assert (l_guided >= l_plain - 1e-4).float().mean() >= 0.75


def test_class_conditional_unet_needs_class_cond(tmp_path):
    folder = _unet(tmp_path / "cond", num_class_embeds=4)
    with pytest.raises(SpecError, match="class_cond"):
        load_generator(f"diffusion:{folder}")
    gen = load_generator(f"diffusion:{folder}?class_cond=3&strength=0.05&steps=1")
    z = gen.encode(torch.rand(2, 3, 16, 16))
    out = gen.steer(z, lambda img: img.mean((1, 2, 3)), torch.arange(2), torch.ones(2, dtype=torch.long))
    assert out.shape == z.shape and gen.settings()["class_cond"] == 3
    with pytest.raises(SpecError, match="unconditional"):
        load_generator(f"diffusion:{_unet(tmp_path / 'plain')}?class_cond=1")


def test_missing_files_give_one_line_naming_the_fix(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for source in ("diffusion", "vae"):
        with pytest.raises(WeightsError) as e:
            load_generator(f"{source}:{empty}")
        assert "config.json" in str(e.value) and "save_pretrained" in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(WeightsError, match="config.json"):  # the offline preflight says it before any work
            preflight(generator_weight_refs(f"{source}:{empty}", "vqgan:digits"))
    no_weights = _unet(tmp_path / "unet")
    (no_weights / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsError, match="diffusion_pytorch_model.safetensors"):
        load_generator(f"diffusion:{no_weights}")
    no_scheduler = _unet(tmp_path / "nosched", scheduler=False)
    with pytest.raises(WeightsError, match=r"scheduler=default"):
        load_generator(f"diffusion:{no_scheduler}")
    assert load_generator(f"diffusion:{no_scheduler}?scheduler=default").alphas_cumprod.shape == (1000,)


def test_pipeline_folder_and_wrong_model_class(tmp_path):
    pipe = tmp_path / "pipe"
    _unet(pipe / "unet")
    _autoencoder(pipe / "vae", "kl")
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    diffusers.DDIMScheduler().save_config(pipe / "scheduler")
    assert load_generator(f"diffusion:{pipe}").resolution == 16
    assert load_generator(f"vae:{pipe}").settings()["model"] == "AutoencoderKL"
    with pytest.raises(SpecError, match="holds a UNet2DModel"):
        load_generator(f"vae:{pipe}?subfolder=unet")


def test_bad_specs_are_clear_errors(unet_dir):
    with pytest.raises(SpecError, match="unknown option"):
        load_generator(f"diffusion:{unet_dir}?strenght=0.2")
    with pytest.raises(SpecError, match="local folder or a Hub id"):
        load_generator("diffusion:not-a-thing")
    with pytest.raises(Exception, match="strength must be a number > 0 and <= 1"):
        load_generator(f"diffusion:{unet_dir}?strength=2")


def test_hub_id_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("FMR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match="no network.*huggingface-cli download google/ddpm-cifar10-32"):
        preflight(generator_weight_refs("diffusion:google/ddpm-cifar10-32", "vqgan:digits"))


def test_wrong_size_input_is_resized(unet_dir, tmp_path):
    gen = load_generator(f"diffusion:{unet_dir}?strength=0.05&steps=1")
    z = gen.encode(torch.rand(2, 3, 20, 24))
    assert z.shape == (2, 3, 16, 16) and gen.decode(z).shape == (2, 3, 16, 16)
    vae = load_generator(f"vae:{_autoencoder(tmp_path / 'kl', 'kl')}")
    assert vae.decode(vae.encode(torch.rand(1, 3, 30, 30))).shape == (1, 3, 16, 16)
    big = load_generator(f"vae:{tmp_path / 'kl'}?resolution=32")
    assert big.decode(big.encode(torch.rand(1, 3, 16, 16))).shape == (1, 3, 32, 32)


def test_vq_decode_is_straight_through_and_final_latent_is_a_code(tmp_path):
    gen = load_generator(f"vae:{_autoencoder(tmp_path / 'vq', 'vq')}")
    z = gen.encode(torch.rand(2, 3, 16, 16)).requires_grad_(True)
    (g,) = torch.autograd.grad(gen.decode(z).sum(), z)
    assert g.abs().sum() > 0
    codes = gen.model.quantize.embedding.weight
    zq = gen.final_latent(z.detach()).permute(0, 2, 3, 1).reshape(-1, codes.shape[1])
    assert torch.cdist(zq, codes).min(1).values.max() < 1e-4  # up to the rounding of z + (zq - z)


def test_shipped_digits_generators_load_from_safetensors(monkeypatch):
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("shipped weights must not be unpickled"))
    for spec in ("vae:digits", "diffusion:digits"):
        gen = load_generator(spec)
        assert gen.resolution == 32 and gen.settings()["source"] == "digits"
    preflight(generator_weight_refs("vae:digits", "vqgan:digits") + generator_weight_refs("diffusion:digits", "x"))


def test_class_cond_label_conditions_each_sample_on_its_true_class(tmp_path):
    folder = _unet(tmp_path / "cond", num_class_embeds=3)
    gen = load_generator(f"diffusion:{folder}?class_cond=label&strength=0.2&steps=1")
    fixed = {c: load_generator(f"diffusion:{folder}?class_cond={c}&strength=0.2&steps=1") for c in range(3)}
    z = gen.encode(torch.rand(3, 3, 16, 16))
    loss = lambda img: img.mean((1, 2, 3))  # noqa: E731
    ids, step = torch.arange(3), torch.ones(3, dtype=torch.long)
    labels = torch.tensor([2, 0, 1])
    out = gen.steer(z, loss, ids, step, labels=labels)
    for row, c in enumerate(labels.tolist()):  # row r equals the fixed-class model of its own label
        torch.testing.assert_close(out[row], fixed[c].steer(z, loss, ids, step)[row])
    assert not torch.allclose(fixed[0].steer(z, loss, ids, step), fixed[2].steer(z, loss, ids, step))
    assert gen.settings()["class_cond"] == "label"
    # and through both loops, which pass the labels
    data, model, oracle = brightness_world(6)
    samples = _samples(data)
    ref = run_reference(samples, model=model, oracle=oracle, generator=gen, target_of=torch.arange(3), budget=3,
                        step_size=0.1)
    out_b = []
    run_batched(iter(samples), model=model, oracle=oracle, generator=gen, target_of=torch.arange(3),
                cfg=LoopConfig(3, 0.1, "adam", 4), device=torch.device("cpu"), on_sample=lambda o, *_: out_b.append(o))
    assert sorted(o.key() for o in out_b) == sorted(o.key() for o in ref)
