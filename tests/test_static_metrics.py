"""Static-evaluator kernels against independent implementations on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, roc_curve

from fmr_bench.metrics import static as M


def _scores(seed: int, ties: bool):
    rng = np.random.default_rng(seed)
    s_id = rng.normal(1.0, 1.0, 300 + seed)
    s_ood = rng.normal(0.0, 1.2, 200 + 3 * seed)
    if ties:
        s_id, s_ood = np.round(s_id, 1), np.round(s_ood, 1)
    return s_id, s_ood


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False), (3, True)])
def test_ranking_metrics_match_sklearn(seed, ties):
    s_id, s_ood = _scores(seed, ties)
    y = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
    s = np.r_[s_id, s_ood]
    assert M.auroc(s_id, s_ood) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.aupr_in(s_id, s_ood) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert M.aupr_out(s_id, s_ood) == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    expected = fpr[np.searchsorted(tpr, 0.95, side="left")]
    assert M.fpr_at_95(s_id, s_ood) == pytest.approx(expected, abs=1e-12)


def test_fpr_at_95_convention_id_positive_higher_is_in():
    s_id = np.arange(100, dtype=float)  # threshold accepting 95 % of ID is 5
    s_ood = np.array([4.0, 5.0, 6.0, -1.0])
    assert M.fpr_at_95(s_id, s_ood) == pytest.approx(0.5)
    assert M.detection_metrics(s_id, s_id + 1000)["auroc"] == 0.0  # OOD scored as more ID: worst case


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_torchmetrics_and_imagenet_x(seed):
    from torchmetrics.functional.classification import multiclass_calibration_error

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(500, 7, generator=g) * (1 + seed)
    labels = torch.randint(0, 7, (500,), generator=g)
    probs = logits.double().softmax(-1)
    ours = M.ece(probs, labels, 15)
    tm = multiclass_calibration_error(probs.float(), labels, num_classes=7, n_bins=15, norm="l1").item()
    assert ours == pytest.approx(tm, abs=1e-5)
    from imagenet_x.aggregate import estimated_calibration_error

    conf, pred = probs.max(-1)
    ix = estimated_calibration_error((pred == labels).numpy().astype(float), conf.numpy(), n_bins=15)
    assert ours == pytest.approx(ix, abs=1e-12)


def test_ece_bins_are_closed_on_the_right():
    # Confidence exactly 1/3 with 3 bins lies in (0, 1/3], the first bin; torchmetrics puts it in the second.
    probs = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    rows = M.reliability_bins(probs, labels, 3)
    assert [r["n"] for r in rows] == [1, 1, 0]
    from imagenet_x.aggregate import estimated_calibration_error

    conf, pred = probs.max(-1)
    ix = estimated_calibration_error((pred == labels).numpy().astype(float), conf.numpy(), n_bins=3)
    assert M.ece(probs, labels, 3) == pytest.approx(ix)


def test_nll_and_temperature_fit():
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=g) * 3
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    over = true_logits * 2.5  # over-confident by T = 2.5
    assert M.nll(over, labels) == pytest.approx(log_loss(labels.numpy(), over.double().softmax(-1).numpy(),
                                                         labels=list(range(5))), abs=1e-9)
    t = M.fit_temperature(over, labels)
    assert t == pytest.approx(2.5, rel=0.08)
    grid = torch.linspace(t - 0.2, t + 0.2, 41)  # LBFGS lands on the grid minimum (step 0.01)
    best = grid[torch.tensor([M.nll(over, labels, float(x)) for x in grid]).argmin()].item()
    assert t == pytest.approx(best, abs=0.011)
    assert M.nll(over, labels, t) <= M.nll(over, labels) + 1e-12


def test_ood_scores():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.4, 0.3]])
    torch.testing.assert_close(M.msp(logits), logits.double().softmax(-1).max(-1).values)
    torch.testing.assert_close(M.max_logit(logits), torch.tensor([2.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(M.energy(logits), torch.logsumexp(logits.double(), -1))
    cos = logits / 10
    torch.testing.assert_close(M.mcm(cos), (cos.double()).softmax(-1).max(-1).values)


def test_effective_robustness_line():
    ids = np.array([60.0, 70.0, 80.0, 90.0])
    slope, intercept = 0.8, -0.7
    oods = M.sigmoid_pct(slope * M.logit(ids) + intercept)
    s, b = M.fit_baseline(ids, oods)
    assert (s, b) == (pytest.approx(slope), pytest.approx(intercept))
    assert M.effective_robustness(75.0, float(M.sigmoid_pct(slope * M.logit(75.0) + intercept)) + 3.0, (s, b)) \
        == pytest.approx(3.0)


def test_subset_restriction_and_max_projection_on_synthetic_logits():
    logits = torch.arange(24, dtype=torch.float32).view(2, 12)
    logits[1] = logits[1].flip(0)
    sub = M.restrict_to_subset(logits, [1, 5, 7])
    torch.testing.assert_close(sub, logits[:, [1, 5, 7]])
    assert sub.argmax(-1).tolist() == [2, 0]  # 7 is the largest for row 0, 1 for the flipped row
    proj = M.max_project(logits, [(0, 11), (3,), (4, 5, 6)])
    torch.testing.assert_close(proj[:, 0], torch.maximum(logits[:, 0], logits[:, 11]))
    torch.testing.assert_close(proj[:, 2], logits[:, 4:7].max(-1).values)


def test_objectnet_projection_takes_max_over_mapped_imagenet_classes():
    from fmr_bench.datasets.imagenet_variants import objectnet_metadata
    from fmr_bench.datasets.projection import Projection

    _, label_to_ids = objectnet_metadata()
    assert len(label_to_ids) == 113
    names = sorted(label_to_ids)
    proj = Projection("max", tuple(label_to_ids[k] for k in names))
    k = names.index("Alarm clock")
    ids = label_to_ids["Alarm clock"]
    assert len(ids) == 2  # analog clock; digital clock
    logits = torch.full((1, 1000), -5.0)
    logits[0, ids[1]] = 3.0
    out = proj.apply(logits)
    assert out.shape == (1, 113) and out.argmax(-1).item() == k and out[0, k].item() == 3.0


def test_border_crop_removes_two_pixels_each_side():
    from PIL import Image

    from fmr_bench.datasets.imagenet_variants import border_crop

    arr = np.zeros((8, 10, 3), dtype=np.uint8)
    arr[:2] = arr[-2:] = arr[:, :2] = arr[:, -2:] = 255  # white frame
    out = np.asarray(border_crop(Image.fromarray(arr), 2))
    assert out.shape == (4, 6, 3) and out.max() == 0


def test_factor_aggregation_matches_imagenet_x_package():
    import pandas as pd
    from imagenet_x import FACTORS, compute_factor_accuracies, error_ratio

    from fmr_bench.evaluators.imagenet_x import FACTORS as OURS
    from fmr_bench.evaluators.imagenet_x import error_ratios, factor_accuracies

    assert OURS == FACTORS
    rng = np.random.default_rng(0)
    n = 400
    fac = np.zeros((n, 16), dtype=int)
    fac[np.arange(n), rng.integers(0, 16, n)] = 1
    fac |= (rng.random((n, 16)) < 0.1).astype(int)  # a few multi-factor rows
    correct = rng.random(n) < 0.7
    df = pd.DataFrame(fac, columns=FACTORS).assign(model="m", is_correct=correct)
    ref = compute_factor_accuracies(df, FACTORS, "is_correct").loc["m"]
    ours = factor_accuracies(correct, fac)
    for f in FACTORS + ["worst_factor", "average"]:
        assert ours[f] == pytest.approx(ref[f])
    ref_ratio = error_ratio(compute_factor_accuracies(df, FACTORS, "is_correct")).loc["m"]
    for f, v in error_ratios(ours).items():
        assert v == pytest.approx(ref_ratio[f])


def test_group_accuracies_match_pandas():
    import pandas as pd

    from fmr_bench.evaluators.group_robustness import group_accuracies

    g = torch.Generator().manual_seed(0)
    pred, labels, groups = (torch.randint(0, 3, (200,), generator=g) for _ in range(3))
    ours = group_accuracies(pred, labels, groups, 4)
    ref = pd.DataFrame({"c": (pred == labels).numpy(), "g": groups.numpy()}).groupby("g").c.mean() * 100
    assert ours[:3] == pytest.approx(ref.tolist()) and ours[3] is None


def test_baseline_from_records_csv_or_literal(tmp_path):
    import json

    from fmr_bench.errors import DataError
    from fmr_bench.evaluators.ood_accuracy import load_baseline

    slope, intercept = 0.9, -0.4
    for i, acc in enumerate((60.0, 70.0, 80.0)):
        ood = float(M.sigmoid_pct(slope * M.logit(acc) + intercept))
        rec = {"schema_version": 1, "evaluator": "ood-accuracy", "model": {"spec": f"timm:m{i}"},  # version 1: still read
               "dataset": {"spec": "imagenet:/val"},
               "metrics": {"id_acc": acc, "ood_avg": ood, "imagenet-r/acc": ood, "id/n": 10, "imagenet-r/n": 10}}
        (tmp_path / f"run{i}").mkdir()
        (tmp_path / f"run{i}" / "record.json").write_text(json.dumps(rec))
    lines = load_baseline(str(tmp_path))
    assert set(lines) == {"ood_avg", "imagenet-r"}
    assert lines["ood_avg"] == (pytest.approx(slope), pytest.approx(intercept))
    (tmp_path / "run9").mkdir()
    (tmp_path / "run9" / "record.json").write_text('{"evaluator": "ood-accuracy"}')  # not a run record: named
    with pytest.raises(DataError, match="run9/record.json: no schema_version"):
        load_baseline(str(tmp_path))
    (tmp_path / "pts.csv").write_text("id_acc,ood_acc\n60,40\n80,65\n")
    assert set(load_baseline(str(tmp_path / "pts.csv"))) == {"*"}
    assert load_baseline("1.0,0.5") == {"*": (1.0, 0.5)}
    (tmp_path / "one.csv").write_text("id_acc,ood_acc\n60,40\n")
    with pytest.raises(DataError, match="fewer than two"):
        load_baseline(str(tmp_path / "one.csv"))
