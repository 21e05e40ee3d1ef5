"""Fitting the sparse-VQGAN mask (FMR paper §3.2.1 and App. I; SPEC §1 "Sparse VQGAN").

Three stages, each usable alone:

1. :func:`collect_latents` runs the dense FMR loop on a fit split of n images and keeps,
   per image, the encoder latent of the original (continuous, before quantisation — SPEC
   §1; its quantised version is kept too) and the final quantised latent that the
   decoder consumed for the perturbed image (for a sample the oracle rejects at the first
   step, x-hat = x and that is the quantised latent of x). With a work folder every
   image's latents are appended to ``latents.jsonl`` as soon as its loop ends, so an
   interrupted collection (Ctrl-C, kill -9) continues where it stopped.
2. :func:`fit_mask` fits the paper's L1 logistic regression (scikit-learn, solver saga)
   on the 2n rows (original = 0, perturbed = 1) and returns the dims with non-zero
   weight. The paper's strength 36.36 (``C = 1/36.36``) is absolute in scikit-learn's
   objective, so how many dims survive depends on n and on the latents' scale: by
   default C is chosen over a grid on a validation split (:func:`select_c`), the paper's
   C among the candidates; ``lam=`` fixes it instead.
3. :func:`write_mask_card` writes the mask (``.npy``, uint8 of the latent shape) and its
   card (JSON) that ``--generator sparse-vqgan:NAME-or-PATH`` loads.

Choices the paper leaves open, recorded in every card:

- The splits keep both rows of an image on the same side (test: ``test_size`` of the
  images, never seen by the fit nor by the choice of C; validation: ``val_size`` of the
  rest), so a held-out score never sees an image whose twin was trained on; the paper
  splits the 2n rows 0.8 : 0.2 without saying how.
- Features are the raw latents, as in the paper (no standardisation by default);
  ``standardize=True`` is available and recorded.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, InterruptedRun, OutputError, SettingsError
from ..files import atomic_write, write_json

#: The paper's regularisation strength (App. I); scikit-learn's C is its inverse.
PAPER_LAMBDA = 36.36
PAPER_C = 1.0 / PAPER_LAMBDA
ORIGINALS = ("encoder", "quantised")
#: The C values tried on the validation split: a log grid around the paper's C, plus it.
C_GRID = tuple(sorted({float(f"{c:.4g}") for c in np.logspace(-3, 1, 17)} | {PAPER_C}))
#: Selection: among the Cs that keep between MIN_DIMS and MAX_SHARE of the latent dims
#: (a mask of most dims is the dense generator again; the paper's keep 0.7-2 %), the most
#: regularised whose validation accuracy is within C_TOLERANCE points of their best.
C_TOLERANCE = 1.0
MIN_DIMS = 4
MAX_SHARE = 0.1
VAL_SIZE = 0.2
#: Inside ``--out``: one folder per collection, named by the hash of its settings.
WORK_DIR = "work"
LATENTS_LOG = "latents.jsonl"
LATENTS_NPZ = "latents.npz"


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


class LatentLog:
    """Append-only JSON lines, one per image: its id, index and three latents (float32,
    little-endian, base64), made durable at once.

    Reading skips a line that does not parse (a tail torn by kill -9 or a full disk) and
    lets a later line for the same id win; opening for append first cuts a torn tail, so
    the next line starts clean. The caller holds the run folder's lock.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._f: Any = None

    def read(self) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return rows
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    rows[row["id"]] = {"index": int(row["index"]), "shape": tuple(row["shape"]),
                                       **{k: _unpack(row[k], row["shape"]) for k in ("z", "zq", "final")}}
                except (ValueError, KeyError, TypeError):  # torn or foreign line: that image is redone
                    continue
        return rows

    def append(self, image_id: str, index: int, shape: tuple[int, ...], z: np.ndarray, zq: np.ndarray,
               final: np.ndarray) -> None:
        line = json.dumps({"id": image_id, "index": index, "shape": list(shape),
                           "z": _pack(z), "zq": _pack(zq), "final": _pack(final)}) + "\n"
        try:
            if self._f is None:
                self._open()
            self._f.write(line.encode())
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise OutputError(f"cannot append to {self.path} ({e.strerror or type(e).__name__}); free space or pick "
                              "another --out, then re-run the same command to resume") from None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            with open(self.path, "r+b") as f:
                data = f.read()
                keep = data.rfind(b"\n") + 1
                if keep < len(data):  # a torn last line: cut it
                    f.truncate(keep)
        self._f = open(self.path, "ab")  # noqa: SIM115  (held across appends; close() closes it)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _pack(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _unpack(text: str, shape: list[int]) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4")
    if a.size != int(np.prod(shape)):
        raise ValueError("latent of the wrong size")
    return a.astype(np.float32)


def work_folder(out: str | Path, model: str, data: str, generator: str | None, oracle: str | None,
                overrides: dict[str, Any]) -> Path:
    """``OUT/work/fit-HASH``: where one collection's latents go, named by its settings."""
    from ..results.rundir import settings_hash

    key = {"model": model, "data": data, "generator": generator, "oracle": oracle,
           "settings": {k: overrides[k] for k in sorted(overrides)}}
    return Path(out) / WORK_DIR / f"fit-{settings_hash(key)}"


def collect_latents(model: str, data: str, *, generator: str | None = None, oracle: str | None = None,
                    work: str | Path | None = None, progress: bool = False, fresh: bool = False,
                    say: Callable[[str], None] | None = None, **overrides: Any) -> LatentSet:
    """Run the dense loop on ``data`` and keep the latents of originals and perturbed images.

    Args:
        model, data, oracle: specs as for :func:`fmr_bench.evaluate`.
        generator: the dense generator (default: the dataset world's, e.g. ``vqgan:digits``).
        work: a folder for this collection (e.g. :func:`work_folder`): the loop's run folder
            and ``latents.jsonl`` go there, each image's latents appended as soon as its loop
            ends, so calling again with the same folder continues an interrupted collection.
            ``None`` keeps everything in memory.
        progress: the loop's progress bar (rate, ETA).
        fresh: collect again from scratch (the earlier loop outcomes are set aside, not deleted).
        say: called with one line per stage (what is collected, where, how many were there).
        overrides: FMR settings (``budget``, ``step_size``, ``limit``, ``seed``...).

    Raises:
        DataError: the fit split holds fewer than two images.
        SpecError: ``generator`` is itself a sparse generator.
        InterruptedRun: Ctrl-C; the message says how many images' latents are saved, and where.
    """
    from ..datasets import load_dataset
    from ..engine.fmr import evaluate
    from ..generators import generator_weight_refs, load_generator
    from ..weights import preflight

    say = say or (lambda line: None)
    dataset = load_dataset(data)
    n = _fit_split_size(dataset, overrides.get("limit"))
    world = dataset.world
    gen_spec = _dense_generator(generator, world.generator)
    log = LatentLog(Path(work) / LATENTS_LOG) if work is not None else None
    memory: dict[str, dict[str, Any]] = {}
    if log is not None:
        have = len(log.read())
        say(f"collecting the latents of {n} images of {dataset.spec} (dense loop {gen_spec}); each image's are "
            f"appended to {log.path} as its loop ends" + (f" ({have} already there)" if have else ""))
    preflight(generator_weight_refs(gen_spec, world.generator))
    gen = load_generator(gen_spec, default=world.generator, seed=overrides.get("seed", 0))
    hook = _latent_hook(gen, log, memory)

    def loop(again: bool):
        try:
            return evaluate(model, dataset, generator=gen, oracle=oracle, out=work, progress=progress,
                            sample_hook=hook, write_grid=False, fresh=again, **overrides)
        except (InterruptedRun, KeyboardInterrupt):
            raise _interrupted(log, n) from None
        finally:
            if log is not None:
                log.close()

    result = loop(fresh)
    rows = log.read() if log is not None else memory
    if any(o.id not in rows for o in result.outcomes):  # outcomes on disk without their latents (a lost file)
        say(f"{sum(o.id not in rows for o in result.outcomes)} finished images have no latents in {log.path}; "
            "collecting again from scratch")
        result = loop(True)
        rows = log.read()
    return _latent_set(result, rows, gen_spec, gen.settings(), dataset.spec, work)


def _fit_split_size(dataset: Any, limit: int | None) -> int:
    """How many images of ``dataset`` the collection runs on (``limit`` of them at most); fewer than 2 is an error."""
    n = len(dataset) if limit is None else min(len(dataset), limit)
    if n < 2:
        raise DataError(f"fit split {dataset.spec} holds {n} image(s); a mask needs at least 2 (80/20 split): "
                        "pass a non-empty split, e.g. --data digits:train")
    return n


def _interrupted(log: LatentLog | None, n: int) -> InterruptedRun:
    """The error of an interrupted collection: how many images' latents are saved, and where (or that none is)."""
    if log is None:
        return InterruptedRun("interrupted; the latents were kept in memory only (no work folder): nothing is saved")
    return InterruptedRun(f"interrupted; the latents of {len(log.read())}/{n} images are saved in "
                          f"{log.path}; re-run the same command to resume")


def _dense_generator(generator: str | None, world_generator: str) -> str:
    """The dense generator spec to collect with (default: the world's; bare ``vqgan`` spelled out as the
    world's card the mask belongs to).

    Raises:
        SpecError: ``generator`` is itself a sparse generator.
    """
    from ..errors import SpecError

    gen_spec = generator or world_generator
    if gen_spec == "vqgan" and world_generator.startswith("vqgan:"):  # the card the mask belongs to, spelled out
        gen_spec = world_generator
    if gen_spec.startswith("sparse-vqgan"):
        raise SpecError(f"fit masks on the dense generator, not {gen_spec}; e.g. --generator {world_generator}")
    return gen_spec


def _latent_hook(gen: Any, log: LatentLog | None,
                 memory: dict[str, dict[str, Any]]) -> Callable[..., None]:
    """The loop's sample hook: one image's encoder latent (and its quantised version) and final latent,
    appended to ``log``, or kept in ``memory`` when there is no log."""
    def hook(outcome, clean: torch.Tensor, final: torch.Tensor, latent: torch.Tensor) -> None:
        device = next(gen.parameters()).device
        with torch.no_grad():
            z = gen.encode(clean[None].to(device)).float()
            zq = gen.final_latent(z).float()
        arrays = (z[0].cpu().numpy().ravel(), zq[0].cpu().numpy().ravel(), latent.float().numpy().ravel())
        if log is not None:  # before the loop's outcome is written: a resumed run redoes what is missing here
            log.append(outcome.id, outcome.index, tuple(latent.shape), *arrays)
        else:
            memory[outcome.id] = {"index": outcome.index, "shape": tuple(latent.shape),
                                  **dict(zip(("z", "zq", "final"), arrays))}
    return hook


def _latent_set(result: Any, rows: dict[str, dict[str, Any]], gen_spec: str, gen_settings: dict[str, Any],
                data_spec: str, work: str | Path | None) -> LatentSet:
    """The :class:`LatentSet` of a finished loop: its outcomes' latents, in outcome order, and the metadata."""
    outcomes = result.outcomes
    if not outcomes:
        raise DataError(f"the dense loop on {data_spec} produced no samples; check --data and --limit")
    col = lambda key: np.stack([rows[o.id][key] for o in outcomes]).astype(np.float32)
    rec = result.record
    meta = {"generator": gen_spec, "generator_settings": gen_settings, "dataset": data_spec,
            "model": rec["model"]["spec"], "oracle": rec["oracle"].get("spec"), "settings": rec["settings"],
            "loop_metrics": rec["metrics"], "timestamp": rec["provenance"]["timestamp"],
            "work": None if work is None else str(work)}
    return LatentSet(col("z"), col("zq"), col("final"), [o.id for o in outcomes],
                     np.array([o.validated for o in outcomes]), np.array([o.steps for o in outcomes]),
                     rows[outcomes[0].id]["shape"], meta)


@dataclass
class MaskFit:
    """Outcome of :func:`fit_mask`; scores and sparsity in percent."""

    mask: np.ndarray  # bool, latent shape
    sparsity: float  # % of zero weights
    test_score: float  # held-out accuracy (images neither the fit nor the choice of C saw)
    train_score: float
    n_train_images: int
    n_test_images: int
    converged: bool
    n_iter: int
    params: dict[str, Any]
    selection: dict[str, Any] | None = None  # the C grid on the validation split (None: C was fixed)


def _logistic_l1(C: float, max_iter: int, tol: float, seed: int):
    import sklearn
    from sklearn.linear_model import LogisticRegression

    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    if (major, minor) >= (1, 8):  # penalty= is deprecated there; l1_ratio=1 is the same L1 problem
        return LogisticRegression(l1_ratio=1.0, solver="saga", C=C, max_iter=max_iter, tol=tol, random_state=seed)
    return LogisticRegression(penalty="l1", solver="saga", C=C, max_iter=max_iter, tol=tol, random_state=seed)


def choose_c(grid: list[dict[str, Any]], tolerance: float = C_TOLERANCE, min_dims: int = MIN_DIMS,
             max_dims: int | None = None) -> tuple[float, bool]:
    """Among the Cs keeping ``min_dims`` to ``max_dims`` dims, the most regularised
    (smallest) whose validation accuracy is within ``tolerance`` points of their best;
    returns (C, rule met).

    When no C keeps a number of dims in that range, the rule is reported as not met and
    the C keeping the most dims below ``max_dims`` is taken (then: the best accuracy), or
    else the smallest C that keeps any; when every C keeps none, the largest C.
    """
    top = max_dims if max_dims is not None else max(r["dims"] for r in grid)
    ok = [r for r in grid if min_dims <= r["dims"] <= top]
    if ok:
        best = max(r["val_accuracy"] for r in ok)
        return min(r["C"] for r in ok if r["val_accuracy"] >= best - tolerance), True
    below = [r for r in grid if 0 < r["dims"] <= top]
    if below:
        return max(below, key=lambda r: (r["dims"], r["val_accuracy"], -r["C"]))["C"], False
    kept = [r for r in grid if r["dims"] > 0]
    if kept:
        return min(r["C"] for r in kept), False
    return max(r["C"] for r in grid), False


def fit_mask(latents: LatentSet, *, seed: int = 0, lam: float | None = None, c_grid: tuple[float, ...] = C_GRID,
             c_tolerance: float = C_TOLERANCE, min_dims: int = MIN_DIMS, max_dims: int | None = None,
             val_size: float = VAL_SIZE,
             test_size: float = 0.2, original: str = "encoder", standardize: bool = False, max_iter: int = 1000,
             tol: float = 1e-4, say: Callable[[str], None] | None = None) -> MaskFit:
    """Fit the L1 logistic regression and return the dims with non-zero weight.

    Args:
        latents: the latent dataset (:func:`collect_latents` or :meth:`LatentSet.load`).
        seed: seed of the image splits (and of saga's shuffling).
        lam: a fixed regularisation strength, ``C = 1 / lam`` (the paper's: 36.36); ``None``
            (default) chooses C over ``c_grid`` on a validation split with :func:`choose_c`
            (``c_tolerance`` points, ``min_dims`` to ``max_dims`` dims; default ``max_dims``:
            ``MAX_SHARE`` of the latent), then refits on train + validation.
        val_size: share of the non-test images that validate C.
        test_size: share of images held out from the fit and from the choice of C (paper: 0.2).
        original: ``encoder`` (continuous encoder latent, SPEC §1) or ``quantised``
            (its nearest codes) as the label-0 row.
        standardize: scale every dim to zero mean and unit variance on the train rows first.
        max_iter, tol: saga's budget (scikit-learn's default max_iter is 100, too few to
            converge on raw latents; the card records whether it converged).
        say: called with one line per C tried.
    """
    need = _check_fit_args(len(latents.ids), lam, c_grid, original, test_size, val_size)
    n = len(latents.ids)
    say = say or (lambda line: None)
    e0 = latents.originals if original == "encoder" else latents.originals_quantised
    e1 = latents.finals
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(n - (need - 1), max(1, round(test_size * n)))
    test, train = perm[:n_test], perm[n_test:]

    def fit(C: float, tr: np.ndarray, te: np.ndarray):
        return _fit_split(C, e0, e1, tr, te, standardize=standardize, max_iter=max_iter, tol=tol, seed=seed)

    selection = None
    if lam is None:
        top = max_dims if max_dims is not None else max(1, int(MAX_SHARE * e0.shape[1]))
        C, selection = _select_c(fit, train, c_grid, c_tolerance, min_dims, top, val_size, say)
    else:
        C = 1.0 / lam
    clf, converged, train_score, test_score = fit(C, train, test)
    coef = clf.coef_.ravel()
    params = {"method": "L1-regularised logistic regression (scikit-learn LogisticRegression, solver saga)",
              "lambda": 1.0 / C, "C": C, "C_from": "validation grid" if lam is None else "fixed (--lam)",
              "paper_C": PAPER_C, "max_iter": max_iter, "tol": tol, "test_size": test_size,
              "split": "by image: both rows of an image on the same side", "original_row": original,
              "standardize": standardize, "seed": seed}
    return MaskFit(mask=(coef != 0).reshape(latents.latent_shape), sparsity=100.0 * float(np.mean(coef == 0)),
                   test_score=test_score, train_score=train_score, n_train_images=len(train),
                   n_test_images=len(test), converged=converged, n_iter=clf.n_iter_.max().item(), params=params,
                   selection=selection)


def _check_fit_args(n: int, lam: float | None, c_grid: tuple[float, ...], original: str, test_size: float,
                    val_size: float) -> int:
    """Check :func:`fit_mask`'s arguments; returns the fewest images the fit needs (2 with a fixed C, else 3).

    Raises:
        SettingsError, DataError: one line naming the fix.
    """
    if original not in ORIGINALS:
        raise SettingsError(f"unknown original row {original!r}; use one of {', '.join(ORIGINALS)}")
    if (lam is not None and not lam > 0) or not 0 < test_size < 1 or not 0 < val_size < 1:
        raise SettingsError("lambda must be > 0 and the test and validation shares in (0, 1); "
                            "e.g. --lam 36.36 --test-size 0.2 --val-size 0.2")
    if lam is None and (not c_grid or any(not c > 0 for c in c_grid)):
        raise SettingsError("the C grid needs at least one value, all > 0; e.g. --c-grid 0.01,0.1,1")
    need = 2 if lam is not None else 3
    if n < need:
        raise DataError(f"the latent dataset holds {n} image(s); a mask needs at least {need} (train, "
                        + ("test)" if need == 2 else "validation and test; or fix C with --lam)"))
    return need


def _fit_split(C: float, e0: np.ndarray, e1: np.ndarray, tr: np.ndarray, te: np.ndarray, *, standardize: bool,
               max_iter: int, tol: float, seed: int) -> tuple[Any, bool, float, float]:
    """Fit at ``C`` on the images ``tr`` (original rows 0, perturbed rows 1) and score on ``te``:
    (classifier, converged, train accuracy %, held-out accuracy %)."""
    from sklearn.exceptions import ConvergenceWarning

    def rows(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate([e0[idx], e1[idx]]).astype(np.float64),
                np.concatenate([np.zeros(len(idx), int), np.ones(len(idx), int)]))

    (xtr, ytr), (xte, yte) = rows(tr), rows(te)
    if standardize:
        mu, sd = xtr.mean(0), xtr.std(0)
        sd[sd == 0] = 1.0
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    clf = _logistic_l1(C, max_iter, tol, seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(xtr, ytr)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return clf, converged, 100.0 * float(clf.score(xtr, ytr)), 100.0 * float(clf.score(xte, yte))


def _select_c(fit: Callable[[float, np.ndarray, np.ndarray], tuple[Any, bool, float, float]], train: np.ndarray,
              c_grid: tuple[float, ...], c_tolerance: float, min_dims: int, top: int, val_size: float,
              say: Callable[[str], None]) -> tuple[float, dict[str, Any]]:
    """Try every C of the grid on a validation split of ``train`` and choose one with :func:`choose_c`:
    (C, the selection record of the card)."""
    n_val = min(len(train) - 1, max(1, round(val_size * len(train))))
    val, fit_part = train[:n_val], train[n_val:]  # train is already in random order
    grid = []
    for C in sorted(c_grid):
        clf, conv, _, acc = fit(C, fit_part, val)
        grid.append({"C": C, "val_accuracy": round(acc, 2), "dims": int(np.count_nonzero(clf.coef_)),
                     "converged": conv})
        say(f"C = {C:.4g}: validation accuracy {acc:.2f} %, {grid[-1]['dims']} dims"
            + ("" if conv else " (saga not converged)"))
    C, met = choose_c(grid, c_tolerance, min(min_dims, top), top)
    selection = {"rule": f"among the Cs keeping {min_dims} to {top} dims, the smallest whose validation accuracy "
                         f"is within {c_tolerance:g} points of their best; then refit on train + validation",
                 "grid": grid, "chosen_C": C, "rule_met": met, "tolerance": c_tolerance, "min_dims": min_dims,
                 "max_dims": top,
                 "best_val_accuracy": max(r["val_accuracy"] for r in grid), "val_size": val_size,
                 "n_fit_images": len(fit_part), "n_val_images": len(val), "paper_C": PAPER_C}
    return C, selection


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
        "accept": (latents.meta.get("settings") or {}).get("accept"),
        "latent_shape": list(latents.latent_shape),
        "mask": {"file": mask_file.name, "format": "npy", "dtype": "uint8", "dims": int(fit.mask.sum()),
                 "sha256": None},
        "dims_kept": int(fit.mask.sum()),
        "held_out_accuracy": round(fit.test_score, 2),
        "sparsity": round(fit.sparsity, 2),
        "test_score": round(fit.test_score, 2),
        "train_score": round(fit.train_score, 2),
        "n_train_images": fit.n_train_images,
        "n_test_images": fit.n_test_images,
        "converged": fit.converged,
        "n_iter": fit.n_iter,
        "fit": fit.params,
        "selection": fit.selection,
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
