"""fmr attack-oracle: the targeted L-inf attack kernel against a plain reference, its bound, determinism,
the files the command writes, and bad input as one line."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from fmr_bench.cli import main
from fmr_bench.studies.attack_oracle import (
    AttackSettings,
    attack_oracle,
    classifier_log_probs,
    targeted_attack,
)

EPS, STEP = 0.05, 0.01


def _linear(seed: int = 0, c: int = 4, d: int = 3 * 6 * 6):
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(c, d, generator=g), torch.randn(c, generator=g)
    return w, b, (lambda x: F.log_softmax(x.flatten(1) @ w.T + b, -1))


def _images(n: int = 8, seed: int = 1) -> torch.Tensor:
    x = torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    x[:, 0, 0, :] = 0.0  # pixels on the edges of [0, 1]: the clamp must hold there
    x[:, 1, 0, :] = 1.0
    return x


def _reference_pgd(w, b, x, target, eps, step, steps):
    """One image at a time, with the closed-form gradient of -log softmax_t(Wx + b) = W^T (p - e_t)."""
    out = []
    for xi, t in zip(x, target):
        flat0 = xi.flatten().double()
        flat = flat0.clone()
        for _ in range(steps):
            p = torch.softmax(w.double() @ flat + b.double(), 0)
            e = torch.zeros_like(p)
            e[t] = 1
            grad = w.double().T @ (p - e)
            flat = flat - step * torch.sign(grad)
            flat = torch.minimum(torch.maximum(flat, flat0 - eps), flat0 + eps).clamp(0, 1)
        out.append(flat.view_as(xi).float())
    return torch.stack(out)


def test_attack_lowers_the_target_loss_step_by_step_and_matches_a_plain_reference():
    w, b, lp = _linear()
    x = _images()
    y = torch.zeros(len(x), dtype=torch.long)
    target = torch.full_like(y, 2)
    adv, stats = targeted_attack(lp, x, y, target, eps=EPS, step=STEP / 5, steps=25)
    loss = stats["target_loss"].mean(1)
    assert stats["target_loss"].shape == (26, len(x))
    assert torch.all(loss[1:] <= loss[:-1] + 1e-6), loss  # small steps on a convex loss: never up
    assert loss[-1] < loss[0] - 1.0
    ref = _reference_pgd(w, b, x, target, EPS, STEP / 5, 25)
    assert torch.allclose(adv, ref, atol=1e-5)
    # the recorded probabilities are the model's own at each step
    assert torch.allclose(stats["p_target"][-1], lp(adv).exp()[torch.arange(len(x)), target], atol=1e-5)
    assert torch.allclose(stats["p_true"][0], lp(x).exp()[:, 0], atol=1e-6)


@pytest.mark.parametrize("eps,step,steps", [(EPS, STEP, 40), (0.2, 0.05, 30), (EPS, EPS, 1)])
def test_eps_ball_and_pixel_range_hold(eps, step, steps):
    _, _, lp = _linear(3)
    x = _images(seed=4)
    y = torch.zeros(len(x), dtype=torch.long)
    adv, _ = targeted_attack(lp, x, y, torch.ones_like(y), eps=eps, step=step, steps=steps)
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() >= min(eps, step * steps) - 1e-6  # it did move up to the bound somewhere


def test_fgsm_is_one_signed_step_of_eps():
    w, b, lp = _linear(5)
    x = _images(seed=6)
    y, target = torch.zeros(len(x), dtype=torch.long), torch.full((len(x),), 3)
    s = AttackSettings(method="fgsm", eps=0.03).validated()
    assert (s.step, s.steps) == (0.03, 1)
    adv, stats = targeted_attack(lp, x, y, target, eps=s.eps, step=s.step, steps=s.steps)
    assert stats["p_true"].shape == (2, len(x))
    assert torch.allclose(adv, _reference_pgd(w, b, x, target, 0.03, 0.03, 1), atol=1e-6)


def test_classifier_log_probs_reads_the_mapped_outputs():
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.5]])
    lp = classifier_log_probs(lambda x: logits, torch.tensor([2, 0]))
    assert torch.allclose(lp(None), F.log_softmax(logits, -1)[:, [2, 0]])


def _run(seed, limit=4):
    return attack_oracle("builtin:digits-clip", "builtin:digits-cnn", "digits", pretrained=False,
                         write_files=False, limit=limit, seed=seed, steps=3, device="cpu")


def test_deterministic_for_a_seed():
    a, b, c = _run(0), _run(0), _run(1)
    assert a.models == ["builtin:digits-clip", "builtin:digits-cnn"] and a.roles == ["oracle", "compare"]
    assert a.rows() == b.rows()
    assert a.rows() != c.rows()  # another seed draws other samples


def test_cli_writes_csv_json_and_plot(tmp_path, capsys):
    to = tmp_path / "att"
    code = main(["attack-oracle", "--oracle", "builtin:digits-clip", "--compare",
                 "builtin:digits-cnn,builtin:digits-judge", "--limit", "6", "--steps", "4", "--eps", "0.05",
                 "--batch-size", "4", "--to", str(to), "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    with open(to / "attack.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 5
    assert {r["model"] for r in rows} == {"builtin:digits-clip", "builtin:digits-cnn", "builtin:digits-judge"}
    rec = json.loads((to / "attack.json").read_text())
    assert rec["settings"]["eps"] == 0.05 and rec["settings"]["step"] == pytest.approx(0.05 / 8)
    assert rec["dataset"]["n_selected"] == 6 and len(rec["dataset"]["ids"]) == 6
    from fmr_bench.datasets import load_dataset

    ds = load_dataset("digits")
    label = dict(zip(ds.ids, ds.labels))
    assert rec["dataset"]["targets"] == [(label[i] + 1) % 10 for i in rec["dataset"]["ids"]]  # --target next
    assert {"commit", "versions", "device", "timestamp"} <= set(rec["provenance"])
    assert rec["provenance"]["command"] is None or "attack-oracle" in rec["provenance"]["command"]
    for r in rows:  # means of probabilities stay probabilities
        assert 0 <= float(r["p_true"]) <= 1 and 0 <= float(r["p_target"]) <= 1
    assert (to / "attack.png").stat().st_size > 0
    assert "attack.csv" in capsys.readouterr().out


@pytest.mark.parametrize("extra,fragment", [
    (["--eps", "0"], "--eps must be in (0, 1]"),
    (["--eps", "1.5"], "--eps must be in (0, 1]"),
    (["--method", "fgsm", "--steps", "5"], "--method fgsm takes one step"),
    (["--step", "-1"], "--step must be > 0"),
    (["--steps", "0"], "--steps must be an integer >= 1"),
    (["--limit", "0"], "--limit must be an integer >= 1"),
])
def test_bad_settings_are_one_line_exit_2(tmp_path, capsys, extra, fragment):
    code = main(["attack-oracle", "--oracle", "builtin:digits-clip", "--compare", "builtin:digits-cnn",
                 "--to", str(tmp_path / "x"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "x").exists()  # refused before anything was written


@pytest.mark.parametrize("oracle,compare,fragment", [
    ("builtin:digits-clip", ",", "--compare is empty"),
    ("builtin:nope", "builtin:digits-cnn", "nope"),
    ("builtin:digits-clip", "builtin:nope", "nope"),
])
def test_bad_specs_are_one_line_exit_2(tmp_path, capsys, oracle, compare, fragment):
    code = main(["attack-oracle", "--oracle", oracle, "--compare", compare, "--to", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and fragment in err, err


def test_unwritable_output_is_refused_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import fmr_bench.oracles

    def boom(*a, **k):
        raise AssertionError("the oracle was loaded before the output folder was checked")

    monkeypatch.setattr(fmr_bench.oracles, "load_oracle", boom)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["attack-oracle", "--oracle", "builtin:digits-clip", "--compare", "builtin:digits-cnn",
                 "--to", str(blocker / "sub")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cannot write" in err, err
