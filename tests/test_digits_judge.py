"""The digits world's independent judge, its audit tally, and the world's default oracle settings."""

from __future__ import annotations

import pytest
import torch

from fmr_bench.datasets import load_dataset
from fmr_bench.digits import load_digits_split
from fmr_bench.digits.audit import REJECT, AuditTally, Rule, RuleOracle, parse_rule
from fmr_bench.digits.judge import MIN_CLEAN_ACCURACY, ShapeFeatures, load_digits_judge
from fmr_bench.errors import SettingsError, SpecError, WeightsError
from fmr_bench.models import ImageClassifier, load_model
from fmr_bench.oracles import Oracle, load_oracle
from fmr_bench.protocol.outcome import SampleOutcome

from conftest import identity_pre


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


# -- acceptance rules as oracles -----------------------------------------------------------


class _Fixed(torch.nn.Module):
    """Returns log-probabilities read from the image's first pixel row (so softmax gives them back)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, : x.shape[-1]].clamp_min(1e-12).log()


def _probs_oracle(*members: int) -> Oracle:
    return Oracle([ImageClassifier(_Fixed(), identity_pre(4)) for _ in range(members[0] if members else 1)],
                  "scripted", "single")


def _images(rows: list[list[float]]) -> torch.Tensor:
    x = torch.zeros(len(rows), 3, 4, 4)
    x[:, 0, 0] = torch.tensor(rows)
    return x


@pytest.mark.parametrize(("rule", "rows", "expected"), [
    ("argmax", [[0.4, 0.3, 0.2, 0.1], [0.2, 0.5, 0.2, 0.1]], [0, 1]),
    ("confidence:0.7", [[0.69, 0.11, 0.1, 0.1], [0.70, 0.1, 0.1, 0.1], [0.1, 0.8, 0.05, 0.05]], [REJECT, 0, 1]),
    ("margin:0.5", [[0.7, 0.21, 0.05, 0.04], [0.7, 0.19, 0.06, 0.05], [0.05, 0.05, 0.1, 0.8]], [REJECT, 0, 3]),
])
def test_rule_oracle_at_and_around_its_threshold(rule, rows, expected):
    oracle = RuleOracle(_probs_oracle(), parse_rule(rule))
    assert oracle.predict(_images(rows)).tolist() == expected
    assert oracle.settings()["rule"] == rule


def test_all_agree_needs_every_member():
    class Member(torch.nn.Module):
        def __init__(self, probs: list[list[float]]) -> None:
            super().__init__()
            self.p = torch.tensor(probs)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.p.log()

    a = [[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]]
    b = [[0.8, 0.2], [0.3, 0.7], [0.45, 0.55]]
    base = Oracle([ImageClassifier(Member(a), identity_pre(4)), ImageClassifier(Member(b), identity_pre(4))], "ab",
                  "single")
    x = torch.zeros(3, 3, 4, 4)
    assert RuleOracle(base, Rule(), all_agree=True).predict(x).tolist() == [0, REJECT, 1]
    assert RuleOracle(base, Rule()).predict(x).tolist() == [0, 0, 1]  # the paper's mean: (0.6, 0.4) for row 2
    assert RuleOracle(base, parse_rule("margin:0.5"), all_agree=True).predict(x).tolist() == [0, REJECT, REJECT]


@pytest.mark.parametrize("text", ["", "argmax:1", "confidence", "confidence:0.5", "margin:1", "margin:x", "top5"])
def test_bad_rules_name_the_valid_forms(text):
    with pytest.raises(SettingsError, match="margin:T"):
        parse_rule(text)


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
