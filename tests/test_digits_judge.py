"""The digits world's independent judge, its audit tally, and the world's default oracle settings."""

from __future__ import annotations

import pytest
import torch

from fmr_bench.datasets import load_dataset
from fmr_bench.digits import load_digits_split
from fmr_bench.digits.audit import AuditTally
from fmr_bench.digits.judge import MIN_CLEAN_ACCURACY, ShapeFeatures, load_digits_judge
from fmr_bench.errors import SpecError, WeightsError
from fmr_bench.models import load_model
from fmr_bench.oracles import load_oracle
from fmr_bench.protocol.outcome import SampleOutcome


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


# -- the audit tally -----------------------------------------------------------------------


def _outcome(i: int, label: int, validated: bool, final_pred: int) -> SampleOutcome:
    return SampleOutcome(id=str(i), index=i, label=label, target=label, clean_pred=label, oracle_clean=label,
                         validated=validated, steps=3 if validated else 0, final_pred=final_pred)


def test_audit_tally_against_a_plain_count():
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(200):
        label = int(torch.randint(0, 10, (1,), generator=g))
        validated = bool(torch.rand(1, generator=g) < 0.8)
        pred = label if torch.rand(1, generator=g) < 0.5 else int(torch.randint(0, 10, (1,), generator=g))
        verdict = (label if torch.rand(1, generator=g) < 0.7 else pred) if validated else None
        rows.append((_outcome(i, label, validated, pred), verdict))
    tally = AuditTally()
    for o, v in rows:
        tally.add(o, v)
    m = tally.metrics(sa=80.0)
    val = [(o, v) for o, v in rows if o.validated]
    ok = [o for o, v in val if v == o.label]
    assert m["n_validated"] == len(val)
    assert m["validity"] == pytest.approx(100 * len(ok) / len(val))
    pa = 100 * sum(o.final_pred == o.label for o in ok) / len(ok)
    assert m["audited_pa"] == pytest.approx(pa) and m["audited_fmr"] == pytest.approx(100 * pa / 80.0)
    wrong = [(o, v) for o, v in val if o.final_pred != o.label]
    assert m["fooled_agree"] == pytest.approx(100 * sum(v == o.final_pred for o, v in wrong) / len(wrong))


def test_audit_tally_edge_cases():
    tally = AuditTally()
    tally.add(_outcome(0, 1, False, 1), None)
    assert tally.metrics(sa=100.0)["validity"] is None  # nothing validated: no figure, not 0 %
    with pytest.raises(ValueError, match="no judge verdict"):
        tally.add(_outcome(1, 1, True, 2), None)


class _ValueJudge(torch.nn.Module):
    """Scripted judge: class 0 while the image's value (channel 0) is below ``limit``, else class 1."""

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0].mean((1, 2))
        return torch.stack([self.limit - v, v - self.limit], 1)


def test_audited_run_counts_the_judges_verdicts_on_the_final_images():
    import fmr_bench
    from fmr_bench.models import ImageClassifier

    from conftest import LR, identity_pre, scripted_world

    # The oracle first rejects sample i at step reject_at[i], so its x-hat carries the value
    # (reject_at[i] - 1) * LR; the judge sees class 0 below 4.5 * LR: steps 2 and 4 pass, 6 and 9 fail.
    reject_at = [1, 3, 5, 7, 10]
    data, model, gen, oracle = scripted_world(reject_at)
    judge = ImageClassifier(_ValueJudge(4.5 * LR), identity_pre(4)).freeze()
    tally = AuditTally()

    def hook(outcome, clean, final, latent):
        tally.add(outcome, int(judge(final[None]).argmax(-1)) if outcome.validated else None)

    res = fmr_bench.evaluate(model, data, generator=gen, oracle=oracle, out=None, budget=20, step_size=LR,
                             optimizer="sign", device="cpu", sample_hook=hook)
    assert [o.steps for o in res.outcomes] == [0, 2, 4, 6, 9]
    m = tally.metrics(sa=res.metrics["sa"])
    assert (m["n_validated"], m["validity"]) == (4, 50.0)
    assert m["audited_pa"] == 0.0 and m["fooled_agree"] == 50.0  # the model says 1 on every x-hat


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
