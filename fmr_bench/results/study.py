"""Study outputs as documents ``fmr results`` lists: the appendix studies' JSON with the record's
provenance block, and their rows as table rows.

Each study writes one JSON file (``sweep.json``, ``compare.json``, ``transfer.json``,
``wise.json``; ``attack.json`` carries the same provenance block) made by :func:`study_document`: ``schema_version``, ``kind``
``"study"``, ``study`` (its name), ``request`` (what was asked), ``rows`` (one per run or cell,
the study's own columns) and ``provenance`` (the block every record carries: fmr_bench
version, git commit, command, timestamp, device, versions). The folder scanner finds them
(:data:`STUDY_FILES`), and :func:`study_rows` turns each row into a row of ``fmr results``:
its scalar metrics as metric columns, the settings that tell rows apart (model, generator,
step size, budget, ...) as columns, the rest named in ``metric_set``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..runtime import command_line, now
from .record import SCHEMA_VERSION, Provenance
from .scan import STUDY_FILES

KIND_STUDY = "study"
#: Row keys that are columns of their own in ``fmr results`` (the others become the metric set's name).
ROW_COLUMNS = {"model": "model", "generator": "generator", "step_size": "step_size", "budget": "budget",
               "source": "setting.source", "alpha": "setting.alpha"}
#: Row values read as metrics (numbers the study measured, not settings).
METRIC_KEYS = ("sa", "vr", "pa", "fmr", "pa_all", "oracle_acc", "mean_steps", "n_validated", "n", "audit_validity",
               "audit_pa", "audit_fmr", "pa_export", "target_loss", "p_true", "p_target", "hit", "still_correct")


def provenance_block(device: str | None = None) -> dict[str, Any]:
    """The provenance every record carries, for a study written now."""
    return Provenance.collect(device=device, timestamp=now().isoformat(timespec="seconds"),
                              command=command_line()).to_dict()


def study_document(study: str, request: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], *,
                   device: str | None = None, **sections: Any) -> dict[str, Any]:
    """A study's JSON document: its request and rows, other sections, and the record's provenance block."""
    return {"schema_version": SCHEMA_VERSION, "kind": KIND_STUDY, "study": study, "request": dict(request),
            "rows": [dict(r) for r in rows], **sections, "provenance": provenance_block(device)}


def is_study(doc: Any) -> bool:
    """A study document (also one written before studies carried ``kind`` and provenance: ``study`` + ``rows``)."""
    return isinstance(doc, dict) and isinstance(doc.get("rows"), list) and (
        doc.get("kind") == KIND_STUDY or isinstance(doc.get("study"), str))


def study_rows(doc: Mapping[str, Any], path: Path | None = None) -> list[dict[str, Any]]:
    """One ``fmr results`` row per row of a study document."""
    request, prov = doc.get("request") or {}, doc.get("provenance") or {}
    base = {"evaluator": f"study:{doc['study']}", "kind": KIND_STUDY, "dataset": request.get("data"),
            "seed": request.get("seed"), "limit": request.get("limit"),
            "timestamp": prov.get("timestamp") or doc.get("timestamp"),
            "schema": doc.get("schema_version"), "path": str(path) if path is not None else None}
    out = []
    for r in doc["rows"]:
        row = {**base, "model": r.get("model") or request.get("model"), "run": r.get("run")}
        label = []
        for k, v in r.items():
            if k in ("model", "run") or not (v is None or isinstance(v, (str, int, float, bool))):
                continue
            if k in ROW_COLUMNS:
                row[ROW_COLUMNS[k]] = v
            elif k in METRIC_KEYS and not isinstance(v, (str, bool)):
                row[k] = v
            else:
                label.append(f"{k}={v}")
        row["metric_set"] = ", ".join(label) or "main"
        out.append(row)
    return out


__all__ = ["KIND_STUDY", "STUDY_FILES", "is_study", "provenance_block", "study_document", "study_rows"]
