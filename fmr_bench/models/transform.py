"""The eval transform of a model: how an image file becomes the tensor the model was evaluated on.

One frozen :class:`EvalTransform` describes it: input size, ``crop_pct``, ``crop_mode``,
interpolation, mean/std, and the padding colour of letterboxed modes. Every model source
fills it from where its model's preprocessing is defined (timm's pretrained data config,
open_clip's ``preprocess_cfg``, the metadata of a ``file:`` checkpoint), and the static
evaluators apply it when they decode images, so a model sees the pixels that timm's
``validate.py``, open_clip and CLIP_benchmark give it.

The geometry follows timm's ``transforms_imagenet_eval`` (and open_clip's ``image_transform``,
which is the same for ``crop_pct = 1``):

- ``center``: resize the shortest side to ``floor(size / crop_pct)`` (keeping the aspect
  ratio), then centre-crop ``input_size``.
- ``squash``: resize both sides to ``floor(size / crop_pct)`` (aspect ratio not kept), then
  centre-crop ``input_size``.
- ``border``: resize the longest side to ``floor(size / crop_pct)`` (keeping the aspect
  ratio), then centre-crop or pad to ``input_size`` with ``fill`` (timm's default fill is the
  mean colour; open_clip's ``resize_mode="longest"`` pads with its ``fill_color``).

Mean/std normalisation is not applied here: :class:`~fmr_bench.models.base.ImageClassifier`
applies it (differentiably, so the FMR loop shares it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch

from ..errors import SettingsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: timm's ``DEFAULT_CROP_PCT``: the crop of a timm model whose data config defines none.
DEFAULT_CROP_PCT = 0.875
CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
#: open_clip ``resize_mode`` -> our ``crop_mode`` (open_clip never crops beyond the input size).
OPEN_CLIP_RESIZE_MODES = {"shortest": "center", "squash": "squash", "longest": "border"}
# torchvision resizes tensors only with these; other modes go through PIL (uint8)
_TENSOR_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def _size2(value: Any) -> tuple[int, int]:
    if isinstance(value, (int, float)):
        return int(value), int(value)
    v = tuple(int(s) for s in value)
    if len(v) == 3:  # timm's (C, H, W)
        v = v[1:]
    if len(v) != 2:
        raise SettingsError(f"input size {value!r} is not (height, width); give e.g. input_size=224 or (224, 224)")
    return v


@dataclass(frozen=True)
class EvalTransform:
    """What a model expects of its input pixels, and how files are cropped for it.

    Attributes:
        input_size: (height, width) of the tensor the network takes.
        mean: per-channel mean subtracted from pixels in [0, 1].
        std: per-channel standard deviation divided out.
        interpolation: resize filter (``bilinear``, ``bicubic``, ``nearest``, ``box``,
            ``hamming``, ``lanczos``); the FMR loop's differentiable resize uses bicubic when
            this is bicubic, else bilinear.
        crop_pct: share of the resized image kept by the crop (timm's ``crop_pct``). The
            default 1.0 crops nothing beyond the aspect ratio: images already at the input
            size pass unchanged (timm's own default for models without one is 0.875).
        crop_mode: ``center``, ``squash`` or ``border`` (see the module docstring).
        fill: padding colour (0-255 per channel) of ``border`` mode; ``None`` pads with the
            mean colour, as timm does.
        origin: where these values come from (recorded; not part of equality or cache keys).
    """

    input_size: tuple[int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "center"
    fill: tuple[int, ...] | None = None
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # metadata and configs give lists; a frozen, hashable record needs tuples
        object.__setattr__(self, "input_size", _size2(self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.fill is not None:
            fill = (self.fill,) * len(self.mean) if isinstance(self.fill, (int, float)) else self.fill
            object.__setattr__(self, "fill", tuple(int(v) for v in fill))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        if min(self.input_size) < 1:
            raise SettingsError(f"input size must be positive (got {self.input_size})")
        if not (math.isfinite(self.crop_pct) and self.crop_pct > 0):
            raise SettingsError(f"crop_pct must be a positive number (got {self.crop_pct}); timm's default is 0.875")
        if self.crop_mode not in CROP_MODES:
            raise SettingsError(f"crop_mode {self.crop_mode!r} is unknown; use one of {', '.join(CROP_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise SettingsError(f"interpolation {self.interpolation!r} is unknown; use one of {', '.join(INTERPOLATIONS)}")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise SettingsError(f"mean {self.mean} and std {self.std} need one positive std per mean")

    # ---- construction from the places models define their preprocessing ----
    @classmethod
    def from_timm(cls, cfg: Mapping[str, Any], origin: str = "timm data config") -> EvalTransform:
        """From ``timm.data.resolve_data_config(...)`` (or a ``pretrained_cfg`` dict)."""
        return cls(input_size=_size2(cfg["input_size"]), mean=cfg.get("mean", IMAGENET_MEAN),
                   std=cfg.get("std", IMAGENET_STD), interpolation=cfg.get("interpolation") or "bilinear",
                   crop_pct=cfg.get("crop_pct") or DEFAULT_CROP_PCT, crop_mode=cfg.get("crop_mode") or "center",
                   origin=origin)

    @classmethod
    def from_open_clip(cls, cfg: Mapping[str, Any], origin: str = "open_clip preprocess_cfg") -> EvalTransform:
        """From an open_clip ``PreprocessCfg`` dict (``model.visual.preprocess_cfg``)."""
        size = _size2(cfg.get("size", 224))
        mode = cfg.get("resize_mode", "shortest")
        if mode not in OPEN_CLIP_RESIZE_MODES:
            raise SettingsError(f"open_clip resize_mode {mode!r} is not supported; "
                                f"use one of {', '.join(OPEN_CLIP_RESIZE_MODES)}")
        interpolation = cfg.get("interpolation", "bicubic")
        if mode == "shortest" and size[0] != size[1]:
            interpolation = "bicubic"  # open_clip's non-square shortest resize ignores its setting
        fill = cfg.get("fill_color", 0) if mode == "longest" else None
        return cls(input_size=size, mean=cfg.get("mean", IMAGENET_MEAN), std=cfg.get("std", IMAGENET_STD),
                   interpolation=interpolation, crop_pct=1.0, crop_mode=OPEN_CLIP_RESIZE_MODES[mode], fill=fill,
                   origin=origin)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: EvalTransform | None = None, origin: str | None = None
                  ) -> EvalTransform:
        """From :meth:`to_dict` output; keys it lacks (older files) come from ``base``."""
        known = {f.name for f in fields(cls)}
        values = {**(asdict(base) if base is not None else {}), **{k: v for k, v in d.items() if k in known}}
        if origin is not None:
            values["origin"] = origin
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct, "crop_mode": self.crop_mode,
                "fill": list(self.fill) if self.fill is not None else None, "origin": self.origin}

    def key(self) -> dict[str, Any]:
        """Everything that determines the pixels (for cache keys): :meth:`to_dict` less ``origin``."""
        d = self.to_dict()
        d.pop("origin")
        return d

    def replace(self, **changes: Any) -> EvalTransform:
        return replace(self, **changes)

    # ---- geometry ----
    def scale_size(self) -> tuple[int, int]:
        """Size the image is resized to before the crop: ``floor(input_size / crop_pct)`` (timm)."""
        return tuple(math.floor(s / self.crop_pct) for s in self.input_size)  # type: ignore[return-value]

    def is_identity_for(self, height: int, width: int) -> bool:
        """True when an image of this size comes out unchanged (no resize, crop or pad)."""
        return (height, width) == self.input_size and self.scale_size() == self.input_size

    def _resize_to(self, height: int, width: int) -> tuple[int, int]:
        sh, sw = self.scale_size()
        if self.crop_mode == "squash":
            return sh, sw
        if self.crop_mode == "center" and sh == sw:
            # torchvision's int-size rule (timm and open_clip pass an int here): the short side
            # becomes sh, the long side int(sh * long / short)
            if height <= width:
                return sh, int(sh * width / height)
            return int(sh * height / width), sh
        # timm's ResizeKeepRatio: one ratio for both sides, shortest (center) or longest (border)
        rh, rw = height / sh, width / sw
        ratio = max(rh, rw) if self.crop_mode == "border" else min(rh, rw)
        return round(height / ratio), round(width / ratio)

    def _pad_fill(self) -> tuple[int, ...]:
        if self.crop_mode != "border":
            return (0,) * len(self.mean)  # torchvision's CenterCrop pads with black
        return self.fill if self.fill is not None else tuple(round(255 * v) for v in self.mean)

    def __call__(self, image: Any) -> torch.Tensor:
        """Resize, crop and pad one image.

        Args:
            image: a PIL image, or a (C, H, W) tensor: uint8 (treated as the image file it came
                from: resized by PIL, as timm and open_clip resize files) or float in [0, 1]
                    (resized by torchvision on the tensor, antialiased, then clamped to [0, 1];
                with ``box``, ``hamming`` or ``lanczos``, through PIL at 8 bits).

        Returns:
            A float (C, H, W) tensor in [0, 1] of size ``input_size`` (not normalised).
        """
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        # uint8 is an image file's content; filters torch lacks (box, hamming, lanczos) need PIL too
        if isinstance(image, torch.Tensor) and (image.dtype == torch.uint8
                                                or self.interpolation not in _TENSOR_INTERPOLATIONS):
            image = TF.to_pil_image(image if image.dtype == torch.uint8
                                    else (image.float().clamp(0, 1) * 255).round().to(torch.uint8))
        if isinstance(image, torch.Tensor):
            x = image.float()
            h, w = x.shape[-2:]
            size = self._resize_to(h, w)
            if size != (h, w):
                x = TF.resize(x, list(size), interpolation=InterpolationMode(self.interpolation),
                              antialias=True).clamp(0, 1)
        else:
            w, h = image.size
            size = self._resize_to(h, w)
            if size != (h, w):
                image = TF.resize(image, list(size), interpolation=InterpolationMode(self.interpolation))
            x = TF.to_tensor(image)
        return centre_crop_or_pad(x, self.input_size, self._pad_fill())


def centre_crop_or_pad(x: torch.Tensor, size: tuple[int, int], fill: tuple[int, ...]) -> torch.Tensor:
    """Centre-crop (C, H, W) ``x`` to ``size``, padding first with ``fill`` (0-255) where it is smaller.

    The placement is torchvision's ``center_crop`` (also timm's and open_clip's
    ``center_crop_or_pad``): padding ``d // 2`` before and the rest after, crop offset
    ``round((H - h) / 2)``. Done on the float tensor: cropping and padding commute with the
    uint8 -> float conversion, so the values equal those of a crop of the PIL image.
    """
    th, tw = size
    c, h, w = x.shape
    if th > h or tw > w:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        # the same float32 division as to_tensor, so a padded pixel equals a decoded one
        colour = torch.tensor(fill, dtype=torch.float32).div(255).to(x.dtype)
        out = colour.view(c, 1, 1).expand(c, h + ph, w + pw).clone()
        out[:, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w] = x
        x, h, w = out, h + ph, w + pw
    top, left = round((h - th) / 2.0), round((w - tw) / 2.0)  # torchvision's int(round(...))
    return x[:, top:top + th, left:left + tw].contiguous()


__all__ = ["CROP_MODES", "DEFAULT_CROP_PCT", "IMAGENET_MEAN", "IMAGENET_STD", "EvalTransform", "centre_crop_or_pad"]
