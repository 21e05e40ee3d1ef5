"""builtin:digits-cnn-gray: the shipped grayscale-trained digits CNN sees only luminance, is accurate,
and names its own training script when its weights are missing."""

from __future__ import annotations

import pytest
import torch

from fmr_bench import digits
from fmr_bench.datasets import load_dataset
from fmr_bench.errors import WeightsError
from fmr_bench.models import load_model


@pytest.fixture(scope="module")
def model():
    return load_model("builtin:digits-cnn-gray").freeze()


def _images(n=6, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 0.6 + 0.2


def test_is_the_cnn_on_normalised_replicated_luma(model):
    from safetensors.torch import load_file

    net = digits.DigitsCNN()
    net.load_state_dict({k: v.float() for k, v in load_file(str(digits.WEIGHTS_DIR / "digits-cnn-gray.safetensors"))
                         .items()})
    net.eval()
    x = _images()
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1).repeat(1, 3, 1, 1)
    mean, std = torch.tensor(digits.MEAN).view(1, 3, 1, 1), torch.tensor(digits.STD).view(1, 3, 1, 1)
    assert torch.allclose(model(x), net((luma - mean) / std), atol=1e-5)


def test_colour_of_equal_luminance_changes_nothing(model):
    x = _images(seed=2)
    d = torch.tensor([0.587, -0.299, 0.0]).view(1, 3, 1, 1)  # orthogonal to the luma weights
    shifted = x + 0.3 * d
    assert torch.allclose(model(shifted), model(x), atol=1e-5)


def test_shipped_weights_are_accurate_and_other_than_the_colour_cnn(model):
    ds = load_dataset("digits")
    x = torch.stack([ds.load(i) for i in range(len(ds))])
    y = torch.tensor(ds.labels)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.97, acc
    assert model.weights_hash() != load_model("gray:builtin:digits-cnn").weights_hash()


def test_identity_says_grayscale(model):
    assert model.spec == "builtin:digits-cnn-gray"
    assert model.arch.startswith("gray:") and "BT.601" in model.describe()["grayscale"]


def test_missing_weights_name_the_gray_script(tmp_path, monkeypatch):
    monkeypatch.setattr(digits, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(WeightsError, match="scripts/train_digits_gray.py"):
        load_model("builtin:digits-cnn-gray")
