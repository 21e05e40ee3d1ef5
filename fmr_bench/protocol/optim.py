"""Latent optimisers with per-sample state, so batch slots can be refilled.

Each row of the latent batch is an independent sample with its own step count and
moment estimates: a refilled slot starts from fresh state. All optimisers *ascend* the
loss (the protocol maximises the evaluated model's loss). The maths of ``adam`` is
that of ``torch.optim.Adam(maximize=True)`` applied to each sample alone; the tests
check it against torch's implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LatentOptimizer:
    """Per-row ascent steps on a latent batch.

    Args:
        kind: ``adam`` (default; betas 0.9/0.999, eps 1e-8), ``sgd`` (z += lr * g) or
            ``sign`` (z += lr * sign(g), an FGSM-like step in latent space).
        lr: the step size eta.
    """

    kind: str
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def init_state(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        n = z.shape[0]
        state = {"t": torch.zeros(n, dtype=torch.long, device=z.device)}
        if self.kind == "adam":
            state["m"] = torch.zeros_like(z)
            state["v"] = torch.zeros_like(z)
        return state

    def step(self, z: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the updated latent (rows of ``grad`` that are all zero still count as a step)."""
        state["t"] += 1
        if self.kind == "sgd":
            return z + self.lr * grad
        if self.kind == "sign":
            return z + self.lr * grad.sign()
        b1, b2 = self.betas
        state["m"].mul_(b1).add_(grad, alpha=1 - b1)
        state["v"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        shape = (-1,) + (1,) * (z.dim() - 1)
        t = state["t"].to(z.dtype).view(shape)
        bias1 = 1 - b1 ** t
        bias2_sqrt = (1 - b2 ** t).sqrt()
        denom = state["v"].sqrt() / bias2_sqrt + self.eps
        return z + (self.lr / bias1) * state["m"] / denom


def select_state(state: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[keep] for k, v in state.items()}


def concat_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([a[k], b[k]]) for k in a}
