"""Worst-group intervals (basic bootstrap) and intervals over several seeds on the same samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmr_bench.evaluators.group_robustness import group_accuracies
from fmr_bench.metrics import intervals as I

G, PER_GROUP = 100, 36
REGIMES = {
    "spread": np.linspace(0.85, 1.0, G),        # many groups near the minimum
    "equal": np.full(G, 0.95),                   # every group the minimum
    "one bad group": np.r_[0.7, np.full(G - 1, 0.98)],
}


def _groups_draw(rng, p):
    g = np.repeat(np.arange(G), PER_GROUP)
    return rng.random(len(g)) < p[g], g


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_worst_group_interval_covers_the_truth(regime):
    p = REGIMES[regime]
    truth = 100 * p.min()
    settings, trials = I.IntervalSettings(resamples=400), 100
    basic = percentile = 0
    for t in range(trials):
        rng = np.random.default_rng(t)
        correct, g = _groups_draw(rng, p)
        lo, hi = I.group_intervals(correct, g, G, settings, np.random.default_rng(10_000 + t))["worst_group_acc"]
        basic += lo <= truth <= hi
        uniq, counts = I.pattern_counts(np.stack([g, correct], 1), settings.resamples, np.random.default_rng(t))
        sums = counts @ I.group_columns(uniq[:, 1], uniq[:, 0], G)  # (group, correct) patterns -> group sums
        plo, phi = I.percentile_interval(I.group_metric(G)(sums)["worst_group_acc"])
        percentile += plo <= truth <= phi
    assert basic / trials >= 0.9, f"the interval covered the worst group's truth {basic}/{trials} times"
    if regime != "one bad group":
        # why worst-group uses the basic bootstrap: the resampled minimum lies below the estimate, and the
        # percentile interval misses the truth when several groups are near the minimum
        assert percentile / trials < 0.2


def test_group_metric_matches_group_accuracies():
    rng = np.random.default_rng(3)
    n, groups = 500, 7
    g = rng.integers(0, groups, n)
    g[g == 5] = 4  # an empty group is left out of the worst group
    correct = rng.random(n) < 0.8
    m = I.group_metric(groups)(I.group_columns(correct, g, groups).sum(0))
    y = torch.zeros(n, dtype=torch.long)
    accs = group_accuracies(torch.where(torch.as_tensor(correct), y, 1), y, torch.as_tensor(g), groups)
    assert m["worst_group_acc"] == pytest.approx(min(a for a in accs if a is not None))
    assert m["avg_acc"] == pytest.approx(100 * correct.mean())


def test_seed_mean_interval_matches_a_plain_resampling_reference():
    rng = np.random.default_rng(4)
    n, seeds, resamples = 300, 3, 4000
    correct = [rng.random(n) < p for p in (0.7, 0.75, 0.8)]
    got = I.seed_mean_intervals([c[:, None] for c in correct], I.share_metric("acc", n),
                                I.IntervalSettings(resamples=resamples))["acc"]
    assert got[0] == pytest.approx(100 * np.mean([c.mean() for c in correct]))
    draw = np.random.default_rng(5)
    ref = []
    for _ in range(resamples):  # one draw of sample ids, used for every seed
        idx = draw.integers(0, n, n)
        ref.append(100 * np.mean([c[idx].mean() for c in correct]))
    lo, hi = np.percentile(ref, [2.5, 97.5])
    assert got[1] == pytest.approx([lo, hi], abs=0.6)
    # three identical seeds are one model: the same images are drawn for each, so nothing averages out
    same = I.seed_mean_intervals([correct[0][:, None]] * seeds, I.share_metric("acc", n))["acc"]
    one = I.seed_mean_intervals([correct[0][:, None]], I.share_metric("acc", n))["acc"]
    assert same[0] == pytest.approx(one[0]) and same[1] == pytest.approx(one[1])


def test_one_seed_is_the_record_interval():
    rng = np.random.default_rng(8)
    n = 200
    x = I.fmr_indicators(rng.random(n) < .9, rng.random(n) < .7, rng.random(n) < .6, rng.random(n) < .95,
                         rng.integers(0, 5, n))
    seed = I.seed_mean_intervals([x], lambda s: I.fmr_from_sums(s, n))
    record = I.fmr_intervals(x)[0]
    assert seed["fmr"][1] == pytest.approx(record["fmr"]) and seed["pa"][1] == pytest.approx(record["pa"])


def test_paired_seed_difference_sign_on_constructed_pairs():
    rng = np.random.default_rng(9)
    correct, g = _groups_draw(rng, REGIMES["spread"])
    ref = I.group_columns(correct, g, G)
    better = []
    for s in range(3):  # each seed of A fixes a random half of the reference's errors
        fixed = correct | (np.random.default_rng(s).random(len(correct)) < 0.5)
        better.append(I.group_columns(fixed, g, G))
    res = I.paired_seed_difference(better, [ref] * 3, I.group_metric(G), basic={"worst_group_acc"})
    for name in ("worst_group_acc", "avg_acc"):
        assert res.delta[name] > 0 and res.interval[name][0] > 0 and res.p_value[name] < 0.01
    same = I.paired_seed_difference([ref] * 3, [ref] * 3, I.group_metric(G), basic={"worst_group_acc"})
    assert same.delta["avg_acc"] == 0 and same.interval["avg_acc"] == [0.0, 0.0] and same.p_value["avg_acc"] == 1.0
    with pytest.raises(ValueError):
        I.paired_seed_difference(better, [ref] * 2, I.group_metric(G))


def test_basic_interval_is_the_hull_with_the_reflected_one():
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    lo, hi = I.percentile_interval(values)
    assert I.bootstrap_interval(values, 5.0, basic=True) == pytest.approx((min(lo, 10 - hi), max(hi, 10 - lo)))
    assert I.bootstrap_interval(values, 9.0, basic=True, bounds=(0, 10)) == pytest.approx((lo, 10.0))
    assert I.bootstrap_interval(values, float("nan"), basic=True) is None
    assert I.bootstrap_interval(values, 5.0) == (lo, hi)
    # a worst group at 100 % minus one image, with the resampled minimum below it: the interval holds the estimate
    correct, g = _groups_draw(np.random.default_rng(0), np.full(G, 0.999))
    est = I.group_metric(G)(I.group_columns(correct, g, G).sum(0))["worst_group_acc"]
    lo, hi = I.group_intervals(correct, g, G, I.IntervalSettings(), np.random.default_rng(1))["worst_group_acc"]
    assert lo <= est <= hi <= 100
