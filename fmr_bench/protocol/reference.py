"""A plain one-image reference implementation of the FMR loop.

Written the way a straightforward implementation of the paper would be: one image at a
time, fp32, ``torch.optim`` on the latent, and the image re-decoded after every update
for the oracle check. It exists for tests (the batched loop must give the same
per-sample outcomes) and as the baseline of ``benchmarks/``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..generators.base import Generator
from ..models.base import ImageClassifier
from ..oracles import Oracle
from ..oracles.acceptance import DEFAULT_RULE, decide
from ..runtime import exact_fp32
from .cpu import flush_denormals
from .outcome import SampleOutcome

Sample = tuple[str, int, torch.Tensor, int]


def _optimizer(kind: str, z: torch.Tensor, lr: float):
    if kind == "adam":
        return torch.optim.Adam([z], lr=lr, maximize=True)
    if kind == "sgd":
        return torch.optim.SGD([z], lr=lr, maximize=True)
    return None  # "sign": done by hand below


def reference_one(sample: Sample, *, model: ImageClassifier, oracle: Oracle, generator: Generator,
                  target: int, budget: int, step_size: float, optimizer: str = "adam", init: str = "none",
                  fgsm_eps: float = 0.003,
                  accept: str = DEFAULT_RULE) -> tuple[SampleOutcome, torch.Tensor, torch.Tensor]:
    """Algorithm 1 for one sample; returns the outcome, the final image and its latent.

    ``accept`` is the acceptance rule (fmr_bench.oracles.acceptance) deciding each oracle check.
    """
    sid, index, x, label = sample
    x = x[None]
    y = torch.tensor([target], device=x.device)
    y_label = torch.tensor([label], device=x.device)
    with torch.no_grad():
        clean_pred = int(model(x).argmax(-1))
        verdict = decide(accept, oracle.member_probs(x), y_label).row(0)  # x-hat = x until a step is accepted
        oracle_clean = verdict["oracle_pred"]
    start = x
    if init == "fgsm":
        xg = x.clone().requires_grad_(True)
        F.cross_entropy(model(xg), y).backward()
        start = (x + fgsm_eps * xg.grad.sign()).clamp(0, 1)
    with torch.no_grad():
        z = generator.encode(start).float()
        # a copy: for pixel / noise generators final_latent is z itself, which the optimiser changes in place
        z_hat = generator.final_latent(z).clone()
    z.requires_grad_(not generator.steers)
    opt = None if generator.steers else _optimizer(optimizer, z, step_size)
    x_hat, steps, validated = x, 0, False
    for t in range(budget):
        if generator.steers:  # e.g. guided diffusion: the generator makes the step itself
            z = generator.steer(z, lambda img: F.cross_entropy(model(img), y, reduction="none"),
                                torch.tensor([index]), torch.tensor([t + 1]),
                                labels=torch.tensor([label], device=x.device)).detach()
        elif opt is not None:
            loss = F.cross_entropy(model(generator.decode(z)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            loss = F.cross_entropy(model(generator.decode(z)), y)
            (grad,) = torch.autograd.grad(loss, z)
            with torch.no_grad():
                z += step_size * grad.sign()
        with torch.no_grad():
            if not generator.steers:
                z.copy_(generator.post_step(z, torch.tensor([index]), torch.tensor([t + 1])))
            candidate = generator.decode(z)
            checked = decide(accept, oracle.member_probs(candidate), y_label).row(0)
            if not checked["oracle_accept"]:
                break
            z_hat = generator.final_latent(z).clone()
        x_hat, steps, validated, verdict = candidate, t + 1, True, checked
    with torch.no_grad():
        final_pred = int(model(x_hat).argmax(-1)) if validated else clean_pred
    outcome = SampleOutcome(id=sid, index=index, label=label, target=target, clean_pred=clean_pred,
                            oracle_clean=oracle_clean, validated=validated, steps=steps, final_pred=final_pred,
                            **verdict)
    return outcome, x_hat[0].detach(), z_hat[0].detach()


def run_reference(samples: Iterable[Sample], *, model: ImageClassifier, oracle: Oracle, generator: Generator,
                  target_of: torch.Tensor, budget: int, step_size: float, optimizer: str = "adam",
                  init: str = "none", fgsm_eps: float = 0.003, accept: str = DEFAULT_RULE) -> list[SampleOutcome]:
    with exact_fp32(), flush_denormals():  # the same numerics as the batched loop
        return [reference_one(s, model=model, oracle=oracle, generator=generator, target=int(target_of[s[3]]),
                              budget=budget, step_size=step_size, optimizer=optimizer, init=init,
                              fgsm_eps=fgsm_eps, accept=accept)[0]
                for s in samples]
