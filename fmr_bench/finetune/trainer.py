"""The training loop of ``fmr finetune``: stages of a method, AdamW + cosine, checkpoints, resume.

:func:`finetune` is the whole run; :class:`Trainer` is the loop, usable with callbacks.
A run folder ``OUT`` holds::

    zeroshot.safetensors   the model before fine-tuning (θ₀: teachers, WiSE-FT), file:-loadable
    checkpoints/           resumable checkpoints (see fmr_bench.finetune.checkpoint)
    train_log.jsonl        one line per step: step, stage, epoch, lr, loss and each term
    model.safetensors      the fine-tuned model (file:-loadable), written last
    finetune.json          the run's record (fmr_bench.results.record, kind ``finetune``): settings, method,
                           data, provenance, steps, evaluation records, the last scores as metrics

Re-running the same command after a kill continues from the last checkpoint and ends at
the same weights as an uninterrupted run (the data order is a function of seed, stage
and epoch; RNG, optimiser and scheduler states are restored). A folder holding a run of
other settings is refused rather than overwritten.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import os
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..datasets import ImageDataset
from ..errors import FmrBenchError, OutputError, SettingsError, from_worker
from ..files import append_jsonl, keep_on_interrupt, require_writable, truncate_jsonl, write_json
from ..models import ImageClassifier, load_model, map_classes
from ..models.file import save_model
from ..progress import Progress
from ..results.record import Provenance, finetune_record, sample_set_fingerprint
from ..results.rundir import RunLock
from ..runtime import command_line
from .adapters import Parts, parts_of
from .callbacks import Callback
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, saved_steps
from .settings import FinetuneSettings, make_settings
from .train_data import load_train_data
from .methods import Method, Stage, build_method
from .terms import TERMS, StepContext
from ..results.scan import FINETUNE_FILE

META_KEY = "fmr_bench_finetune"


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak lr: linear warm-up over ``warmup`` steps, then cosine to 0 (WiSE-FT's schedule)."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


def epoch_batches(n: int, batch_size: int, seed: int, stage: int, epoch: int) -> list[torch.Tensor]:
    """The batches of one epoch: a permutation seeded by (seed, stage, epoch); a last batch of 1 is dropped."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + stage * 10_007 + epoch)
    perm = torch.randperm(n, generator=g)
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


def _versions() -> dict[str, str]:
    from ..engine.fmr import versions

    return versions()


@dataclass
class FinetuneResult:
    """The fine-tuned model (in memory), where it was written, and the run's records."""

    model: ImageClassifier
    settings: FinetuneSettings
    path: Path | None
    steps: int
    log: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Runs a :class:`Method` on a model and a dataset.

    Args:
        model: the classifier to fine-tune (modified in place).
        data: the training set (labels are mapped onto the model's classes by name or count).
        settings: validated :class:`FinetuneSettings`.
        out: run folder for checkpoints and the result; None keeps everything in memory.
        callbacks: hooks (e.g. :class:`~fmr_bench.finetune.callbacks.EvalCallback`).
        run_info: extra provenance for ``finetune.json`` (specs of model and data).
    """

    def __init__(self, model: ImageClassifier, data: ImageDataset, settings: FinetuneSettings, *,
                 out: str | Path | None = None, callbacks: Sequence[Callback] = (),
                 run_info: dict[str, Any] | None = None, progress: bool = False) -> None:
        from ..engine.fmr import resolve_device

        self.settings = settings.validated()
        self.method: Method = build_method(self.settings)
        self.model = model
        self.parts: Parts = parts_of(model)
        if self.method.needs_text:
            self.parts.require_text(self.method.name)
        if not self.method.head_from_text:
            self.parts.make_head_trainable()
        self.data = data
        self.device = resolve_device(settings.device)
        self.out = Path(out) if out is not None else None
        self.callbacks = list(callbacks)
        self.run_info = dict(run_info or {})
        self.progress = progress
        names = data.class_names
        cmap = map_classes(model.class_names, model.num_classes, names, label_space=data.label_space,
                           model_label_space=model.label_space, model=model.spec or "the model")
        self.class_names = list(model.class_names) if model.class_names else list(names)
        self.targets = cmap.tensor()[torch.tensor(data.labels, dtype=torch.long)]
        if data.resolution is None:
            data.set_resolution(int(model.preprocess.input_size[0]))
        self.global_step = 0
        self.stage_index = 0
        self.epoch = 0
        self.epochs_done = 0
        self.log: list[dict[str, Any]] = []
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.rng = random.Random(settings.seed)
        self.teachers: dict[str, Parts] = {}
        self._data_sha256: str | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def stage(self) -> Stage:
        return self.method.stages[min(self.stage_index, len(self.method.stages) - 1)]

    @property
    def stage_name(self) -> str:
        return self.stage.name

    def prepare_eval(self) -> None:
        """Bring the head up to date for scoring (FLYP / StarFT: rebuilt from the text tower)."""
        if self.method.head_from_text:
            self.parts.prepare_eval()

    def is_last_epoch(self) -> bool:
        return self.stage_index == len(self.method.stages) - 1 and self.epoch == self.stage.epochs - 1

    def _autocast(self):
        p = self.settings.precision
        if self.device.type != "cuda" or p == "fp32":
            return nullcontext()
        dtype = torch.float16 if p == "fp16" else torch.bfloat16
        return torch.autocast("cuda", dtype=dtype)

    def _fingerprint(self) -> dict[str, Any]:
        s = self.settings.to_dict()
        s.pop("device", None)  # resuming on another device is allowed
        s.pop("checkpoint_every", None)
        s.pop("workers", None)  # decoding in workers gives the same batches
        if self._data_sha256 is None:  # the content, not only the names: a set changed in place is another run
            data = self.data
            self._data_sha256 = sample_set_fingerprint(data.ids, data.labels, data.fingerprints(range(len(data))))
        return {"settings": s, "model": self.run_info.get("model", self.model.spec),
                "data": self.run_info.get("data", self.data.spec), "n_train": len(self.data),
                "data_sha256": self._data_sha256}

    def _other_run(self, old: dict[str, Any], what: str) -> OutputError:
        """The one-line refusal of a folder whose run differs from this one, saying what differs."""
        fp = self._fingerprint()
        differ = sorted(k for k in fp if old.get(k) != fp[k])
        if differ == ["data_sha256"]:
            return OutputError(f"{self.out} holds {what} of the same settings on other training data (the images "
                               "changed since it started); pick another --out (its files are kept)")
        return OutputError(f"{self.out} holds {what} of other settings ({', '.join(differ) or 'unknown'} differ); "
                           "pick another --out (its files are kept)")

    def _set_trainable(self, stage: Stage) -> list[torch.nn.Parameter]:
        for p in self.model.parameters():
            p.requires_grad_(False)
        parts = self.parts
        if stage.trains == "head":
            params = parts.head_parameters()
        elif stage.trains == "image":
            params = parts.encoder_parameters() + parts.head_parameters()
        else:
            clip = parts.clip
            params = list(clip.visual.parameters()) + parts.text_parameters()
            if hasattr(clip, "logit_scale"):
                params.append(clip.logit_scale)
        seen, out = set(), []
        for p in params:
            if id(p) not in seen and p.is_floating_point():
                seen.add(id(p))
                p.requires_grad_(True)
                out.append(p)
        if not out:
            raise SettingsError(f"stage {stage.name} of {self.method.name} has no parameters to train on "
                                f"{self.model.spec or 'this model'}")
        return out

    def _optimizer(self, stage: Stage, params: list[torch.nn.Parameter], total: int):
        s = self.settings
        opt = torch.optim.AdamW(params, lr=stage.lr, betas=(s.beta1, s.beta2), weight_decay=s.weight_decay)
        warmup = min(s.warmup_steps, total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: cosine_lr(k, total, warmup))
        return opt, sched

    @torch.no_grad()
    def _cache_features(self) -> torch.Tensor:
        was = self.model.training
        self.model.eval()
        feats = []
        batches = list(torch.arange(len(self.data)).split(self.settings.batch_size))
        for k, x in enumerate(self._image_batches(batches)):
            with self._autocast():
                feats.append(self.parts.features(x.to(self.device)).float().cpu())
            if k == 0:
                check_feature_memory(len(self.data), feats[0])
        self.model.train(was)
        return torch.cat(feats)

    def _image_batches(self, batches: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The images of each index batch, in order; files are decoded by ``settings.workers`` workers."""
        workers = 0 if getattr(self.data, "images", None) is not None else self.settings.workers  # in memory
        if workers == 0:
            for idx in batches:
                yield torch.stack([self.data.load(int(i)) for i in idx])
            return
        loader = torch.utils.data.DataLoader(_Loads(self.data), batch_sampler=[b.tolist() for b in batches],
                                             num_workers=workers, collate_fn=torch.stack)
        try:
            yield from loader
        except FmrBenchError as e:  # an unreadable file, re-raised from a worker with its traceback
            raise from_worker(e) from None

    def _rng_state(self) -> dict[str, torch.Tensor]:
        out = {"torch_cpu": torch.get_rng_state(), "masks": self.generator.get_state()}
        if torch.cuda.is_available():
            for i, st in enumerate(torch.cuda.get_rng_state_all()):
                out[f"cuda{i}"] = st
        return out

    def _set_rng_state(self, rng: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(rng["torch_cpu"])
        self.generator.set_state(rng["masks"])
        if torch.cuda.is_available():
            states = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)

    # ------------------------------------------------------------------ teachers
    def _make_teachers(self, theta0: ImageClassifier) -> None:
        for name in self.method.teachers:
            if name == "pretrained":
                t = theta0
            else:  # "wise": the WiSE-FT mix of θ₀ and a vanilla fine-tuned model (WiSE-KD)
                from .wise import wise_ft

                t = wise_ft(theta0, load_model(self.settings.wise_kd_teacher), self.settings.wise_kd_alpha)
            t = t.to(self.device).freeze()
            self.teachers[name] = parts_of(t)

    # ------------------------------------------------------------------ run
    #: the run folder's lock when the caller (:func:`finetune`) took it before loading the model
    lock: RunLock | None = None

    def total_steps(self) -> int:
        """Optimiser steps of the whole run, over every stage."""
        s, n = self.settings, len(self.data)
        return sum(len(epoch_batches(n, s.batch_size, s.seed, si, 0)) * st.epochs
                   for si, st in enumerate(self.method.stages))

    def fit(self) -> FinetuneResult:
        """Train (resuming from ``out``'s last checkpoint); Ctrl-C ends in one line saying what is saved.

        Raises:
            InterruptedRun: Ctrl-C; the last checkpoint is on disk and the same call resumes.
            OutputError: ``out`` is held by another run, unwritable or full.
        """
        held = self.lock is None and self.out is not None
        with keep_on_interrupt(self._saved, self.out), \
                (RunLock(self.out) if held else nullcontext()):
            return self._fit()

    def _saved(self) -> str:
        """What a Ctrl-C leaves: the steps of the last complete checkpoint (in memory: the steps done)."""
        step = saved_steps(self.out / "checkpoints") if self.out is not None else self.global_step
        return f"{step}/{self.total_steps()} steps"

    def _fit(self) -> FinetuneResult:
        s = self.settings
        model = self.model.to(self.device)
        torch.manual_seed(s.seed)
        ckpt_root = self.out / "checkpoints" if self.out is not None else None
        position = (0, 0, 0)  # stage, epoch, batch
        theta0 = None
        if self.out is not None:
            position, theta0 = self._prepare_out(ckpt_root)
        if theta0 is None and self.method.teachers:
            theta0 = copy.deepcopy(model)
        if self.method.teachers:
            self._make_teachers(theta0)
        for cb in self.callbacks:
            cb.on_train_start(self)
        bar = Progress("train", self.total_steps(), self.global_step, noun="steps", unit="step",
                       fields=("loss",)) if self.progress else nullcontext()
        with bar:
            self._stages(position, bar if self.progress else None)
        self.prepare_eval()
        model.eval()
        for cb in self.callbacks:
            cb.on_train_end(self)
        path = self._finish() if self.out is not None else None
        evals = [r for cb in self.callbacks for r in getattr(cb, "records", [])]
        return FinetuneResult(model, s, path, self.global_step, self.log, evals)

    def _stages(self, position: tuple[int, int, int], bar: Progress | None) -> None:
        """Every stage from ``position`` (stage, epoch, batch) on, checkpointing as it goes."""
        s, model = self.settings, self.model
        ckpt_root = self.out / "checkpoints" if self.out is not None else None
        feats = None
        for si in range(position[0], len(self.method.stages)):
            stage = self.method.stages[si]
            self.stage_index = si
            params = self._set_trainable(stage)
            n = len(self.data)
            steps_per_epoch = len(epoch_batches(n, s.batch_size, s.seed, si, 0))
            opt, sched = self._optimizer(stage, params, steps_per_epoch * stage.epochs)
            scaler = torch.amp.GradScaler("cuda") if (self.device.type == "cuda" and s.precision == "fp16") else None
            first_epoch, first_batch = (position[1], position[2]) if si == position[0] else (0, 0)
            if si == position[0] and self._resume_state is not None:
                opt.load_state_dict(self._resume_state["optimizer"])
                sched.load_state_dict(self._resume_state["scheduler"])
                self._resume_state = None
            feats = self._cache_features() if stage.inputs == "features" else None
            model.train()
            for epoch in range(first_epoch, stage.epochs):
                self.epoch = epoch
                for cb in self.callbacks:
                    cb.on_epoch_start(self)
                batches = epoch_batches(n, s.batch_size, s.seed, si, epoch)
                weights = stage.weights(epoch)
                images = self._image_batches(batches[first_batch:]) if feats is None else None
                for b in range(first_batch, len(batches)):
                    idx = batches[b]
                    x = (feats[idx] if images is None else next(images)).to(self.device)
                    y = self.targets[idx].to(self.device)
                    logs = self._step(stage, weights, x, y, opt, sched, scaler, params)
                    self.global_step += 1
                    logs.update(step=self.global_step, stage=stage.name, epoch=epoch)
                    self.log.append(logs)
                    self._append_log(logs)
                    if bar is not None:
                        bar.update(self.global_step, loss=f"{logs['loss']:.4f}")
                    for cb in self.callbacks:
                        cb.on_step_end(self, logs)
                    if ckpt_root is not None and self.global_step % s.checkpoint_every == 0 and b + 1 < len(batches):
                        self._save(ckpt_root, opt, sched, (si, epoch, b + 1))
                first_batch = 0
                self.epochs_done += 1
                nxt = (si, epoch + 1, 0) if epoch + 1 < stage.epochs else (si + 1, 0, 0)
                if ckpt_root is not None:
                    self._save(ckpt_root, opt, sched, nxt)
                for cb in self.callbacks:
                    cb.on_epoch_end(self)

    def _step(self, stage, weights, x, y, opt, sched, scaler, params) -> dict[str, Any]:
        ctx = StepContext(x=x, y=y, clf=self.model, parts=self.parts, settings=self.settings,
                          class_names=self.class_names, epoch=self.epoch, epochs=stage.epochs, step=self.global_step,
                          generator=self.generator, rng=self.rng, teachers=self.teachers, extras=self.method.extras)
        terms: dict[str, float] = {}
        with self._autocast():
            total = None
            for name, w in weights.items():
                if w == 0:
                    continue
                value = TERMS.get(name)(ctx)
                terms[name] = float(value.detach())
                total = w * value if total is None else total + w * value
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        else:
            total.backward()
        if self.settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.settings.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        lr = sched.get_last_lr()[0]
        sched.step()
        out: dict[str, Any] = {"loss": float(total.detach()), "lr": lr, **{f"loss/{k}": v for k, v in terms.items()}}
        if "mask_rate" in ctx.cache:
            out["mask_rate"] = ctx.cache["mask_rate"]
        return out

    # ------------------------------------------------------------------ run folder
    _resume_state: dict[str, Any] | None = None

    def _prepare_out(self, ckpt_root: Path) -> tuple[tuple[int, int, int], ImageClassifier | None]:
        """Claim the run folder, keep the zero-shot weights and, when there is a checkpoint, resume from it:
        (position (stage, epoch, batch) to start at, zero-shot model when the method has teachers)."""
        out = require_writable(self.out)
        fp = self._fingerprint()
        self._claim_out(out, fp, ckpt_root)
        folder = latest_checkpoint(ckpt_root)
        theta0 = self._zero_shot(out, fp, folder)
        if folder is None:  # killed before its first checkpoint: every step is redone, so is its log
            self.log = truncate_jsonl(out / "train_log.jsonl", 0)
            return (0, 0, 0), theta0
        return self._resume(out, fp, folder, ckpt_root), theta0

    def _claim_out(self, out: Path, fp: dict[str, Any], ckpt_root: Path) -> None:
        """Write the run's manifest, or check that the folder holds this run (unfinished) or nothing.

        Raises:
            OutputError: the folder holds another run, this run finished, or other files.
        """
        manifest = out / "run.json"
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text())
            except ValueError:
                old = None
            if old is not None and old.get("fingerprint") != fp:
                if latest_checkpoint(ckpt_root) is not None or (out / "model.safetensors").exists():
                    raise self._other_run(old.get("fingerprint") or {}, "a fine-tuning run")
                # A run that stopped before its first checkpoint left nothing to keep: start afresh.
                for name in ("zeroshot.safetensors", "train_log.jsonl", "evaluations.jsonl"):
                    (out / name).unlink(missing_ok=True)
                old = None
            if old is None:
                write_json(manifest, {"fingerprint": fp,
                                             "started": _dt.datetime.now(_dt.timezone.utc).isoformat()})
            if (out / "model.safetensors").is_file() and (out / FINETUNE_FILE).is_file():
                raise OutputError(f"{out} already holds the finished model of this run ({out / 'model.safetensors'}); "
                                  "pick another --out to train again")
        elif any(p for p in out.iterdir() if not p.name.startswith(".")):
            raise OutputError(f"{out} is not empty and holds no fine-tuning run; pick a new or empty --out")
        else:
            write_json(manifest, {"fingerprint": fp, "started": _dt.datetime.now(_dt.timezone.utc).isoformat()})

    def _zero_shot(self, out: Path, fp: dict[str, Any], folder: Path | None) -> ImageClassifier | None:
        """Save the weights before fine-tuning (or, on a resume, load them when the method has teachers)."""
        from safetensors.torch import load_model as st_load

        theta0_path = out / "zeroshot.safetensors"
        theta0 = None
        if theta0_path.is_file():
            if self.method.teachers:
                theta0 = copy.deepcopy(self.model)
                st_load(theta0.net, str(theta0_path), strict=True)
        elif folder is not None:
            raise OutputError(f"{theta0_path} is missing but {out} holds checkpoints; the teachers and WiSE-FT need it: "
                              "restore it or pick another --out")
        else:
            save_model(self.model, theta0_path,  # raises a one-line OutputError (files.atomic_write_file)
                       metadata={META_KEY: json.dumps({"role": "zero-shot (before fine-tuning)", **fp})})
        return theta0

    def _resume(self, out: Path, fp: dict[str, Any], folder: Path, ckpt_root: Path) -> tuple[int, int, int]:
        """Load the checkpoint ``folder`` of this run: weights, RNG states, step counters, log, optimiser state;
        returns the position (stage, epoch, batch) to continue from."""
        from safetensors.torch import load_model as st_load

        try:
            _, opt_state, rng, state = load_checkpoint(folder)
        except (OSError, ValueError, KeyError) as e:
            raise OutputError(f"checkpoint {folder} is unreadable ({type(e).__name__}); delete {ckpt_root / 'latest.json'} "
                              "to start over, or pick another --out") from None
        if {k: state.get(k) for k in fp} != fp:
            raise self._other_run(state, "checkpoints")
        st_load(self.model.net, str(folder / "model.safetensors"), strict=True)
        self._set_rng_state(rng)
        self.rng.setstate(_tuplify(state["py_rng"]))
        self.global_step = state["global_step"]
        self.log = truncate_jsonl(out / "train_log.jsonl", self.global_step)  # steps after it are redone
        self.epochs_done = state["epochs_done"]
        self._resume_state = {"optimizer": opt_state, "scheduler": state["scheduler"]}
        pos = tuple(state["position"])
        if pos[0] >= len(self.method.stages) or pos[1:] == (0, 0):
            self._resume_state = None  # a stage starts afresh: the saved optimiser belongs to the one before
        return pos  # type: ignore[return-value]

    def _save(self, root: Path, opt, sched, position: tuple[int, int, int]) -> None:
        state = {"position": list(position), "global_step": self.global_step, "epochs_done": self.epochs_done,
                 "scheduler": sched.state_dict(), "py_rng": _listify(self.rng.getstate()),
                 **self._fingerprint()}
        save_checkpoint(root, self.global_step, net=self.model.net, optimizer=opt, rng=self._rng_state(), state=state)

    def _append_log(self, logs: dict[str, Any]) -> None:
        if self.out is None:
            return
        append_jsonl(self.out / "train_log.jsonl", [logs])

    def _finish(self) -> Path:
        meta = {"method": self.method.name, "stages": [s.name for s in self.method.stages], "steps": self.global_step,
                "versions": _versions(), **self._fingerprint()}  # no time: the same run gives the same bytes
        finished = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        path = self.out / "model.safetensors"
        try:
            save_model(self.model, path, metadata={META_KEY: json.dumps(meta)})
            evals = [r for cb in self.callbacks for r in getattr(cb, "records", [])]
            write_json(self.out / FINETUNE_FILE, self._record(meta, evals, path, finished).to_dict())
        except OutputError as e:  # files.py turns every OSError into this one-line error
            raise OutputError(f"{e} (re-running the same command resumes training from the last checkpoint)") from None
        return path


    def _record(self, meta: dict[str, Any], evals: list[dict[str, Any]], path: Path, finished: str):
        """The run's record: the trained model, its training data and settings, its last scores."""
        fp = self._fingerprint()
        return finetune_record(
            self.method.name, fp["settings"],
            model={"spec": fp["model"], "arch": self.model.arch, "weights_sha256_16": self.model.weights_hash(),
                   "file": path.name},
            dataset={"spec": fp["data"], "n": fp["n_train"], "fingerprint": fp["data_sha256"]},
            metrics=last_scores(evals),
            provenance=Provenance.collect(device=str(self.device), timestamp=finished,
                                          command=command_line()),
            run=self.out.name, seed=self.settings.seed,
            sections={"stages": meta["stages"], "steps": meta["steps"], "evaluations": evals,
                      "model_file": path.name})


def last_scores(evals: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``EVALUATOR/METRIC`` -> number from each evaluator's last evaluation record (subsets, see EvalCallback)."""
    out: dict[str, Any] = {}
    for r in evals:
        for k, v in (r.get("metrics") or {}).items():
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
                out[f"{r.get('evaluator')}/{k}"] = v
    return out


class _Loads(torch.utils.data.Dataset):
    """``dataset.load(i)`` as a map-style dataset for a DataLoader (images only)."""

    def __init__(self, data: ImageDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data.load(i)


#: Share of the memory available now that the linear probe's cached features may take.
FEATURE_MEMORY_SHARE = 0.5


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``, which counts reclaimable page
    cache; else free pages; None where the platform says neither)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_feature_memory(n: int, first: torch.Tensor) -> None:
    """Refuse, before memory runs out, a feature cache of ``n`` rows like ``first`` that would not fit.

    LP and LP-FT cache the frozen encoder's features of the whole training set in memory
    (fine for digits and ImageNet-sized sets with 512-d features: 1.2 M x 512 x 4 B = 2.5 GB).

    Raises:
        SettingsError: the cache would take more than :data:`FEATURE_MEMORY_SHARE` of the
            memory available now.
    """
    need = n * first[0].numel() * 4
    free = available_memory()
    if free is not None and need > FEATURE_MEMORY_SHARE * free:
        raise SettingsError(f"the linear probe would cache {need / 2**30:.1f} GiB of features ({n} images x "
                            f"{first[0].numel()} floats) but only {free / 2**30:.1f} GiB of memory is free; "
                            "train on a subset or a machine with more memory, or use --method ft")


def _listify(obj: Any) -> Any:
    return [_listify(v) for v in obj] if isinstance(obj, (tuple, list)) else obj


def _tuplify(obj: Any) -> Any:
    return tuple(_tuplify(v) for v in obj) if isinstance(obj, list) else obj


def finetune(model: str | ImageClassifier, data: str | ImageDataset, *, out: str | Path | None = None,
             settings: FinetuneSettings | None = None, preset: str | None = None, callbacks: Sequence[Callback] = (),
             pretrained: bool = True, templates: str | None = None, progress: bool = False,
             **overrides: Any) -> FinetuneResult:
    """Fine-tune ``model`` on ``data`` with a method, as ``fmr finetune`` does.

    Args:
        model: a spec (``openclip:ViT-B-32/openai``, ``builtin:digits-clip``, ``timm:...``, ``file:...``)
            or an :class:`ImageClassifier`; zero-shot models get their head from the data's class names.
        data: training set: a dataset spec (``digits:train``, ``folder:DIR``, ``csv:FILE``) or dataset.
        out: run folder (checkpoints, resume, result); None keeps everything in memory.
        settings, preset, overrides: :class:`FinetuneSettings`, a named preset of
            :data:`~fmr_bench.finetune.settings.PRESETS`, then field overrides (``method="starft"``...).
        pretrained: False builds spec models with random weights (tests, benchmarks).
        templates: prompt set of a zero-shot head (``openai``, ``single``, or a template with ``{}``).

    Raises:
        FmrBenchError: bad input, with the fix in the message; checkpoints already written are kept.
    """
    if settings is not None:
        from dataclasses import replace

        settings = replace(settings, **overrides).validated() if overrides else settings.validated()
    else:
        settings = make_settings(preset, **overrides)
    build_method(settings)  # the method's own checks (descriptor pools...) before the folder is touched
    out = Path(out) if out is not None else None
    # the run folder's lock before anything loads: a second process stops at once, not after the model
    lock = RunLock(out) if out is not None else nullcontext()

    def saved() -> str:  # until the trainer knows the total
        return f"{saved_steps(out / 'checkpoints') if out is not None else 0} steps"

    with keep_on_interrupt(saved, out), lock:
        dataset = load_train_data(data)
        if isinstance(model, str):
            kw = {"templates": templates} if templates else {}
            torch.manual_seed(settings.seed)  # random-weight models are reproducible
            clf = load_model(model, class_names=dataset.class_names, pretrained=pretrained, **kw)
            info = {"model": model}
        else:
            clf, info = model, {"model": model.spec}
        info["data"] = data if isinstance(data, str) else dataset.spec
        trainer = Trainer(clf, dataset, settings, out=out, callbacks=callbacks, run_info=info, progress=progress)
        trainer.lock = lock if out is not None else None
        return trainer.fit()
