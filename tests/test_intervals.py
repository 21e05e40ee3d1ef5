"""Intervals of the headline metrics (fmr_bench.metrics.intervals), their record sections, fmr compare."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from fmr_bench.metrics import intervals as I
from fmr_bench.metrics.fmr import fmr_metrics
from fmr_bench.protocol.outcome import SampleOutcome


def _outcomes(rng, n, p_clean=0.8, p_val=0.7, p_final=0.6):
    out = []
    for i in range(n):
        label = int(rng.integers(0, 10))
        clean = rng.random() < p_clean
        val = bool(rng.random() < p_val)
        final = clean and rng.random() < p_final
        out.append(SampleOutcome(id=f"s{i}", index=i, label=label, target=label, clean_pred=label if clean else
                                 (label + 1) % 10, oracle_clean=label if rng.random() < .9 else (label + 2) % 10,
                                 validated=val, steps=int(rng.integers(1, 5)) if val else 0,
                                 final_pred=label if final else (label + 1) % 10))
    return out


def _ind(rows):
    return I.fmr_indicators([o.clean_correct for o in rows], [o.validated for o in rows],
                            [o.final_correct for o in rows], [o.oracle_clean == o.label for o in rows],
                            [o.steps for o in rows])


def test_metrics_from_sums_match_fmr_metrics():
    rows = _outcomes(np.random.default_rng(0), 300)
    got = I.fmr_from_sums(_ind(rows).sum(0), len(rows))
    want = fmr_metrics(rows)
    for k, v in got.items():
        assert float(v) == pytest.approx(want[k], rel=1e-12), k


def test_binomial_coverage_on_bernoulli_draws():
    rng = np.random.default_rng(1)
    p, n, draws = 0.3, 200, 1000
    k = rng.binomial(n, p, size=draws)
    lo, hi = I.clopper_pearson(k, np.full(draws, n))
    cover = np.mean((lo <= 100 * p) & (100 * p <= hi))
    assert 0.95 <= cover <= 0.98  # Clopper-Pearson is exact-conservative: at or a little above 95 %


def test_bootstrap_coverage_on_bernoulli_draws():
    rng = np.random.default_rng(2)
    p, n, draws, settings = 0.3, 200, 1000, I.IntervalSettings(resamples=400)
    k = rng.binomial(n, p, size=draws)
    hits = 0
    for i, ki in enumerate(k):
        x = np.zeros((n, 1))
        x[:ki] = 1
        uniq, counts = I.pattern_counts(x, settings.resamples, np.random.default_rng(i))
        lo, hi = I.percentile_interval(100 * (counts @ uniq)[:, 0] / n)
        hits += lo <= 100 * p <= hi
    assert 0.93 <= hits / draws <= 0.97


def test_bootstrap_agrees_with_scipy_on_a_ratio():
    rows = _outcomes(np.random.default_rng(3), 400)
    x = _ind(rows)
    iv, methods = I.fmr_intervals(x, I.IntervalSettings(resamples=4000, seed=0))
    clean, val_final, validated = x[:, 0], x[:, 2], x[:, 1]

    def fmr(c, vf, v, axis=-1):
        return 100 * (100 * vf.sum(axis) / v.sum(axis)) / (100 * c.sum(axis) / c.shape[axis])

    ref = scipy.stats.bootstrap((clean, val_final, validated), fmr, paired=True, vectorized=True,
                                n_resamples=4000, method="percentile", random_state=np.random.default_rng(0))
    assert methods["fmr"] == I.BOOTSTRAP
    assert iv["fmr"][0] == pytest.approx(ref.confidence_interval.low, abs=0.8)
    assert iv["fmr"][1] == pytest.approx(ref.confidence_interval.high, abs=0.8)


def test_detection_and_ece_intervals_agree_with_scipy():
    from fmr_bench.metrics import static as M

    rng = np.random.default_rng(4)
    for n_id, n_ood in ((150, 120), (90, 160)):  # both orientations of the AUROC kernel
        s_id, s_ood = rng.normal(1, 1, n_id), rng.normal(0, 1, n_ood)
        ours = I.detection_intervals(s_id, s_ood, I.IntervalSettings(resamples=2000), np.random.default_rng(0))
        ref = scipy.stats.bootstrap((s_id, s_ood), lambda a, b: 100 * M.auroc(a, b), vectorized=False,
                                    n_resamples=2000, method="percentile", random_state=np.random.default_rng(0))
        assert ours["auroc"][0] == pytest.approx(ref.confidence_interval.low, abs=1.5)
        assert ours["auroc"][1] == pytest.approx(ref.confidence_interval.high, abs=1.5)
        fpr = scipy.stats.bootstrap((s_id, s_ood), lambda a, b: 100 * M.fpr_at_95(a, b), vectorized=False,
                                    n_resamples=2000, method="percentile", random_state=np.random.default_rng(0))
        assert ours["fpr_at_95"][0] == pytest.approx(fpr.confidence_interval.low, abs=3)
        assert ours["fpr_at_95"][1] == pytest.approx(fpr.confidence_interval.high, abs=3)


def test_weighted_kernels_equal_the_plain_metric_at_unit_weights():
    """The weighted forms of AUROC/FPR@95/ECE, with every sample drawn once, are the plain metrics."""
    import torch

    from fmr_bench.metrics import static as M

    class Once:  # a generator whose "resample" is the sample itself
        def integers(self, lo, n, size):
            return np.tile(np.arange(n), (size[0], 1))

        def beta(self, a, b, size):  # the k-th of n ranks drawn once each is rank k - 1
            return np.full(size, (a - 0.5) / (a + b - 1))

        def binomial(self, n, p):  # every sample once: the count is n·share exactly
            return np.rint(n * np.asarray(p))

    rng = np.random.default_rng(5)
    for n_id, n_ood in ((80, 60), (50, 90)):  # full weights on the OOD side, then on the ID side
        s_id, s_ood = np.round(rng.normal(1, 1, n_id), 1), np.round(rng.normal(0, 1, n_ood), 1)  # with ties
        got = I.detection_intervals(s_id, s_ood, I.IntervalSettings(resamples=3), Once())
        assert got["auroc"][0] == pytest.approx(100 * M.auroc(s_id, s_ood))
        assert got["fpr_at_95"][0] == pytest.approx(100 * M.fpr_at_95(s_id, s_ood))
    probs = torch.softmax(torch.tensor(rng.normal(0, 2, (90, 4))), -1)
    labels = torch.tensor(rng.integers(0, 4, 90))
    conf, pred = probs.max(-1)
    ece = I.ece_interval(conf.numpy(), (pred == labels).numpy(), I.IntervalSettings(resamples=2), Once())
    assert ece[0] == pytest.approx(100 * M.ece(probs, labels))


def test_paired_interval_sign_on_constructed_pairs():
    rng = np.random.default_rng(6)
    n = 300
    b_rows = _outcomes(rng, n, p_clean=0.6)
    a_rows = [SampleOutcome(**{**o.__dict__, "clean_pred": o.target}) if rng.random() < 0.5 else o for o in b_rows]
    res = I.paired_difference(_ind(a_rows), _ind(b_rows), lambda s: I.fmr_from_sums(s, n))
    assert res.delta["sa"] > 0 and res.interval["sa"][0] > 0
    assert res.p_value["sa"] < 0.01
    same = I.paired_difference(_ind(b_rows), _ind(b_rows), lambda s: I.fmr_from_sums(s, n))
    assert same.delta["sa"] == 0 and same.interval["sa"] == [0.0, 0.0] and same.p_value["sa"] == 1.0


def test_deterministic_for_a_seed():
    x = _ind(_outcomes(np.random.default_rng(7), 100))
    a = I.fmr_intervals(x, I.IntervalSettings(seed=3))
    assert a == I.fmr_intervals(x, I.IntervalSettings(seed=3))
    assert a[0]["fmr"] != I.fmr_intervals(x, I.IntervalSettings(seed=4))[0]["fmr"]


def test_record_carries_intervals_and_old_records_load(tmp_path):
    from fmr_bench.cli.results import rich_table
    from fmr_bench.results.record import Provenance, fmr_record, load_record
    from fmr_bench.results.table import load_results

    rows = _outcomes(np.random.default_rng(8), 50)
    desc = {"model": {"spec": "m"}, "dataset": {"spec": "d", "class_names": [str(i) for i in range(10)]},
            "generator": {"spec": "g"}, "oracle": {"spec": "o"}, "weights": {}, "defaults": {}, "notes": []}
    rec = fmr_record({"seed": 0, "budget": 2}, desc, rows, run="r1",
                     provenance=Provenance.collect(device="cpu", timestamp=None, command=None))
    d = rec.to_dict()
    assert set(d["intervals"]) >= {"sa", "vr", "pa", "fmr", "pa_all"}
    assert d["interval_method"]["metrics"]["sa"] == "binomial" and d["interval_method"]["metrics"]["fmr"] == "bootstrap"
    lo, hi = d["intervals"]["fmr"]
    assert lo <= d["metrics"]["fmr"] <= hi
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "record.json").write_text(json.dumps(d))
    old = {k: v for k, v in d.items() if k not in ("intervals", "interval_method")}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "record.json").write_text(json.dumps(old))
    assert "intervals" not in load_record(tmp_path / "old").sections
    frame = load_results(tmp_path).sort_values("path")
    assert frame["fmr_lo"].isna().tolist() == [False, True]  # new, old
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(rich_table(frame))
    text = console.export_text()
    fmr = d["metrics"]["fmr"]
    assert text.count(f"{fmr:.2f} [{lo:.2f}, {hi:.2f}]") == 1  # the new record; the old one's FMR is bare
    assert text.count(f"{fmr:.2f}") == 2


def _fmr(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fmr_bench", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, check=False)


def test_compare_refuses_different_samples(tmp_path):
    from fmr_bench.results.record import Provenance, fmr_record

    for name, n in (("a", 10), ("b", 12)):
        rows = _outcomes(np.random.default_rng(9), n)
        desc = {"model": {"spec": name}, "dataset": {"spec": "d", "class_names": [str(i) for i in range(10)],
                                                     "fingerprint": name * 4},
                "generator": {"spec": "g"}, "oracle": {"spec": "o"}, "weights": {}, "defaults": {}, "notes": []}
        rec = fmr_record({"seed": 0}, desc, rows, provenance=Provenance.collect(device="cpu", timestamp=None,
                                                                                command=None))
        (tmp_path / name).mkdir()
        (tmp_path / name / "record.json").write_text(rec.to_json())
        (tmp_path / name / "samples.jsonl").write_text("".join(json.dumps(o.to_dict()) + "\n" for o in rows))
    r = _fmr("compare", "a", "b", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "not on the same images" in r.stderr


def test_compare_two_tiny_real_runs(tmp_path):
    for model in ("builtin:digits-mlp", "builtin:digits-cnn"):
        r = _fmr("evaluate", "--model", model, "--limit", "8", "--budget", "2", "--no-grid", "--quiet",
                 "--out", "runs", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    a, b = sorted((tmp_path / "runs").iterdir())
    r = _fmr("compare", str(a), str(b), "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 8 and {row["metric"] for row in out["rows"]} >= {"sa", "vr", "pa", "fmr"}
    for row in out["rows"]:
        if row["delta"] is not None and row["lo"] is not None:
            assert row["lo"] <= row["delta"] + 1e-9 or row["hi"] >= row["delta"] - 1e-9
    r = _fmr("compare", str(a), str(b), "--format", "csv", cwd=tmp_path)
    assert r.stdout.splitlines()[0] == "metric,a,b,delta,lo,hi,p_value,n"
