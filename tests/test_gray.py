"""``gray:SPEC``: luminance inside the differentiable feed; colour-invariant; recorded in the identity."""

from __future__ import annotations

import pytest
import torch

from fmr_bench.errors import SpecError
from fmr_bench.models import load_model
from fmr_bench.models.gray import BT601


@pytest.fixture(scope="module")
def models():
    return load_model("builtin:digits-cnn").freeze(), load_model("gray:builtin:digits-cnn").freeze()


def _images(model, n=4, seed=0):
    h, w = model.preprocess.input_size
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 0.6 + 0.2


def test_matches_a_plain_luminance_reference(models):
    plain, gray = models
    x = _images(plain)
    y = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    ref = plain(y.unsqueeze(1).repeat(1, 3, 1, 1))
    assert torch.allclose(gray(x), ref, atol=1e-6)
    assert not torch.allclose(gray(x), plain(x), atol=1e-3)  # the wrapper does change what the model sees


def test_colour_invariant(models):
    _, gray = models
    x = _images(gray)
    d = torch.tensor([0.587, -0.299, 0.0]).view(1, 3, 1, 1)  # orthogonal to the luma weights
    shifted = x + 0.3 * d * torch.rand(1, 1, *x.shape[-2:], generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(shifted, x)
    assert torch.allclose(gray(shifted), gray(x), atol=1e-5)


def test_gradient_flows_through_the_luma(models):
    _, gray = models
    x = _images(gray).requires_grad_(True)
    gray(x).logsumexp(dim=1).sum().backward()
    g = x.grad
    assert g.abs().sum() > 0 and torch.isfinite(g).all()
    # dL/dx_c = w_c * dL/dy: the channel gradients are in the ratio of the BT.601 weights
    assert torch.allclose(g[:, 0] * BT601[1], g[:, 1] * BT601[0], atol=1e-7)
    assert torch.allclose(g[:, 2] * BT601[1], g[:, 1] * BT601[2], atol=1e-7)


def test_identity_and_errors(models):
    plain, gray = models
    assert gray.spec == "gray:builtin:digits-cnn" and gray.arch.startswith("gray:")
    assert "BT.601" in gray.describe()["grayscale"]
    assert gray.weights_hash() != plain.weights_hash()
    with pytest.raises(SpecError, match="wraps a model spec"):
        load_model("gray:")
    with pytest.raises(SpecError, match="grayscale already"):
        load_model("gray:gray:builtin:digits-cnn")


def test_the_wrapped_specs_options_are_checked_before_any_work():
    from fmr_bench.errors import SpecError
    from fmr_bench.models import MODEL_SOURCES
    from fmr_bench.specs import parse_spec

    parse_spec("gray:builtin:digits-cnn", MODEL_SOURCES, what="model")
    parse_spec("gray:openclip:ViT-B-32/openai?prompts=openai", MODEL_SOURCES, what="model")
    with pytest.raises(SpecError, match="bogus"):
        parse_spec("gray:timm:resnet18?bogus=1", MODEL_SOURCES, what="model")
