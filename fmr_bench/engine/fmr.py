"""``evaluate``: one FMR run from specs (or in-memory modules) to a result record."""

from __future__ import annotations

import contextlib
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .judge import Audit
from ..config import FmrSettings, check_given, merge
from .defaults import RunDefaults, resolve_defaults
from ..datasets import ImageDataset, load_dataset
from ..errors import FmrBenchError, OutputError, SettingsError, from_worker
from ..files import keep_on_interrupt
from ..generators import Generator, generator_weight_refs, load_generator
from ..models import ImageClassifier, load_model, map_classes, model_weight_refs, wrap_module
from ..oracles import Oracle, load_oracle, oracle_weight_refs
from ..oracles.acceptance import DEFAULT_RULE, parse_rule
from ..protocol import LoopConfig, SampleOutcome, run_batched
from ..protocol.loop import OnSample
from ..results.record import Provenance, fmr_record, sample_set_fingerprint
from ..results.rundir import (
    SAMPLES_FILE,
    FmrResult,
    OutcomeWriter,
    RunFolder,
    RunLock,
    reconcile_outcomes,
    samples_seal,
    run_dir,
    select,
    settings_hash,
    write_json,
)
from ..runtime import command_line, describe_device, now, resolve_device, seed_everything, versions
from ..results.shards import SHARD_FILE, Shard, parse_shard, shard_manifest
from ..plots import save_grid
from ..weights import module_sha256, preflight, weights_identity

GRID_SIZE = 16
DEFAULT_FILE_RESOLUTION = 224
GRID_FILE = "grid.png"
#: Below this many images to decode, files are read in the main process (no DataLoader workers).
MIN_WORKER_IMAGES = 32

# resolve_device and versions live in runtime; importing them from here still works
__all__ = ["evaluate", "resolve_device", "select_indices", "versions"]


def select_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """All indices in order, or a seeded random subset of ``limit`` in dataset order."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def _infer_outputs(model: ImageClassifier, res: int, device: torch.device) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, 3, res, res, device=device)).shape[-1])


def evaluate(model: str | nn.Module, data: str | ImageDataset = "digits", *, generator: str | Generator | None = None,
             oracle: str | Oracle | None = None, out: str | Path | None = "runs", settings: FmrSettings | None = None,
             preprocess: dict[str, Any] | None = None, progress: bool | Callable[[int, int], None] = False,
             pretrained: bool = True, write_grid: bool = True, sample_hook: OnSample | None = None,
             fresh: bool = False, audit: str | Oracle | None = None, expect_run: str | Path | None = None,
             shard: str | Shard | None = None, **overrides: Any) -> FmrResult:
    """Run the FMR protocol and return its record.

    Args:
        model: a spec (``"timm:resnet50"``, ``"builtin:digits-cnn"``...) or an in-memory
            ``nn.Module``; a bare module needs ``preprocess=dict(input_size=..., mean=..., std=...)``
            unless it is an :class:`ImageClassifier`.
        data: a dataset spec (``"digits"``, ``"imagenet:/data/val"``) or dataset object.
        generator, oracle: specs; default to the dataset world's (digits: ``vqgan:digits``
            and ``builtin:digits-clip``; ImageNet: ``vqgan:imagenet-f16-16384`` and
            ``openclip:ViT-B-32/openai``).
        out: folder for run folders; ``None`` keeps everything in memory (no resume).
        settings: an :class:`FmrSettings`; keyword ``overrides`` (``budget=20``...) replace fields.
        progress: True for a rich progress bar, or a callable ``(done, total)``.
        pretrained: False builds models from specs with random weights (benchmarks, tests).
        sample_hook: called as ``(outcome, clean, final, final_latent)`` for each sample
            this call perturbs (not for samples resumed from disk): image export,
            sparse-mask fitting.
        fresh: redo the run even if its folder holds finished outcomes; the earlier files
            are moved into ``replaced-<time>/`` inside the run folder, never deleted.
        audit: a judge (oracle spec or :class:`Oracle`) that labels every validated x-hat
            (:mod:`fmr_bench.engine.judge`); not part of the run's identity, so auditing reuses the
            run's outcomes and regenerates the x-hat of samples finished without a verdict.
        expect_run: the run folder these settings must name (``fmr audit``); another is an error.
        shard: ``"i/n"`` or a :class:`~fmr_bench.results.shards.Shard`: run only that shard of the selected
            samples, in ``RUN/shard-<i>-of-<n>/`` (not part of the run's identity; ``fmr merge``
            puts the shards together into the record a single run writes).

    Raises:
        FmrBenchError: for bad input; finished samples are on disk before it propagates.
            ``OutputError`` when another process holds the run folder (its PID is named).
    """
    settings = merge(settings or FmrSettings(), overrides)
    check_given(overrides)  # e.g. fgsm_eps without init="fgsm" would be ignored
    shard = parse_shard(shard) if isinstance(shard, str) else shard
    if shard is not None and audit is not None:
        raise SettingsError("--audit does not run per shard; merge the shards (fmr merge), then audit the whole run "
                            "with fmr audit RUN_FOLDER --judge JUDGE")
    settings = settings.validated()
    state = {"done": 0, "total": None, "where": out}  # what a Ctrl-C line reports

    def saved() -> str:
        return f"{state['done']}/{state['total']} samples" if state["total"] is not None else "0 samples"

    with command_lock(out, model, data, generator, oracle, settings, shard), \
            keep_on_interrupt(saved, lambda: state["where"]):
        return _evaluate(model, data, generator, oracle, out, settings, preprocess, progress, pretrained, write_grid,
                         sample_hook, fresh, audit, expect_run, shard, state)


def command_lock(out: str | Path | None, model: Any, data: Any, generator: Any, oracle: Any, settings: FmrSettings,
                 shard: Shard | None) -> RunLock | contextlib.nullcontext:
    """A lock on this command's run, taken before anything loads: a second process started with
    the same specs, settings and ``out`` stops at once instead of after loading the models.

    The run folder is named by the loaded weights, so it is known only after loading; this lock
    is named by what the command says (kept under the cache folder, ``locks/``), and the run
    folder's own :class:`~fmr_bench.results.rundir.RunLock` still guards the folder. Only for runs
    whose model, data, generator and oracle are all specs (objects were loaded by the caller).
    """
    specs = (model, data, generator, oracle)
    if out is None or not all(s is None or isinstance(s, str) for s in specs) or not isinstance(model, str):
        return contextlib.nullcontext()
    from ..files import cache_dir

    key = {"out": str(Path(out).resolve()), "specs": list(specs), "settings": asdict(settings),
           "shard": str(shard) if shard is not None else None}
    path = cache_dir() / "locks" / f"{settings_hash(key)}.lock"
    return RunLock(Path(out), path=path, what=f"the run of the same command into {out}", optional=True)


def _evaluate(model, data, generator, oracle, out, settings, preprocess, progress, pretrained, write_grid, sample_hook,
              fresh, audit, expect_run, shard, state) -> FmrResult:
    """The body of :func:`evaluate`, with the arguments checked and the command's lock held: its phases
    in order (settings and defaults, preflight, parts, identity, run folder, loop, grid, record)."""
    dataset = data if isinstance(data, ImageDataset) else load_dataset(data)
    defaults = resolve_defaults(settings, dataset, generator, oracle)  # step size from the generator's card
    settings = replace(defaults.settings, accept=parse_rule(defaults.settings.accept).spec)  # one canonical name
    refs = _preflight(model, defaults, dataset.world, audit)
    parts = _Parts.build(model, generator, oracle, audit, dataset, defaults, settings, preprocess, pretrained)
    try:
        ident = _Identity.of(parts, dataset, settings, shard, refs, generator, oracle, out)
        state.update(total=len(ident.indices), where=ident.folder)
        if expect_run is not None and (ident.folder is None or ident.folder.resolve() != Path(expect_run).resolve()):
            raise OutputError(f"the settings recorded in {expect_run} now name another run ({ident.folder}): a model, "
                              "weights, dataset or generator file changed since; re-run the evaluation instead")
        folder = RunFolder(ident.folder, ident.run_settings, fresh=fresh) if ident.folder is not None else None
        with folder or contextlib.nullcontext():
            run = _Loop(parts, dataset, settings, ident, folder, progress, sample_hook, state)
            run.perturb()
            outcomes = run.outcomes()
            files = run.draw_grid(write_grid) if folder is not None else {}
            record = _record(parts, dataset, settings, ident, defaults, outcomes, run.fps, files, run.started)
            if folder is not None:
                folder.write_record(record)  # last: a record means every listed file is complete
    finally:
        parts.restore()
    return FmrResult(record, outcomes, ident.folder, reused=run.reused)


def _preflight(model: Any, defaults: RunDefaults, world: Any, audit: Any) -> list:
    """Every weight file the run will load, checked before anything loads (the judge's too)."""
    refs = model_weight_refs(model) if isinstance(model, str) else []
    if defaults.generator is not None:
        refs += generator_weight_refs(defaults.generator, world.generator)
    if defaults.oracle is not None:
        refs += oracle_weight_refs(defaults.oracle)
    preflight(refs + (Audit.weight_refs(audit) if isinstance(audit, str) else []))  # the judge: not in the identity
    return refs


@dataclass
class _Parts:
    """The run's model, generator, oracle and judge on the device, and how to hand a caller's model back."""

    clf: ImageClassifier
    gen: Generator
    ora: Oracle
    auditor: Audit | None
    device: torch.device
    cmap: Any
    resolution: int
    gen_spec: str | None
    restore: Callable[[], None]

    @classmethod
    def build(cls, model, generator, oracle, audit, dataset: ImageDataset, defaults: RunDefaults,
              settings: FmrSettings, preprocess, pretrained: bool) -> _Parts:
        device = resolve_device(settings.device)
        seed_everything(settings.seed)
        clf = _classifier(model, dataset, preprocess, pretrained)
        was_training, grad_flags = clf.training, [p.requires_grad for p in clf.parameters()]

        def restore() -> None:  # hand an in-memory model back as we found it
            clf.train(was_training)
            for p, flag in zip(clf.parameters(), grad_flags):
                p.requires_grad_(flag)

        clf = clf.to(device).freeze()
        world = dataset.world
        gen = generator if isinstance(generator, Generator) else load_generator(
            defaults.generator, default=world.generator, seed=settings.seed)
        gen = gen.to(device).freeze()
        ora = oracle if isinstance(oracle, Oracle) else load_oracle(defaults.oracle, dataset.class_names,
                                                                    pretrained=pretrained)
        ora = ora.to(device).eval()
        auditor = None
        if audit is not None:
            auditor = (Audit.load(audit, dataset.class_names, pretrained=pretrained) if isinstance(audit, str)
                       else Audit(audit.eval(), audit.spec)).to(device)
        resolution = gen.resolution or dataset.resolution or DEFAULT_FILE_RESOLUTION
        dataset.set_resolution(resolution)
        num_outputs = clf.num_classes or _infer_outputs(clf, resolution, device)
        cmap = map_classes(clf.class_names, num_outputs, dataset.class_names, label_space=dataset.label_space,
                           model_label_space=clf.label_space, model=clf.spec or "the model")
        return cls(clf, gen, ora, auditor, device, cmap, resolution, defaults.generator, restore)


def _classifier(model: Any, dataset: ImageDataset, preprocess, pretrained: bool) -> ImageClassifier:
    if isinstance(model, str):
        clf = load_model(model, class_names=dataset.class_names, pretrained=pretrained)
        clf.to(memory_format=torch.channels_last)  # ours to lay out; a caller's module is left as is
        return clf
    if isinstance(model, ImageClassifier):
        return model
    if not preprocess:
        raise SettingsError("an nn.Module needs preprocess=dict(input_size=..., mean=..., std=...) "
                            "or wrap it with fmr_bench.wrap_module")
    return wrap_module(model, **preprocess)


@dataclass
class _Identity:
    """Which samples the run covers and what names its folder (the settings that determine the outcomes)."""

    indices: list[int]
    ids: list[str]
    manifest: dict[str, Any] | None
    run_settings: dict[str, Any]
    run_name: str | None
    folder: Path | None

    @classmethod
    def of(cls, parts: _Parts, dataset: ImageDataset, settings: FmrSettings, shard: Shard | None, refs: list,
           generator: Any, oracle: Any, out: str | Path | None) -> _Identity:
        indices = select_indices(len(dataset), settings.limit, settings.seed)
        manifest = None
        if shard is not None:  # the whole selection first: a shard is a slice of it, not another selection
            manifest = shard_manifest(shard, [dataset.ids[i] for i in indices], [dataset.labels[i] for i in indices])
            indices = shard.take(indices)
        clf, gen, ora = parts.clf, parts.gen, parts.ora
        run_settings = {
            "model": clf.spec, "model_weights": clf.weights_hash(), "dataset": dataset.spec,
            "generator": gen.settings(), "oracle": ora.settings(), "budget": settings.budget,
            "step_size": settings.step_size, "optimizer": settings.optimizer, "seed": settings.seed,
            "limit": settings.limit, "precision": settings.precision, "resolution": parts.resolution,
            # what the weights are, not only where they come from (a spec may point at other files)
            "weights": _weights_identity(refs, generator, oracle, gen, ora, in_memory=out is not None),
        }
        if settings.init != "none":  # only then, so that earlier run folders keep their names
            run_settings.update(init=settings.init, fgsm_eps=settings.fgsm_eps)
        if settings.accept != DEFAULT_RULE:  # likewise: an argmax run is named as before rules existed
            run_settings.update(accept=settings.accept)
        folder = run_dir(out, clf.spec, dataset.spec, run_settings) if out is not None else None
        run_name = folder.name if folder is not None else None
        if folder is not None and shard is not None:
            folder = folder / shard.folder_name
        return cls(indices, [dataset.ids[i] for i in indices], manifest, run_settings, run_name, folder)


class _Loop:
    """The run's outcomes: finished ones reused from the folder, pending ones perturbed and written at once."""

    def __init__(self, parts: _Parts, dataset: ImageDataset, settings: FmrSettings, ident: _Identity,
                 folder: RunFolder | None, progress, sample_hook: OnSample | None, state: dict) -> None:
        self.parts, self.dataset, self.settings, self.ident, self.folder = parts, dataset, settings, ident, folder
        self.progress, self.sample_hook, self.state = progress, sample_hook, state
        self.cfg = LoopConfig.from_settings(settings)
        self.done: dict[str, SampleOutcome] = {}
        self.fps: list[str | None] = [None] * len(ident.indices)
        self.grid: dict[str, tuple[SampleOutcome, torch.Tensor, torch.Tensor]] = {}
        self.grid_ids = set(ident.ids[:GRID_SIZE])  # the grid shows the first samples in dataset order
        self.writer: OutcomeWriter | None = None
        was_finished = folder is not None and folder.finished
        if folder is not None:
            if ident.manifest is not None:
                write_json(folder.path / SHARD_FILE, ident.manifest)
            self.fps = dataset.fingerprints(ident.indices)
            self.done = reconcile_outcomes(folder.path, ident.ids, ident.indices, self.fps)
            self.writer = OutcomeWriter(folder.path / SAMPLES_FILE)
        self.fp_of = dict(zip(ident.ids, self.fps))
        self.pending = [i for i in ident.indices if dataset.ids[i] not in self.done]
        self.reused = was_finished and not self.pending
        self.started = now()

    def _count(self) -> int:
        return sum(1 for i in self.ident.ids if i in self.done)

    def save(self, o: SampleOutcome, clean: torch.Tensor, final: torch.Tensor) -> None:
        self.done[o.id] = o
        self.state["done"] = self._count()
        if self.writer is not None:  # a later line for the same id supersedes an earlier one (an audit's)
            self.writer.write(o, self.fp_of.get(o.id))
        if o.id in self.grid_ids:
            self.grid[o.id] = (o, clean, final.cpu())

    def perturb(self) -> None:
        """Run the loop over the pending samples (and regenerate the x-hat an audit still needs)."""
        parts, ident, progress = self.parts, self.ident, self.progress
        total, finished = len(ident.indices), self._count()
        where = self.folder.path if self.folder is not None else None
        if progress is True and parts.auditor is not None and finished:
            _say(audit_line(parts.auditor, select(self.done, ident.ids), where))
        elif self.reused and progress is True:
            _say(f"reused finished run ({where}): all {total} samples were done; pass --fresh to redo it")
        bar = _Progress(progress if self.pending else False, total, finished)
        self.state["done"] = finished

        def on_sample(o: SampleOutcome, clean: torch.Tensor, final: torch.Tensor, latent: torch.Tensor) -> None:
            if parts.auditor is not None:
                o = parts.auditor.annotate(o, final)
            if self.sample_hook is not None:  # before the outcome is written: a resumed run redoes what it missed
                self.sample_hook(o, clean, final, latent)
            self.save(o, clean, final)
            bar.advance()

        try:  # Ctrl-C: evaluate's keep_on_interrupt reports what is saved
            with bar:
                self._run(self.pending, on_sample, bar.iteration)
            if parts.auditor is not None:  # samples finished before this call: their x-hat is generated again
                regenerate = _regenerator(self.dataset, parts.clf, parts.ora, parts.gen, parts.cmap.tensor(),
                                          self.cfg, parts.device, progress, self.settings.workers)
                parts.auditor.complete(select(self.done, ident.ids), regenerate, self.save)
        finally:
            if self.writer is not None:
                self.writer.close()

    def _run(self, indices: list[int], on_sample, on_iteration=None) -> None:
        p = self.parts
        run_batched(_samples(self.dataset, indices, self.settings.workers), model=p.clf, oracle=p.ora,
                    generator=p.gen, target_of=p.cmap.tensor(), cfg=self.cfg, device=p.device, on_sample=on_sample,
                    on_iteration=on_iteration)

    def outcomes(self) -> list[SampleOutcome]:
        return select(self.done, self.ident.ids)

    def draw_grid(self, write_grid: bool) -> dict[str, str]:
        """``grid.png`` of the first samples (those finished earlier are run again for their images)."""
        parts, ident, dataset = self.parts, self.ident, self.dataset
        files = {"samples": SAMPLES_FILE}
        grid_path = self.folder.path / GRID_FILE
        audited_now = parts.auditor is not None and parts.auditor.n_regenerated > 0
        if write_grid and ident.ids and (self.pending or audited_now or not _nonempty(grid_path)):
            missing = [i for i in ident.indices[:GRID_SIZE] if dataset.ids[i] not in self.grid]
            if missing:
                def keep(o, clean, final, latent):
                    self.grid[o.id] = (self.done[o.id], clean, final.cpu())

                self._run(missing, keep)
            clf, auditor = parts.clf, parts.auditor
            display = clf.class_names or (dataset.class_names if parts.cmap.how.startswith("label space") else None)
            items = [self.grid[i] for i in ident.ids[:GRID_SIZE] if i in self.grid]
            save_grid(items, grid_path, class_names=dataset.class_names, model_classes=display,
                      title=f"{clf.spec} on {dataset.spec} — top: clean, bottom: perturbed (B={self.settings.budget}, "
                            f"accept {self.settings.accept}" + (f", judge {auditor.spec})" if auditor else ")"),
                      judge=auditor.spec if auditor else None)
        if _nonempty(grid_path):
            files["grid"] = GRID_FILE
        return files


def _record(parts: _Parts, dataset: ImageDataset, settings: FmrSettings, ident: _Identity, defaults: RunDefaults,
            outcomes: list[SampleOutcome], fps: list[str | None], files: dict[str, str], started: Any) -> dict[str, Any]:
    """The run's record, built by the one record builder (:func:`fmr_bench.results.record.fmr_record`)."""
    clf, gen, ora, auditor = parts.clf, parts.gen, parts.ora, parts.auditor
    fp_of = dict(zip(ident.ids, fps))
    descriptions = {
        "model": {**clf.describe(), "weights_sha256_16": ident.run_settings["model_weights"],
                  "class_map": parts.cmap.how},
        "dataset": dataset.describe() | {"n_selected": len(ident.indices), "fingerprint": sample_set_fingerprint(
            ident.ids, [dataset.labels[i] for i in ident.indices], fps),
            "content_fingerprinted": ident.folder is not None, "class_names": list(dataset.class_names)},
        "generator": {"spec": str(parts.gen_spec) if parts.gen_spec else gen.name, **gen.settings()},
        "oracle": {**ora.settings(), "accept": settings.accept},
        "weights": ident.run_settings["weights"], "defaults": defaults.taken, "notes": defaults.notes,
    }
    record = fmr_record({**asdict(settings), "resolution": parts.resolution}, descriptions, outcomes,
                        provenance=Provenance.collect(device=describe_device(parts.device),
                                                      timestamp=started.isoformat(timespec="seconds"),
                                                      command=command_line()),
                        run=ident.run_name, judge=auditor.spec if auditor else None,
                        audit=auditor.describe(outcomes) if auditor else None, files=files,
                        seal=samples_seal(zip(outcomes, (fp_of[o.id] for o in outcomes))) if ident.folder else None
                        ).to_dict()
    if ident.manifest is not None:  # which slice of the run this is (fmr merge reads it)
        shard = ident.manifest
        record["shard"] = {"index": shard["index"], "count": shard["count"], "n_selected": shard["n_selected"]}
    return record


def audit_line(auditor: Audit, finished: list[SampleOutcome], folder: Path | None) -> str:
    """What an audit of samples finished earlier does: how many validated x-hat it generates again."""
    validated = sum(1 for o in finished if o.validated)
    todo = len(auditor.pending(finished))
    what = (f"generating the x-hat of {todo} of its {validated} validated samples again for the judge's verdict"
            if todo else f"all {validated} validated samples already have its verdict")
    return f"audit of {folder or 'the finished samples'} by judge {auditor.spec}: {what}"


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _say(line: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(line, highlight=False, soft_wrap=True)


def _weights_identity(refs: list, generator: Any, oracle: Any, gen: Generator, ora: Oracle, *,
                      in_memory: bool) -> dict[str, str]:
    """Content hashes of every local weight file (cached, cheap) and, when ``in_memory``
    (a run folder will be named by them), of generators / oracles handed over as objects."""
    out = weights_identity(refs)
    if in_memory and not isinstance(generator, str) and generator is not None:
        out["generator (in memory)"] = module_sha256(gen)
    if in_memory and not isinstance(oracle, str) and oracle is not None:
        out["oracle (in memory)"] = module_sha256(ora)
    return out


def _regenerator(dataset: ImageDataset, clf: ImageClassifier, ora: Oracle, gen: Generator, target_of: torch.Tensor,
                 cfg: LoopConfig, device: torch.device, progress: bool | Callable[[int, int], None],
                 workers: int | None = None):
    """Runs the loop again over finished samples, for an audit that needs their x-hat."""
    def regenerate(pending: list[SampleOutcome], hook) -> None:
        bar = _Progress(progress, len(pending), 0)

        def on_sample(o: SampleOutcome, clean: torch.Tensor, final: torch.Tensor, z: torch.Tensor) -> None:
            hook(o, clean, final)
            bar.advance()

        with bar:
            run_batched(_samples(dataset, [o.index for o in pending], workers), model=clf, oracle=ora, generator=gen,
                        target_of=target_of, cfg=cfg, device=device, on_sample=on_sample, on_iteration=bar.iteration)
    return regenerate


def _samples(dataset: ImageDataset, indices: Sequence[int], workers: int | None = None):
    """Yield (id, index, image, label), decoding files in ``workers`` background workers (``--workers``)."""
    if not indices:
        return
    if getattr(dataset, "images", None) is not None:
        workers = 0  # in memory: nothing to decode
    elif workers is None:
        # worker processes pay off for many files; for a handful (small sets, a resume) they cost more to start
        few = len(indices) < MIN_WORKER_IMAGES
        workers = 0 if few else min(4, torch.get_num_threads())
    if workers == 0:
        for i in indices:
            yield dataset.ids[i], i, dataset.load(i), dataset.labels[i]
        return
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(indices)), batch_size=None,
                                         num_workers=workers, prefetch_factor=4)
    it = iter(loader)
    for k in range(len(indices)):
        try:
            sid, img, label = next(it)
        except FmrBenchError as e:  # re-raised from a worker with its traceback in the message
            raise from_worker(e) from None
        yield sid, indices[k], img, int(label)


class _Progress:
    """The FMR loop's progress: :class:`fmr_bench.progress.Progress` (a bar, or plain lines in a
    log), a callback ``(done, total)``, or nothing."""

    def __init__(self, progress: bool | Callable[[int, int], None], total: int, done: int) -> None:
        self.total, self.done = total, done
        self.callback = progress if callable(progress) else None
        self._bar = None
        if progress is True:
            from ..progress import Progress

            self._bar = Progress("FMR", total, done, fields=("in flight",))

    def __enter__(self) -> "_Progress":
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def advance(self) -> None:
        self.done += 1
        if self.callback:
            self.callback(self.done, self.total)
        if self._bar is not None:
            self._bar.update(self.done)

    def iteration(self, in_flight: int) -> None:
        if self._bar is not None:
            self._bar.update(**{"in flight": in_flight})
