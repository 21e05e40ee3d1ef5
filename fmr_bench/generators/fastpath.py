"""Faster forms of the VQGAN decoder's pieces, each the same function as the plain one.

Levers (``LEVERS``; opt-in, off by default, so that the default loop keeps the reference's
numerics exactly):

* ``subpixel`` — nearest 2× upsampling followed by a 3×3 convolution equals a 2×2
  convolution of the low-resolution input with four phase kernels (sums of the 3×3
  kernel's taps), whose outputs are interleaved by ``pixel_shuffle``: no 4× tensor and
  16 instead of 36 multiply-adds per output pixel of that convolution.
* ``groupnorm`` — GroupNorm then SiLU in one function: statistics in fp32 (as autocast
  would compute GroupNorm), the result returned in the input's dtype and memory layout.
  Under bf16 autocast, plain GroupNorm returns fp32 (SiLU then runs on fp32 and the next
  convolution casts back); and a CUDA GroupNorm returns a contiguous NCHW tensor, so a
  channels-last convolution after it transposes. Written with elementwise ops on a view,
  the result keeps channels-last strides and bf16.
* ``compile`` — ``torch.compile`` of the decoder (with the loop's ``fixed_slots`` the batch
  shape never changes, so it compiles once).

The tests compare each lever with the plain module on the CPU (tests/test_vqgan.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SettingsError

#: Row r of ``_PHASE_TAPS[a]`` lists which of the 3×3 kernel's taps (rows or columns) fall on
#: source offset r of output phase a: phase 0 reads source rows (i-1, i), phase 1 (i, i+1).
_PHASE_TAPS = torch.tensor([[[1.0, 0, 0], [0, 1, 1]], [[1.0, 1, 0], [0, 0, 1]]])


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """The four 2×2 phase kernels of a 3×3 kernel applied after nearest 2× upsampling.

    Returns (4·C_out, C_in, 2, 2), phase (a, b) of output channel o at row 4·o + 2·a + b
    (the order ``pixel_shuffle`` reads).
    """
    taps = _PHASE_TAPS.to(weight)
    k = torch.einsum("aur,bvs,ocrs->oabcuv", taps, taps, weight)
    return k.reshape(weight.shape[0] * 4, weight.shape[1], 2, 2)


class SubpixelUpsample(nn.Module):
    """``conv3x3(nearest_upsample_2x(x))`` computed on the low-resolution input."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
            raise ValueError("SubpixelUpsample needs a 3x3, stride-1, padding-1 convolution")
        self.conv = conv  # kept for its weights (a checkpoint's keys stay the same)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        bias = None if self.conv.bias is None else self.conv.bias.repeat_interleave(4)
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), phase_kernels(w).to(w.dtype), bias)  # (N, 4·C, H+1, W+1)
        h, wd = x.shape[-2:]
        c = w.shape[0]
        y = y.view(y.shape[0], c, 4, h + 1, wd + 1)
        # phase (a, b) of output pixel (2i + a, 2j + b) sits at y[..., i + a, j + b]
        phases = [y[:, :, 2 * a + b, a:a + h, b:b + wd] for a in (0, 1) for b in (0, 1)]
        return F.pixel_shuffle(torch.stack(phases, 2).flatten(1, 2), 2)


def group_norm_silu(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``silu(norm(x))`` with fp32 statistics, in ``x``'s dtype and memory layout."""
    n, c = x.shape[:2]
    g = norm.num_groups
    xf = x.float()
    var, mean = torch.var_mean(xf.unflatten(1, (g, c // g)), dim=(2, 3, 4), unbiased=False, keepdim=True)
    scale = torch.rsqrt(var + norm.eps).expand(n, g, c // g, 1, 1).reshape(n, c, 1, 1)
    shift = -mean.expand(n, g, c // g, 1, 1).reshape(n, c, 1, 1) * scale
    if norm.affine:
        w, b = norm.weight.float().view(1, c, 1, 1), norm.bias.float().view(1, c, 1, 1)
        scale, shift = scale * w, shift * w + b
    return F.silu(xf * scale + shift).to(x.dtype)


class FusedResnetBlock(nn.Module):
    """A decoder residual block (norm-SiLU-conv twice, plus the shortcut) with fused GroupNorm→SiLU.

    It holds the plain block's own modules, so weights and state-dict keys stay as they were.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        b = self.block
        if temb is not None:  # the VQGAN decoder has no time embedding
            raise ValueError("FusedResnetBlock serves blocks without a time embedding")
        h = b.conv1(group_norm_silu(x, b.norm1))
        h = b.conv2(b.dropout(group_norm_silu(h, b.norm2)))
        if b.in_channels != b.out_channels:
            x = b.conv_shortcut(x) if b.use_conv_shortcut else b.nin_shortcut(x)
        return x + h


def _swap(module: nn.Module, kind: str, make) -> int:
    """Replace every child whose class is called ``kind`` by ``make(child)``; returns how many."""
    count = 0
    for name, child in module.named_children():
        if type(child).__name__ == kind:
            setattr(module, name, make(child))
            count += 1
        else:
            count += _swap(child, kind, make)
    return count


def _subpixel(decoder: nn.Module) -> int:
    def make(up: nn.Module) -> nn.Module:
        return SubpixelUpsample(up.conv) if getattr(up, "with_conv", False) else up

    return _swap(decoder, "Upsample", make)


def _groupnorm(decoder: nn.Module) -> int:
    return _swap(decoder, "ResnetBlock", FusedResnetBlock)


def _compile(decoder: nn.Module) -> int:
    decoder.forward = torch.compile(decoder.forward, dynamic=False)
    return 1


#: The decoder levers by name; each takes the decoder and changes it in place.
LEVERS = {"subpixel": _subpixel, "groupnorm": _groupnorm, "compile": _compile}


def apply_levers(generator: Any, levers: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Apply the named levers to ``generator.decoder`` (a VQGAN's); returns the modules changed per lever.

    Raises:
        SettingsError: an unknown lever, or a generator without a taming decoder.
    """
    unknown = [name for name in levers if name not in LEVERS]
    if unknown:
        raise SettingsError(f"unknown decoder lever(s) {', '.join(unknown)}; use any of {', '.join(LEVERS)}")
    decoder = getattr(generator, "decoder", None)
    if not isinstance(decoder, nn.Module):
        raise SettingsError("decoder levers apply to the VQGAN generator only; drop them for this generator")
    return {name: LEVERS[name](decoder) for name in levers}
