"""Audit after the fact (``fmr audit``): a finished run or an export folder, scored by a judge.

* A run folder: the run is rebuilt from its ``record.json`` (model, dataset, generator,
  oracle and settings specs) and resumed with ``audit=JUDGE`` through
  :func:`fmr_bench.evaluate`: its recorded outcomes are reused, and the x-hat of each
  validated sample without this judge's verdict is generated again (the loop is
  deterministic and a sample's outcome does not depend on its batch), checked to reproduce
  the recorded outcome, and judged. The settings must still name the same run folder
  (same weights and data); otherwise nothing runs. Runs of in-memory models cannot be
  rebuilt: audit them with ``fmr_bench.evaluate(model, ..., audit=JUDGE)``.
  The verdicts go into the run folder itself (``samples.jsonl`` gains lines, ``record.json``
  is rewritten with the audited metrics). With ``out=DIR`` the run is copied to
  ``DIR/<run name>`` first and the copy is audited: the run folder is only read, which is
  what a read-only (shared, archived) run needs; a copy left by an interrupted audit resumes.
* An export folder (``fmr export``): the judge reads its 8-bit PNGs; SA and the model's
  predictions come from ``labels.csv``. The report goes to ``audit-<judge>.json`` in the folder.

Why regenerate instead of keeping every x-hat: see docs/protocol.md, "Audit".
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

from ..engine.judge import Audit
from ..config import FmrSettings
from ..errors import DataError, OutputError, SpecError
from ..files import atomic_write
from ..metrics.fmr import audit_counts
from ..oracles import Oracle, oracle_specs
from ..results.record import load_record
from ..results.rundir import SAMPLES_FILE, STALE_FILE, FmrResult, write_json
from ..results.study import provenance_block
from .exported import GENERATION_FILE, LABELS_FILE, read_export
from ..results.record import KIND_FMR
from ..results.scan import RECORD_FILE

#: What an audited copy of a run takes from the run, in this order: ``record.json`` last, so
#: that a copy interrupted half-way is completed by the next call (a record means complete).
RUN_FILES = ("settings.json", SAMPLES_FILE, STALE_FILE, "grid.png", RECORD_FILE)


def audit_run(folder: str | Path, judge: str | Oracle, *, device: str = "auto", batch_size: int | None = None,
              progress: Any = False, pretrained: bool = True, out: str | Path | None = None) -> FmrResult:
    """Audit the finished FMR run in ``folder`` with ``judge``; returns the updated record.

    Args:
        out: write an audited copy of the run to ``out/<run name>`` and leave ``folder``
            untouched (only read); default: the verdicts go into ``folder`` itself.

    Raises:
        DataError: ``folder`` holds no finished FMR run.
        OutputError: its recorded settings now name another run (changed weights or data);
            ``folder`` is not writable and no ``out`` was given; ``out`` is not writable.
    """
    from ..engine.fmr import evaluate

    folder = Path(folder)
    if isinstance(judge, str):
        check_judge(judge)  # a bad judge stops here, named as the judge, before anything is loaded
    if not (folder / RECORD_FILE).is_file():
        raise DataError(f"{folder} holds no record.json; pass a finished run folder (or finish the run by "
                        "re-running its command with --audit JUDGE)")
    record = load_record(folder).to_dict()  # RecordError (a DataError) names an unreadable record; v1 is upgraded
    if record.get("kind") != KIND_FMR:
        raise DataError(f"{folder} holds a {record.get('evaluator')!r} record, not an FMR run; pass an FMR run folder")
    known = {f.name for f in fields(FmrSettings)}
    try:
        settings = FmrSettings(**{k: v for k, v in record["settings"].items() if k in known})
        specs = [record[part]["spec"] for part in ("model", "dataset", "generator", "oracle")]
    except (KeyError, TypeError) as e:
        raise DataError(f"{folder / 'record.json'} lacks {e} (not a complete FMR record); "
                        "re-run the run's command") from None
    settings = replace(settings, device=device, batch_size=batch_size or settings.batch_size)
    if out is not None:
        folder = copy_run(folder, Path(out) / (record.get("run") or folder.name))
    elif not _writable(folder):
        raise OutputError(f"cannot write {folder} (read-only): the audit adds the judge's verdicts to the run's "
                          f"{SAMPLES_FILE} and record.json; pass --out DIR to audit a copy of the run written under "
                          "DIR instead (the run itself is only read)")
    try:
        return evaluate(specs[0], specs[1], generator=specs[2], oracle=specs[3], out=folder.parent, settings=settings,
                        audit=judge, expect_run=folder, progress=progress, pretrained=pretrained)
    except SpecError as e:
        raise SpecError(f"cannot rebuild the run in {folder} from its record ({e}); runs of in-memory models are "
                        "audited with fmr_bench.evaluate(model, ..., audit=JUDGE)") from None


def check_judge(judge: str) -> None:
    """Check a judge spec as far as can be done without loading it: every ``+`` member parses,
    names a known builtin or open_clip tag, and asks for a known prompt set.

    Raises:
        SpecError: naming the judge (not the run it would audit).
    """
    from ..models.openclip import templates_for

    try:
        Audit.weight_refs(judge)
        for spec in oracle_specs(judge):
            if "prompts" in spec.opts:
                templates_for(spec.opts["prompts"])
    except SpecError as e:
        raise SpecError(f"judge {judge}: {e}") from None


def copy_run(folder: Path, to: Path) -> Path:
    """Copy the files of the finished run ``folder`` that ``to`` lacks (:data:`RUN_FILES`); returns ``to``.

    Files ``to`` already has are kept: they are the copy's own (verdicts of an earlier or
    interrupted audit). ``to`` = ``folder`` copies nothing.
    """
    if to.resolve() == folder.resolve():
        return folder
    for name in RUN_FILES:
        src, dst = folder / name, to / name
        if src.is_file() and not dst.exists():
            try:
                data = src.read_bytes()
            except OSError as e:
                raise DataError(f"cannot read {src} ({e.strerror or e}); pass a readable run folder") from None
            atomic_write(dst, data, fix="pass --out to a writable folder")
    return to


def _writable(folder: Path) -> bool:
    """Whether the audit can write the run folder and the files it changes (a read-only mount, a
    folder or file without write permission)."""
    return all(os.access(p, os.W_OK) for p in (folder, folder / SAMPLES_FILE, folder / RECORD_FILE) if p.exists())


def audit_export(folder: str | Path, judge: str | Oracle, *, device: str = "cpu", batch_size: int = 64,
                 pretrained: bool = True, out: str | Path | None = None) -> dict[str, Any]:
    """Audit the PNGs of an ``fmr export`` folder and write ``audit-<judge>.json`` into it
    (into ``out`` instead when given: the export is then only read).

    Returns:
        the report: judge, metrics (:func:`fmr_bench.metrics.fmr.audit_counts`), verdicts by sample id.
    """
    folder = Path(folder)
    data = read_export(folder)
    spec = judge if isinstance(judge, str) else judge.spec
    aud = (Audit.load(judge, data.class_names, pretrained=pretrained) if isinstance(judge, str)
           else Audit(judge.eval(), spec)).to(torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                                                          else "cpu" if device == "auto" else device))
    by_id: dict[str, dict[str, Any]] = {}
    for start in range(0, len(data), batch_size):
        idx = range(start, min(start + batch_size, len(data)))
        images = torch.stack([data.load(i) for i in idx])
        for i, v in zip(idx, aud.verdicts(images, [data.labels[i] for i in idx])):
            by_id[data.ids[i]] = v
    try:
        with open(folder / LABELS_FILE, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f"cannot read {folder / LABELS_FILE} ({e}); re-run the fmr export command") from None

    def truth(text: str) -> bool:  # csv holds booleans as True/False
        return text.strip().lower() == "true"

    counts = [(r["clean_pred"] == r["target"], truth(r["validated"]), r["final_pred"] == r["target"],
               by_id[r["id"]]["ok"] if truth(r["validated"]) and r["id"] in by_id else None) for r in rows]
    report = {"judge": {**aud.judge.settings(), "rule": "argmax"}, "source": "export PNGs (8-bit)",
              "metrics": audit_counts(counts), "samples": by_id}
    report["path"] = str(Path(out if out is not None else folder) / f"audit-{_slug(spec)}.json")
    write_json(Path(report["path"]), {**{k: v for k, v in report.items() if k != "path"},
                                       "provenance": provenance_block()},
               fix=f"pass --out DIR to write the report {Path(report['path']).name} elsewhere")
    return report


def is_export(folder: str | Path) -> bool:
    return (Path(folder) / GENERATION_FILE).is_file()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")[-60:] or "judge"
