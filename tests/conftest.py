"""Tiny, deterministic components shared by the tests (no shipped weights needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fmr_bench.datasets import TensorImages, WorldDefaults
from fmr_bench.generators.base import Generator
from fmr_bench.models import ImageClassifier, Preprocess
from fmr_bench.oracles import Oracle

torch.set_num_threads(2)
LR = 1 / 64  # exact in binary, so scripted steps land on exact values


class ScriptedGenerator(Generator):
    """Latent (N, 2) = [value, threshold]; the image carries both as constant channels."""

    name = "scripted"
    resolution = 4

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2))], 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        img = torch.zeros(z.shape[0], 3, 4, 4, dtype=z.dtype, device=z.device)
        return img + torch.stack([z[:, 0], z[:, 1], torch.zeros_like(z[:, 0])], 1)[:, :, None, None]


class MeanModel(nn.Module):
    """Logits [0, mean(channel 0)]: the loss of class 0 grows with the value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0].mean((1, 2))
        return torch.stack([torch.zeros_like(v), v], 1)


class ThresholdOracle(nn.Module):
    """Class 0 while channel 0 < channel 1 (the threshold the image carries), else class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = x[:, 1].mean((1, 2)) - x[:, 0].mean((1, 2))
        return torch.stack([margin, -margin], 1) * 100


def identity_pre(size: int) -> Preprocess:
    return Preprocess((size, size), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def scripted_world(reject_at: list[int]):
    """One sample per entry; sample i is first rejected by the oracle at step reject_at[i]."""
    thresholds = torch.tensor([(k - 0.5) * LR for k in reject_at])
    images = torch.zeros(len(reject_at), 3, 4, 4)
    images[:, 1] = thresholds[:, None, None]
    data = TensorImages(images, [0] * len(reject_at), ["zero", "one"], spec="scripted",
                        world=WorldDefaults("pixel", "scripted", LR))
    model = ImageClassifier(MeanModel(), identity_pre(4), class_names=["zero", "one"], spec="module:mean")
    oracle = Oracle([ImageClassifier(ThresholdOracle(), identity_pre(4), class_names=["zero", "one"])], "scripted", "single")
    return data, model, ScriptedGenerator().freeze(), oracle


@pytest.fixture
def scripted():
    return scripted_world


class BrightnessOracle(nn.Module):
    """Zero-shot stand-in: class c when the mean brightness lies nearest to centre c."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.2, 0.8, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((x.mean((1, 2, 3))[:, None] - self.centres) ** 2) * 400


class BrightnessModel(nn.Module):
    """A brightness classifier with shifted centres plus a small random CNN term."""

    def __init__(self, n: int, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.25, 0.75, n))
        self.cnn = tiny_cnn(n, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((x.mean((1, 2, 3))[:, None] - self.centres) ** 2) * 300 + 0.5 * self.cnn(x)


def tiny_cnn(n: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, n))


def tiny_vqgan(seed: int = 0):
    from fmr_bench.generators.vqgan import VQGAN

    torch.manual_seed(seed)
    dd = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
              num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    return VQGAN(dd, n_embed=32, embed_dim=8, card="test-tiny").freeze()


def brightness_world(n_images: int = 12, n_classes: int = 3, size: int = 16, seed: int = 0):
    """Images whose class is their brightness band; a random CNN; a brightness oracle."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_images) % n_classes
    centres = torch.linspace(0.2, 0.8, n_classes)
    offsets = (torch.rand(n_images, generator=g) - 0.5) * 0.24
    noise = 0.1 * torch.randn(n_images, 3, size, size, generator=g)
    images = ((centres[labels] + offsets)[:, None, None, None] + noise).clamp(0, 1)
    names = [f"band{i}" for i in range(n_classes)]
    data = TensorImages(images, labels.tolist(), names, spec="brightness", world=WorldDefaults("pixel", "brightness", 0.05))
    model = ImageClassifier(BrightnessModel(n_classes, seed), identity_pre(size), class_names=names, spec="module:tiny-cnn").freeze()
    oracle = Oracle([ImageClassifier(BrightnessOracle(n_classes), identity_pre(size), class_names=names)], "brightness", "single")
    return data, model, oracle


@pytest.fixture
def brightness():
    return brightness_world


def load_script(name: str):
    """A script of scripts/ as a module (``load_script("finetune_digits_table")``)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod
