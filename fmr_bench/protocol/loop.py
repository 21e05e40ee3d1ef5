"""The batched FMR loop (Algorithm 1 of the FMR paper, as fixed in SPEC §1).

Per sample, with budget B: the latent z of the image is stepped to *increase* the
evaluated model's loss. After the first step the oracle must still see the true class
(else the sample is not validated and keeps the clean image); afterwards each new image
is accepted while the oracle agrees, and the sample stops at the first rejection,
keeping the last accepted image. Reaching a wrong prediction does not stop a sample.

Speed: images are processed in slots of a batch; a finished sample frees its slot and
a new image takes it, so the batch stays full. Each iteration decodes once; that image
serves the oracle check of the previous step and the loss of the next. All weights are
frozen; gradients flow only to the latent.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from ..config import CPU_BATCH_PIXELS, FmrSettings
from ..generators.base import Generator
from ..models.base import ImageClassifier
from ..oracles import Oracle
from ..oracles.acceptance import DEFAULT_RULE, decide, parse_rule
from ..runtime import exact_fp32
from ..runtime import precision as get_precision
from .cpu import flush_denormals
from .optim import LatentOptimizer, concat_state, select_state
from .outcome import SampleOutcome

__all__ = ["LoopConfig", "autocast", "exact_fp32", "run_batched", "starting_image"]

# (id, index, image (3,H,W) in [0,1], label)
Sample = tuple[str, int, torch.Tensor, int]
#: Called as each sample finishes with (outcome, clean image, final image x-hat, final latent):
#: the latent the decoder consumed for x-hat (``generator.final_latent``), all on the CPU.
OnSample = Callable[[SampleOutcome, torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass
class LoopConfig:
    budget: int
    step_size: float
    optimizer: str = "adam"
    batch_size: int = FmrSettings.batch_size  # one default: the run's
    precision: str = "fp32"
    #: Run the generator's convolutions in channels-last layout (faster with oneDNN and cuDNN).
    channels_last: bool = True
    #: Starting point: ``none`` (the encoder latent of x) or ``fgsm`` (of an FGSM image, App. E).
    init: str = "none"
    fgsm_eps: float = 0.003
    #: On a CPU, at most this many pixels per batch (``None``: no cap); see config.CPU_BATCH_PIXELS.
    cpu_batch_pixels: int | None = CPU_BATCH_PIXELS
    #: When the oracle accepts an image (fmr_bench.oracles.acceptance); the paper's rule by default.
    accept: str = DEFAULT_RULE
    #: Pad every decode to the slot count (padding rows are zero latents, cut off before the loss),
    #: so that early stops and refills never change a shape: torch.compile compiles once and
    #: cudnn.benchmark picks its kernels once (set for the run on a GPU).
    fixed_slots: bool = False
    #: On a GPU, fit the slot count to memory: at most ``batch_size``, halved on out-of-memory (fit_slots).
    fit_memory: bool = True

    @classmethod
    def from_settings(cls, settings: Any, **extra: Any) -> LoopConfig:
        """The loop's part of a run's settings (:class:`~fmr_bench.config.FmrSettings`), field by field by name."""
        own = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in asdict(settings).items() if k in own}, **extra)

    def capacity(self, device: torch.device, height: int, width: int) -> int:
        """Slots in flight for images of this size on ``device``."""
        if device.type != "cpu" or self.cpu_batch_pixels is None:
            return self.batch_size
        return max(1, min(self.batch_size, self.cpu_batch_pixels // (height * width)))



def fit_slots(probe: Callable[[int], None], start: int) -> int:
    """The largest slot count, ``start`` halved until ``probe(n)`` (one step of n images) runs out of memory no more.

    As timm's ``validate --retry`` does; raises the out-of-memory error when even one image fails.
    """
    n = start
    while True:
        try:
            probe(n)
            return n
        except torch.OutOfMemoryError:
            if n == 1:
                raise
            n = max(1, n // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def autocast(device: torch.device, precision: str):
    """The reduced-precision block of ``precision`` (see :class:`fmr_bench.runtime.Precision`)."""
    return get_precision(precision).reduced(device)


def _on_device(values: list, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A host list as a device tensor, without waiting for the device (the copy is staged)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=device.type == "cuda")


class _ToHost:
    """Device tensors on their way to the host: the copy is queued at once, :meth:`get` waits for it alone."""

    def __init__(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.on_device = tensors
        self._tensors = {k: v.to("cpu", non_blocking=cuda) for k, v in tensors.items()}
        self._event = torch.cuda.Event() if cuda else None
        if self._event is not None:
            self._event.record()

    def get(self) -> dict[str, torch.Tensor]:
        if self._event is not None:
            self._event.synchronize()
        return self._tensors


#: Per-slot state of x-hat so far (the clean image until a step is accepted): what a finished
#: sample reports. The ``oracle_*`` names are SampleOutcome's fields.
_ACCEPTED = ("img", "pred", "latent", "oracle_pred", "oracle_conf", "oracle_margin", "oracle_accept")
#: Per-slot state copied to the host when a sample finishes.
_REPORTED = _ACCEPTED + ("clean_pred", "clean_oracle")


def _verdict_state(verdict) -> dict[str, torch.Tensor]:
    return {"oracle_pred": verdict.pred, "oracle_conf": verdict.confidence.float(),
            "oracle_margin": verdict.margin.float(), "oracle_accept": verdict.accepted}


class _Slots:
    """Row-aligned state of the samples in flight.

    What the device computes stays there: ``z``, the optimiser state, and ``rows`` (targets,
    labels, clean predictions, and x-hat so far with its prediction, latent and verdict).
    The host keeps only what it knows without asking the device: each row's sample
    (``meta``) and its step count (``steps``, equal to ``opt["t"]``).
    """

    def __init__(self) -> None:
        self.z: torch.Tensor | None = None
        self.opt: dict[str, torch.Tensor] = {}
        self.rows: dict[str, torch.Tensor] = {}
        self.meta: list[dict] = []  # per row: id, index, label, target, x (the clean image, CPU)
        self.steps: list[int] = []

    def __len__(self) -> int:
        return len(self.meta)

    def keep(self, rows: list[int], device: torch.device) -> None:
        if len(rows) == len(self):
            return
        idx = _on_device(rows, device)
        self.z = self.z[idx]
        self.opt, self.rows = select_state(self.opt, idx), select_state(self.rows, idx)
        self.meta = [self.meta[i] for i in rows]
        self.steps = [self.steps[i] for i in rows]

    def add(self, z: torch.Tensor, opt: dict[str, torch.Tensor], rows: dict[str, torch.Tensor],
            meta: list[dict]) -> None:
        if self.z is None or len(self) == 0:
            self.z, self.opt, self.rows = z, opt, rows
        else:
            self.z = torch.cat([self.z, z])
            self.opt, self.rows = concat_state(self.opt, opt), concat_state(self.rows, rows)
        self.meta += meta
        self.steps += [0] * len(meta)


def run_batched(samples: Iterator[Sample], *, model: ImageClassifier, oracle: Oracle, generator: Generator,
                target_of: torch.Tensor, cfg: LoopConfig, device: torch.device,
                on_sample: OnSample, on_iteration: Callable[[int], None] | None = None) -> int:
    """Run the protocol over ``samples``, calling ``on_sample`` as each one finishes; returns the slot count used.

    Args:
        samples: iterator of (id, index, image, label).
        target_of: tensor mapping dataset label -> model output index.
        on_sample: receives the outcome, the clean image, the final image and its latent (CPU).
        on_iteration: receives the number of samples in flight after each iteration.
    """
    # Everything runs exact (fp32, no TF32); only the decoder and the model run reduced, inside it.
    with get_precision(cfg.precision).exact(), flush_denormals():
        return _Loop(samples, model, oracle, generator, target_of, cfg, device, on_sample, on_iteration).run()


class _Loop:
    """One run of the batched loop: per iteration the phases step, check, finish and refill.

    Host and device meet once per iteration: the oracle's accept mask (one (N,) bool
    tensor) comes back to say which slots finish. A finished sample's state is copied to
    the host once, queued as it finishes and handed to ``on_sample`` after the next
    iteration's mask (or at the end), so that copy does not make the host wait either.
    """

    def __init__(self, samples: Iterator[Sample], model: ImageClassifier, oracle: Oracle, generator: Generator,
                 target_of: torch.Tensor, cfg: LoopConfig, device: torch.device, on_sample: OnSample,
                 on_iteration: Callable[[int], None] | None) -> None:
        self.samples, self.model, self.oracle, self.gen = samples, model, oracle, generator
        self.cfg, self.device, self.on_sample, self.on_iteration = cfg, device, on_sample, on_iteration
        self.prec = get_precision(cfg.precision)
        self.opt = LatentOptimizer(cfg.optimizer, cfg.step_size)
        self.rule = parse_rule(cfg.accept)
        self.target_host = target_of.cpu()
        self.target_of = target_of.to(device)
        self.slots = _Slots()
        self.exhausted = False
        self.capacity = cfg.batch_size  # set from the first image's size
        self.pending: list[tuple[list[dict], list[int], _ToHost]] = []
        self.preds: torch.Tensor | None = None
        self.sized = False

    def run(self) -> int:
        """Run every sample; returns the slot count used."""
        if self.cfg.channels_last:
            self.gen.to(memory_format=torch.channels_last)
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = benchmark or (self.cfg.fixed_slots and self.device.type == "cuda")
        try:
            self.refill()
            while len(self.slots):
                self.iterate()
                self.refill()
                if self.on_iteration is not None:
                    self.on_iteration(len(self.slots))
        finally:  # on an interrupt too: samples already finished are handed out
            torch.backends.cudnn.benchmark = benchmark
            self.deliver()
        return self.capacity

    def fit_to_memory(self) -> None:
        """On a GPU, before the first step: the most slots (up to the batch size) whose step fits in memory."""
        self.sized = True
        if self.device.type != "cuda" or not self.cfg.fit_memory or not len(self.slots):
            return
        z1 = self.slots.z[:1].detach()

        def probe(n: int) -> None:
            z = z1.expand(n, *z1.shape[1:]).clone().requires_grad_(not self.gen.steers)
            with torch.set_grad_enabled(not self.gen.steers), self.prec.reduced(self.device):
                loss = F.cross_entropy(self.model(self.gen.decode(z)).float(), self.slots.rows["target"][:1].expand(n),
                                       reduction="sum")
                if not self.gen.steers:
                    torch.autograd.grad(loss, z)
            torch.cuda.synchronize(self.device)

        self.capacity = fit_slots(probe, self.capacity)

    def iterate(self) -> None:
        """One iteration: decode once, check the previous step's image, step the latents on."""
        slots = self.slots
        z = slots.z.detach().requires_grad_(not self.gen.steers)
        img, loss = self.step_forward(z)
        ok = self.check(img, z)
        if self.gen.steers:  # the generator steps the rows that go on by itself
            if self.finish(ok):
                self.steer()
            return
        cont = ok.on_device["ok"] & (slots.opt["t"] < self.cfg.budget)
        with self.prec.reduced(self.device):  # the backward at the forward's precision
            (grad,) = torch.autograd.grad((loss * cont).sum(), z)
        # Every row steps (per row, the same arithmetic); a finishing row's step is dropped.
        slots.z = self.opt.step(z.detach(), grad, slots.opt)
        del img, loss, z, grad
        if self.finish(ok):
            slots.z = self.gen.post_step(slots.z, *self.host_ids_steps())

    # -- phases ----------------------------------------------------------------------
    def step_forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every slot and take the evaluated model's per-sample loss (reduced precision)."""
        n, pad = len(z), self.capacity - len(z) if self.cfg.fixed_slots else 0
        with torch.set_grad_enabled(not self.gen.steers), self.prec.reduced(self.device):
            zin = torch.cat([z, z.new_zeros((pad, *z.shape[1:]))]) if pad > 0 else z
            img = self.gen.decode(zin)
            logits = self.model(img)
            img, logits = img[:n], logits[:n]
        self.preds = logits.detach().argmax(-1)
        return img, F.cross_entropy(logits.float(), self.slots.rows["target"], reduction="none")

    def check(self, img: torch.Tensor, z: torch.Tensor) -> _ToHost:
        """The oracle's verdict (fp32) on every slot that has stepped; accepted images become x-hat.

        Returns the accept mask on its way to the host (True for a slot not checked yet).
        """
        slots, n = self.slots, len(self.slots)
        checked = [i for i, t in enumerate(slots.steps) if t >= 1]
        ok = torch.ones(n, dtype=torch.bool, device=self.device)
        if checked:
            rows = None if len(checked) == n else _on_device(checked, self.device)

            def pick(t: torch.Tensor) -> torch.Tensor:
                return t if rows is None else t[rows]

            with torch.no_grad():
                candidate = pick(img.detach()).float()
                verdict = decide(self.rule, self.oracle.member_probs(candidate), pick(slots.rows["label"]))
                new = {"img": candidate, "pred": pick(self.preds),
                       "latent": self.gen.final_latent(pick(z.detach())).float(), **_verdict_state(verdict)}
            self.update_accepted(rows, verdict.accepted, new)
            ok = verdict.accepted if rows is None else ok.index_copy(0, rows, verdict.accepted)
        return _ToHost({"ok": ok}, self.device)

    def update_accepted(self, rows: torch.Tensor | None, accepted: torch.Tensor, new: dict) -> None:
        """Where the oracle accepted, x-hat becomes the new image, on the device."""
        state = self.slots.rows
        for k in _ACCEPTED:
            old = state[k] if rows is None else state[k][rows]
            merged = torch.where(accepted.view((-1,) + (1,) * (old.dim() - 1)), new[k].to(old.dtype), old)
            state[k] = merged if rows is None else state[k].index_copy(0, rows, merged)

    def finish(self, ok: _ToHost) -> bool:
        """Wait for the accept mask, queue the finished samples' copy to the host, keep the others.

        Returns whether any sample goes on.
        """
        slots, budget = self.slots, self.cfg.budget
        accepted = ok.get()["ok"].tolist()
        self.deliver()  # the previous iteration's finished samples: their copy is done by now
        kept, done, steps_done = [], [], []
        for i, (t, acc) in enumerate(zip(slots.steps, accepted)):
            if t >= 1 and (not acc or t >= budget):
                done.append(i)
                steps_done.append(t if acc else t - 1)  # a rejection keeps the last accepted image
            else:
                kept.append(i)
        if done:
            idx = _on_device(done, self.device)
            state = {k: slots.rows[k][idx] for k in _REPORTED}
            self.pending.append(([slots.meta[i] for i in done], steps_done, _ToHost(state, self.device)))
        slots.keep(kept, self.device)
        slots.steps = [t + 1 for t in slots.steps]  # the step just taken (steering: about to be taken)
        return bool(kept)

    def deliver(self) -> None:
        """Hand every finished sample whose copy was queued to ``on_sample``."""
        pending, self.pending = self.pending, []
        for metas, steps, copy in pending:
            state = copy.get()
            for k, (m, s) in enumerate(zip(metas, steps)):
                verdict = {f: state[f][k].item() for f in _ACCEPTED if f.startswith("oracle_")}
                outcome = SampleOutcome(
                    id=m["id"], index=m["index"], label=m["label"], target=m["target"],
                    clean_pred=int(state["clean_pred"][k]), oracle_clean=int(state["clean_oracle"][k]),
                    validated=s >= 1, steps=s, final_pred=int(state["pred"][k]), **verdict)
                # not validated: x-hat is x itself, the caller's own tensor
                self.on_sample(outcome, m["x"], m["x"] if s == 0 else state["img"][k], state["latent"][k])

    def steer(self) -> None:
        """A self-steering generator's step for the rows that go on."""
        slots = self.slots
        slots.opt["t"] += 1
        slots.z = self.gen.steer(slots.z.detach(), _loss_fn(self.model, slots.rows["target"]),
                                 *self.host_ids_steps(), labels=slots.rows["label"])

    def host_ids_steps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each slot's sample index and 1-based step number, as CPU tensors (the host knows them)."""
        return torch.tensor([m["index"] for m in self.slots.meta]), torch.tensor(self.slots.steps)

    def refill(self) -> None:
        """Fill free slots with new samples: clean verdicts, starts and latents stay on the device."""
        new = self.take()
        if not new:
            return
        dev = self.device
        x = torch.stack([s[2] for s in new]).to(dev, non_blocking=dev.type == "cuda")
        labels = _on_device([s[3] for s in new], dev)
        targets = self.target_of[labels]
        with torch.no_grad():  # once per sample, so exact: a reduced precision only speeds up the steps
            verdict = decide(self.rule, self.oracle.member_probs(x), labels)
            clean_pred = self.model(x).argmax(-1)
        start = starting_image(x, self.model, targets, self.cfg)
        with torch.no_grad():
            z = self.gen.encode(start).float()
            z0 = self.gen.final_latent(z).float()
        # until a step is accepted, x-hat is x: its prediction, latent and verdict
        rows = {"target": targets, "label": labels, "clean_pred": clean_pred, "clean_oracle": verdict.pred,
                "img": x.float(), "pred": clean_pred, "latent": z0, **_verdict_state(verdict)}
        meta = [{"id": s[0], "index": s[1], "label": s[3], "target": int(self.target_host[s[3]]), "x": s[2].cpu()}
                for s in new]
        self.slots.add(z, self.opt.init_state(z), rows, meta)
        if not self.sized:  # the first refill only: shrink the slot count to what fits, then top up
            self.fit_to_memory()
            if len(self.slots) > self.capacity:  # the samples that do not fit go back to the queue
                back = [(m["id"], m["index"], m["x"], m["label"]) for m in self.slots.meta[self.capacity:]]
                self.samples = itertools.chain(back, self.samples)
                self.exhausted = False
                self.slots.keep(list(range(self.capacity)), dev)

    def take(self) -> list[Sample]:
        """The next samples, as many as there are free slots."""
        new: list[Sample] = []
        while not self.exhausted and len(self.slots) + len(new) < self.capacity:
            try:
                new.append(next(self.samples))
            except StopIteration:
                self.exhausted = True
            else:
                if len(new) == 1 and len(self.slots) == 0:
                    self.capacity = self.cfg.capacity(self.device, *new[0][2].shape[-2:])
        return new


def _loss_fn(model: ImageClassifier, targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-sample loss of the evaluated model on pixels, for generators that steer themselves."""
    return lambda img: F.cross_entropy(model(img).float(), targets, reduction="none")


def starting_image(x: torch.Tensor, model: ImageClassifier, targets: torch.Tensor, cfg: LoopConfig) -> torch.Tensor:
    """Where the perturbation starts: x itself, or an FGSM image x + eps * sign(grad_x loss) (App. E)."""
    if cfg.init == "none":
        return x
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(F.cross_entropy(model(x).float(), targets, reduction="sum"), x)
    return (x + cfg.fgsm_eps * g.sign()).clamp(0, 1).detach()
