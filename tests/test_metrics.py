"""Metric formulas against an independent pandas computation."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from fmr_bench.metrics.fmr import fmr_metrics, per_class_metrics
from fmr_bench.protocol import SampleOutcome


def _random_outcomes(n: int, seed: int) -> list[SampleOutcome]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = rng.randrange(4)
        validated = rng.random() < 0.8
        clean = label if rng.random() < 0.7 else rng.randrange(4)
        out.append(SampleOutcome(id=str(i), index=i, label=label, target=label, clean_pred=clean,
                                 oracle_clean=label if rng.random() < 0.9 else (label + 1) % 4,
                                 validated=validated, steps=rng.randrange(1, 51) if validated else 0,
                                 final_pred=(label if rng.random() < 0.4 else rng.randrange(4)) if validated else clean))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fmr_metrics_match_pandas(seed):
    outs = _random_outcomes(200, seed)
    df = pd.DataFrame([o.to_dict() for o in outs])
    v = df[df.validated]
    sa = 100 * (df.clean_pred == df.label).mean()
    pa = 100 * (v.final_pred == v.label).mean()
    m = fmr_metrics(outs)
    assert m["n"] == 200 and m["n_validated"] == len(v)
    assert m["sa"] == pytest.approx(sa)
    assert m["vr"] == pytest.approx(100 * df.validated.mean())
    assert m["pa"] == pytest.approx(pa)
    assert m["fmr"] == pytest.approx(100 * pa / sa)
    assert m["pa_all"] == pytest.approx(100 * (df.final_pred == df.label).mean())
    assert m["oracle_acc"] == pytest.approx(100 * (df.oracle_clean == df.label).mean())
    assert m["mean_steps"] == pytest.approx(v.steps.mean())


def test_per_class_rows_match_groupby():
    outs = _random_outcomes(120, 3)
    df = pd.DataFrame([o.to_dict() for o in outs])
    rows = per_class_metrics(outs, ["a", "b", "c", "d"])
    for row in rows:
        g = df[df.label == row["label"]]
        assert row["n"] == len(g)
        assert row["sa"] == pytest.approx(100 * (g.clean_pred == g.label).mean())
        assert row["class"] == "abcd"[row["label"]]


def test_no_validated_sample_gives_none_not_nan():
    o = SampleOutcome("0", 0, 1, 1, 1, 0, False, 0, 1)
    m = fmr_metrics([o])
    assert m["pa"] is None and m["fmr"] is None and m["vr"] == 0 and m["sa"] == 100
