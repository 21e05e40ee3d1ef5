"""Static benchmark export (FMR paper App. O): a run's validated perturbed images as an ImageFolder.

Layout of an export folder ``DIR``::

    generation.json             model, generator, oracle, all settings, metrics of the generating
                                run, counts, class table (label, name, folder), dates, status
    labels.csv                  one row per selected sample: file, label, class, id, target, steps,
                                validated, clean_pred, final_pred (``file`` empty if not validated)
    <class folder>/<name>.png   the final image x-hat of each validated sample (lossless 8-bit PNG)

Class folders are the source dataset's own class folders when it has them (ImageNet wnids,
so ``imagenet:DIR`` reads the export back in the ImageNet label space), else the class names
with spaces as ``_`` (so ``folder:DIR`` reads the same class names). ``folder:`` numbers the
classes in sorted folder order, which may differ from the source's order (digits: "eight" <
"five" < ...): models then map classes by name, and ``labels.csv`` (or
:func:`fmr_bench.studies.exported.read_export`) gives the source label indices.

Interrupt and resume: the export runs through :func:`fmr_bench.evaluate` with a sample hook
that writes each PNG *before* the run records that sample, and ``labels.csv`` and the final
``generation.json`` are written at the end. Re-running the same command resumes the run;
validated samples of the run whose PNG is missing (deleted, or the run folder was made by a
plain ``fmr evaluate``) are generated again in memory, checked to reproduce the recorded
outcome, and written. A folder holding an export of other settings is refused.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import FmrSettings, merge
from ..datasets import ImageDataset, load_dataset
from ..datasets.base import FileImages
from ..errors import OutputError
from ..files import atomic_write, make_dir
from ..protocol import SampleOutcome
from ..results.rundir import FmrResult, run_dir, write_json
from ..results.study import provenance_block
from .exported import FORMAT, GENERATION_FILE, LABELS_FILE, read_generation, subset
from .tables import write_csv

FORMAT_VERSION = 1
LABEL_COLUMNS = ("file", "label", "class", "id", "target", "steps", "validated", "clean_pred", "final_pred")
#: Settings that do not change outcomes; an export may resume with other values.
_RUNTIME = ("device", "batch_size", "workers")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_UNSAFE_FOLDER = re.compile(r'[/\\:*?"<>|\x00-\x1f]+')


@dataclass
class Export:
    """An export folder and the run that generated it."""

    path: Path
    result: FmrResult
    n_images: int
    n_regenerated: int
    generation: dict[str, Any]


def merge_settings(settings: FmrSettings | None, overrides: dict[str, Any]) -> FmrSettings:
    """``settings`` with keyword overrides, range-checked (as :func:`fmr_bench.evaluate` does)."""
    return merge(settings or FmrSettings(), overrides).validated()


def image_name(sample_id: str) -> str:
    """File name of a sample's PNG: its id with ``/`` as ``__`` (hashed if that is not reversible)."""
    name = sample_id.replace("/", "__")
    if "__" in sample_id or _UNSAFE.search(name) or name.startswith("."):
        name = _UNSAFE.sub("-", name).strip(".-") + "-" + hashlib.sha256(sample_id.encode()).hexdigest()[:8]
    return name + ".png"


def class_folders(dataset: ImageDataset) -> list[str]:
    """One folder name per class, in label order (see the module docstring)."""
    own: dict[int, set] = {}
    if isinstance(dataset, FileImages):
        for path, label in zip(dataset.paths, dataset.labels):
            parts = path.relative_to(dataset.root).parts
            own.setdefault(label, set()).add(parts[0] if len(parts) > 1 else None)
    names, seen = [], set()
    for label, cls in enumerate(dataset.class_names):
        folders = own.get(label, set())
        if len(folders) == 1 and None not in folders:
            name = next(iter(folders))
        else:
            name = _UNSAFE_FOLDER.sub("-", str(cls)).replace(" ", "_").lstrip(".") or f"class_{label}"
        if name.lower() in seen:
            name = f"{name}_{label}"
        seen.add(name.lower())
        names.append(name)
    return names


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write a (3, H, W) image in [0, 1] as an 8-bit RGB PNG, atomically."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    # the temporary name has no image suffix: folder readers skip a torn file
    atomic_write(path, lambda f: Image.fromarray(arr, "RGB").save(f, format="PNG"),
                 fix="pass another --to, then re-run the same command to resume")


def _spec(obj: Any) -> str | None:
    if obj is None or isinstance(obj, str):
        return obj
    return getattr(obj, "spec", None) or getattr(obj, "name", None) or type(obj).__name__


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _open_target(to: Path, request: dict[str, Any]) -> dict[str, Any]:
    """Check that ``to`` is new, empty or an export of the same request; mark it unfinished."""
    if (to / GENERATION_FILE).is_file():
        old = read_generation(to)
        if old.get("request") != request:
            raise OutputError(f"{to} holds an export of other settings ({old.get('request', {}).get('model')} on "
                              f"{old.get('request', {}).get('dataset')}); pass another --to")
    elif to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise OutputError(f"{to} exists and is not an fmr export folder; pass a new or empty --to")
    else:
        old = {}
    head = {"format": FORMAT, "version": FORMAT_VERSION, "status": "incomplete", "request": request,
            "created": old.get("created") or _now()}
    make_dir(to, fix="pass a writable --to")
    if old.get("status") != "incomplete":
        write_json(to / GENERATION_FILE, {**old, **head} if old else head)
    return head


def export_request(model: Any, dataset: ImageDataset, *, generator: Any, oracle: Any, settings: FmrSettings,
                   pretrained: bool) -> dict[str, Any]:
    """What determines an export's images (its ``generation.json`` ``request``)."""
    return json.loads(json.dumps({
        "model": _spec(model), "dataset": dataset.spec, "generator": _spec(generator), "oracle": _spec(oracle),
        "settings": {k: v for k, v in asdict(settings).items()
                     if k not in _RUNTIME and not (k == "accept" and v is None)},  # exports made before rules existed
        "pretrained": pretrained,
    }))


def default_export_dir(out: str | Path, request: dict[str, Any]) -> Path:
    """``OUT/exports/<model>__<data>__<hash of the request>``."""
    return run_dir(Path(out) / "exports", request["model"] or "model", request["dataset"], request)


def export_run(model: str | nn.Module, data: str | ImageDataset = "digits", to: str | Path | None = None, *,
               generator: Any = None, oracle: Any = None, out: str | Path | None = "runs",
               settings: FmrSettings | None = None, progress: Any = False, write_grid: bool = True,
               pretrained: bool = True, **overrides: Any) -> Export:
    """Run FMR on ``model`` and write its validated perturbed images as a static benchmark.

    Args:
        model, data, generator, oracle, out, progress, write_grid, pretrained: as for
            :func:`fmr_bench.evaluate` (the run folder under ``out`` is the normal one, so an
            earlier ``fmr evaluate`` with the same settings is reused).
        to: the export folder (new, empty, or an export of the same request); default
            ``OUT/exports/<model>__<data>__<hash of the request>``.
        settings, overrides: :class:`FmrSettings` and keyword overrides (``budget=10``...).

    Returns:
        an :class:`Export` with the folder, the run's :class:`FmrResult` and counts.

    Raises:
        FmrBenchError: bad input, a foreign ``to`` folder, or missing images that cannot be
            regenerated identically.
    """
    from ..engine.fmr import evaluate

    merged = merge_settings(settings, overrides)
    dataset = data if isinstance(data, ImageDataset) else load_dataset(data)
    request = export_request(model, dataset, generator=generator, oracle=oracle, settings=merged,
                             pretrained=pretrained)
    to = Path(to) if to is not None else default_export_dir(out or "runs", request)
    created = not to.exists()
    head = _open_target(to, request)
    folders = class_folders(dataset)
    written = []

    def rel(o: SampleOutcome) -> str:
        return f"{folders[o.label]}/{image_name(o.id)}"

    def write(o: SampleOutcome, clean: torch.Tensor, final: torch.Tensor, latent: torch.Tensor) -> None:
        if o.validated:
            save_png(final, to / rel(o))
            written.append(o.id)

    try:
        result = evaluate(model, dataset, generator=generator, oracle=oracle, out=out, settings=merged,
                          progress=progress, write_grid=write_grid, pretrained=pretrained, sample_hook=write)
    except BaseException:
        if created and not written:  # e.g. a bad spec: leave no empty export folder behind
            _remove_new_folder(to)
        raise
    missing = [o for o in result.outcomes if o.validated and not (to / rel(o)).is_file()]
    if missing:
        _regenerate(missing, dataset, write, model=model, generator=generator, oracle=oracle, settings=merged,
                    pretrained=pretrained, to=to)

    write_csv(to / LABELS_FILE, _label_rows(result.outcomes, dataset, rel), LABEL_COLUMNS)
    generation = {**_generation(head, result, dataset, folders, to, n_regenerated=len(missing)),
                  "provenance": provenance_block()}
    write_json(to / GENERATION_FILE, generation)
    return Export(to, result, generation["counts"]["images"], len(missing), generation)


def _remove_new_folder(to: Path) -> None:
    """Remove an export folder this call created and wrote no image into."""
    (to / GENERATION_FILE).unlink(missing_ok=True)
    try:
        to.rmdir()
    except OSError:
        pass


def _label_rows(outcomes: list[SampleOutcome], dataset: ImageDataset, rel) -> list[dict[str, Any]]:
    """The rows of ``labels.csv``: one per selected sample (``file`` empty if not validated)."""
    return [{"file": rel(o) if o.validated else "", "label": o.label, "class": dataset.class_names[o.label],
             "id": o.id, "target": o.target, "steps": o.steps, "validated": o.validated, "clean_pred": o.clean_pred,
             "final_pred": o.final_pred} for o in outcomes]


def _regenerate(missing: list[SampleOutcome], dataset: ImageDataset, write, *, model, generator, oracle,
                settings: FmrSettings, pretrained: bool, to: Path) -> None:
    """Generate the images of finished samples again (in memory) and write those that reproduce."""
    from ..engine.fmr import evaluate

    expected = {o.id: o for o in missing}
    differ: list[str] = []

    def hook(o: SampleOutcome, clean: torch.Tensor, final: torch.Tensor, latent: torch.Tensor) -> None:
        want = expected[o.id]
        if o.key() != want.key():
            differ.append(o.id)
            return
        write(want, clean, final, latent)  # the recorded outcome: its label and index name the file

    evaluate(model, subset(dataset, [o.index for o in missing]), generator=generator, oracle=oracle, out=None,
             settings=replace(settings, limit=None), write_grid=False, pretrained=pretrained, sample_hook=hook)
    if differ:
        raise OutputError(f"{len(differ)} images missing from {to} (e.g. {differ[0]}) came out different when "
                          "generated again; export into a new --to with a new --out folder")


def _generation(head: dict, result: FmrResult, dataset: ImageDataset, folders: list[str], to: Path, *,
                n_regenerated: int) -> dict[str, Any]:
    r = result.record
    outcomes = result.outcomes
    n_valid = sum(o.validated for o in outcomes)
    present = sorted({o.label for o in outcomes if o.validated})
    # folder: numbers the classes it finds in sorted folder order
    folder_labels_match = [folders[c] for c in present] == sorted(folders[c] for c in present) and present == list(
        range(len(present)))
    imagenet = dataset.label_space == "imagenet-1k" and all(re.fullmatch(r"n\d{8}", folders[c]) for c in present)
    return {
        **head,
        "status": "complete",
        "updated": _now(),
        "run": str(result.path) if result.path is not None else None,
        "model": r["model"], "dataset": r["dataset"], "generator": r["generator"], "oracle": r["oracle"],
        "settings": r["settings"],
        "metrics": r["metrics"],
        "counts": {"selected": len(outcomes), "validated": n_valid, "images": n_valid, "regenerated": n_regenerated},
        "classes": [{"label": i, "name": n, "folder": f} for i, (n, f) in enumerate(zip(dataset.class_names, folders))],
        "images": {"format": "png", "bit_depth": 8, "resolution": r["settings"]["resolution"],
                   "content": "final image x-hat of each validated sample, named after its sample id"},
        # crop_pct=1: the images are already at the generator's size, so they read back pixel for pixel
        "read_back": (f"imagenet:{to}" if imagenet else f"folder:{to}") + "?crop_pct=1",
        "folder_labels_match": folder_labels_match,
        "versions": r["provenance"]["versions"],
    }
