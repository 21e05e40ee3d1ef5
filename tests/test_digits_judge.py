"""The digits world's independent judge, its audit tally, and the world's default oracle settings."""

from __future__ import annotations

import pytest
import torch

from fmr_bench.datasets import load_dataset
from fmr_bench.digits import load_digits_split
from fmr_bench.digits.judge import MIN_CLEAN_ACCURACY, ShapeFeatures, load_digits_judge
from fmr_bench.errors import SpecError, WeightsError
from fmr_bench.models import load_model
from fmr_bench.oracles import load_oracle


def test_shipped_judge_is_accurate_on_the_clean_test_split():
    x, y = load_digits_split("test")
    judge = load_model("builtin:digits-judge").freeze()
    with torch.no_grad():
        acc = (judge(x.float() / 255).argmax(1) == y).float().mean().item()
    assert acc >= MIN_CLEAN_ACCURACY  # the card reports 0.9917


def test_judge_sees_shape_only():
    x = load_digits_split("test")[0][:16].float() / 255
    feats = ShapeFeatures()
    base = feats(x)
    assert base.shape == (16, 64) and torch.allclose(base.amax(1), torch.ones(16))
    # Inverting the image, or recolouring ink and paper, keeps the ink map: luma weights
    # sum to 1, so |luma - paper| is unchanged up to one global factor, removed by the max scaling.
    assert torch.allclose(feats(1 - x), base, atol=1e-5)
    paper, ink = torch.tensor([0.2, 0.9, 0.4]), torch.tensor([0.9, 0.1, 0.7])
    density = (x - x[:, :, :1, :1]) / (x.amin((2, 3), keepdim=True) - x[:, :, :1, :1])  # 0 paper .. 1 ink
    grey_density = density.mean(1, keepdim=True).clamp(0, 1)
    recoloured = paper.view(1, 3, 1, 1) + (ink - paper).view(1, 3, 1, 1) * grey_density
    plain = grey_density.expand(-1, 3, -1, -1)
    assert torch.allclose(feats(recoloured), feats(plain), atol=1e-4)


def test_judge_is_a_model_and_an_oracle_with_gradients():
    data = load_dataset("digits")
    x = torch.stack([data.load(i) for i in range(8)])
    model = load_model("builtin:digits-judge", class_names=data.class_names)
    oracle = load_oracle("builtin:digits-judge", data.class_names)
    assert model.spec == "builtin:digits-judge" and model.label_space == "digits"
    assert torch.equal(oracle.predict(x), model(x).argmax(-1))
    xg = x.clone().requires_grad_(True)
    model(xg)[:, 0].sum().backward()  # the FMR loop backpropagates through the evaluated model
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_judge_refuses_other_classes_and_bad_weights(tmp_path):
    with pytest.raises(SpecError, match="--data digits"):
        load_oracle("builtin:digits-judge", ["cat", "dog"])
    with pytest.raises(WeightsError, match="train_digits_judge.py"):
        load_digits_judge(path=tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="train_digits_judge.py"):
        load_digits_judge(path=bad)


# -- an audited run ------------------------------------------------------------------------


class _ValueJudge(torch.nn.Module):
    """Scripted judge: class 0 while the image's value (channel 0) is below ``limit``, else class 1."""

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0].mean((1, 2))
        return torch.stack([self.limit - v, v - self.limit], 1)


def test_audited_run_counts_the_judges_verdicts_on_the_final_images():
    from conftest import LR, identity_pre, scripted_world

    import fmr_bench
    from fmr_bench.models import ImageClassifier
    from fmr_bench.oracles import Oracle

    # The oracle first rejects sample i at step reject_at[i], so its x-hat carries the value
    # (reject_at[i] - 1) * LR; the judge sees class 0 below 4.5 * LR: steps 2 and 4 pass, 6 and 9 fail.
    reject_at = [1, 3, 5, 7, 10]
    data, model, gen, oracle = scripted_world(reject_at)
    judge = Oracle([ImageClassifier(_ValueJudge(4.5 * LR), identity_pre(4), class_names=["zero", "one"])],
                   "scripted-judge", "single")
    res = fmr_bench.evaluate(model, data, generator=gen, oracle=oracle, audit=judge, out=None, budget=20,
                             step_size=LR, optimizer="sign", device="cpu")
    assert [o.steps for o in res.outcomes] == [0, 2, 4, 6, 9]
    verdicts = [o.verdict("scripted-judge") for o in res.outcomes]
    assert verdicts[0] is None and [v["ok"] for v in verdicts[1:]] == [True, True, False, False]
    m = res.metrics
    assert (m["n_audited"], m["audit_validity"]) == (4, 50.0)
    assert m["audit_pa"] == 0.0  # the model says 1 on every x-hat


def test_digits_world_runs_under_its_margin_rule_and_imagenet_keeps_argmax(tmp_path):
    import fmr_bench
    from fmr_bench.datasets.digits import DIGITS_WORLD
    from fmr_bench.datasets.imagenet import IMAGENET_WORLD

    assert DIGITS_WORLD.accept == "margin:0.99" and DIGITS_WORLD.oracle == "builtin:digits-clip"
    assert IMAGENET_WORLD.accept == "argmax"  # the paper's rule stays the ImageNet default
    res = fmr_bench.evaluate("builtin:digits-cnn", "digits", out=None, limit=2, budget=1, device="cpu")
    assert res.record["settings"]["accept"] == "margin:0.99"
    explicit = fmr_bench.evaluate("builtin:digits-cnn", "digits", out=None, limit=2, budget=1, device="cpu",
                                  accept="argmax")
    assert explicit.record["settings"]["accept"] == "argmax"
