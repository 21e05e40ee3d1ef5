"""Weight-space ensembles: WiSE-FT (Wortsman et al. 2022) and uniform model soups.

``θ = (1 − α)·θ₀ + α·θ₁`` over every floating-point state-dict key (integer buffers,
such as BatchNorm's step counters, are taken from the nearer endpoint), so α = 0 and
α = 1 reproduce the endpoints bit for bit. A soup is the mean of several fine-tuned
checkpoints. Both refuse models of different architectures.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import torch

from ..errors import SettingsError
from ..models import ImageClassifier, load_model


def _as_model(m: str | ImageClassifier) -> ImageClassifier:
    return load_model(m) if isinstance(m, str) else m


def check_same_architecture(models: Sequence[ImageClassifier]) -> None:
    """Raise :class:`SettingsError` unless all state dicts have the same keys and shapes."""
    ref = models[0].net.state_dict()
    for m in models[1:]:
        sd = m.net.state_dict()
        if m.arch != models[0].arch or sd.keys() != ref.keys() or any(sd[k].shape != ref[k].shape for k in ref):
            raise SettingsError(f"cannot mix {models[0].spec or models[0].arch} ({models[0].arch}) with "
                                f"{m.spec or m.arch} ({m.arch}): different architectures; WiSE-FT and soups need "
                                "checkpoints fine-tuned from the same pre-trained model")


def check_alphas(alphas: Sequence[float]) -> list[float]:
    out = [float(a) for a in alphas]
    if not out:
        raise SettingsError("give at least one alpha, e.g. --wise 0,0.5,1")
    bad = [a for a in out if not 0.0 <= a <= 1.0]
    if bad:
        raise SettingsError(f"WiSE-FT alphas must lie in [0, 1] (got {bad[0]}); pass e.g. --wise 0,0.25,0.5,0.75,1")
    return out


def mix_states(state0: dict[str, torch.Tensor], state1: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 − α)·θ₀ + α·θ₁ per key (state dicts of the same architecture)."""
    out = {}
    for k, a in state0.items():
        b = state1[k]
        if a.is_floating_point():
            out[k] = ((1 - alpha) * a.float() + alpha * b.float()).to(a.dtype)
        else:
            out[k] = (b if alpha >= 0.5 else a).clone()
    return out


def wise_ft(zero_shot: str | ImageClassifier, fine_tuned: str | ImageClassifier, alpha: float) -> ImageClassifier:
    """The WiSE-FT model at ``alpha`` (0: the zero-shot model, 1: the fine-tuned one), a new object."""
    (alpha,) = check_alphas([alpha])
    m0, m1 = _as_model(zero_shot), _as_model(fine_tuned)
    check_same_architecture([m0, m1])
    out = copy.deepcopy(m1)
    out.net.load_state_dict(mix_states(m0.net.state_dict(), m1.net.state_dict(), alpha))
    out.spec = f"wise-ft:alpha={alpha:g}"
    return out


def uniform_soup(models: Sequence[str | ImageClassifier]) -> ImageClassifier:
    """Mean of the weights of ``models`` (Wortsman et al. 2022, uniform soup)."""
    ms = [_as_model(m) for m in models]
    if not ms:
        raise SettingsError("a soup needs at least one checkpoint")
    check_same_architecture(ms)
    states = [m.net.state_dict() for m in ms]
    mixed = {}
    for k, t in states[0].items():
        if t.is_floating_point():
            mixed[k] = (torch.stack([s[k].float() for s in states]).sum(0) / len(states)).to(t.dtype)
        else:
            mixed[k] = t.clone()
    out = copy.deepcopy(ms[0])
    out.net.load_state_dict(mixed)
    out.spec = f"soup:{len(ms)}"
    return out


def wise_grid(zero_shot: str | ImageClassifier, fine_tuned: str | ImageClassifier, alphas: Sequence[float],
              out: str | Path | None, *, evaluators: Sequence[str] = (), data=None, ood: Sequence = (),
              limit: int | None = None, budget: int | None = None, device: str = "auto",
              rebuild_head: bool = False) -> list[dict]:
    """Write and score the WiSE-FT model at each α: ``OUT/wise-alpha0.50.safetensors`` and ``OUT/wise.json``.

    Each mix is a file ``fmr evaluate --model file:…`` loads; scoring (optional) uses
    :func:`fmr_bench.finetune.callbacks.score` on ``data``. ``rebuild_head`` (for FLYP / StarFT
    models, whose head comes from the text tower) recomputes each mix's zero-shot head from
    its mixed text tower. Returns one row per α.
    """
    from ..models.file import save_model
    from .callbacks import score
    from ..files import write_json
    from ..results.study import study_document

    alphas = check_alphas(alphas)
    m0, m1 = _as_model(zero_shot), _as_model(fine_tuned)
    check_same_architecture([m0, m1])
    if evaluators and data is None:
        raise SettingsError("scoring the WiSE-FT grid needs evaluation data, e.g. --eval-data digits")
    folder = Path(out) if out is not None else None
    rows = []
    s0, s1 = m0.net.state_dict(), m1.net.state_dict()
    for a in alphas:
        mixed = copy.deepcopy(m1)
        mixed.net.load_state_dict(mix_states(s0, s1, a))
        mixed.spec = f"wise-ft:alpha={a:g}"
        if rebuild_head:
            from .adapters import parts_of

            parts_of(mixed).require_text("--rebuild-head")
            parts_of(mixed).prepare_eval()
        row: dict = {"alpha": a, "head": "rebuilt from the mixed text tower" if rebuild_head else "mixed"}
        if folder is not None:
            path = save_model(mixed, folder / f"wise-alpha{a:.2f}.safetensors")
            row["model"] = f"file:{path}"
        if evaluators:
            row["evaluations"] = score(mixed.eval(), list(evaluators), data, ood, limit=limit, budget=budget, device=device)
        rows.append(row)
        if folder is not None:
            write_json(folder / "wise.json", study_document(
                "wise-ft", {"zero_shot": m0.spec, "fine_tuned": m1.spec, "alphas": list(alphas)}, rows,
                zero_shot=m0.spec, fine_tuned=m1.spec))
    return rows
