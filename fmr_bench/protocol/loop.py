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

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..config import CPU_BATCH_PIXELS
from ..generators.base import Generator
from ..models.base import ImageClassifier
from ..oracles import Oracle
from ..oracles.acceptance import DEFAULT_RULE, decide, parse_rule
from .cpu import flush_denormals
from .optim import LatentOptimizer, concat_state, select_state
from .outcome import SampleOutcome

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
    batch_size: int = 16
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

    def capacity(self, device: torch.device, height: int, width: int) -> int:
        """Slots in flight for images of this size on ``device``."""
        if device.type != "cpu" or self.cpu_batch_pixels is None:
            return self.batch_size
        return max(1, min(self.batch_size, self.cpu_batch_pixels // (height * width)))


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def exact_fp32():
    """fp32 that is fp32 on a GPU too: no TF32 in cuDNN convolutions and cuBLAS matmuls.

    PyTorch lets cuDNN use TF32 (10-bit mantissa) for fp32 convolutions by default; the
    result then depends on the kernel cuDNN picks for each batch size, and the oracle's
    accept/reject decisions drift between batch sizes (a GPU run measured 59-77 % of
    outcomes agreeing with the one-image loop). Restores the previous flags on exit.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class _Slots:
    """Row-aligned state of the samples in flight."""

    def __init__(self) -> None:
        self.z: torch.Tensor | None = None
        self.opt: dict[str, torch.Tensor] = {}
        self.meta: list[dict] = []  # per row: id, index, label, target, clean_pred, oracle_clean, verdict, x, z0
        # per row: the last accepted image, the model's pred on it, its latent, the oracle's verdict on it
        self.accepted: list[tuple[torch.Tensor, int, torch.Tensor, dict] | None] = []

    def __len__(self) -> int:
        return len(self.meta)

    def keep(self, mask: list[bool]) -> None:
        idx = torch.tensor([i for i, k in enumerate(mask) if k], dtype=torch.long, device=self.z.device)
        self.z = self.z[idx]
        self.opt = select_state(self.opt, idx)
        self.meta = [m for m, k in zip(self.meta, mask) if k]
        self.accepted = [a for a, k in zip(self.accepted, mask) if k]

    def add(self, z: torch.Tensor, opt: dict[str, torch.Tensor], meta: list[dict]) -> None:
        if self.z is None or len(self) == 0:
            self.z, self.opt = z, opt
        else:
            self.z = torch.cat([self.z, z])
            self.opt = concat_state(self.opt, opt)
        self.meta += meta
        self.accepted += [None] * len(meta)


def run_batched(samples: Iterator[Sample], *, model: ImageClassifier, oracle: Oracle, generator: Generator,
                target_of: torch.Tensor, cfg: LoopConfig, device: torch.device,
                on_sample: OnSample, on_iteration: Callable[[int], None] | None = None) -> None:
    # bf16 autocast still runs its ops in bf16; fp32 ones (oracle, encoder) stay exact
    with exact_fp32(), flush_denormals():
        _run_batched(samples, model=model, oracle=oracle, generator=generator, target_of=target_of, cfg=cfg,
                     device=device, on_sample=on_sample, on_iteration=on_iteration)


def _run_batched(samples: Iterator[Sample], *, model: ImageClassifier, oracle: Oracle, generator: Generator,
                 target_of: torch.Tensor, cfg: LoopConfig, device: torch.device,
                 on_sample: OnSample, on_iteration: Callable[[int], None] | None = None) -> None:
    """Run the protocol over ``samples``, calling ``on_sample`` as each one finishes.

    Args:
        samples: iterator of (id, index, image, label).
        target_of: tensor mapping dataset label -> model output index.
        on_sample: receives the outcome, the clean image and the final image (CPU).
        on_iteration: receives the number of samples in flight after each iteration.
    """
    opt = LatentOptimizer(cfg.optimizer, cfg.step_size)
    rule = parse_rule(cfg.accept)
    if cfg.channels_last:
        generator.to(memory_format=torch.channels_last)
    slots = _Slots()
    exhausted = False
    capacity = cfg.batch_size  # set from the first image's size
    target_of = target_of.to(device)

    def refill() -> None:
        nonlocal exhausted, capacity
        new: list[Sample] = []
        while not exhausted and len(slots) + len(new) < capacity:
            try:
                new.append(next(samples))
            except StopIteration:
                exhausted = True
            else:
                if len(new) == 1 and len(slots) == 0:
                    capacity = cfg.capacity(device, *new[0][2].shape[-2:])
        if not new:
            return
        x = torch.stack([s[2] for s in new]).to(device)
        labels = torch.tensor([s[3] for s in new], device=device)
        targets = target_of[labels]
        with torch.no_grad():  # once per sample, so in full precision: bf16 only speeds up the steps
            clean_verdict = decide(rule, oracle.member_probs(x), labels)
            clean_pred = model(x).argmax(-1)
        start = starting_image(x, model, targets, cfg)
        with torch.no_grad():
            z = generator.encode(start).float()
            z0 = generator.final_latent(z).float().cpu()
        meta = [{"id": s[0], "index": s[1], "label": s[3], "target": int(target_of[s[3]]),
                 "clean_pred": int(clean_pred[i]), "oracle_clean": int(clean_verdict.pred[i]),
                 "verdict": clean_verdict.row(i), "x": s[2].cpu(), "z0": z0[i]}
                for i, s in enumerate(new)]
        slots.add(z, opt.init_state(z), meta)
        del labels

    def finish(row: int, validated: bool, steps: int, accepted: tuple | None) -> None:
        m = slots.meta[row]
        # not validated: x-hat = x, so the oracle's verdict on x-hat is its verdict on x
        final_img, final_pred, final_z, verdict = accepted if accepted is not None else (None, None, m["z0"],
                                                                                         m["verdict"])
        outcome = SampleOutcome(
            id=m["id"], index=m["index"], label=m["label"], target=m["target"], clean_pred=m["clean_pred"],
            oracle_clean=m["oracle_clean"], validated=validated, steps=steps,
            final_pred=m["clean_pred"] if final_pred is None else final_pred, **verdict)
        on_sample(outcome, m["x"], m["x"] if final_img is None else final_img, final_z)

    steers = generator.steers
    refill()
    while len(slots):
        z = slots.z.detach().requires_grad_(not steers)
        t = slots.opt["t"].tolist()
        targets = torch.tensor([m["target"] for m in slots.meta], device=device)
        with torch.set_grad_enabled(not steers), autocast(device, cfg.precision):
            img = generator.decode(z)
            logits = model(img)
        loss = F.cross_entropy(logits.float(), targets, reduction="none")
        preds = logits.argmax(-1).tolist()
        checked = [i for i, ti in enumerate(t) if ti >= 1]
        ok, verdicts = {}, {}
        if checked:
            # The oracle decides in fp32 whatever the precision: its decisions define the
            # protocol, and its forward is cheap next to the decoder's backward.
            with torch.no_grad():
                rows = torch.tensor(checked, device=device)
                labels = torch.tensor([slots.meta[i]["label"] for i in checked], device=device)
                verdict = decide(rule, oracle.member_probs(img.detach()[rows].float()), labels)
            ok = {i: bool(verdict.accepted[k]) for k, i in enumerate(checked)}
            verdicts = {i: verdict.row(k) for k, i in enumerate(checked)}
        accepted = [i for i in checked if ok[i]]
        if accepted:
            with torch.no_grad():
                zq = dict(zip(accepted, generator.final_latent(z.detach()[torch.tensor(accepted, device=device)])
                              .float().cpu()))
        cont = []
        for i, ti in enumerate(t):
            if ti == 0:
                cont.append(True)  # the reconstruction: nothing to check yet
            elif not ok[i]:
                if ti == 1:
                    finish(i, False, 0, None)  # not validated: x-hat = x
                else:
                    finish(i, True, ti - 1, slots.accepted[i])
                cont.append(False)
            else:
                slots.accepted[i] = (img[i].detach().float().cpu(), preds[i], zq[i], verdicts[i])
                if ti >= cfg.budget:
                    finish(i, True, ti, slots.accepted[i])
                    cont.append(False)
                else:
                    cont.append(True)
        if any(cont):
            sel = torch.tensor([i for i, c in enumerate(cont) if c], device=device)
            if not steers:
                (grad,) = torch.autograd.grad(loss[sel].sum(), z)
            slots.z = z.detach()
            slots.keep(cont)
            ids = torch.tensor([m["index"] for m in slots.meta])
            if steers:
                slots.opt["t"] += 1
                labels = torch.tensor([m["label"] for m in slots.meta], device=device)
                slots.z = generator.steer(slots.z, _loss_fn(model, targets[sel]), ids, slots.opt["t"].cpu(),
                                          labels=labels)
            else:
                slots.z = opt.step(slots.z, grad[sel], slots.opt)
                slots.z = generator.post_step(slots.z, ids, slots.opt["t"].cpu())
        else:
            slots.z = z.detach()
            slots.keep(cont)
        del img, logits, loss, z
        refill()
        if on_iteration is not None:
            on_iteration(len(slots))


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
