"""Fitting the sparse-VQGAN mask (FMR paper §3.2.1 and App. I; SPEC §1 "Sparse VQGAN").

Three stages, each usable alone:

1. :func:`collect_latents` runs the dense FMR loop on a fit split of n images and keeps,
   per image, the encoder latent of the original (continuous, before quantisation — SPEC
   §1; its quantised version is kept too) and the final quantised latent that the
   decoder consumed for the perturbed image (for a sample the oracle rejects at the first
   step, x-hat = x and that is the quantised latent of x).
2. :func:`fit_mask` fits the paper's L1 logistic regression (scikit-learn, solver saga,
   regularisation strength 36.36, i.e. ``C = 1/36.36``) on the 2n rows (original = 0,
   perturbed = 1), 80/20 split with a seed, and returns the dims with non-zero weight.
3. :func:`write_mask_card` writes the mask (``.npy``, uint8 of the latent shape) and its
   card (JSON) that ``--generator sparse-vqgan:NAME-or-PATH`` loads.

Choices the paper leaves open, recorded in every card:

- The split keeps both rows of an image on the same side (80 % of the images train,
  20 % test), so the held-out score never sees an image whose twin was trained on; the
  paper splits the 2n rows 0.8 : 0.2 without saying how.
- Features are the raw latents, as in the paper (no standardisation by default): the L1
  penalty of strength 36.36 acts on the weights of raw latent values, so standardising
  would select a different set; ``standardize=True`` is available and recorded.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, SettingsError
from ..files import atomic_write, write_json

#: The paper's regularisation strength (App. I); scikit-learn's C is its inverse.
PAPER_LAMBDA = 36.36
ORIGINALS = ("encoder", "quantised")


@dataclass
class LatentSet:
    """The 2n-row latent dataset of one fit run (flattened latents, float32)."""

    originals: np.ndarray  # (n, D) encoder latents of the clean images (continuous)
    originals_quantised: np.ndarray  # (n, D) their nearest codes
    finals: np.ndarray  # (n, D) final quantised latents of the perturbed images
    ids: list[str]
    validated: np.ndarray  # (n,) bool
    steps: np.ndarray  # (n,) steps survived
    latent_shape: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)  # generator, dataset, model, settings, loop metrics

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        return atomic_write(path, lambda f: np.savez_compressed(
            f, originals=self.originals, originals_quantised=self.originals_quantised, finals=self.finals,
            ids=np.array(self.ids), validated=self.validated, steps=self.steps,
            latent_shape=np.array(self.latent_shape), meta=np.array(json.dumps(self.meta))), resume=False)

    @classmethod
    def load(cls, path: str | Path) -> LatentSet:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"latent dataset {path} does not exist; run fmr fit-sparse without --from-latents first")
        with np.load(path, allow_pickle=False) as f:
            return cls(f["originals"], f["originals_quantised"], f["finals"], [str(i) for i in f["ids"]],
                       f["validated"], f["steps"], tuple(int(s) for s in f["latent_shape"]),
                       json.loads(str(f["meta"])))


def collect_latents(model: str, data: str, *, generator: str | None = None, oracle: str | None = None,
                    progress: bool = False, **overrides: Any) -> LatentSet:
    """Run the dense loop on ``data`` and keep the latents of originals and perturbed images.

    Args:
        model, data, oracle: specs as for :func:`fmr_bench.evaluate`.
        generator: the dense generator (default: the dataset world's, e.g. ``vqgan:digits``).
        overrides: FMR settings (``budget``, ``step_size``, ``limit``, ``seed``...).

    Raises:
        DataError: the fit split holds fewer than two images.
        SpecError: ``generator`` is itself a sparse generator.
    """
    from ..datasets import load_dataset
    from ..errors import SpecError
    from ..generators import generator_weight_refs, load_generator
    from ..engine.fmr import evaluate
    from ..weights import preflight

    dataset = load_dataset(data)
    n = len(dataset) if overrides.get("limit") is None else min(len(dataset), overrides["limit"])
    if n < 2:
        raise DataError(f"fit split {dataset.spec} holds {n} image(s); a mask needs at least 2 (80/20 split): "
                        "pass a non-empty split, e.g. --data digits:train")
    world = dataset.world
    gen_spec = generator or world.generator
    if gen_spec == "vqgan" and world.generator.startswith("vqgan:"):  # the card the mask belongs to, spelled out
        gen_spec = world.generator
    if gen_spec.startswith("sparse-vqgan"):
        raise SpecError(f"fit masks on the dense generator, not {gen_spec}; e.g. --generator {world.generator}")
    preflight(generator_weight_refs(gen_spec, world.generator))
    gen = load_generator(gen_spec, default=world.generator, seed=overrides.get("seed", 0))

    rows: dict[str, tuple[int, np.ndarray, np.ndarray, np.ndarray, bool, int]] = {}

    def hook(outcome, clean: torch.Tensor, final: torch.Tensor, latent: torch.Tensor) -> None:
        device = next(gen.parameters()).device
        with torch.no_grad():
            z = gen.encode(clean[None].to(device)).float()
            zq = gen.final_latent(z).float()
        rows[outcome.id] = (outcome.index, z[0].cpu().numpy().ravel(), zq[0].cpu().numpy().ravel(),
                            latent.float().numpy().ravel(), outcome.validated, outcome.steps)
        if not hasattr(hook, "shape"):
            hook.shape = tuple(latent.shape)

    result = evaluate(model, dataset, generator=gen, oracle=oracle, out=None, progress=progress, sample_hook=hook,
                      **overrides)
    if not rows:
        raise DataError(f"the dense loop on {dataset.spec} produced no samples; check --data and --limit")
    order = sorted(rows, key=lambda k: rows[k][0])
    col = lambda j: np.stack([rows[k][j] for k in order]).astype(np.float32)
    rec = result.record
    meta = {"generator": gen_spec, "generator_settings": gen.settings(), "dataset": dataset.spec,
            "model": rec["model"]["spec"], "oracle": rec["oracle"].get("spec"), "settings": rec["settings"],
            "loop_metrics": rec["metrics"], "timestamp": rec["provenance"]["timestamp"]}
    return LatentSet(col(1), col(2), col(3), order, np.array([rows[k][4] for k in order]),
                     np.array([rows[k][5] for k in order]), hook.shape, meta)


@dataclass
class MaskFit:
    """Outcome of :func:`fit_mask`; scores and sparsity in percent."""

    mask: np.ndarray  # bool, latent shape
    sparsity: float  # % of zero weights
    test_score: float  # held-out accuracy
    train_score: float
    n_train_images: int
    n_test_images: int
    converged: bool
    n_iter: int
    params: dict[str, Any]


def _logistic_l1(C: float, max_iter: int, tol: float, seed: int):
    import sklearn
    from sklearn.linear_model import LogisticRegression

    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    if (major, minor) >= (1, 8):  # penalty= is deprecated there; l1_ratio=1 is the same L1 problem
        return LogisticRegression(l1_ratio=1.0, solver="saga", C=C, max_iter=max_iter, tol=tol, random_state=seed)
    return LogisticRegression(penalty="l1", solver="saga", C=C, max_iter=max_iter, tol=tol, random_state=seed)


def fit_mask(latents: LatentSet, *, seed: int = 0, lam: float = PAPER_LAMBDA, test_size: float = 0.2,
             original: str = "encoder", standardize: bool = False, max_iter: int = 1000,
             tol: float = 1e-4) -> MaskFit:
    """Fit the L1 logistic regression and return the dims with non-zero weight.

    Args:
        latents: the latent dataset (:func:`collect_latents` or :meth:`LatentSet.load`).
        seed: seed of the image split (and of saga's shuffling).
        lam: regularisation strength (paper: 36.36); ``C = 1 / lam``.
        test_size: share of images held out (paper: 0.2).
        original: ``encoder`` (continuous encoder latent, SPEC §1) or ``quantised``
            (its nearest codes) as the label-0 row.
        standardize: scale every dim to zero mean and unit variance on the train rows first.
        max_iter, tol: saga's budget (scikit-learn's default max_iter is 100, too few to
            converge on raw latents; the card records whether it converged).
    """
    from sklearn.exceptions import ConvergenceWarning

    if original not in ORIGINALS:
        raise SettingsError(f"unknown original row {original!r}; use one of {', '.join(ORIGINALS)}")
    if not lam > 0 or not 0 < test_size < 1:
        raise SettingsError("lambda must be > 0 and the test share in (0, 1); e.g. --lam 36.36 --test-size 0.2")
    n = len(latents.ids)
    if n < 2:
        raise DataError(f"the latent dataset holds {n} image(s); a mask needs at least 2 (80/20 split)")
    e0 = latents.originals if original == "encoder" else latents.originals_quantised
    e1 = latents.finals
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(test_size * n)))
    test, train = perm[:n_test], perm[n_test:]

    def rows(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate([e0[idx], e1[idx]]).astype(np.float64),
                np.concatenate([np.zeros(len(idx), int), np.ones(len(idx), int)]))

    (xtr, ytr), (xte, yte) = rows(train), rows(test)
    if standardize:
        mu, sd = xtr.mean(0), xtr.std(0)
        sd[sd == 0] = 1.0
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    clf = _logistic_l1(1.0 / lam, max_iter, tol, seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(xtr, ytr)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    coef = clf.coef_.ravel()
    params = {"method": "L1-regularised logistic regression (scikit-learn LogisticRegression, solver saga)",
              "lambda": lam, "C": 1.0 / lam, "max_iter": max_iter, "tol": tol, "test_size": test_size,
              "split": "by image: both rows of an image on the same side", "original_row": original,
              "standardize": standardize, "seed": seed}
    return MaskFit(mask=(coef != 0).reshape(latents.latent_shape), sparsity=100.0 * float(np.mean(coef == 0)),
                   test_score=100.0 * float(clf.score(xte, yte)), train_score=100.0 * float(clf.score(xtr, ytr)),
                   n_train_images=len(train), n_test_images=len(test), converged=converged,
                   n_iter=clf.n_iter_.max().item(), params=params)


def write_mask_card(fit: MaskFit, latents: LatentSet, out_dir: str | Path, name: str,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``NAME.mask.npy`` and ``NAME.json`` into ``out_dir``; return the card's path."""
    from ..generators.sparse import KIND
    from ..runtime import versions

    out_dir = Path(out_dir)
    name = name if name.startswith(KIND + "-") else f"{KIND}-{name}"
    mask_file, card_file = out_dir / f"{name}.mask.npy", out_dir / f"{name}.json"
    gen_spec = latents.meta.get("generator", "")
    gen_card = latents.meta.get("generator_settings", {}).get("card")  # a VQGAN's card name
    m = latents.meta.get("loop_metrics", {})
    card = {
        "name": name,
        "kind": KIND,
        "description": (f"Sparse-VQGAN mask (FMR paper §3.2.1, App. I) for {gen_spec} on {latents.meta.get('dataset')}: "
                        f"{int(fit.mask.sum())} of {fit.mask.size} latent dims move, the rest stay at the encoder's "
                        "value. Written by fmr fit-sparse."),
        "generator": gen_spec,
        "generator_card": gen_card,
        "dataset": latents.meta.get("dataset"),
        "model": latents.meta.get("model"),
        "oracle": latents.meta.get("oracle"),
        "n": len(latents.ids),
        "latent_shape": list(latents.latent_shape),
        "mask": {"file": mask_file.name, "format": "npy", "dtype": "uint8", "dims": int(fit.mask.sum()),
                 "sha256": None},
        "sparsity": round(fit.sparsity, 2),
        "test_score": round(fit.test_score, 2),
        "train_score": round(fit.train_score, 2),
        "n_train_images": fit.n_train_images,
        "n_test_images": fit.n_test_images,
        "converged": fit.converged,
        "n_iter": fit.n_iter,
        "fit": fit.params,
        "seed": fit.params["seed"],
        "loop": {"settings": latents.meta.get("settings"),
                 "vr": m.get("vr"), "mean_steps": m.get("mean_steps"), "n_validated": m.get("n_validated"),
                 "sa": m.get("sa"), "pa": m.get("pa"), "fmr": m.get("fmr")},
        "date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
        "versions": {k: v for k, v in versions().items() if k in ("fmr_bench", "torch", "python")}
        | {"scikit-learn": _sklearn_version()},
        **(extra or {}),
    }
    buf = io.BytesIO()
    np.save(buf, fit.mask.astype(np.uint8), allow_pickle=False)
    card["mask"]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    atomic_write(mask_file, buf.getvalue(), resume=False)
    write_json(card_file, card, resume=False)  # last: a card exists only with its complete mask
    return card_file


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def summary(fit: MaskFit) -> dict[str, Any]:
    """The fit's numbers without the mask, for printing and records."""
    return {k: v for k, v in asdict(fit).items() if k != "mask"} | {"dims": int(fit.mask.sum())}
