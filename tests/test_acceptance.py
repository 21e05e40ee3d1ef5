"""Acceptance rules: the pure decision, its parsing, and both loops under every rule."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from conftest import LR, brightness_world, scripted_world

from fmr_bench import evaluate
from fmr_bench.cli import main
from fmr_bench.errors import SettingsError
from fmr_bench.generators.noise import PixelGenerator
from fmr_bench.oracles.acceptance import decide, parse_rule
from fmr_bench.protocol import LoopConfig, run_batched, run_reference

EPS = 1e-6


def _accepts(rule, probs, label):
    return bool(decide(rule, torch.tensor(probs), torch.tensor([label])).accepted[0])


# (rule, member probabilities (M, 1, C), label, accepted); values exact in binary where they sit on a threshold
CASES = [
    ("argmax", [[[0.5, 0.25, 0.25]]], 0, True),
    ("argmax", [[[0.25, 0.5, 0.25]]], 0, False),
    ("argmax", [[[0.5, 0.5, 0.0]]], 1, False),  # a tie goes to the lower index
    ("argmax", [[[0.5, 0.5, 0.0]]], 0, True),
    ("confidence:0.75", [[[0.75, 0.25, 0.0]]], 0, True),  # at the threshold
    ("confidence:0.75", [[[0.75 - EPS, 0.25 + EPS, 0.0]]], 0, False),  # just under
    ("confidence:0.75", [[[0.75 + EPS, 0.25 - EPS, 0.0]]], 0, True),  # just over
    ("confidence:0.3", [[[0.3125, 0.375, 0.3125]]], 0, True),  # confidence alone: the argmax may be another class
    ("confidence:0", [[[0.0, 1.0, 0.0]]], 0, True),
    ("confidence:1", [[[1.0, 0.0, 0.0]]], 0, True),
    ("confidence:1", [[[1 - EPS, EPS, 0.0]]], 0, False),
    ("margin:0.25", [[[0.5, 0.25, 0.25]]], 0, True),  # p(y) - max other = 0.25 exactly
    ("margin:0.25", [[[0.5 - EPS, 0.25 + EPS, 0.25]]], 0, False),
    ("margin:0.25", [[[0.5 + EPS, 0.25 - EPS, 0.25]]], 0, True),
    ("margin:0.25", [[[0.25, 0.5, 0.25]]], 1, True),  # the margin is against the other classes, any index
    ("margin:0", [[[0.5, 0.5, 0.0]]], 1, True),  # a tie passes margin:0 but not argmax (case above)
    ("margin:0.5", [[[0.75, 0.125, 0.125]]], 0, True),
    ("margin:0.5", [[[0.625, 0.25, 0.125]]], 0, False),
    # an ensemble: the average says class 0 (0.55), member 2 says class 1
    ("argmax", [[[0.9, 0.1]], [[0.2, 0.8]]], 0, True),
    ("all-agree", [[[0.9, 0.1]], [[0.2, 0.8]]], 0, False),
    ("all-agree", [[[0.9, 0.1]], [[0.6, 0.4]]], 0, True),
    ("all-agree", [[[0.5, 0.5]], [[0.6, 0.4]]], 1, False),
    ("all-agree", [[[0.25, 0.75]]], 1, True),  # one member: the argmax rule
    ("confidence:0.75", [[[1.0, 0.0]], [[0.5, 0.5]]], 0, True),  # thresholds read the average (0.75)
    ("confidence:0.75", [[[1.0, 0.0]], [[0.5 - 2 * EPS, 0.5 + 2 * EPS]]], 0, False),
    ("all-agree+margin:0.5", [[[0.9, 0.1]], [[0.6, 0.4]]], 0, True),  # margin of the average 0.5
    ("all-agree+margin:0.5", [[[0.875, 0.125]], [[0.625, 0.375]]], 0, True),
    ("all-agree+margin:0.5", [[[0.875 - EPS, 0.125 + EPS]], [[0.625, 0.375]]], 0, False),
    ("all-agree+margin:0.5", [[[1.0, 0.0]], [[0.25, 0.75]]], 0, False),  # margin holds, a member disagrees
]


@pytest.mark.parametrize("rule,probs,label,expected", CASES)
def test_rules_at_and_around_their_thresholds(rule, probs, label, expected):
    assert _accepts(rule, probs, label) is expected


def test_verdict_reports_prediction_confidence_and_margin_of_the_average():
    probs = torch.tensor([[[0.5, 0.25, 0.25], [0.125, 0.125, 0.75]], [[0.25, 0.5, 0.25], [0.125, 0.375, 0.5]]])
    v = decide("margin:0.1", probs, torch.tensor([0, 2]))
    mean = probs.mean(0)  # [[0.375, 0.375, 0.25], [0.125, 0.25, 0.625]]
    assert v.pred.tolist() == [0, 2]
    assert v.confidence.tolist() == [0.375, 0.625]
    assert v.margin.tolist() == [0.0, 0.375]
    assert v.accepted.tolist() == [False, True]
    assert v.row(1) == {"oracle_pred": 2, "oracle_conf": 0.625, "oracle_margin": 0.375, "oracle_accept": True}
    # a single (N, C) tensor is a one-member oracle
    assert decide("argmax", mean, torch.tensor([0, 2])).accepted.tolist() == [True, True]


def test_rules_agree_with_a_plain_reference_on_random_probabilities():
    g = torch.Generator().manual_seed(0)
    # members share most of their logits, so that they agree often but not always
    members = (torch.randn(1, 200, 5, generator=g) * 2 + torch.randn(3, 200, 5, generator=g)).softmax(-1)
    labels = torch.randint(0, 5, (200,), generator=g)
    for rule in ("argmax", "confidence:0.4", "margin:0.1", "all-agree", "all-agree+confidence:0.3"):
        got = decide(rule, members, labels).accepted.tolist()
        want = []
        for i in range(200):
            p = [float(sum(members[m, i, c] for m in range(3)) / 3) for c in range(5)]
            y = int(labels[i])
            top = max(range(5), key=lambda c: p[c])
            other = max(p[c] for c in range(5) if c != y)
            ok = {"argmax": top == y, "confidence:0.4": p[y] >= 0.4, "margin:0.1": p[y] - other >= 0.1,
                  "all-agree": all(int(members[m, i].argmax()) == y for m in range(3))}
            ok["all-agree+confidence:0.3"] = ok["all-agree"] and p[y] >= 0.3
            want.append(ok[rule])
        # values within float rounding of a threshold could flip; none are that close here
        assert got == want, rule
        assert 0 < sum(got) < 200


@pytest.mark.parametrize("text,canonical", [
    ("argmax", "argmax"), (None, "argmax"), (" confidence:0.50 ", "confidence:0.5"), ("margin:1", "margin:1.0"),
    ("margin:-0", "margin:0.0"), ("all-agree+confidence:.9", "all-agree+confidence:0.9"),
    ("confidence:1e-1", "confidence:0.1"),
])
def test_rule_names_are_canonical(text, canonical):
    assert parse_rule(text).spec == canonical
    assert parse_rule(parse_rule(text).spec).spec == canonical


@pytest.mark.parametrize("text,fragment", [
    ("confidence:1.5", "must lie in [0, 1]"), ("margin:-0.1", "must lie in [0, 1]"),
    ("confidence:nan", "must lie in [0, 1]"), ("confidence:inf", "must lie in [0, 1]"),
    ("confidence", "needs a threshold"), ("margin:", "needs a threshold"), ("confidence:high", "must be a number"),
    ("argmax:0.5", "takes no value"), ("all-agree:1", "takes no value"),
    ("confidense:0.5", "Did you mean 'confidence'"),
    ("", "unknown acceptance rule"), ("argmax+", "unknown acceptance rule"),
])
def test_bad_rules_are_settings_errors_naming_the_fix(text, fragment):
    with pytest.raises(SettingsError, match="--accept") as err:
        parse_rule(text)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_cli_bad_rule_is_one_line_and_exit_2(capsys, tmp_path):
    code = main(["evaluate", "--model", "builtin:digits-cnn", "--accept", "margin:2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "margin" in err and "[0, 1]" in err
    assert not any(tmp_path.iterdir())  # refused before any work


# -- both loops ------------------------------------------------------------------------------------

def _samples(data):
    return [(data.ids[i], i, data.load(i), data.labels[i]) for i in range(len(data))]


def _batched(samples, oracle, model, gen, n_classes, budget, lr, opt, bs, accept):
    out = []
    run_batched(iter(samples), model=model, oracle=oracle, generator=gen, target_of=torch.arange(n_classes),
                cfg=LoopConfig(budget, lr, opt, bs, accept=accept), device=torch.device("cpu"),
                on_sample=lambda o, clean, final, latent: out.append(o))
    return sorted(out, key=lambda o: o.index)


def test_confidence_rule_stops_samples_where_the_scripted_oracle_predicts():
    # ThresholdOracle: p(y) = sigmoid(200 * (threshold - value)), threshold (k - 0.5) * LR, value t * LR
    # after step t. confidence:0.9 accepts step t while 200 * LR * (k - 0.5 - t) >= logit(0.9), i.e.
    # t <= k - 2 for these k (argmax accepts t <= k - 1).
    reject_at = [1, 2, 3, 5, 9, 100]
    budget = 12
    data, model, gen, oracle = scripted_world(reject_at)
    for accept, last_ok in (("argmax", lambda k: k - 1), ("confidence:0.9", lambda k: k - 2),
                            ("margin:0.8", lambda k: k - 2)):
        out = _batched(_samples(data), oracle, model, gen, 2, budget, LR, "sign", 4, accept)
        for o, k in zip(out, reject_at):
            steps = min(last_ok(k), budget)
            assert (o.validated, o.steps) == (steps >= 1, max(steps, 0)), (accept, k)
            x_hat_value = o.steps * LR  # the clean image's value is 0
            p = 1 / (1 + math.exp(-200 * ((k - 0.5) * LR - x_hat_value)))
            assert o.oracle_conf == pytest.approx(p, abs=1e-5)
            assert o.oracle_margin == pytest.approx(2 * p - 1, abs=1e-5)
            assert o.oracle_pred == (0 if p >= 0.5 else 1)
            assert o.oracle_accept is (True if o.validated else bool(decide(accept, torch.tensor([[p, 1 - p]]),
                                                                          torch.tensor([0])).accepted[0]))


RULES = ["argmax", "confidence:0.6", "margin:0.3", "all-agree", "all-agree+margin:0.1"]


def _two_member_oracle():
    """The brightness oracle and a sharper, shifted copy: members that sometimes disagree."""
    from conftest import BrightnessOracle, identity_pre

    from fmr_bench.models import ImageClassifier
    from fmr_bench.oracles import Oracle

    names = [f"band{i}" for i in range(3)]
    second = BrightnessOracle(3)
    second.centres = second.centres + 0.04
    return Oracle([ImageClassifier(BrightnessOracle(3), identity_pre(16), class_names=names),
                   ImageClassifier(second, identity_pre(16), class_names=names)], "brightness+shifted", "single")


@functools.lru_cache(maxsize=None)
def _reference(accept):
    """The one-image loop's outcomes under ``accept`` (shared by the tests below: CPU time is scarce)."""
    data, model, _ = brightness_world(10)
    return run_reference(_samples(data), model=model, oracle=_two_member_oracle(), generator=PixelGenerator(),
                         target_of=torch.arange(3), budget=8, step_size=0.02, optimizer="adam", accept=accept)


@pytest.mark.parametrize("accept", RULES)
def test_batched_loop_matches_reference_loop_under_every_rule(accept):
    data, model, _ = brightness_world(10)
    ref = _reference(accept)
    # batch 3 over 10 samples: slots are refilled mid-run
    out = _batched(_samples(data), _two_member_oracle(), model, PixelGenerator(), 3, 8, 0.02, "adam", 3, accept)
    assert [o.key() for o in out] == [o.key() for o in ref]
    for a, b in zip(out, ref):
        assert (a.oracle_pred, a.oracle_accept) == (b.oracle_pred, b.oracle_accept)
        assert a.oracle_conf == pytest.approx(b.oracle_conf, abs=1e-4)  # fp32 rounding differs per batch
        assert a.oracle_margin == pytest.approx(b.oracle_margin, abs=1e-4)
        assert a.oracle_accept or not a.validated


def test_stricter_rules_change_outcomes_in_the_agreement_world():
    # Guards the agreement test above against rules that never bind in its world.
    keys = {rule: [o.key() for o in _reference(rule)] for rule in RULES}
    assert all(keys[rule] != keys["argmax"] for rule in RULES[1:])
    steps = {rule: sum(k[2] for k in keys[rule]) for rule in RULES}
    assert all(steps[rule] <= steps["argmax"] for rule in RULES)


# -- the setting in runs ---------------------------------------------------------------------------

def _run(out, **kw):
    data, model, oracle = brightness_world(8)
    return evaluate(model, data, generator=PixelGenerator(), oracle=oracle, out=out, budget=6, step_size=0.02,
                    batch_size=4, write_grid=False, **kw)


def test_rule_is_in_the_run_identity_record_and_samples(tmp_path):
    plain = _run(tmp_path)
    named = _run(tmp_path, accept="argmax")
    strict = _run(tmp_path, accept="margin:0.50")
    assert named.path == plain.path  # argmax runs keep the folder they had before rules existed
    assert strict.path != plain.path
    assert _run(tmp_path, accept="margin:0.5").path == strict.path  # one canonical name, one folder
    for res, rule in ((plain, "argmax"), (strict, "margin:0.5")):
        rec = json.loads((res.path / "record.json").read_text())
        assert rec["settings"]["accept"] == rule and rec["oracle"]["accept"] == rule
        settings = json.loads((res.path / "settings.json").read_text())
        assert settings.get("accept", "argmax") == rule
        for line in (res.path / "samples.jsonl").read_text().splitlines():
            row = json.loads(line)
            assert set(row) >= {"oracle_pred", "oracle_conf", "oracle_margin", "oracle_accept"}
            assert 0.0 <= row["oracle_conf"] <= 1.0
            if row["validated"]:
                assert row["oracle_accept"] and (rule == "argmax" or row["oracle_margin"] >= 0.5)
    assert strict.metrics["mean_steps"] < plain.metrics["mean_steps"]


def test_world_default_rule_applies_unless_one_is_given(tmp_path):
    from dataclasses import replace

    data, model, oracle = brightness_world(8)
    data.world = replace(data.world, accept="confidence:0.7")
    kw = dict(generator=PixelGenerator(), oracle=oracle, out=None, budget=6, step_size=0.02, write_grid=False)
    assert evaluate(model, data, **kw).record["settings"]["accept"] == "confidence:0.7"
    assert evaluate(model, data, accept="argmax", **kw).record["settings"]["accept"] == "argmax"


def test_old_sample_lines_without_oracle_fields_still_load(tmp_path):
    from fmr_bench.protocol import SampleOutcome

    old = {"id": "a", "index": 0, "label": 1, "target": 1, "clean_pred": 1, "oracle_clean": 1, "validated": True,
           "steps": 3, "final_pred": 0, "clean_correct": True, "final_correct": False}
    o = SampleOutcome.from_dict(old)
    assert o.oracle_conf is None and o.audit is None and o.steps == 3
    with pytest.raises(KeyError):
        SampleOutcome.from_dict({k: v for k, v in old.items() if k != "steps"})


def test_an_oracle_subclass_that_overrides_only_forward_works_under_every_rule():
    """A user's oracle: forward returns probabilities; the rules decide on those (it is one member)."""
    import torch

    from fmr_bench.oracles import Oracle
    from fmr_bench.oracles.acceptance import decide

    class Fixed(Oracle):
        def __init__(self):
            super().__init__([], "mine", "single")

        def forward(self, x):
            p = torch.full((x.shape[0], 3), 0.05)
            p[:, 1] = 0.9
            return p

    ora = Fixed()
    x, y = torch.zeros(2, 3, 8, 8), torch.tensor([1, 0])
    assert ora.member_probs(x).shape == (1, 2, 3)
    for rule, want in (("argmax", [True, False]), ("margin:0.8", [True, False]), ("margin:0.9", [False, False]),
                       ("all-agree", [True, False])):
        assert decide(rule, ora.member_probs(x), y).accepted.tolist() == want, rule


def test_an_oracle_without_members_or_forward_is_one_line():
    import torch

    from fmr_bench.errors import SettingsError
    from fmr_bench.oracles import Oracle

    with pytest.raises(SettingsError, match="has no members"):
        Oracle([], "empty", "single").member_probs(torch.zeros(1, 3, 8, 8))
