"""Fine-tune the captioned digits CLIP with every method and print the robustness table.

The offline analogue of seed 000 Table 3 and seed 001 Tables 2-3: the zero-shot model
``builtin:digits-clip-captions`` is fine-tuned on ``digits-spurious:train`` (95 % of each
class on its own background) with each method of :mod:`fmr_bench.finetune`, and every
resulting model is scored on

- ``ID``: accuracy on ``digits-spurious:id`` (test digits, same correlation as training),
- ``digits``: accuracy on the plain ``digits:test``,
- ``shift avg``: mean accuracy over the seven ``digits-shift:NAME`` sets,
- ``WG`` / ``Avg``: worst-group and average accuracy on ``digits-spurious:test`` (every
  test digit on every background: the correlation is broken; 100 groups),
- ``FMR``: the FMR protocol on ``digits:test`` (VQGAN generator, ``builtin:digits-clip``
  oracle) over a seeded subset of images and a shortened budget (``--fmr-limit``,
  ``--fmr-budget``; the values are printed with the table).

Rows: zero-shot, LP, FT, LP-FT, FLYP, masked-image counterfactuals (``maskcf``), StarFT
(pools ``fmr_bench/digits/descriptors.json``), WiSE-FT (alpha ``--wise-alpha`` between the
zero-shot model and FT) and the uniform soup of the FT models of all seeds (one row, no
std). Each method runs once per seed; the table gives mean +- std over seeds.

Finished (method, seed) rows are appended to ``OUT/rows.jsonl`` as they complete; a
re-run with the same ``--out`` skips them, so a killed run loses at most the method that
was training. FT models are kept in ``OUT/models/`` for WiSE-FT and the soup. At the end,
``OUT/records/<method>/record.json`` holds one fine-tuning run record per method
(:func:`fmr_bench.results.record.finetune_record`: the mean over its seeds, each seed's row kept):
what the ``digits-finetune`` leaderboard reads (docs/leaderboards.md).

Usage::

    python scripts/finetune_digits_table.py --out runs/digits-finetune          # the documented table
    python scripts/finetune_digits_table.py --out /tmp/t --seeds 0 --epochs 1 \\
        --train-limit 64 --eval-limit 40 --fmr-limit 4 --fmr-budget 2          # a smoke run
"""

from __future__ import annotations

import os

# See train_digits_world.py: spinning OpenMP workers slow a shared machine down.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import fmr_bench
from fmr_bench.datasets import TensorImages, load_dataset
from fmr_bench.datasets.digits_shifts import SHIFTS
from fmr_bench.errors import FmrBenchError, SettingsError
from fmr_bench.evaluators.group_robustness import group_accuracies
from fmr_bench.files import require_writable
from fmr_bench.metrics import intervals as I

POOLS = ROOT / "fmr_bench" / "digits" / "descriptors.json"
TRAINED = ("lp", "ft", "lp-ft", "flyp", "maskcf", "starft")
ROWS = ("zero-shot", *TRAINED, "wise-ft", "soup")
COLUMNS = ("ID", "digits", "shift avg", "WG", "Avg", "FMR")
RECORDS = "records"
SCRIPT = "scripts/finetune_digits_table.py"


@dataclass(frozen=True)
class TableSettings:
    """Everything that determines the table (written into every row).

    ``lr`` and ``beta`` of None keep the fine-tuning preset's values (and stay out of the
    rows' key, so rows measured before these fields existed still match).
    """

    model: str = "builtin:digits-clip-captions"
    train: str = "digits-spurious:train"
    lr: float | None = None
    beta: float | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ROWS
    preset: str = "digits"
    epochs: int = 3
    batch_size: int = 64
    prompt: str = "a photo of a {}"
    concepts: str = "all"
    wise_alpha: float = 0.5
    fmr_limit: int = 32
    fmr_budget: int = 10
    train_limit: int | None = None
    eval_limit: int | None = None
    threads: int = 1

    @property
    def id_data(self) -> str:
        """The ID test set: the training set's rule on the test digits (``digits-spurious:id?...``)."""
        head, _, opts = self.train.partition("?")
        if head != "digits-spurious:train":
            raise SettingsError(f"--train must be digits-spurious:train[?options] (got {self.train!r})")
        return "digits-spurious:id" + (f"?{opts}" if opts else "")

    def validated(self) -> TableSettings:
        unknown = [m for m in self.methods if m not in ROWS]
        if unknown:
            raise SettingsError(f"unknown row(s) {', '.join(unknown)}; use any of {', '.join(ROWS)}")
        if not self.seeds:
            raise SettingsError("give at least one seed, e.g. --seeds 0 1 2")
        if not 0 <= self.wise_alpha <= 1:
            raise SettingsError(f"--wise-alpha must lie in [0, 1] (got {self.wise_alpha})")
        for name in ("epochs", "batch_size", "fmr_limit", "fmr_budget", "threads"):
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        for name in ("lr", "beta"):
            v = getattr(self, name)
            if v is not None and (v < 0 or (name == "lr" and v == 0)):
                raise SettingsError(f"--{name} must be {'> 0' if name == 'lr' else '>= 0'} (got {v})")
        from fmr_bench.errors import SpecError

        try:
            load_dataset(self.id_data)  # a bad ?option is one line before any work
        except SpecError as e:
            raise SettingsError(f"--train {self.train}: {e}") from None
        for name in ("train_limit", "eval_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be >= 1 (got {v})")
        return self


def subset(ds, limit: int | None):
    """Every k-th image of ``ds`` so that about ``limit`` remain (all groups and classes stay represented)."""
    if limit is None or limit >= len(ds):
        return ds
    step = math.ceil(len(ds) / limit)
    idx = list(range(0, len(ds), step))
    images = torch.stack([ds.load(i) for i in idx])
    out = TensorImages(images, [ds.labels[i] for i in idx], ds.class_names, spec=ds.spec, world=ds.world,
                       ids=[ds.ids[i] for i in idx], label_space=ds.label_space)
    for attr in ("groups", "backgrounds"):
        if hasattr(ds, attr):
            setattr(out, attr, [getattr(ds, attr)[i] for i in idx])
    if hasattr(ds, "group_names"):
        out.group_names = ds.group_names
    return out


#: FMR outcome fields kept per row (bit strings), besides the oracle's clean verdict and the steps.
FMR_FIELDS = {"clean": "clean_correct", "validated": "validated", "final": "final_correct"}


def _bits(values) -> str:
    """Per-sample booleans as a string of 0 and 1 (what ``rows.jsonl`` keeps of every image)."""
    return "".join("1" if v else "0" for v in values)


def _ids_digest(ids) -> str:
    import hashlib

    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


class Scorer:
    """Scores a classifier on the table's sets (loaded once)."""

    def __init__(self, cfg: TableSettings) -> None:
        self.cfg = cfg
        lim = cfg.eval_limit
        self.id = subset(load_dataset(cfg.id_data), lim)
        self.spurious = subset(load_dataset("digits-spurious:test"), lim)
        self.clean = subset(load_dataset("digits:test"), lim)
        self.shifts = [subset(load_dataset(f"digits-shift:{s}"), lim) for s in SHIFTS]
        self.fmr_data = load_dataset("digits:test")

    @staticmethod
    @torch.no_grad()
    def predict(clf, ds) -> tuple[torch.Tensor, torch.Tensor]:
        clf.eval()
        preds = []
        for i in range(0, len(ds), 512):
            x = torch.stack([ds.load(j) for j in range(i, min(i + 512, len(ds)))])
            preds.append(clf(x).argmax(1))
        return torch.cat(preds), torch.tensor(ds.labels)

    def accuracy(self, clf, ds) -> float:
        pred, y = self.predict(clf, ds)
        return 100.0 * (pred == y).double().mean().item()

    def correct(self, clf, ds) -> torch.Tensor:
        pred, y = self.predict(clf, ds)
        return pred == y

    def __call__(self, clf) -> tuple[dict[str, float], dict[str, Any]]:
        """(the row's metrics, its per-sample outcomes: :data:`SAMPLES`)."""
        right = {"ID": self.correct(clf, self.id), "digits": self.correct(clf, self.clean),
                 "spurious": self.correct(clf, self.spurious),
                 **{f"shift:{s}": self.correct(clf, ds) for s, ds in zip(SHIFTS, self.shifts)}}
        groups = torch.tensor(self.spurious.groups)
        y = torch.tensor(self.spurious.labels)
        pred = torch.where(right["spurious"], y, -1)  # group_accuracies needs only right or wrong
        accs = [a for a in group_accuracies(pred, y, groups, len(self.spurious.group_names)) if a is not None]
        fmr = fmr_bench.evaluate(clf, self.fmr_data, out=None, write_grid=False, seed=0,
                                 limit=self.cfg.fmr_limit, budget=self.cfg.fmr_budget)
        pct = {k: 100.0 * v.double().mean().item() for k, v in right.items()}
        shifts = {f"shift:{s}": pct[f"shift:{s}"] for s in SHIFTS}
        metrics = {"ID": pct["ID"], "digits": pct["digits"], "shift avg": sum(shifts.values()) / len(shifts),
                   "WG": min(accs), "Avg": pct["spurious"], "FMR": fmr.metrics["fmr"],
                   "SA": fmr.metrics["sa"], "PA": fmr.metrics["pa"], **shifts}
        outcomes = sorted(fmr.outcomes, key=lambda o: o.id)
        samples = {k: _bits(v.tolist()) for k, v in right.items()}
        samples["fmr"] = {"ids_sha256": _ids_digest([o.id for o in outcomes]),
                          **{k: _bits([bool(getattr(o, a)) for o in outcomes]) for k, a in FMR_FIELDS.items()},
                          "oracle": _bits([o.oracle_clean == o.label for o in outcomes]),
                          "steps": [int(o.steps) for o in outcomes]}
        return metrics, samples


class Table:
    """Runs the rows, appends each finished one to ``rows.jsonl``, and skips finished ones."""

    def __init__(self, cfg: TableSettings, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self.rows_file = out / "rows.jsonl"
        self.models_dir = out / "models"
        require_writable(out, "pick another --out")
        self.rows = self._read_rows()
        self._scorer: Scorer | None = None

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            self._scorer = Scorer(self.cfg)
        return self._scorer

    def _key(self) -> dict[str, Any]:
        d = asdict(self.cfg)
        for k in ("seeds", "methods"):
            d.pop(k)
        if d["threads"] == 1:  # the default, left out as in rows written before threads counted
            d.pop("threads")  # (the thread count changes the float sums of training: other weights)
        for k in ("lr", "beta"):  # None: the preset's value, as in rows written before these fields
            if d[k] is None:
                d.pop(k)
        return d

    def _read_rows(self) -> list[dict[str, Any]]:
        if not self.rows_file.is_file():
            return []
        rows = []
        for n, line in enumerate(self.rows_file.read_text().splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except ValueError:
                # a line cut by a kill: the row is recomputed
                print(f"note: {self.rows_file}:{n} is incomplete and is ignored", file=sys.stderr)
        other = [r for r in rows if r.get("settings") != self._key()]
        if other:
            raise FmrBenchError(f"{self.rows_file} holds rows of other settings; pick another --out or delete it")
        return rows

    def done(self, method: str, seed: int | None) -> bool:
        return any(r["method"] == method and r["seed"] == seed for r in self.rows)

    def _append(self, method: str, seed: int | None, scored: tuple[dict[str, float], dict[str, Any]],
                seconds: float) -> None:
        metrics, samples = scored
        row = {"method": method, "seed": seed, "metrics": metrics, "samples": samples, "seconds": round(seconds, 1),
               "settings": self._key()}
        try:
            with open(self.rows_file, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise FmrBenchError(f"cannot append to {self.rows_file} ({e.strerror or type(e).__name__}); free space "
                                "and re-run the same command: finished rows are kept") from None
        self.rows.append(row)
        shown = "  ".join(f"{k} {metrics[k]:.1f}" for k in COLUMNS if metrics.get(k) is not None)
        print(f"  {method:<9} seed {seed}: {shown}  ({seconds:.0f}s)", flush=True)

    def train_data(self):
        return subset(load_dataset(self.cfg.train), self.cfg.train_limit)

    def zero_shot(self):
        return fmr_bench.load_model(self.cfg.model, templates=self.cfg.prompt)

    def finetune(self, method: str, seed: int):
        from fmr_bench.finetune import finetune

        c = self.cfg
        extra = {"descriptors": str(POOLS), "concepts": c.concepts} if method == "starft" else {}
        extra.update({k: v for k, v in (("lr", c.lr), ("beta", c.beta)) if v is not None})
        res = finetune(c.model, self.train_data(), preset=c.preset, method=method, seed=seed, epochs=c.epochs,
                       batch_size=c.batch_size, caption=c.prompt, templates=c.prompt, out=None, **extra)
        return res.model

    def ft_model(self, seed: int):
        path = self.models_dir / f"ft-seed{seed}.safetensors"
        if path.is_file():
            return fmr_bench.load_model(f"file:{path}")
        model = self.finetune("ft", seed)
        fmr_bench.save_model(model, path)
        return model

    def run(self) -> None:
        c = self.cfg
        torch.set_num_threads(c.threads)
        if "zero-shot" in c.methods and not self.done("zero-shot", None):
            t = time.time()
            self._append("zero-shot", None, self.scorer(self.zero_shot()), time.time() - t)
        for seed in c.seeds:
            for method in c.methods:
                if method in ("zero-shot", "soup") or self.done(method, seed):
                    continue
                t = time.time()
                if method == "ft":
                    model = self.ft_model(seed)
                elif method == "wise-ft":
                    from fmr_bench.finetune import wise_ft

                    model = wise_ft(self.zero_shot(), self.ft_model(seed), c.wise_alpha)
                else:
                    model = self.finetune(method, seed)
                self._append(method, seed, self.scorer(model), time.time() - t)
        if "soup" in c.methods and not self.done("soup", None):
            from fmr_bench.finetune import uniform_soup

            t = time.time()
            self._append("soup", None, self.scorer(uniform_soup([self.ft_model(s) for s in c.seeds])),
                         time.time() - t)


#: Paired differences of the table: every method against these rows (mean over seeds of method − reference).
REFERENCES = ("ft", "zero-shot")
#: Columns of the paired-difference table.
PAIRED_COLUMNS = ("ID", "shift avg", "WG", "FMR")


def _unbits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8) - ord("0")


class Uncertainty:
    """Intervals of the table's numbers from the rows' per-sample outcomes (``rows.jsonl``'s ``samples``).

    Each column is a statistic of per-sample sums of one family of test sets (:meth:`families`): ID,
    digits, the seven shifts (the same 360 digits, resampled together), the spurious test set
    (worst-group and average accuracy) and the FMR images. A method's cell is the mean over its seeds
    with a percentile-bootstrap interval over the test images, the image ids drawn once for every seed
    (worst-group: the hull with the basic bootstrap, :data:`fmr_bench.metrics.intervals.BASIC`); the spread over seeds
    is the table's ``±``, not in the interval. A paired difference pairs seed s of a method with seed
    s of the reference (a single model is paired with every seed of the other), resamples the images
    jointly and gives a sign-flip p-value. Rows measured before per-sample outcomes were kept have none.
    """

    def __init__(self, rows: list[dict[str, Any]], groups: list[int], n_groups: int,
                 settings: I.IntervalSettings | None = None) -> None:
        self.rows, self.groups, self.n_groups = rows, groups, n_groups
        self.settings = settings or I.IntervalSettings()

    def families(self, n: dict[str, int]) -> dict[str, tuple[Any, set[str]]]:
        """Family -> (metric of its per-sample sums, the names whose interval is the basic bootstrap's)."""
        def fmr(sums: np.ndarray) -> dict[str, np.ndarray]:
            m = I.fmr_from_sums(sums, n["fmr"])
            return {"FMR": m["fmr"], "SA": m["sa"], "PA": m["pa"]}

        return {"ID": (I.share_metric("ID", n["ID"]), set()),
                "digits": (I.share_metric("digits", n["digits"]), set()),
                "shifts": (I.share_metric("shift avg", n["shifts"]), set()),
                "spurious": (I.group_metric(self.n_groups, "WG", "Avg"), {"WG"}), "fmr": (fmr, set())}

    def per_sample(self, row: dict[str, Any]) -> dict[str, np.ndarray] | None:
        s = row.get("samples")
        if not s:
            return None
        f = s["fmr"]
        return {"ID": _unbits(s["ID"])[:, None], "digits": _unbits(s["digits"])[:, None],
                "shifts": np.stack([_unbits(s[f"shift:{k}"]) for k in SHIFTS], 1),
                "spurious": I.group_columns(_unbits(s["spurious"]), self.groups, self.n_groups),
                "fmr": I.fmr_indicators(_unbits(f["clean"]), _unbits(f["validated"]), _unbits(f["final"]),
                                        _unbits(f["oracle"]), f["steps"])}

    def runs(self, method: str) -> list[tuple[int | None, dict[str, np.ndarray]]] | None:
        """(seed, per-sample arrays) of each run of ``method``, by seed; None if one lacks its outcomes."""
        runs = sorted((r for r in self.rows if r["method"] == method), key=lambda r: (r["seed"] is None, r["seed"]))
        data = [(r["seed"], self.per_sample(r)) for r in runs]
        return data if data and all(d is not None for _, d in data) else None

    @staticmethod
    def _fmr_ids(rows: list[dict[str, Any]]) -> set[str]:
        return {(r.get("samples") or {}).get("fmr", {}).get("ids_sha256") for r in rows}

    def intervals(self, method: str) -> dict[str, tuple[list[float] | None, str]]:
        """Column -> ([lo, hi] of the mean over seeds or None, the method's name)."""
        runs = self.runs(method)
        if runs is None:
            return {}
        out = {}
        n = {k: len(v) for k, v in runs[0][1].items()}
        for family, (metric, basic) in self.families(n).items():
            res = I.seed_mean_intervals([d[family] for _, d in runs], metric, self.settings, basic)
            for name, (_, iv) in res.items():
                out[name] = (iv, I.BASIC if name in basic else I.BOOTSTRAP)
        return out

    def paired(self, method: str, reference: str) -> dict[str, dict[str, float | None]] | None:
        """Column -> {delta, lo, hi, p_value} of ``method`` − ``reference``; None when they cannot be paired."""
        a, b = self.runs(method), self.runs(reference)
        if a is None or b is None or method in (reference, "zero-shot"):
            return None
        if len(self._fmr_ids([r for r in self.rows if r["method"] in (method, reference)])) != 1:
            return None  # FMR on other images
        if len(a) > 1 and len(b) > 1 and [s for s, _ in a] != [s for s, _ in b]:
            return None  # different seeds: nothing to pair
        k = max(len(a), len(b))
        a, b = (a * k if len(a) == 1 else a), (b * k if len(b) == 1 else b)
        out: dict[str, dict[str, float | None]] = {}
        n = {key: len(v) for key, v in a[0][1].items()}
        for family, (metric, basic) in self.families(n).items():
            res = I.paired_seed_difference([d[family] for _, d in a], [d[family] for _, d in b], metric,
                                           self.settings, basic)
            for name in res.delta:
                lo, hi = res.interval[name] or (None, None)
                out[name] = {"delta": res.delta[name], "lo": lo, "hi": hi, "p_value": res.p_value[name]}
        return out


def summarise(rows: list[dict[str, Any]], methods: tuple[str, ...],
              uncertainty: Uncertainty | None = None) -> list[dict[str, Any]]:
    """One entry per method: mean and std (over seeds, ddof 1; 0 for a single run) of each column, and with
    ``uncertainty`` each column's interval (``interval``) and the paired differences (``paired``)."""
    import pandas as pd

    out = []
    for m in methods:
        runs = [r["metrics"] for r in rows if r["method"] == m]
        if not runs:
            continue
        df = pd.DataFrame(runs)
        entry: dict[str, Any] = {"method": m, "n": len(runs)}
        for col in COLUMNS:
            vals = df[col].dropna() if col in df else []
            entry[col] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0) if len(vals) else None
        if uncertainty is not None:
            entry["interval"] = uncertainty.intervals(m)
            entry["paired"] = {ref: p for ref in REFERENCES if (p := uncertainty.paired(m, ref)) is not None}
        out.append(entry)
    return out


def write_records(out: Path, cfg: TableSettings, summary: list[dict[str, Any]], rows: list[dict[str, Any]],
                  command: str, settings: I.IntervalSettings | None = None) -> list[Path]:
    """``OUT/records/<method>/record.json``: per method, the mean of every metric over its seeds (``COLUMN_std``
    beside the table's columns: ddof 1, 0 for one run), each column's interval and the paired differences
    (:class:`Uncertainty`), with each seed's row; rewritten from ``rows`` each time."""
    import pandas as pd

    from fmr_bench.files import write_json
    from fmr_bench.results.record import Provenance, finetune_record
    from fmr_bench.runtime import now

    prov = Provenance.collect(device="cpu", timestamp=now().isoformat(timespec="seconds"), command=command)
    table_settings = {k: v for k, v in asdict(cfg).items() if k != "methods"}
    written = []
    for entry in summary:
        m = entry["method"]
        runs = [{k: v for k, v in r.items() if k != "samples"} for r in rows if r["method"] == m]
        df = pd.DataFrame([r["metrics"] for r in runs])
        metrics: dict[str, Any] = {k: None if pd.isna(v) else float(v) for k, v in df.mean().items()}
        for col in COLUMNS:
            metrics[f"{col}_std"] = None if entry[col] is None else entry[col][1]
        iv = I.Intervals(settings)
        for col, (interval, method) in (entry.get("interval") or {}).items():
            iv.put(col, interval, method)
        rec = finetune_record(
            m, table_settings, model={"spec": cfg.model, "weights_sha256_16": None},
            dataset={"spec": cfg.train, "n": None}, metrics=metrics, provenance=prov, run=f"{out.name}/{m}",
            sections={"seeds": [r["seed"] for r in runs], "per_seed": runs, "aggregate": "mean over seeds",
                      "interval_of": "the mean over seeds, test images resampled (ids drawn once for every seed); "
                                     "the spread over seeds is COLUMN_std", "paired": entry.get("paired") or {},
                      "measured_by": SCRIPT},
            intervals=iv if entry.get("interval") else None)
        written.append(write_json(out / RECORDS / m / "record.json", rec.to_dict(), resume=False,
                                  fix="pick a writable --out"))
    return written


def _cell(mean: float, std: float | None, iv: list[float] | None) -> str:
    text = f"{mean:.1f}" + (f" ± {std:.1f}" if std is not None else "")
    return text + (f" [{iv[0]:.1f}, {iv[1]:.1f}]" if iv else "")


def markdown(summary: list[dict[str, Any]]) -> str:
    """The table (mean ± seed std [interval]) and, where rows carry per-sample outcomes, the paired differences."""
    head = "| method | runs | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(COLUMNS)]
    for e in summary:
        ivs = e.get("interval") or {}
        cells = ["–" if e[c] is None else _cell(e[c][0], e[c][1] if e["n"] > 1 else None, (ivs.get(c) or (None,))[0])
                 for c in COLUMNS]
        lines.append(f"| {e['method']} | {e['n']} | " + " | ".join(cells) + " |")
    paired = [(e["method"], ref, p) for e in summary for ref, p in (e.get("paired") or {}).items()]
    if paired:
        lines += ["", "| method | against | " + " | ".join(f"Δ {c}" for c in PAIRED_COLUMNS) + " |",
                  "|---|---|" + "---:|" * len(PAIRED_COLUMNS)]
        for method, ref, p in paired:
            cells = []
            for c in PAIRED_COLUMNS:
                d = p.get(c) or {}
                cells.append("–" if d.get("delta") is None else f"{d['delta']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}] "
                             f"p {d['p_value']:.3f}" if d.get("lo") is not None else f"{d['delta']:+.1f}")
            lines.append(f"| {method} | {ref} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Named tables (``--preset``): TableSettings fields that differ from the defaults.
#: ``spurious`` is the first table (66 steps at the preset's lr 1e-4: FT keeps its
#: robustness); ``testbed`` the setting where plain FT loses it (docs/digits-finetune.md),
#: with FMR on 360 images (on 32, one image moves FMR by 3 points).
TABLE_PRESETS: dict[str, dict[str, Any]] = {
    "spurious": {},
    "testbed": {"lr": 1e-3, "fmr_limit": 360},
}
#: CLI flag -> (TableSettings field, type, help).
FLAGS: dict[str, tuple[str, Any, str]] = {
    "--train": ("train", str, "training set: digits-spurious:train[?correlation=R&noise=P]"),
    "--seeds": ("seeds", int, "fine-tuning seeds"),
    "--methods": ("methods", str, f"rows to run (any of {', '.join(ROWS)})"),
    "--epochs": ("epochs", int, "epochs of every trained method"),
    "--batch-size": ("batch_size", int, "images per step"),
    "--lr": ("lr", float, "peak lr of the FT stages (default: the digits fine-tuning preset's 1e-4)"),
    "--beta": ("beta", float, "maskcf's feature-distillation weight (default: seed 000's 30)"),
    "--wise-alpha": ("wise_alpha", float, "WiSE-FT mixing coefficient"),
    "--fmr-limit": ("fmr_limit", int, "FMR: images of digits:test (seeded subset)"),
    "--fmr-budget": ("fmr_budget", int, "FMR: perturbation steps per image"),
    "--train-limit": ("train_limit", int, "train on about this many images (smoke runs)"),
    "--eval-limit": ("eval_limit", int, "score on about this many images per set (smoke runs)"),
    "--threads": ("threads", int, "torch threads of this process"),
}


def parse_args(argv: list[str] | None) -> tuple[TableSettings, Path]:
    d = TableSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/digits-finetune"), help="folder for rows, models and table")
    p.add_argument("--preset", choices=sorted(TABLE_PRESETS), default="spurious",
                   help="named table: spurious (the first table) or testbed (FT loses robustness); "
                        "the flags below override it")
    for flag, (name, kind, text) in FLAGS.items():
        many = name in ("seeds", "methods")
        p.add_argument(flag, type=kind, nargs="+" if many else None, default=None,
                       help=f"{text} (default {getattr(d, name)})")
    a = p.parse_args(argv)
    values = dict(TABLE_PRESETS[a.preset])
    for name, _, _ in FLAGS.values():
        v = getattr(a, name)
        if v is not None:
            values[name] = tuple(v) if isinstance(v, list) else v
    return TableSettings(**values), a.out


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, out = parse_args(argv)
        cfg = cfg.validated()
        table = Table(cfg, out)
        print(f"fine-tuning {cfg.model} on {cfg.train}: seeds {list(cfg.seeds)}, preset {cfg.preset}, "
              f"{cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr or 'of the preset'}"
              f"{'' if cfg.beta is None else f', maskcf beta {cfg.beta:g}'}; FMR on digits:test, {cfg.fmr_limit} images, "
              f"budget {cfg.fmr_budget}", flush=True)
        table.run()
        spurious = table.scorer.spurious
        summary = summarise(table.rows, cfg.methods, Uncertainty(table.rows, spurious.groups, len(spurious.group_names)))
        text = markdown(summary)
        try:
            (out / "table.md").write_text(text + "\n")
        except OSError as e:
            raise FmrBenchError(f"cannot write {out / 'table.md'} ({e.strerror or type(e).__name__}); free space "
                                "and re-run the same command: finished rows are kept") from None
        command = " ".join(["python", SCRIPT, *(sys.argv[1:] if argv is None else argv)])
        write_records(out, cfg, summary, table.rows, command)
    except FmrBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
