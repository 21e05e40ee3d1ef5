"""What every static evaluator shares: settings, model handle, class-space logits, records.

An evaluator is a function registered in ``EVALUATORS``::

    @EVALUATORS.register("ood-accuracy")
    def evaluate(ctx: Context, data: list[ImageDataset], ood: list[ImageDataset], **options) -> Output

It asks ``ctx.logits(dataset)`` for logits in the dataset's class space (one cached
forward pass per model and dataset) and returns metrics; :func:`run_evaluator` turns
them into a result record in the same shape as the FMR record.
"""

from __future__ import annotations

import datetime as _dt
import math
from contextlib import nullcontext
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..datasets import ImageDataset, load_dataset
from ..engine.distributed import World, rank_device
from ..config import EvalSettings, merge
from ..errors import ClassMappingError, FmrBenchError, SettingsError, from_worker
from ..engine.logits import Logits, compute_logits
from ..metrics.intervals import Intervals
from ..models import ImageClassifier, load_model, map_classes
from ..results.record import Provenance, load_record, sample_set_fingerprint, static_record
from ..registry import EVALUATORS
from ..results.rundir import RecordResult, RunFolder, run_dir, settings_hash
from ..runtime import command_line, resolve_device

ZERO_SHOT_SOURCES = ("openclip", "builtin")




@dataclass
class Output:
    """What an evaluator returns: numeric metrics, extra record fields, files it wrote, and the
    intervals of its metrics computed from the per-sample data (:mod:`fmr_bench.metrics.intervals`)."""

    metrics: dict[str, float | int | None]
    details: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    intervals: Intervals | None = None


@dataclass
class ClassLogits:
    """Logits of one dataset in its own class space (after projection / class mapping)."""

    logits: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    raw: Logits
    how: str
    model: ImageClassifier


def class_space(dataset: ImageDataset) -> tuple[list[str], Any]:
    """(class names a model is built with, projection or None) of a dataset."""
    return list(getattr(dataset, "model_classes", None) or dataset.class_names), getattr(dataset, "projection", None)


def is_zero_shot(model: ImageClassifier) -> bool:
    from ..models.openclip import ZeroShotHead

    return isinstance(model.net, ZeroShotHead)


class Context:
    """The model under test, the settings, and a per-run memory of logits."""

    def __init__(self, model: str | ImageClassifier, settings: EvalSettings, *, pretrained: bool = True,
                 folder: Path | None = None, progress: Callable[[str, int, int], None] | None = None,
                 world: World | None = None) -> None:
        self.model = model
        self.settings = settings
        self.pretrained = pretrained
        self.world = world  # under torchrun: each rank runs its shard of every forward pass
        self.device = rank_device(settings.device, world) if world is not None else resolve_device(settings.device)
        self.folder = folder
        self.progress = progress
        self._models: dict[Any, tuple[ImageClassifier, str]] = {}
        self._logits: dict[tuple, Logits] = {}
        self.inference: list[dict] = []  # per dataset pass: images/s or "cache"

    @property
    def spec(self) -> str:
        return self.model if isinstance(self.model, str) else (self.model.spec or "module")

    @property
    def source(self) -> str:
        return self.spec.partition(":")[0]

    def classifier(self, class_names: Sequence[str] | None, templates: str | None = None) -> tuple[ImageClassifier, str]:
        """The model built for these class names (zero-shot heads) and its weights hash."""
        if not isinstance(self.model, str):
            key: Any = "module"
        else:
            key = (tuple(class_names) if class_names else None, templates)
        if key not in self._models:
            if isinstance(self.model, str):
                kwargs = {}
                if templates and self.source in ZERO_SHOT_SOURCES:
                    kwargs["templates"] = templates
                torch.manual_seed(self.settings.seed)  # random-weight models are reproducible
                clf = load_model(self.model, class_names=class_names, pretrained=self.pretrained, **kwargs)
                clf.to(memory_format=torch.channels_last)  # ours to lay out (≈1.5x for CNNs on CPU too)
            else:
                clf = self.model
            clf = clf.to(self.device).eval()
            self._models[key] = (clf, clf.weights_hash())
        return self._models[key]

    def raw_logits(self, clf: ImageClassifier, whash: str, dataset: ImageDataset) -> Logits:
        key = (id(clf), whash, dataset.spec, len(dataset))
        if key in self._logits:  # an earlier evaluator of this suite ran it
            out = self._logits[key]
            self.inference.append({"dataset": dataset.spec, "n": len(out.ids), "cached": True, "seconds": 0.0,
                                   "images_per_s": None, "key": out.key, "transform": out.transform,
                                   "resolution": out.resolution})
            return out
        cb = (lambda d, t: self.progress(dataset.spec, d, t)) if self.progress else None
        try:
            out = compute_logits(clf, dataset, batch_size=self.settings.batch_size,
                                 num_workers=self.settings.num_workers, device=self.device, cache=self.settings.cache,
                                 weights_hash=whash, progress=cb, world=self.world)
        except FmrBenchError as e:
            raise from_worker(e) from None
        self.inference.append({"dataset": dataset.spec, "n": len(out.ids), "cached": out.cached,
                               "seconds": round(out.seconds, 3), "images_per_s": out.images_per_s, "key": out.key,
                               "transform": out.transform, "resolution": out.resolution})
        self._logits[key] = out
        return out

    def logits(self, dataset: ImageDataset, *, space_of: ImageDataset | None = None,
               templates: str | None = None) -> ClassLogits:
        """Logits of ``dataset`` in the class space of ``space_of`` (default: its own).

        The model is built with that space's class names (zero-shot heads); 1000-way
        ImageNet outputs are projected for ImageNet-R/A/ObjectNet; other outputs are
        mapped onto the dataset classes by label space, names or count.
        """
        ref = space_of or dataset
        names, projection = class_space(ref)
        clf, whash = self.classifier(names, templates)
        raw = self.raw_logits(clf, whash, dataset)
        n_out = raw.logits.shape[-1] if raw.logits.numel() else (clf.num_classes or 0)
        if projection is not None and n_out == projection.num_outputs:
            return ClassLogits(projection.apply(raw.logits), raw.labels, raw.ids, raw,
                               f"projection {projection.kind} from {projection.space}", clf)
        if projection is not None and not (clf.class_names and len(clf.class_names) == n_out):
            raise ClassMappingError(f"{clf.spec} has {n_out} outputs; {ref.spec} needs the {projection.num_outputs} "
                                    f"{projection.space} outputs (or class names) to read its classes; "
                                    "evaluate an ImageNet-1k classifier or a zero-shot model")
        cmap = map_classes(clf.class_names, n_out, ref.class_names, label_space=ref.label_space,
                           model_label_space=clf.label_space, model=clf.spec or "the model")
        logits = raw.logits if list(cmap.index) == list(range(n_out)) else raw.logits[:, cmap.tensor()]
        return ClassLogits(logits, raw.labels, raw.ids, raw, cmap.how, clf)


@dataclass
class StaticResult(RecordResult):
    """The record of one static evaluation (``record``), and its folder."""

    record: dict[str, Any]
    path: Path | None = None

    def row(self) -> dict[str, Any]:
        return {"model": self.record["model"]["spec"], "evaluator": self.record["evaluator"],
                "dataset": self.record["dataset"]["spec"], **self.metrics}

    @classmethod
    def load(cls, folder: str | Path) -> StaticResult:
        folder = Path(folder)
        return cls(load_record(folder).to_dict(), folder)  # a version-1 record comes back upgraded


def _as_datasets(specs: str | ImageDataset | Sequence[str | ImageDataset] | None) -> list[ImageDataset]:
    if specs is None:
        return []
    if isinstance(specs, (str, ImageDataset)):
        specs = [specs]
    return [s if isinstance(s, ImageDataset) else load_dataset(s) for s in specs]


def _spec_list(specs) -> list[str]:
    if specs is None:
        return []
    if isinstance(specs, (str, ImageDataset)):
        specs = [specs]
    return [s.spec if isinstance(s, ImageDataset) else str(s) for s in specs]


def run_evaluator(model: str | ImageClassifier, evaluator: str, data: Any = "digits", ood: Any = None, *,
                  out: str | Path | None = "runs", settings: EvalSettings | None = None, pretrained: bool = True,
                  progress: Callable[[str, int, int], None] | None = None, context: Context | None = None,
                  **options: Any) -> StaticResult:
    """Run one static evaluator and write its record.

    Args:
        model: a model spec (``"timm:resnet50"``, ``"openclip:ViT-B-32/openai"``, ``"file:…"``,
            ``"builtin:digits-cnn"``) or an :class:`ImageClassifier`.
        evaluator: a name in ``EVALUATORS`` (``fmr list evaluators``).
        data: the main dataset spec(s) (ID set, ImageNet val, group sets, zero-shot sets).
        ood: further dataset specs: OOD / shifted sets (ood-accuracy, ood-detection, calibration).
        out: folder for run folders; ``None`` writes nothing.
        settings: :class:`EvalSettings`; ``options`` that name its fields replace them, the
            rest go to the evaluator (e.g. ``baseline=``, ``scores=``, ``which_factor=``).
        context: reuse the models and logits of an earlier call (suites).

    Raises:
        FmrBenchError: bad input, with the fix in the message.
    """
    fn = EVALUATORS.get(evaluator)
    known = {f.name for f in fields(EvalSettings)}
    settings = merge(settings or EvalSettings(), {k: v for k, v in options.items() if k in known}).validated()
    options = {k: v for k, v in options.items() if k not in known}
    allowed = getattr(fn, "options", {})
    unknown = set(options) - set(allowed)
    if unknown:
        valid = ", ".join(f"{k} ({v})" for k, v in allowed.items()) or "none"
        raise SettingsError(f"{evaluator} has no option(s) {', '.join(sorted(unknown))}; valid: {valid}")
    data_specs, ood_specs = _spec_list(data), _spec_list(ood)
    defaults = getattr(fn, "digits_defaults", None)
    if defaults is not None and not ood_specs and all(s.split("?")[0] in ("digits", "digits:test") for s in data_specs):
        data, ood = defaults(data_specs)
    datasets, ood_sets = _as_datasets(data), _as_datasets(ood)
    if not datasets:
        raise SettingsError(f"{evaluator} needs a dataset; pass --data")
    ctx = context or Context(model, settings, pretrained=pretrained, progress=progress)
    if isinstance(model, str) and pretrained and not ctx._models:
        from ..models import model_weight_refs
        from ..weights import preflight

        preflight(model_weight_refs(model))  # offline and missing: stop before any work
    run_settings = {"evaluator": evaluator, "model": ctx.spec, "data": _spec_list(datasets),
                    "ood": _spec_list(ood_sets), "options": options, "seed": settings.seed, "pretrained": pretrained,
                    # an in-memory model is named by its weights (e.g. one folder per training epoch)
                    "weights": None if isinstance(model, str) else model.weights_hash()}
    folder = run_dir(out, ctx.spec, f"{evaluator}-{datasets[0].spec}", run_settings) if out is not None else None
    run = RunFolder(folder, run_settings, discard_unfinished=True) if folder is not None else nullcontext()
    with run:  # the lock and settings.json first, the record last (as every task's run folder)
        ctx.folder = folder
        result, record = _run_and_record(fn, ctx, model, evaluator, settings, options, pretrained, datasets,
                                         ood_sets, folder)
        if folder is not None:
            run.write_record(record)
    return StaticResult(record, folder)


def _run_and_record(fn: Callable, ctx: Context, model: Any, evaluator: str, settings: EvalSettings,
                    options: dict[str, Any], pretrained: bool, datasets: list[ImageDataset],
                    ood_sets: list[ImageDataset], folder: Path | None) -> tuple[Output, dict[str, Any]]:
    """Run evaluator ``fn`` and build its record (the model handed back as it was found)."""
    started = _dt.datetime.now(_dt.timezone.utc)
    n_inference = len(ctx.inference)
    was_training = model.training if isinstance(model, torch.nn.Module) else None
    try:
        result = fn(ctx, datasets, ood_sets, **options)
    finally:
        if was_training is not None:
            model.train(was_training)  # hand an in-memory model back as we found it
    main_clf, whash = next(iter(ctx._models.values())) if ctx._models else (None, None)
    model_desc = {**(main_clf.describe() if main_clf else {"spec": ctx.spec}), "spec": ctx.spec,
                  "weights_sha256_16": whash,
                  "heads": [{"classes": len(k[0]) if isinstance(k, tuple) and k[0] else None,
                             "templates": k[1] if isinstance(k, tuple) else None, "weights_sha256_16": h}
                            for k, (_, h) in ctx._models.items()]}
    record = static_record(
        evaluator, {**asdict(settings), "options": options, "pretrained": pretrained}, model=model_desc,
        dataset=_describe(datasets[0]), metrics={k: _num(v) for k, v in result.metrics.items()},
        provenance=Provenance.collect(device=str(ctx.device), timestamp=started.isoformat(timespec="seconds"),
                                      command=command_line()),
        run=folder.name if folder else None,
        sections={"datasets": [_describe(d) for d in datasets], "ood": [_describe(d) for d in ood_sets],
                  **result.details, "inference": ctx.inference[n_inference:], "files": result.files},
        intervals=result.intervals,
    ).to_dict()
    return result, record


def _describe(dataset: ImageDataset) -> dict[str, Any]:
    """A dataset's description with the fingerprint of its sample set (ids and labels)."""
    return {**dataset.describe(), "fingerprint": sample_set_fingerprint(dataset.ids, dataset.labels),
            "content_fingerprinted": False}


def _num(v: Any) -> float | int | None:
    if v is None:
        return None
    if isinstance(v, (bool, int)):
        return int(v)
    v = float(v)
    return None if math.isnan(v) else v  # NaN is not JSON


def evaluate_suite(model: str | ImageClassifier, evaluators: Sequence[str], data: Any = "digits", ood: Any = None,
                   **kwargs: Any) -> list[StaticResult]:
    """Run several evaluators on one model, sharing loaded models and logits."""
    settings = kwargs.pop("settings", None)
    known = {f.name for f in fields(EvalSettings)}
    settings = merge(settings or EvalSettings(), {k: kwargs.pop(k) for k in list(kwargs) if k in known})
    ctx = Context(model, settings.validated(), pretrained=kwargs.get("pretrained", True), progress=kwargs.get("progress"),
                  world=kwargs.pop("world", None))
    named = {"out", "pretrained", "progress"}
    options = {k: v for k, v in kwargs.items() if k not in named}
    accepted = {name: set(getattr(EVALUATORS.get(name), "options", {})) for name in evaluators}
    stray = set(options) - set().union(*accepted.values())
    if stray:
        raise SettingsError(f"no evaluator of {', '.join(evaluators)} takes option(s) {', '.join(sorted(stray))}; "
                            "see fmr list evaluators")
    common = {k: v for k, v in kwargs.items() if k in named}
    # each evaluator gets the options it knows, so a suite can mix e.g. baseline= and scores=
    return [run_evaluator(model, name, data, ood, settings=settings, context=ctx, **common,
                          **{k: v for k, v in options.items() if k in accepted[name]}) for name in evaluators]


def correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """How many top-1 predictions are right (the k of an accuracy's binomial interval)."""
    return int((logits.argmax(-1) == labels).sum())


def ds_name(dataset: ImageDataset) -> str:
    """A short key for metric names: the source, plus the ident for digits sets."""
    spec = dataset.spec.split("?")[0]
    source, _, ident = spec.partition(":")
    if getattr(dataset, "ood_name", None):
        return dataset.ood_name
    if source in ("digits", "digits-shift", "digits-spurious", "digits-ood", "folder", "ood"):
        return f"{source}:{ident}" if ident and source.startswith("digits") else (Path(ident).name or source)
    return source


__all__ = ["Context", "EvalSettings", "Output", "StaticResult", "evaluate_suite", "run_evaluator", "settings_hash"]
