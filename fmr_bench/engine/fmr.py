"""``evaluate``: one FMR run from specs (or in-memory modules) to a result record."""

from __future__ import annotations

import contextlib
import random
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .judge import Audit
from ..config import FmrSettings, check_given, merge
from .defaults import resolve_defaults
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
    RunLock,
    prepare_run_dir,
    reconcile_outcomes,
    run_dir,
    select,
    set_aside,
    settings_hash,
    write_json,
)
from ..runtime import command_line, describe_device, now, resolve_device, seed_everything, versions
from ..results.shards import SHARD_FILE, Shard, parse_shard, shard_manifest
from ..plots import save_grid
from ..weights import module_sha256, preflight, weights_identity
from ..results.scan import RECORD_FILE

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
    """The body of :func:`evaluate`, with the arguments checked and the command's lock held."""
    dataset = data if isinstance(data, ImageDataset) else load_dataset(data)
    world = dataset.world
    defaults = resolve_defaults(settings, dataset, generator, oracle)  # step size from the generator's card
    settings, gen_spec, ora_spec = defaults.settings, defaults.generator, defaults.oracle
    settings = replace(settings, accept=parse_rule(settings.accept).spec)  # range-checked, one canonical name

    refs = []
    if isinstance(model, str):
        refs += model_weight_refs(model)
    if gen_spec is not None:
        refs += generator_weight_refs(gen_spec, world.generator)
    if ora_spec is not None:
        refs += oracle_weight_refs(ora_spec)
    preflight(refs + (Audit.weight_refs(audit) if isinstance(audit, str) else []))  # the judge: not in the identity

    device = resolve_device(settings.device)
    seed_everything(settings.seed)
    if isinstance(model, str):
        clf = load_model(model, class_names=dataset.class_names, pretrained=pretrained)
        clf.to(memory_format=torch.channels_last)  # ours to lay out; a caller's module is left as is
    elif isinstance(model, ImageClassifier):
        clf = model
    else:
        if not preprocess:
            raise SettingsError("an nn.Module needs preprocess=dict(input_size=..., mean=..., std=...) "
                                "or wrap it with fmr_bench.wrap_module")
        clf = wrap_module(model, **preprocess)
    was_training = clf.training
    grad_flags = [p.requires_grad for p in clf.parameters()]
    clf = clf.to(device).freeze()
    gen = generator if isinstance(generator, Generator) else load_generator(gen_spec, default=world.generator,
                                                                             seed=settings.seed)
    gen = gen.to(device).freeze()
    ora = oracle if isinstance(oracle, Oracle) else load_oracle(ora_spec, dataset.class_names, pretrained=pretrained)
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

    indices = select_indices(len(dataset), settings.limit, settings.seed)
    manifest = None
    if shard is not None:  # the whole selection first: a shard is a slice of it, not another selection
        manifest = shard_manifest(shard, [dataset.ids[i] for i in indices], [dataset.labels[i] for i in indices])
        indices = shard.take(indices)
    ids = [dataset.ids[i] for i in indices]
    run_settings = {
        "model": clf.spec, "model_weights": clf.weights_hash(), "dataset": dataset.spec,
        "generator": gen.settings(), "oracle": ora.settings(), "budget": settings.budget,
        "step_size": settings.step_size, "optimizer": settings.optimizer, "seed": settings.seed,
        "limit": settings.limit, "precision": settings.precision, "resolution": resolution,
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
    state.update(total=len(indices), where=folder)
    if expect_run is not None and (folder is None or folder.resolve() != Path(expect_run).resolve()):
        raise OutputError(f"the settings recorded in {expect_run} now name another run ({folder}): a model, "
                          "weights, dataset or generator file changed since; re-run the evaluation instead")
    done: dict[str, SampleOutcome] = {}
    writer = lock = None
    fps: list[str | None] = [None] * len(indices)
    reused_run = False
    try:
        if folder is not None:
            lock = RunLock(folder).acquire()  # before reading: a second process stops here, naming this one
            if fresh:
                set_aside(folder)
            prepare_run_dir(folder, run_settings)
            if manifest is not None:
                write_json(folder / SHARD_FILE, manifest)
            fps = dataset.fingerprints(indices)
            reused_run = (folder / RECORD_FILE).is_file()
            done = reconcile_outcomes(folder, ids, indices, fps)
            writer = OutcomeWriter(folder / SAMPLES_FILE)
        fp_of = dict(zip(ids, fps))
        pending = [i for i in indices if dataset.ids[i] not in done]
        reused_run = reused_run and not pending

        grid: dict[str, tuple[SampleOutcome, torch.Tensor, torch.Tensor]] = {}
        grid_ids = set(ids[:GRID_SIZE])  # the grid shows the first samples in dataset order
        started = now()
        total, finished = len(indices), sum(1 for i in ids if i in done)
        if progress is True and auditor is not None and finished:
            _say(audit_line(auditor, select(done, ids), folder))
        elif reused_run and progress is True:
            _say(f"reused finished run ({folder}): all {total} samples were done; pass --fresh to redo it")
        bar = _Progress(progress if pending else False, total, finished)
        state["done"] = finished

        def save(o: SampleOutcome, clean: torch.Tensor, final: torch.Tensor) -> None:
            done[o.id] = o
            state["done"] = sum(1 for i in ids if i in done)
            if writer is not None:  # a later line for the same id supersedes an earlier one (an audit's)
                writer.write(o, fp_of.get(o.id))
            if o.id in grid_ids:
                grid[o.id] = (o, clean, final.cpu())

        def on_sample(o: SampleOutcome, clean: torch.Tensor, final: torch.Tensor, latent: torch.Tensor) -> None:
            if auditor is not None:
                o = auditor.annotate(o, final)
            if sample_hook is not None:  # before the outcome is written: a resumed run redoes what the hook missed
                sample_hook(o, clean, final, latent)
            save(o, clean, final)
            bar.advance()

        loop_cfg = LoopConfig(settings.budget, settings.step_size, settings.optimizer, settings.batch_size,
                              settings.precision, init=settings.init, fgsm_eps=settings.fgsm_eps,
                              accept=settings.accept)
        try:  # Ctrl-C: evaluate's keep_on_interrupt reports what is saved
            with bar:
                run_batched(_samples(dataset, pending, settings.workers), model=clf, oracle=ora, generator=gen,
                            target_of=cmap.tensor(), cfg=loop_cfg, device=device, on_sample=on_sample,
                            on_iteration=bar.iteration)
            if auditor is not None:  # samples finished before this call: their x-hat is generated again
                regenerate = _regenerator(dataset, clf, ora, gen, cmap.tensor(), loop_cfg, device, progress,
                                          settings.workers)
                auditor.complete(select(done, ids), regenerate, save)
        finally:
            if writer is not None:
                writer.close()

        outcomes = select(done, ids)
        display = clf.class_names or (dataset.class_names if cmap.how.startswith("label space") else None)
        files = {}
        if folder is not None:
            files["samples"] = SAMPLES_FILE
            grid_path = folder / GRID_FILE
            audited_now = auditor is not None and auditor.n_regenerated > 0
            if write_grid and ids and (pending or audited_now or not _nonempty(grid_path)):
                # a resumed run redraws the same first samples: those finished earlier are re-run for their images
                missing = [i for i in indices[:GRID_SIZE] if dataset.ids[i] not in grid]
                if missing:
                    def keep(o, clean, final, latent):
                        grid[o.id] = (done[o.id], clean, final.cpu())

                    run_batched(_samples(dataset, missing, settings.workers), model=clf, oracle=ora, generator=gen,
                                target_of=cmap.tensor(), cfg=loop_cfg, device=device, on_sample=keep)
                items = [grid[i] for i in ids[:GRID_SIZE] if i in grid]
                save_grid(items, grid_path, class_names=dataset.class_names, model_classes=display,
                          title=f"{clf.spec} on {dataset.spec} — top: clean, bottom: perturbed (B={settings.budget}, "
                                f"accept {settings.accept}" + (f", judge {auditor.spec})" if auditor else ")"),
                          judge=auditor.spec if auditor else None)
            if _nonempty(grid_path):
                files["grid"] = GRID_FILE
        descriptions = {
            "model": {**clf.describe(), "weights_sha256_16": run_settings["model_weights"], "class_map": cmap.how},
            "dataset": dataset.describe() | {"n_selected": total, "fingerprint": sample_set_fingerprint(
                ids, [dataset.labels[i] for i in indices], fps), "content_fingerprinted": folder is not None,
                                             "class_names": list(dataset.class_names)},
            "generator": {"spec": str(gen_spec) if gen_spec else gen.name, **gen.settings()},
            "oracle": {**ora.settings(), "accept": settings.accept},
            "weights": run_settings["weights"], "defaults": defaults.taken, "notes": defaults.notes,
        }
        record = fmr_record({**asdict(settings), "resolution": resolution}, descriptions, outcomes,
                            provenance=Provenance.collect(device=describe_device(device),
                                                          timestamp=started.isoformat(timespec="seconds"),
                                                          command=command_line()),
                            run=run_name, judge=auditor.spec if auditor else None,
                            audit=auditor.describe(outcomes) if auditor else None, files=files).to_dict()
        if shard is not None:  # which slice of the run this is (fmr merge reads it)
            record["shard"] = {"index": shard.index, "count": shard.count, "n_selected": manifest["n_selected"]}
        if folder is not None:
            write_json(folder / RECORD_FILE, record)  # last: a record means every listed file is complete
    finally:
        if lock is not None:
            lock.release()
        clf.train(was_training)  # hand an in-memory model back as we found it
        for p, flag in zip(clf.parameters(), grad_flags):
            p.requires_grad_(flag)
    return FmrResult(record, outcomes, folder, reused=reused_run)


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
