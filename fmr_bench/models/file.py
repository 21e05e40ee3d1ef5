"""``file:PATH`` — a local checkpoint, loaded without executing code.

Two formats:

* ``.safetensors`` written by :func:`save_model`: the metadata names the architecture
  (a spec such as ``timm:resnet18`` or ``builtin:digits-cnn``), the class names and the
  eval transform (input size, crop, interpolation, mean/std), so nothing else is needed.
* a torch file (``.pt``, ``.pth``, ``.bin``) holding a state dict (or
  ``{"state_dict": ...}``), read with ``weights_only=True``; the architecture is given
  as ``file:PATH?arch=timm:resnet18``.

The eval transform is the saved one; what a file does not record (a torch file, or a file
saved before crop settings were recorded) is the architecture's own, e.g. timm's data
config for ``timm:resnet18``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import torch

from ..errors import SpecError, WeightsError, first_line
from ..files import atomic_write_file
from ..specs import Spec
from ..weights import WeightRef, canonical_safetensors_header, safe_torch_load
from .base import ImageClassifier
from .transform import EvalTransform

META_KEY = "fmr_bench"


def save_model(model: ImageClassifier, path: str | Path, *, class_names: Sequence[str] | None = None,
               metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` as a self-describing safetensors file that ``file:PATH`` loads.

    Args:
        model: the classifier (``model.arch`` must be a buildable spec).
        path: destination, ``.safetensors``.
        class_names: overrides ``model.class_names``.
        metadata: extra string entries for the safetensors header (e.g. training settings).
    """
    from safetensors.torch import save_model as st_save

    path = Path(path)
    names = list(class_names) if class_names is not None else model.class_names
    meta = {"arch": model.arch, "class_names": names, "num_classes": model.num_classes,
            "preprocess": model.preprocess.to_dict(), "label_space": model.label_space}
    def write(tmp: Path) -> None:
        st_save(model.net, str(tmp), metadata={**(metadata or {}), META_KEY: json.dumps(meta)})
        canonical_safetensors_header(tmp)  # the same model, the same bytes

    return atomic_write_file(path, write, fix="save to a writable folder")


def weight_refs(spec: Spec) -> list[WeightRef]:
    path = Path(spec.ident).expanduser()
    return [WeightRef(f"model {spec}", str(path), path.is_file, host="", how="check the path")]


def _read(spec: Spec) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(spec.ident).expanduser()
    if not spec.ident:
        raise SpecError("file spec needs a path, e.g. file:runs/model.safetensors")
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist; check the path after file:")
    if path.stat().st_size == 0:
        raise WeightsError(f"checkpoint {path} is empty (0 bytes; an interrupted copy or save?); copy or save it again")
    try:
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(path), "pt") as f:
                    meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
                    state = {k: f.get_tensor(k) for k in f.keys()}
            except (SafetensorError, OSError, ValueError) as e:  # truncated or foreign: safetensors' words
                raise WeightsError(f"cannot read {path} as a safetensors file ({first_line(e)}); it is truncated or "
                                   "not safetensors: save it again with fmr_bench.save_model") from None
        else:
            with warnings.catch_warnings():  # torch warns about pickle protocols it then refuses anyway
                warnings.simplefilter("ignore")
                obj = safe_torch_load(path)
            meta = {}
            state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
            if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise WeightsError(f"{path} holds no state dict of tensors; save it with "
                                   "torch.save(model.state_dict(), PATH) or fmr_bench.save_model")
    except WeightsError:
        raise
    except Exception:
        # torch's own message is several sentences about its weights_only default; say what matters
        raise WeightsError(f"cannot read {path} as a checkpoint of tensors without running code (a plain pickle or "
                           "a pickled object is refused); save it with torch.save(model.state_dict(), PATH) or as "
                           "safetensors with fmr_bench.save_model") from None
    return state, meta


def load(spec: Spec, *, class_names: Sequence[str] | None = None, pretrained: bool = True) -> ImageClassifier:
    from . import load_model

    state, meta = _read(spec)
    arch = spec.opts.get("arch") or meta.get("arch")
    if not arch:
        raise SpecError(f"{spec.ident} does not say its architecture; add ?arch=SPEC, e.g. "
                        f"file:{spec.ident}?arch=timm:resnet50")
    names = meta.get("class_names") or None
    arch_spec = arch
    if meta.get("num_classes") and arch.startswith("timm:") and "num_classes" not in arch:
        arch_spec += ("&" if "?" in arch else "?") + f"num_classes={meta['num_classes']}"
    model = load_model(arch_spec, class_names=names or class_names, pretrained=False)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"checkpoint {spec.ident} does not fit architecture {arch} ({first_line(e)}); pass the right ?arch=") from None
    if names:
        model.class_names = list(names)
        model.num_classes = len(names)
    if meta.get("preprocess"):
        try:
            pre = EvalTransform.from_dict(meta["preprocess"], base=model.preprocess,
                                          origin=f"saved in {Path(spec.ident).name}")
        except (AttributeError, TypeError, ValueError) as e:  # SettingsError is a ValueError
            raise WeightsError(f"{spec.ident} records an unusable preprocessing ({e}); re-save it with "
                               "fmr_bench.save_model") from None
        model.set_preprocess(pre)
    model.label_space = meta.get("label_space", model.label_space)
    model.spec = str(spec)
    return model
