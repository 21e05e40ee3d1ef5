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

    def __call__(self, clf) -> dict[str, float]:
        pred, y = self.predict(clf, self.spurious)
        groups = torch.tensor(self.spurious.groups)
        accs = [a for a in group_accuracies(pred, y, groups, len(self.spurious.group_names)) if a is not None]
        fmr = fmr_bench.evaluate(clf, self.fmr_data, out=None, write_grid=False, seed=0,
                                 limit=self.cfg.fmr_limit, budget=self.cfg.fmr_budget)
        shifts = {f"shift:{s}": self.accuracy(clf, ds) for s, ds in zip(SHIFTS, self.shifts)}
        return {"ID": self.accuracy(clf, self.id), "digits": self.accuracy(clf, self.clean),
                "shift avg": sum(shifts.values()) / len(shifts), "WG": min(accs),
                "Avg": 100.0 * (pred == y).double().mean().item(), "FMR": fmr.metrics["fmr"],
                "SA": fmr.metrics["sa"], "PA": fmr.metrics["pa"], **shifts}


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

    def _append(self, method: str, seed: int | None, metrics: dict[str, float], seconds: float) -> None:
        row = {"method": method, "seed": seed, "metrics": metrics, "seconds": round(seconds, 1),
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


def summarise(rows: list[dict[str, Any]], methods: tuple[str, ...]) -> list[dict[str, Any]]:
    """One entry per method: mean and std (over seeds, ddof 1; 0 for a single run) of each column."""
    import pandas as pd

    out = []
    for m in methods:
        runs = [r["metrics"] for r in rows if r["method"] == m]
        if not runs:
            continue
        df = pd.DataFrame(runs)
        entry = {"method": m, "n": len(runs)}
        for col in COLUMNS:
            vals = df[col].dropna() if col in df else []
            entry[col] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0) if len(vals) else None
        out.append(entry)
    return out


def write_records(out: Path, cfg: TableSettings, rows: list[dict[str, Any]], command: str) -> list[Path]:
    """``OUT/records/<method>/record.json``: per method, the mean of every metric over its seeds (``COLUMN_std``
    beside the table's columns: ddof 1, 0 for one run), with each seed's row; rewritten from ``rows`` each time."""
    import pandas as pd

    from fmr_bench.files import write_json
    from fmr_bench.results.record import Provenance, finetune_record
    from fmr_bench.runtime import now

    prov = Provenance.collect(device="cpu", timestamp=now().isoformat(timespec="seconds"), command=command)
    settings = {k: v for k, v in asdict(cfg).items() if k != "methods"}
    written = []
    for m in cfg.methods:
        runs = [r for r in rows if r["method"] == m]
        if not runs:
            continue
        df = pd.DataFrame([r["metrics"] for r in runs])
        metrics: dict[str, Any] = {k: None if pd.isna(v) else float(v) for k, v in df.mean().items()}
        for col in COLUMNS:
            vals = df[col].dropna() if col in df else []
            metrics[f"{col}_std"] = (float(vals.std(ddof=1)) if len(vals) > 1 else 0.0) if len(vals) else None
        rec = finetune_record(
            m, settings, model={"spec": cfg.model, "weights_sha256_16": None},
            dataset={"spec": cfg.train, "n": None}, metrics=metrics, provenance=prov, run=f"{out.name}/{m}",
            sections={"seeds": [r["seed"] for r in runs], "per_seed": runs, "aggregate": "mean over seeds",
                      "measured_by": SCRIPT})
        written.append(write_json(out / RECORDS / m / "record.json", rec.to_dict(), resume=False,
                                  fix="pick a writable --out"))
    return written


def markdown(summary: list[dict[str, Any]]) -> str:
    head = "| method | runs | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(COLUMNS)]
    for e in summary:
        cells = [("–" if e[c] is None else f"{e[c][0]:.1f} ± {e[c][1]:.1f}" if e["n"] > 1 else f"{e[c][0]:.1f}")
                 for c in COLUMNS]
        lines.append(f"| {e['method']} | {e['n']} | " + " | ".join(cells) + " |")
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
        text = markdown(summarise(table.rows, cfg.methods))
        try:
            (out / "table.md").write_text(text + "\n")
        except OSError as e:
            raise FmrBenchError(f"cannot write {out / 'table.md'} ({e.strerror or type(e).__name__}); free space "
                                "and re-run the same command: finished rows are kept") from None
        command = " ".join(["python", SCRIPT, *(sys.argv[1:] if argv is None else argv)])
        write_records(out, cfg, table.rows, command)
    except FmrBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
