"""``diffusion:ID_OR_FOLDER`` — a diffusers UNet2DModel steered by classifier guidance.

A self-steering generator (:attr:`Generator.steers`): the latent is the image itself
(in the model's [-1, 1] range) and each budget step is one SDEdit-style edit of the
current image (Meng et al., 2022) with classifier guidance (Dhariwal & Nichol, 2021)
towards a *higher* loss of the evaluated model:

1. noise the current image to ``t_start = strength * T``:
   ``x_t = sqrt(a_t) x + sqrt(1 - a_t) eps`` with ``eps`` seeded by (seed, sample id, step);
2. run ``steps`` deterministic DDIM steps (eta = 0) from ``t_start`` down to 0; at each,
   predict ``x0`` from the UNet's output, take ``g = grad_{x_t} loss(x0)`` through the
   UNet, and shift the noise prediction ``eps <- eps - sqrt(1 - a_t) * guidance * g``.
   By default ``g`` is divided by its per-sample RMS (``normalize=1``): a classifier that is
   confidently right has a saturated softmax and a vanishing loss gradient, which would
   leave the image alone; ``normalize=0`` is the plain classifier guidance of the paper.

So every step adds change on top of the previous one, and the oracle accepts or rejects
each result as in Algorithm 1. The latent optimiser and its step size are not used.

Options: ``strength`` (0.3), ``steps`` (10), ``guidance`` (scale, 1.0; 0 = plain SDEdit),
``normalize`` (1: RMS-normalised gradient, 0: raw),
``class_cond`` (for a class-conditional UNet, required: ``label`` conditions each sample
on its true class — ADM on ImageNet folders, whose labels are the 1000 ImageNet indices — or
a fixed class index, e.g. the null class of a model trained with label dropout), ``scheduler=default`` (the standard linear
1000-step schedule for a model that ships no scheduler config), ``resolution``,
``subfolder``. A shipped model's ``card.json`` may set other defaults.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import SettingsError, SpecError
from ..specs import Spec, parse_options
from . import DIFFUSION_OPTIONS, _diffusers
from .base import Generator



def seeded_noise(shape: tuple[int, ...], seed: int, sample_ids: torch.Tensor, steps: torch.Tensor,
                 like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise per row that depends only on (seed, sample id, step)."""
    noise = torch.empty((len(sample_ids), *shape))
    for row, (sid, step) in enumerate(zip(sample_ids.tolist(), steps.tolist())):
        key = hashlib.blake2b(f"{seed}/{sid}/{step}".encode(), digest_size=8).digest()
        g = torch.Generator().manual_seed(int.from_bytes(key, "little") & (2**63 - 1))
        noise[row] = torch.randn(shape, generator=g)
    return noise.to(like)


def resize_to(x: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """``x`` resized (bilinear, antialiased) to ``resolution`` square, when it differs."""
    if resolution is None or tuple(x.shape[-2:]) == (resolution, resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


class GuidedDiffusion(Generator):
    """SDEdit steps of a diffusers UNet with classifier guidance towards a higher loss.

    Args:
        unet: a diffusers ``UNet2DModel`` (pixel space, 3 channels).
        alphas_cumprod: the schedule's cumulative alphas, length T.
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample`` (from the scheduler config).
        strength: noise level of each edit, ``t_start = strength * T``.
        steps: DDIM steps per edit.
        guidance: classifier-guidance scale (0 = no guidance).
        normalize: divide the guidance gradient by its per-sample RMS.
        class_cond: for a class-conditional UNet, ``"label"`` (each sample's true class) or a
            fixed class index; None for an unconditional one.
        seed: seed of the noise.
        source: how records name the model.
        clip_sample: clamp predicted x0 to [-1, 1], as the scheduler config says.
    """

    name = "diffusion"
    steers = True

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, *, prediction_type: str = "epsilon",
                 strength: float = 0.3, steps: int = 10, guidance: float = 1.0, class_cond: int | str | None = None,
                 normalize: bool = True, seed: int = 0, source: str = "", clip_sample: bool = True,
                 resolution: int | None = None) -> None:
        super().__init__()
        if not 0 < strength <= 1:
            raise SettingsError(f"diffusion strength must be in (0, 1] (got {strength}); e.g. ?strength=0.3")
        if steps < 1:
            raise SettingsError(f"diffusion steps must be >= 1 (got {steps}); e.g. ?steps=10")
        if guidance < 0:
            raise SettingsError(f"diffusion guidance must be >= 0 (got {guidance}); e.g. ?guidance=1")
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise SpecError(f"unsupported prediction_type {prediction_type!r} in the scheduler config; "
                            "use a model predicting epsilon, v or the sample")
        cfg = unet.config
        if int(cfg.in_channels) != 3:
            raise SpecError(f"diffusion generator needs a pixel-space UNet with 3 input channels (got "
                            f"{cfg.in_channels}); latent diffusion models are not supported")
        conditional = cfg.num_class_embeds is not None or cfg.class_embed_type is not None
        if conditional and class_cond is None:
            raise SpecError("this UNet is class-conditional; pass the class index to condition every sample on, "
                            "e.g. ?class_cond=K (its null class if it was trained with label dropout)")
        if not conditional and class_cond is not None:
            raise SpecError("?class_cond= given, but this UNet is unconditional; drop the option")
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod.float().clone(), persistent=False)
        self.prediction_type, self.clip_sample = prediction_type, bool(clip_sample)
        self.strength, self.steps, self.guidance = float(strength), int(steps), float(guidance)
        self.class_cond, self.seed, self.source, self.normalize = class_cond, int(seed), source, bool(normalize)
        size = cfg.sample_size
        self.resolution = int(resolution or (size if isinstance(size, int) else size[0]))

    # -- the schedule ----------------------------------------------------------------
    def timesteps(self) -> list[int]:
        """The DDIM timesteps of one edit, from ``t_start`` down (evenly spaced, > 0 apart)."""
        T = len(self.alphas_cumprod)
        t_start = min(round(self.strength * T), T - 1)
        grid = torch.linspace(t_start, 0, self.steps + 1)[:-1].round().long().tolist()
        return sorted({max(t, 0) for t in grid}, reverse=True)

    def _eps(self, x: torch.Tensor, t: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        a = self.alphas_cumprod[t]
        if self.class_cond == "label":  # each sample on its own true class (ADM-style models)
            if labels is None:
                raise SettingsError("class_cond=label needs the samples' labels; the FMR loops pass them to steer()")
            labels = labels.to(device=x.device, dtype=torch.long)
        elif self.class_cond is not None:
            labels = torch.full((x.shape[0],), self.class_cond, dtype=torch.long, device=x.device)
        else:
            labels = None
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = self.unet(x, tt, class_labels=labels).sample
        if out.shape[1] == 2 * x.shape[1]:  # learned variance (improved DDPM): keep the mean part
            out = out[:, : x.shape[1]]
        if self.prediction_type == "epsilon":
            return out
        if self.prediction_type == "v_prediction":
            return a.sqrt() * out + (1 - a).sqrt() * x
        return (x - a.sqrt() * out) / (1 - a).sqrt()

    def _x0(self, x: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return x0.clamp(-1, 1) if self.clip_sample else x0

    # -- the generator interface -------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(x, self.resolution) * 2 - 1

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((z + 1) / 2).clamp(0, 1)

    def steer(self, z: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], sample_ids: torch.Tensor,
              steps: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        ts = self.timesteps()
        ac = self.alphas_cumprod
        a = ac[ts[0]]
        noise = seeded_noise(tuple(z.shape[1:]), self.seed, sample_ids, steps, z)
        x = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
        for i, t in enumerate(ts):
            a_t = ac[t]
            a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.ones_like(a_t)
            with torch.set_grad_enabled(self.guidance > 0):
                x_in = x.detach().requires_grad_(self.guidance > 0)
                eps = self._eps(x_in, t, labels)
                if self.guidance > 0:
                    # The evaluated model is not noise-aware: score the predicted clean image
                    # and carry the gradient back through the UNet to x_t.
                    loss = loss_fn(self.decode(self._x0(x_in, eps, a_t)))
                    (grad,) = torch.autograd.grad(loss.sum(), x_in)
                    if self.normalize:  # per sample, so that a saturated softmax still moves the image
                        rms = grad.pow(2).mean(dim=tuple(range(1, grad.ndim)), keepdim=True).sqrt()
                        grad = grad / rms.clamp_min(1e-12)
                    eps = eps - (1 - a_t).sqrt() * self.guidance * grad
            eps = eps.detach()
            x = a_prev.sqrt() * self._x0(x, eps, a_t) + (1 - a_prev).sqrt() * eps
        return x.detach()

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "strength": self.strength, "steps": self.steps,
                "guidance": self.guidance, "normalize": self.normalize, "class_cond": self.class_cond, "seed": self.seed,
                "prediction_type": self.prediction_type, "timesteps": self.timesteps(),
                "resolution": self.resolution}


def _options(spec: Spec, card: dict | None) -> dict[str, Any]:
    """Typed options of a diffusion spec: the spec's, else the card's defaults, else the table's."""
    values = parse_options(spec, DIFFUSION_OPTIONS, what="generator", defaults=(card or {}).get("defaults"))
    return {k: values[k] for k in ("strength", "steps", "guidance", "normalize", "class_cond", "resolution")}


def build(spec: Spec, default: str, seed: int = 0) -> GuidedDiffusion:
    """Builder of ``diffusion:ID_OR_FOLDER`` specs (registered in ``GENERATORS``)."""
    from diffusers import DDIMScheduler

    source = _diffusers.resolve(spec, "diffusion")
    opts = _options(spec, source.card)
    scheduler_default = parse_options(spec, DIFFUSION_OPTIONS, what="generator")["scheduler"] == "default"
    unet, source = _diffusers.load_model(spec, "diffusion", ("UNet2DModel",))
    config = _diffusers.load_scheduler_config(source, allow_default=scheduler_default)
    scheduler = DDIMScheduler.from_config(config) if config is not None else DDIMScheduler()
    return GuidedDiffusion(unet, scheduler.alphas_cumprod, prediction_type=scheduler.config.prediction_type,
                           clip_sample=scheduler.config.clip_sample, seed=seed, source=source.name, **opts)


def weight_refs(spec: Spec, default: str):
    return _diffusers.weight_refs(spec, "diffusion")
