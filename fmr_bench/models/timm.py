"""``timm:NAME[.TAG][?weights=PATH]`` — any timm classifier, with its own data config.

The eval transform is timm's: ``timm.data.resolve_data_config({}, model=net)`` (input size,
crop_pct, crop_mode, interpolation, mean/std of the pretrained tag), the same values
``timm.data.create_transform`` and timm's ``validate.py`` use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import MissingDependencyError, SpecError, WeightsError, first_line
from ..specs import Spec
from ..weights import WeightRef, hf_cached
from .base import ImageClassifier
from .transform import EvalTransform

HF_FILES = ("model.safetensors", "pytorch_model.bin")


def _timm():
    try:
        import timm
    except ImportError:  # pragma: no cover
        raise MissingDependencyError("timm models need timm; run: pip install timm") from None
    return timm


def _check_name(name: str) -> None:
    timm = _timm()
    if not name:
        raise SpecError("timm spec needs a model name, e.g. timm:resnet50")
    if not timm.is_model(name) and not name.startswith("hf-hub:"):
        base = name.split(".")[0]
        close = timm.list_models(f"*{base[:6]}*")[:5]
        hint = f" Similar: {', '.join(close)}." if close else ""
        raise SpecError(f"timm has no model {name!r}.{hint} List them with: python -c \"import timm; print(timm.list_models())\"")


def weight_refs(spec: Spec) -> list[WeightRef]:
    name, local = spec.ident, spec.opts.get("weights")
    if local:
        return [WeightRef(f"model {spec}", local, lambda: Path(local).is_file(), how="check the ?weights= path")]
    if name.startswith("hf-hub:"):
        repo = name.removeprefix("hf-hub:")
    else:
        _check_name(name)
        cfg = _timm().models.get_pretrained_cfg(name)
        if cfg is None or not cfg.hf_hub_id:
            return []  # weights from a plain URL: timm's own download handles them
        repo = cfg.hf_hub_id
    return [WeightRef(
        f"model {spec}", f"{repo} (Hugging Face Hub)", lambda: hf_cached(repo, HF_FILES),
        how=f"pass timm:{name}?weights=/path/to/model.safetensors or point HF_HOME at a cache holding {repo}",
    )]


def load(spec: Spec, *, class_names: Sequence[str] | None = None, pretrained: bool = True) -> ImageClassifier:
    timm = _timm()
    name, local = spec.ident, spec.opts.get("weights")
    _check_name(name)
    kwargs = {}
    if local:
        if not Path(local).is_file():
            raise WeightsError(f"timm weights file {local} does not exist; check the ?weights= path")
        kwargs["pretrained_cfg_overlay"] = {"file": str(local)}
        pretrained = True
    if "num_classes" in spec.opts:
        kwargs["num_classes"] = int(spec.opts["num_classes"])
    try:
        net = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (RuntimeError, OSError, KeyError, ValueError) as e:
        raise WeightsError(f"cannot load weights for timm:{name} ({first_line(e)}); pass ?weights=PATH to a matching file") from None
    pcfg = getattr(net, "pretrained_cfg", None) or {}
    which = ".".join(str(v) for v in (pcfg.get("architecture") or name, pcfg.get("tag")) if v)
    if pcfg.get("source") == "hf-hub" and pcfg.get("hf_hub_id"):
        which = f"{which} in {pcfg['hf_hub_id']}"
    pre = EvalTransform.from_timm(timm.data.resolve_data_config({}, model=net), origin=f"timm pretrained_cfg of {which}")
    label_names = getattr(net.pretrained_cfg, "label_names", None) if hasattr(net, "pretrained_cfg") else None
    space = "imagenet-1k" if net.num_classes == 1000 and not label_names else None
    return ImageClassifier(net, pre, class_names=label_names, num_classes=net.num_classes, spec=str(spec),
                           arch=f"timm:{name.split('.')[0]}", label_space=space)
