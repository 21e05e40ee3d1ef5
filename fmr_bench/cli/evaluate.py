"""``fmr evaluate``: the FMR protocol (or static evaluators with ``--evaluator``) on one model or several.

Several models (``--model a,b`` or ``--models FILE``) are checked before anything runs; each
then runs in its own resumable run folder, one after the other, and a model that fails
does not stop the others. A summary table ends the output.
"""

from __future__ import annotations

import argparse

from ..config import FMR_ONLY
from ..errors import SettingsError
from ..results.shards import Shard, resolve_shard
from .commands import Command
from .common import (
    add_audit_argument,
    add_settings_arguments,
    add_world_arguments,
    flag,
    model_help,
    only_apply,
    set_cache,
    settings_overrides,
)
from ..results.scan import RECORD_FILE


def add_arguments(ev: argparse.ArgumentParser) -> None:
    ev.add_argument("--model", default=None,
                    help=model_help("model spec(s)") + "; several separated by commas (a comma splits only before "
                         "a new SOURCE:, so commas inside a spec's ?options or path stay in it)")
    ev.add_argument("--models", default=None, metavar="FILE",
                    help="a file of model specs, one per line (# starts a comment); with --model, both lists run")
    add_world_arguments(ev, model=False)
    add_settings_arguments(ev, static=True)
    ev.add_argument("--no-grid", action="store_true", help="do not write the image grid PNG")
    ev.add_argument("--fresh", action="store_true",
                    help="redo a run whose folder already holds outcomes; the earlier files move to "
                         "replaced-<time>/ inside the run folder (nothing is deleted)")
    add_audit_argument(ev)
    ev.add_argument("--shard", default=None, metavar="I/N",
                    help="run shard I of N (0-based) of the selected samples, in RUN/shard-I-of-N/; default: the "
                         "SLURM array task's (SLURM_ARRAY_TASK_ID, _COUNT, _MIN, _MAX; a contiguous array); combine "
                         "shards with fmr merge. Under torchrun each rank is a shard by itself")
    ev.add_argument("--evaluator", default="fmr",
                    help="comma-separated: fmr (the dynamic FMR protocol, default) and/or static evaluators "
                         "ood-accuracy, imagenet-x, ood-detection, calibration, group-robustness, zero-shot; "
                         "with fmr in the list the FMR protocol runs first, then the static ones, each with its "
                         "record (see fmr list evaluators)")
    ev.add_argument("--ood", action="append", default=None, metavar="DATA",
                    help="static evaluators: OOD / shifted dataset spec (repeatable)")
    ev.add_argument("--option", action="append", default=None, metavar="KEY=VALUE",
                    help="static evaluators: evaluator option, e.g. baseline=runs/ or scores=msp,mcm (repeatable)")
    ev.add_argument("--no-cache", action="store_true", help="static evaluators: do not read/write the logits cache")


#: flags only the static evaluators read (``dest`` names), and only the FMR protocol reads
STATIC_FLAGS = ("ood", "option", "no_cache")
FMR_FLAGS = (*FMR_ONLY, "generator", "oracle", "no_grid", "fresh", "audit", "shard")


def split_evaluators(text: str) -> tuple[bool, list[str]]:
    """(whether fmr is asked for, the static evaluator names) of ``--evaluator``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise SettingsError("--evaluator is empty; pass fmr or static evaluator names (fmr list evaluators)")
    from ..evaluators import TASKS

    tasks = [TASKS.get(n) for n in dict.fromkeys(names)]  # an unknown name: one line with the valid ones
    return any(t.takes_subset for t in tasks), [t.name for t in tasks if not t.takes_subset]


def check_flags(args: argparse.Namespace, fmr: bool, static: list[str]) -> None:
    """Refuse flags the chosen evaluators would ignore, naming what reads them.

    Raises:
        SettingsError: e.g. ``--ood`` with the FMR protocol alone, ``--budget`` with static evaluators alone.
    """
    def given(names) -> list[str]:
        return [flag(n) for n in names if getattr(args, n, None) not in (None, False)]

    if not static and given(STATIC_FLAGS):
        subject, it = only_apply(given(STATIC_FLAGS))
        raise SettingsError(f"{subject} to static evaluators and the FMR protocol would ignore {it}; drop {it}, or "
                            "add an evaluator, e.g. --evaluator fmr,ood-detection")
    if not fmr and given(FMR_FLAGS):
        subject, it = only_apply(given(FMR_FLAGS))
        raise SettingsError(f"{subject} to the FMR protocol and {', '.join(static)} would ignore {it}; drop {it}, "
                            "or add fmr: --evaluator fmr," + ",".join(static))


def model_list(args: argparse.Namespace) -> list[str]:
    """The model specs of ``--model`` and ``--models``, in order, each once, every one checked.

    Raises:
        SettingsError: no model, or an unreadable models file.
        SpecError, WeightsError: a malformed spec, an unknown source or builtin, missing weights
            (all of them named in one line), before anything runs.
    """
    from ..models import model_weight_refs
    from ..registry import MODEL_SOURCES
    from ..specs import split_specs
    from ..weights import preflight

    specs = split_specs(args.model or "", MODEL_SOURCES)
    if args.models:
        specs += read_models_file(args.models)
    specs = list(dict.fromkeys(specs))
    if not specs:
        raise SettingsError("no model given; pass --model SPEC[,SPEC...] or --models FILE")
    refs = []
    for spec in specs:
        refs += model_weight_refs(spec)  # parses: a bad source, option or builtin name stops here
    if len(specs) > 1:  # what would fail every model in turn, or one of them later: said once, before any run
        from ..datasets import load_dataset

        load_dataset(args.data)  # first, as a single run does
        preflight(refs)
    return specs


def read_models_file(path: str) -> list[str]:
    """Model specs of a file: one per line; blank lines and ``#`` comments (whole line or trailing) skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise SettingsError(f"cannot read the models file {path} ({e.strerror or e}); pass an existing file") from None
    except UnicodeDecodeError:
        raise SettingsError(f"the models file {path} is not text; list one model spec per line") from None
    specs = [line.split("#", 1)[0].strip() for line in lines]
    return [s for s in specs if s]


def run(args: argparse.Namespace) -> int:
    set_cache(args.cache_dir)
    models = model_list(args)
    fmr, static = split_evaluators(args.evaluator)
    if static:
        from ..evaluators import EVALUATORS

        for name in static:
            EVALUATORS.get(name)  # unknown names fail before any work
    check_flags(args, fmr, static)
    overrides = settings_overrides(args)
    shard, note = resolve_shard(args.shard) if fmr else (None, None)
    if static:
        check_static_input(args, static)  # before the FMR run, not after it
        if fmr and shard is not None:
            raise SettingsError(f"shard {shard} (from --shard or a SLURM array task) splits the FMR protocol only; "
                                "run the static evaluators in a command of their own (under torchrun their "
                                "inference spreads over the ranks)")
    if fmr and static and args.limit is not None:
        print(f"note: --limit {args.limit} applies to the fmr run; the static evaluators ({', '.join(static)}) "
              "use every image")
    if len(models) == 1:
        args.model = models[0]
        run_model(args, fmr, static, overrides, shard, note)
        return 0
    return run_models(args, models, fmr, static, overrides, shard, note)


def run_model(args: argparse.Namespace, fmr: bool, static: list[str], overrides: dict, shard: Shard | None = None,
              note: str | None = None) -> list:
    """Run and print the evaluations of ``args.model``; returns their results (FMR first)."""
    results = [run_fmr(args, overrides, shard, note)] if fmr else []
    results = [r for r in results if r is not None]  # a torchrun rank other than 0 has nothing to show
    if static:
        from .static_options import run_static

        results += run_static(args, static)
    return results


def run_models(args: argparse.Namespace, models: list[str], fmr: bool, static: list[str], overrides: dict,
               shard: Shard | None = None, note: str | None = None) -> int:
    """Each model in turn, in its own run folder; a failure is reported and the next model runs.

    Returns 0 when every model finished, else the exit code of the worst failure (2: an
    FmrBenchError, 1: anything else). Ctrl-C stops the whole list (finished work stays on disk).
    """
    from rich.console import Console

    from ..errors import FmrBenchError, InterruptedRun

    console = Console(highlight=False, soft_wrap=True)
    rows, code = [], 0
    for i, spec in enumerate(models, 1):
        console.rule(f"model {i}/{len(models)}: {spec}")
        args.model = spec
        try:
            rows.append((spec, run_model(args, fmr, static, overrides, shard, note), None))
        except InterruptedRun:
            raise
        except FmrBenchError as e:
            rows.append((spec, [], str(e)))
            code = max(code, e.exit_code)
        except Exception as e:  # noqa: BLE001  (one model's crash must not lose the others' runs)
            rows.append((spec, [], f"{type(e).__name__}: {e}"))
            code = max(code, 1)
        if rows[-1][2] is not None:
            console.print(f"[red]failed:[/] {spec}: {rows[-1][2]}")
    if any(results or error for _, results, error in rows):  # torchrun ranks other than 0 have nothing to sum up
        console.print(summary_table(rows))
    return code


def summary_table(rows: list[tuple[str, list, str | None]]):
    """One line per model and evaluation: status, headline metrics, record."""
    from rich.table import Table

    t = Table(title="summary")
    for name in ("model", "evaluator", "status", "SA", "PA", "FMR", "record"):
        t.add_column(name, overflow="fold")
    for spec, results, error in rows:
        if error is not None:
            t.add_row(spec, "", "[red]failed[/]", "", "", "", error)
        for r in results:
            m, rec = r.metrics, r.record
            path = str(r.path / RECORD_FILE) if r.path is not None else "(not written)"
            fmr_cols = tuple(_fmt(m.get(k)) for k in ("sa", "pa", "fmr")) if rec["evaluator"] == "fmr" else \
                ("", "", "")
            t.add_row(spec, rec["evaluator"], "reused" if getattr(r, "reused", False) else "done", *fmr_cols, path)
    return t


def check_static_input(args: argparse.Namespace, static: list[str]) -> None:
    """Parse the ``--ood`` specs and check ``--option`` names against the static evaluators.

    Raises:
        SpecError, SettingsError: as the static evaluators would, but before any work.
    """
    from ..evaluators import EVALUATORS
    from .static_options import option_pairs
    from ..registry import DATASETS
    from ..specs import parse_spec

    for spec in args.ood or []:
        parse_spec(spec, DATASETS, what="dataset")
    accepted = set().union(*(set(getattr(EVALUATORS.get(n), "options", {})) for n in static))
    stray = sorted(set(option_pairs(args.option)) - accepted)
    if stray:
        raise SettingsError(f"no evaluator of {', '.join(static)} takes option(s) {', '.join(stray)}; "
                            "see fmr list evaluators")


def run_fmr(args: argparse.Namespace, overrides: dict, shard: Shard | None = None, note: str | None = None):
    from rich.console import Console

    from ..engine.distributed import evaluate_ranks, world_from_env
    from ..protocol.cpu import keep_freed_memory
    from ..engine.fmr import evaluate

    keep_freed_memory()  # a process of its own: the loop may keep its peak memory reserved
    console = Console(highlight=False, soft_wrap=True)  # paths stay whole, for copying
    world = world_from_env()
    kwargs = dict(generator=args.generator, oracle=args.oracle, out=args.out, write_grid=not args.no_grid,
                  fresh=args.fresh, audit=args.audit, **overrides)
    if world is not None:
        if shard is not None:
            raise SettingsError(f"shard {shard} (from --shard or a SLURM array) and a torchrun job of {world.size} "
                                "ranks: each rank is a shard already; drop --shard, or run one process per task")
        if args.audit is not None:
            raise SettingsError("--audit does not run per rank; run the job, then audit the whole run with "
                                "fmr audit RUN_FOLDER --judge JUDGE")
        result = evaluate_ranks(args.model, args.data, world=world, progress=not args.quiet, **kwargs)
        if not world.is_root:
            return
    else:
        if note:
            console.print(f"note: {note}", markup=False)
        result = evaluate(args.model, args.data, progress=not args.quiet, shard=shard, **kwargs)
    if result.reused and args.quiet:  # without --quiet the runner has said so already
        console.print(f"reused finished run ({result.path}); pass --fresh to redo it", highlight=False)
    print_notes(console, result.record)
    console.print(metrics_table(result.record))
    for line in result.record.get("warnings", []):
        console.print(f"[yellow]warning:[/] {line}", highlight=False)
    if "audit" in result.record:
        console.print(audit_table(result.record["audit"]))
    if "shard" in result.record:
        console.print(f"shard {shard} of the run: these numbers cover its {result.record['metrics']['n']} samples; "
                      f"combine all {shard.count} shards with fmr merge {result.path.parent}", markup=False)
    if result.path is not None:
        console.print(f"record: {result.path / 'record.json'}")
        if (result.path / "grid.png").is_file():
            console.print(f"grid:   {result.path / 'grid.png'}")
    return result


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_notes(console, record: dict) -> None:
    """The record's notes (defaults taken across worlds, a limit above the dataset size), one line each."""
    for note in record.get("notes") or []:
        console.print(f"note: {note}", markup=False)


def metrics_table(record: dict):
    from rich.table import Table

    m = record["metrics"]
    s = record["settings"]
    t = Table(title=f"FMR — {record['model']['spec']} on {record['dataset']['spec']} "
                    f"(generator {record['generator']['spec']}, oracle {record['oracle']['spec']}, "
                    f"B={s['budget']}, eta={s['step_size']}, {s['optimizer']}, accept {s.get('accept') or 'argmax'})")
    cols = [("SA", "sa"), ("VR", "vr"), ("PA", "pa"), ("FMR", "fmr"), ("PA_all", "pa_all"),
            ("oracle", "oracle_acc"), ("steps", "mean_steps"), ("valid", "n_validated"), ("n", "n")]
    t.caption = "percent: SA, VR, PA, FMR, PA_all, oracle (its clean accuracy); steps: mean survived; valid: validated"
    for name, _ in cols:
        t.add_column(name, justify="right", no_wrap=True)
    t.add_row(*["-" if m[k] is None else (f"{m[k]:.2f}" if isinstance(m[k], float) else str(m[k])) for _, k in cols])
    iv = record.get("intervals") or {}
    if iv:  # a record written before intervals has none
        level = (record.get("interval_method") or {}).get("level", 0.95)
        t.add_row(*[f"[{iv[k][0]:.1f}, {iv[k][1]:.1f}]" if iv.get(k) else "" for _, k in cols])
        t.caption += f"; second row: {level:.0%} interval (docs/protocol.md)"
    return t


def audit_table(audit: dict, title: str | None = None):
    """The audited metrics of a record's ``audit`` section (or an export's audit report)."""
    from rich.table import Table

    m = audit["metrics"]
    t = Table(title=title or f"audit by judge {audit['judge']['spec']}")
    cols = [("validity", "audit_validity"), ("PA", "audit_pa"), ("FMR", "audit_fmr"),
            ("fails confirmed", "audit_failures_confirmed"), ("confirmed", "n_confirmed"), ("audited", "n_audited"),
            ("unaudited", "n_unaudited")]
    t.caption = ("percent; validity: validated images the judge labels y; PA, FMR: over those; "
                 "fails confirmed: the model's errors the judge labels y")
    for name, _ in cols:
        t.add_column(name, justify="right", no_wrap=True)
    t.add_row(*["-" if m[k] is None else (f"{m[k]:.2f}" if isinstance(m[k], float) else str(m[k])) for _, k in cols])
    return t


COMMAND = Command(help="run the FMR protocol (or static evaluators) on one model or several",
                  add_arguments=add_arguments, run=run)
