"""Does the ranking of models depend on the generator? (FMR paper §4.5, Table 3)

:func:`compare_generators` runs the FMR protocol for every (model, generator) pair, each
a normal run folder under ``out`` (so a comparison resumes, and reuses runs made by
``fmr evaluate``), and measures how well the generators agree on the ranking of the
models: Kendall's τ (τ-b, :func:`scipy.stats.kendalltau`) between the FMR (and the PA)
of the models under each pair of generators. It writes to its folder::

    compare.csv    one row per (model, generator): SA, VR, PA, FMR, ... and the run folder
    table.csv      the Table 3 layout: one row per model, PA and FMR per generator
    tau.csv        one row per pair of generators: τ on FMR and on PA, p-values, n models, and how
                   many model pairs have an order settled under both generators
    pairs.csv      one row per (generator, pair of models): the paired difference A − B of PA and
                   FMR on the same images, its 95 % paired-bootstrap interval and sign-flip p-value
                   (as ``fmr compare`` of the two runs), and whether the order is settled
    compare.json   the request, all rows, the τ and pairs tables, the resampling and a timestamp

τ counts every swapped pair of models alike, also pairs whose difference is noise. A pair is
*settled* under a generator when the interval of ΔFMR excludes 0; ``settled_pairs`` counts the
pairs settled under both generators of a τ row and ``settled_discordant`` those among them that
the two generators order oppositely: the disagreements τ cannot blame on the sample.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import FmrSettings
from ..datasets import ImageDataset, load_dataset
from ..errors import SettingsError
from ..metrics.intervals import IntervalSettings, paired_method
from ..results.rundir import run_dir, write_json
from ..results.study import study_document
from .export import merge_settings
from .paired import DELTA_COLUMNS, compare_results, delta_row, settled
from .tables import AUDIT_COLUMNS, INTERVAL_COLUMNS, METRIC_COLUMNS, metric_row, write_csv

ROW_COLUMNS = ("model", "generator", *METRIC_COLUMNS, *INTERVAL_COLUMNS, *AUDIT_COLUMNS, "run")
TAU_COLUMNS = ("generator_a", "generator_b", "tau_fmr", "p_fmr", "tau_pa", "p_pa", "tau_audit_fmr", "p_audit_fmr",
               "n_models", "settled_pairs", "settled_discordant")
PAIR_COLUMNS = ("generator", "model_a", "model_b", "fmr_a", "fmr_b", *DELTA_COLUMNS, "settled", "n")


@dataclass
class CompareResult:
    """Rows per (model, generator), the τ table, and the folder written."""

    rows: list[dict[str, Any]]
    tau: list[dict[str, Any]]
    path: Path
    notes: list[str] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)

    def wide(self) -> list[dict[str, Any]]:
        """One row per model with ``<generator> PA`` / ``<generator> FMR`` columns (Table 3)."""
        return wide_rows(self.rows)


def split_list(text: str | Sequence[str] | None, what: str) -> list[str]:
    """``"a,b"`` or ``["a,b", "c"]`` -> ``["a", "b", "c"]`` (unique, in order); a one-line error when empty."""
    parts = [text] if isinstance(text, str) else list(text or [])
    items = [s.strip() for p in parts for s in p.split(",") if s.strip()]
    if not items:
        raise SettingsError(f"{what} is empty; pass a comma-separated list, e.g. {what} a,b")
    return list(dict.fromkeys(items))


def kendall_tau(a: Sequence[float | None], b: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Kendall's τ-b of two score lists over the entries both have; (τ, p, n). τ is None below 2
    entries or when one side is constant."""
    from scipy.stats import kendalltau

    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if len(pairs) < 2 or len({x for x, _ in pairs}) < 2 or len({y for _, y in pairs}) < 2:
        return None, None, len(pairs)
    res = kendalltau([x for x, _ in pairs], [y for _, y in pairs])
    return float(res.statistic), float(res.pvalue), len(pairs)


def tau_table(rows: Sequence[dict[str, Any]], generators: Sequence[str], models: Sequence[str],
              keys: Sequence[str] = ("fmr", "pa")) -> list[dict[str, Any]]:
    """τ between every pair of generators, over the models, on each metric of ``keys`` (FMR and PA)."""
    by = {(r["model"], r["generator"]): r for r in rows}
    out = []
    for ga, gb in itertools.combinations(generators, 2):
        row: dict[str, Any] = {"generator_a": ga, "generator_b": gb}
        for key in keys:
            tau, p, n = kendall_tau([by[(m, ga)][key] for m in models], [by[(m, gb)][key] for m in models])
            row.update({f"tau_{key}": tau, f"p_{key}": p, "n_models": n})
        out.append(row)
    return out


def wide_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    models = list(dict.fromkeys(r["model"] for r in rows))
    out = []
    for m in models:
        row: dict[str, Any] = {"model": m}
        for r in rows:
            if r["model"] == m:
                row[f"{r['generator']} PA"], row[f"{r['generator']} FMR"] = r["pa"], r["fmr"]
        out.append(row)
    return out


def check_specs(models: Sequence[str], generators: Sequence[str], oracle: str | None, default_generator: str) -> None:
    """Parse every spec and check every weight file is at hand, before the first run starts."""
    from ..generators import generator_weight_refs
    from ..models import model_weight_refs
    from ..oracles import oracle_weight_refs
    from ..weights import preflight

    refs = []
    for m in models:
        refs += model_weight_refs(m)
    for g in generators:
        refs += generator_weight_refs(g, default_generator)
    if oracle is not None:
        refs += oracle_weight_refs(oracle)
    preflight(refs)


def compare_generators(models: str | Sequence[str], generators: str | Sequence[str], data: str | ImageDataset = "digits",
                       *, to: str | Path | None = None, out: str | Path = "runs", oracle: str | None = None,
                       settings: FmrSettings | None = None, progress: Any = False, pretrained: bool = True,
                       write_grid: bool = True, audit: str | None = None, log=None,
                       **overrides: Any) -> CompareResult:
    """Run FMR for every (model, generator) pair; tabulate PA/FMR and the rank agreement.

    Args:
        models: model specs (a list or a comma-separated string).
        generators: generator specs (a list or a comma-separated string), e.g.
            ``"vqgan:digits,vae:digits,diffusion:digits"``.
        data, oracle, out, settings, overrides, progress, pretrained, write_grid:
            as for :func:`fmr_bench.evaluate`.
        to: output folder; default ``OUT/compare__<data>__<hash of the request>``.
        audit: a judge spec (e.g. ``builtin:digits-judge``) that audits every run's validated
            x-hat (:mod:`fmr_bench.engine.judge`); the rows gain :data:`~fmr_bench.studies.tables.AUDIT_COLUMNS` and a
            ``audit_fmr`` τ column. Not part of the runs' identity: earlier runs are reused.
        log: optional ``callable(str)`` for progress lines.

    Raises:
        SpecError, WeightsError, SettingsError: a bad spec, missing weights or a bad
            setting, before any run starts.
    """
    from ..engine.fmr import evaluate

    models = split_list(models, "--models")
    generators = split_list(generators, "--generators")
    notes = rank_notes(models, generators)
    merged = merge_settings(settings, overrides)
    dataset = data if isinstance(data, ImageDataset) else load_dataset(data)
    check_specs(models, generators, oracle, dataset.world.generator)
    request = {"models": models, "generators": generators, "dataset": dataset.spec, "oracle": oracle,
               "settings": {k: v for k, v in asdict(merged).items() if k not in ("device", "batch_size", "workers")},
               **({"audit": audit} if audit else {})}
    to = Path(to) if to is not None else run_dir(Path(out), "compare", dataset.spec, request)
    say = log or (lambda _msg: None)
    started = _dt.datetime.now(_dt.timezone.utc)
    rows, results = [], {}
    for g in generators:
        for m in models:
            say(f"{m} with generator {g}")
            res = evaluate(m, dataset, generator=g, oracle=oracle, out=out, progress=progress, pretrained=pretrained,
                           write_grid=write_grid, settings=merged, audit=audit)
            results[(m, g)] = res
            rows.append({"model": m, "generator": g, **metric_row(res.metrics, res.record.get("intervals")),
                         "run": str(res.path) if res.path else None})
    pairs = pair_table(results, generators, models)
    taus = tau_table(rows, generators, models, keys=("fmr", "pa", "audit_fmr") if audit else ("fmr", "pa"))
    count_settled(taus, pairs)
    write_csv(to / "compare.csv", rows, ROW_COLUMNS)
    wide = wide_rows(rows)
    write_csv(to / "table.csv", wide, list(wide[0]))
    write_csv(to / "tau.csv", taus, TAU_COLUMNS)
    write_csv(to / "pairs.csv", pairs, PAIR_COLUMNS)
    write_json(to / "compare.json", json.loads(json.dumps(study_document(
        "compare-generators", request, rows, tau=taus, pairs=pairs, paired_method=paired_method(IntervalSettings()),
        notes=notes, timestamp=started.isoformat(timespec="seconds")), default=str)))
    return CompareResult(rows, taus, to, notes, pairs)


def pair_table(results: dict[tuple[str, str], Any], generators: Sequence[str],
               models: Sequence[str]) -> list[dict[str, Any]]:
    """Under each generator, every pair of models (A before B in ``models``' order): ΔPA and ΔFMR = A − B on the
    same images with the paired interval and p-value, and ``settled`` (+1 A above B, −1 below, 0 a tie)."""
    out = []
    for g in generators:
        for ma, mb in itertools.combinations(models, 2):
            a, b = results[(ma, g)], results[(mb, g)]
            cmp = compare_results(a, b, f"{ma} under {g}", f"{mb} under {g}")
            row = {"generator": g, "model_a": ma, "model_b": mb, "fmr_a": a.metrics.get("fmr"),
                   "fmr_b": b.metrics.get("fmr"), **delta_row(cmp.result), "n": cmp.result.n}
            row["settled"] = settled(row)
            out.append(row)
    return out


def count_settled(taus: list[dict[str, Any]], pairs: Sequence[dict[str, Any]]) -> None:
    """Add ``settled_pairs`` and ``settled_discordant`` to each τ row (pairs settled under both generators, and
    those the two order oppositely)."""
    by = {(p["generator"], p["model_a"], p["model_b"]): p["settled"] for p in pairs}
    for t in taus:
        both = [(s, by[(t["generator_b"], ma, mb)]) for (g, ma, mb), s in by.items() if g == t["generator_a"]]
        both = [(x, y) for x, y in both if x and y]
        t["settled_pairs"], t["settled_discordant"] = len(both), sum(x != y for x, y in both)


def rank_notes(models: Sequence[str], generators: Sequence[str]) -> list[str]:
    """Warnings on what the τ table can mean for these many models and generators.

    Raises:
        SettingsError: fewer than 2 models: there is nothing to rank.
    """
    if len(models) < 2:
        raise SettingsError(f"compare-generators ranks models under each generator and got 1 model ({models[0]}); "
                            "pass at least 2 (3 or more for a Kendall tau that can be other than +1 or -1), or "
                            "run fmr evaluate for one model")
    notes = []
    if len(models) == 2:
        notes.append("Kendall tau over 2 models is +1 or -1 by construction (undefined on a tie); "
                     "add models for a rank agreement that means something")
    if len(generators) == 1:
        notes.append("one generator: no pair of generators to compare ranks between (tau table empty)")
    return notes
