"""The oracle under attack (FMR paper §5 and App. L, Table 15).

The protocol trusts its oracle h to say whether a perturbed image still shows its class.
This study measures how hard a targeted white-box attack in pixel space must work to move
the oracle, next to one or more classifiers attacked the same way:

* images in [0, 1]; each model sees its own preprocessing (resize, mean/std) applied
  differentiably inside its forward pass, as in the FMR loop;
* the target class is the same for every model, fixed per sample before the attack
  (:data:`TARGET_RULES`): ``next`` = (y + 1) mod C, or ``oracle-runner-up`` = the oracle's most
  likely wrong class on the clean image;
* the target loss is -log p[target], p the model's softmax over its outputs (for an oracle
  ensemble, the mean of its members' probabilities, as the protocol uses it);
* ``pgd``: iterated signed-gradient steps of size ``step`` on the target loss, projected onto the
  L∞ ball of radius ``eps`` around x and onto [0, 1], from x itself (no random start, so a run
  is deterministic); ``fgsm``: one step of size ``eps``.

Per step t = 0 (clean) ... T the means over the sample set of the target loss, p[true],
p[target], and the shares of samples whose argmax is the target / the true class are kept,
per model. :func:`attack_oracle` writes to its folder::

    attack.csv    one row per (model, step): the means
    attack.json   the request, settings, models, sample ids, rows, summary and provenance
    attack.png    target loss, p[true] and p[target] against the step, one line per model
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SettingsError

if TYPE_CHECKING:  # types only: building the CLI parser reads the settings without importing torch
    from datetime import datetime

    import torch
    from torch import nn

    from ..datasets import ImageDataset
    from ..oracles import Oracle

#: Attack methods: ``pgd`` (iterated, projected) and ``fgsm`` (one step of size eps).
METHODS = ("pgd", "fgsm")
#: Resolution of image-file datasets when none is set (the FMR loop's default).
DEFAULT_RESOLUTION = 224
CURVE_COLUMNS = ("role", "model", "step", "target_loss", "p_true", "p_target", "hit_target", "still_true")


def _next_class(y: torch.Tensor, oracle_probs: torch.Tensor) -> torch.Tensor:
    return (y + 1) % oracle_probs.shape[-1]


def _oracle_runner_up(y: torch.Tensor, oracle_probs: torch.Tensor) -> torch.Tensor:
    return oracle_probs.scatter(-1, y[:, None], -1.0).argmax(-1)


#: How each sample's target class is chosen: ``rule(y, oracle's clean probabilities) -> target``.
TARGET_RULES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "next": _next_class,
    "oracle-runner-up": _oracle_runner_up,
}


@dataclass(frozen=True)
class AttackSettings:
    """How the attack runs; ``step``/``steps`` ``None`` take the method's default.

    Attributes:
        method: ``pgd`` or ``fgsm``.
        eps: L∞ radius in [0, 1] pixel units.
        step: PGD step size (default eps / 8); FGSM steps by eps.
        steps: PGD steps (default 80, as Table 15); FGSM takes one.
        target: a rule of :data:`TARGET_RULES`.
        limit: number of samples drawn (seeded) from the dataset; ``None`` = all.
        seed: seed of the sample draw.
        batch_size: images per forward/backward pass.
        device: ``auto``, ``cpu``, ``cuda``...
    """

    method: str = "pgd"
    eps: float = 8 / 255
    step: float | None = None
    steps: int | None = None
    target: str = "next"
    limit: int | None = 128
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"

    def validated(self) -> AttackSettings:
        """Range checks; the method's defaults filled in.

        Raises:
            SettingsError: one line naming the option and a valid value.
        """
        if self.method not in METHODS:
            raise SettingsError(f"--method {self.method!r} is unknown; pass one of {', '.join(METHODS)}")
        if self.target not in TARGET_RULES:
            raise SettingsError(f"--target {self.target!r} is unknown; pass one of {', '.join(TARGET_RULES)}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and 0 < self.eps <= 1):
            raise SettingsError(f"--eps must be in (0, 1] (pixels are in [0, 1]), got {self.eps}; e.g. --eps 0.0314")
        if self.method == "fgsm":
            if self.step is not None or self.steps not in (None, 1):
                raise SettingsError("--method fgsm takes one step of size --eps; drop --step/--steps or use "
                                    "--method pgd")
            return replace(self, step=float(self.eps), steps=1)
        step = self.eps / 8 if self.step is None else self.step
        steps = 80 if self.steps is None else self.steps
        if not (math.isfinite(step) and step > 0):
            raise SettingsError(f"--step must be > 0, got {step}; e.g. --step {self.eps / 8:.4g}")
        if not (isinstance(steps, int) and steps >= 1):
            raise SettingsError(f"--steps must be an integer >= 1, got {steps}; e.g. --steps 80")
        for name in ("limit", "batch_size"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and v >= 1):
                raise SettingsError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v}")
        return replace(self, step=float(step), steps=steps)


@dataclass
class AttackCurves:
    """Per-step means of one model under attack: lists of length steps + 1 (step 0 = clean)."""

    target_loss: list[float]
    p_true: list[float]
    p_target: list[float]
    hit_target: list[float]
    still_true: list[float]


@dataclass
class AttackResult:
    """The curves of every attacked model (the oracle first) and the files written."""

    models: list[str]
    roles: list[str]
    curves: list[AttackCurves]
    settings: AttackSettings
    path: Path | None = None
    plot: Path | None = None

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for role, model, c in zip(self.roles, self.models, self.curves):
            for t in range(len(c.target_loss)):
                out.append({"role": role, "model": model, "step": t, "target_loss": c.target_loss[t],
                            "p_true": c.p_true[t], "p_target": c.p_target[t], "hit_target": c.hit_target[t],
                            "still_true": c.still_true[t]})
        return out


def targeted_attack(log_probs: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                    target: torch.Tensor, *, eps: float, step: float, steps: int,
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Targeted L∞ signed-gradient attack on one batch, with the per-step statistics.

    Args:
        log_probs: differentiable ``x -> (N, C)`` log-probabilities over the dataset classes.
        x: clean images (N, 3, H, W) in [0, 1].
        y, target: true and target classes (N,).
        eps, step, steps: L∞ radius, step size, number of steps (FGSM: ``step = eps, steps = 1``).

    Returns:
        The final adversarial images and a dict of (steps + 1, N) tensors: ``target_loss``,
        ``p_true``, ``p_target``, ``hit_target`` and ``still_true`` (0/1), row t after t steps.
    """
    import torch

    x = x.detach()
    rows = torch.arange(len(y), device=x.device)
    stats: dict[str, list[torch.Tensor]] = {k: [] for k in CURVE_COLUMNS[3:]}
    adv = x.clone()
    for t in range(steps + 1):
        adv.requires_grad_(True)
        lp = log_probs(adv).float()
        loss = -lp[rows, target]
        with torch.no_grad():
            pred = lp.argmax(-1)
            stats["target_loss"].append(loss.detach())
            stats["p_true"].append(lp[rows, y].exp())
            stats["p_target"].append(lp[rows, target].exp())
            stats["hit_target"].append((pred == target).float())
            stats["still_true"].append((pred == y).float())
        if t == steps:
            break
        (grad,) = torch.autograd.grad(loss.sum(), adv)
        with torch.no_grad():  # descend the target loss, then back into the eps ball and [0, 1]
            adv = adv - step * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach(), {k: torch.stack(v) for k, v in stats.items()}


def classifier_log_probs(clf: nn.Module, index: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Log-softmax over all of ``clf``'s outputs, read at the outputs ``index`` of the dataset classes."""
    import torch.nn.functional as F

    return lambda x: F.log_softmax(clf(x).float(), dim=-1)[:, index]


def oracle_log_probs(oracle: Oracle) -> Callable[[torch.Tensor], torch.Tensor]:
    """Log of the oracle's probabilities (members' softmax averaged), with gradients
    (``Oracle.forward`` runs without them)."""
    import torch

    def f(x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(-1) for m in oracle.members]).mean(0)
        return probs.clamp_min(1e-30).log()
    return f


def attack_oracle(oracle: str, compare: str | Sequence[str], data: str | ImageDataset = "digits", *,
                  settings: AttackSettings | None = None, to: str | Path | None = None,
                  out: str | Path = "runs", pretrained: bool = True, write_files: bool = True,
                  log: Callable[[str], None] | None = None, **overrides: Any) -> AttackResult:
    """Attack the oracle and the comparison model(s) with the same targeted attack.

    Args:
        oracle: an oracle spec (``builtin:digits-clip``, ``openclip:ViT-B-32/openai``, ``A+B``).
        compare: model spec(s), a list or comma-separated.
        data: dataset spec or object; ``limit`` samples are drawn from it with ``seed``.
        settings: an :class:`AttackSettings`; keyword ``overrides`` (``eps=...``) replace fields.
        to: output folder; default ``OUT/attack-oracle__<oracle>__<data>__<hash of the request>``.
        pretrained: False builds models with random weights (tests).
        write_files: False keeps everything in memory.
        log: optional ``callable(str)`` for progress lines.

    Raises:
        SettingsError, SpecError, OutputError: bad input or an unwritable folder, before any attack runs.
    """
    from ..datasets import ImageDataset, load_dataset
    from ..files import require_writable
    from ..models import model_weight_refs
    from ..oracles import oracle_weight_refs
    from ..results.rundir import run_dir
    from ..runtime import now, resolve_device, seed_everything
    from ..weights import preflight

    cfg = _settings(settings, overrides)
    models = _compare_specs(compare)
    preflight(oracle_weight_refs(oracle) + [r for m in models for r in model_weight_refs(m)])
    dataset = data if isinstance(data, ImageDataset) else load_dataset(data)
    dataset.set_resolution(dataset.resolution or DEFAULT_RESOLUTION)
    request = {"study": "attack-oracle", "oracle": oracle, "compare": models, "dataset": dataset.spec,
               "resolution": dataset.resolution, "settings": {k: v for k, v in asdict(cfg).items()
                                                               if k not in ("device", "batch_size")}}
    if write_files:
        to = Path(to) if to is not None else run_dir(Path(out), f"attack-oracle__{oracle}", dataset.spec, request)
        require_writable(to, fix="pick a writable --to or --out")
    say = log or (lambda _msg: None)
    started = now()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)

    ora, clfs, index = _load_attacked(oracle, models, dataset, device, pretrained)
    picked = select_samples(len(dataset), cfg.limit, cfg.seed)
    curves, targets = _attack_samples(ora, clfs, index, dataset, picked, cfg, device, say)
    res = AttackResult([oracle, *models], ["oracle", *["compare"] * len(models)], curves, cfg)
    if not write_files:
        return res
    _write_attack(res, to, request, ora, clfs, dataset, picked, targets, started, device)
    return res


def _settings(settings: AttackSettings | None, overrides: dict[str, Any]) -> AttackSettings:
    """``settings`` (or the defaults) with the keyword overrides, validated."""
    known = {f for f in AttackSettings.__dataclass_fields__}
    unknown = set(overrides) - known
    if unknown:
        raise SettingsError(f"unknown setting(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known))}")
    return replace(settings or AttackSettings(), **overrides).validated()


def _compare_specs(compare: str | Sequence[str]) -> list[str]:
    """The comparison model specs, from a list or a comma-separated string; none is an error."""
    models = [m.strip() for m in compare.split(",")] if isinstance(compare, str) else [str(m) for m in compare]
    models = [m for m in models if m]
    if not models:
        raise SettingsError("--compare is empty; pass a model spec, e.g. --compare builtin:digits-cnn")
    return models


def _load_attacked(oracle: str, models: list[str], dataset: ImageDataset, device: torch.device,
                   pretrained: bool) -> tuple[Oracle, list[nn.Module], list[torch.Tensor]]:
    """The frozen oracle, the frozen comparison models and each one's indices of the dataset classes."""
    import torch

    from ..models import load_model, map_classes
    from ..oracles import load_oracle

    ora = load_oracle(oracle, dataset.class_names, pretrained=pretrained).to(device).eval()
    for p in ora.parameters():
        p.requires_grad_(False)
    clfs = []
    index: list[torch.Tensor] = []
    for m in models:
        clf = load_model(m, class_names=dataset.class_names, pretrained=pretrained).to(device).freeze()
        n_out = clf.num_classes or int(clf(torch.zeros(1, 3, dataset.resolution, dataset.resolution,
                                                        device=device)).shape[-1])
        cmap = map_classes(clf.class_names, n_out, dataset.class_names, label_space=dataset.label_space,
                           model_label_space=clf.label_space, model=m)
        clfs.append(clf)
        index.append(cmap.tensor(device))
    return ora, clfs, index


def _attack_samples(ora: Oracle, clfs: list[nn.Module], index: list[torch.Tensor], dataset: ImageDataset,
                    picked: list[int], cfg: AttackSettings, device: torch.device,
                    say: Callable[[str], None]) -> tuple[list[AttackCurves], list[int]]:
    """Attack every model on the picked samples, batch by batch: the per-step mean curves (the oracle
    first) and each sample's target class."""
    import torch

    fns = [oracle_log_probs(ora), *(classifier_log_probs(c, i) for c, i in zip(clfs, index))]
    sums: list[dict[str, torch.Tensor]] = [{} for _ in fns]
    targets: list[int] = []
    for start in range(0, len(picked), cfg.batch_size):
        chunk = picked[start:start + cfg.batch_size]
        x = torch.stack([dataset.load(i) for i in chunk]).to(device)
        y = torch.tensor([dataset.labels[i] for i in chunk], device=device)
        with torch.no_grad():
            target = TARGET_RULES[cfg.target](y, ora(x))
        targets += target.tolist()
        for k, fn in enumerate(fns):
            _, stats = targeted_attack(fn, x, y, target, eps=cfg.eps, step=cfg.step, steps=cfg.steps)
            for name, v in stats.items():
                sums[k][name] = sums[k].get(name, 0) + v.sum(1).double().cpu()
        say(f"attacked {min(start + cfg.batch_size, len(picked))}/{len(picked)} samples")
    n = len(picked)
    curves = [AttackCurves(**{name: (s[name] / n).tolist() for name in CURVE_COLUMNS[3:]}) for s in sums]
    return curves, targets


def _write_attack(res: AttackResult, to: Path, request: dict[str, Any], ora: Oracle, clfs: list[nn.Module],
                  dataset: ImageDataset, picked: list[int], targets: list[int], started: datetime,
                  device: torch.device) -> None:
    """Write attack.csv, attack.json and attack.png to ``to``; set ``res.path`` and ``res.plot``."""
    from ..files import write_json
    from ..results.record import Provenance
    from ..runtime import command_line, describe_device
    from .tables import write_csv

    cfg, n = res.settings, len(picked)
    rows = res.rows()
    write_csv(to / "attack.csv", rows, CURVE_COLUMNS)
    prov = Provenance.collect(device=describe_device(device), timestamp=started.isoformat(timespec="seconds"),
                              command=command_line())
    write_json(to / "attack.json", {
        "study": "attack-oracle", "request": request, "settings": asdict(cfg),
        "attack": {"norm": "Linf", "pixel_range": [0, 1], "loss": "-log p[target]", "random_start": False,
                   "preprocessing": "each model's own, differentiable, inside its forward pass"},
        "oracle": {**ora.settings()}, "models": [c.describe() for c in clfs],
        "dataset": {**dataset.describe(), "n_selected": n, "ids": [dataset.ids[i] for i in picked],
                    "targets": targets},
        "summary": summary(res), "rows": rows, "provenance": prov.to_dict()})
    res.path = to
    res.plot = plot_attack(res, to / "attack.png", title=f"targeted {cfg.method.upper()} on {dataset.spec}, "
                                                         f"eps {cfg.eps:.4g}, step {cfg.step:.4g}, n = {n}")


def select_samples(n: int, limit: int | None, seed: int) -> list[int]:
    """All indices, or a seeded draw of ``limit`` of them in dataset order (as the FMR run selects)."""
    import random

    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def summary(res: AttackResult) -> list[dict[str, Any]]:
    """Per model: clean and final means, and the first step at which half the samples hit the target."""
    out = []
    for role, model, c in zip(res.roles, res.models, res.curves):
        half = next((t for t, v in enumerate(c.hit_target) if v >= 0.5), None)
        out.append({"role": role, "model": model, "clean_accuracy": c.still_true[0],
                    "target_loss": [c.target_loss[0], c.target_loss[-1]], "p_true": [c.p_true[0], c.p_true[-1]],
                    "p_target": [c.p_target[0], c.p_target[-1]], "final_hit_target": c.hit_target[-1],
                    "first_step_half_hit": half})
    return out


def plot_attack(res: AttackResult, path: str | Path, *, title: str = "") -> Path:
    """Target loss, p[true] and p[target] against the step, one line per model."""
    import matplotlib

    from ..plots import finish_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for role, model, c in zip(res.roles, res.models, res.curves):
        label = f"{model} ({role})"
        style = "-" if role == "oracle" else "--"
        marker = "o" if len(c.target_loss) <= 2 else None  # FGSM: two points
        for ax, values in zip(axes, (c.target_loss, c.p_true, c.p_target)):
            ax.plot(range(len(values)), values, style, marker=marker, label=label)
    for ax, name in zip(axes, ("target loss  −log p[target]", "p[true]", "p[target]")):
        ax.set_xlabel("attack step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(0, 1)
    axes[2].set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    return finish_figure(fig, path, title)
