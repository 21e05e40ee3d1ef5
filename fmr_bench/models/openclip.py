"""``openclip:ARCH/TAG`` — an open_clip model used as a zero-shot classifier.

The zero-shot head follows CLIP: for each class, the text embeddings of every template
are L2-normalised, averaged and renormalised. Heads are computed once and cached on
disk, keyed by everything that determines them.

The eval transform is open_clip's: the model's ``visual.preprocess_cfg`` merged with the
pretrained tag's preprocessing (as ``create_model_and_transforms`` does when it loads the
tag), so CLIP models get the resize of the shortest side, centre crop (crop 1.0) and bicubic
filter of ``image_transform``, and tags that define their own (SigLIP's squash, MobileCLIP's
bilinear) get theirs, also for ``pretrained=False`` and ``?weights=PATH``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ClassMappingError, MissingDependencyError, SpecError, WeightsError, first_line
from ..specs import Spec
from ..files import cache_dir
from ..weights import WeightRef, hf_cached
from .base import ImageClassifier
from .transform import EvalTransform

HF_FILES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _open_clip():
    try:
        import open_clip
    except ImportError:  # pragma: no cover
        raise MissingDependencyError("openclip models need open_clip; run: pip install open_clip_torch") from None
    return open_clip


def templates_for(name: str) -> list[str]:
    """``openai`` (the 80 ImageNet templates of CLIP), ``single`` ("an image of {}"),
    or a literal template containing ``{}``."""
    if name == "openai":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    if name == "single":
        return ["an image of {}"]
    if "{}" in name:
        return [name]
    raise SpecError(f"unknown prompt set {name!r}; use openai, single, or a template with {{}} such as 'a photo of a {{}}'")


class ZeroShotHead(nn.Module):
    """Cosine-similarity logits against fixed class embeddings.

    ``tokenizer``, ``class_names`` and ``templates`` are kept (outside the state dict) so
    that a fine-tuned text tower can rebuild the head (:meth:`rebuild`, FLYP / StarFT).
    """

    def __init__(self, clip: nn.Module, class_embeddings: torch.Tensor, *, tokenizer: Callable | None = None,
                 class_names: Sequence[str] | None = None, templates: Sequence[str] | None = None) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("class_embeddings", class_embeddings)
        self.tokenizer = tokenizer
        self.class_names = list(class_names) if class_names is not None else None
        self.templates = list(templates) if templates is not None else None

    def __deepcopy__(self, memo: dict) -> "ZeroShotHead":
        # The tokenizer is stateless for our use and costly to copy (its BPE tables): share it.
        memo[id(self.tokenizer)] = self.tokenizer
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return new

    def rebuild(self) -> None:
        """Recompute the class embeddings from the current text tower (no disk cache)."""
        if self.tokenizer is None or not self.class_names or not self.templates:
            raise ClassMappingError("this zero-shot head carries no tokenizer, class names and templates to rebuild from")
        emb = class_embeddings(self.clip, self.tokenizer, self.class_names, self.templates)
        self.class_embeddings.data = emb.to(self.class_embeddings.device, self.class_embeddings.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = F.normalize(self.clip.encode_image(x), dim=-1)
        scale = self.clip.logit_scale.exp() if hasattr(self.clip, "logit_scale") else 100.0
        return scale * feats @ self.class_embeddings.to(feats.dtype).t()


@torch.no_grad()
def class_embeddings(clip: nn.Module, tokenizer: Callable, class_names: Sequence[str],
                     templates: Sequence[str], *, cache_key: str | None = None,
                     batch_size: int = 256) -> torch.Tensor:
    """(C, D) zero-shot class embeddings; read from / written to the disk cache when keyed."""
    path = None
    if cache_key is not None:
        digest = hashlib.sha256(json.dumps([cache_key, list(class_names), list(templates)]).encode()).hexdigest()[:24]
        path = cache_dir() / "text-embeddings" / f"{digest}.pt"
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # corrupt cache entry: recompute
                path.unlink(missing_ok=True)
    device = next(clip.parameters()).device
    texts = [t.format(c.replace("_", " ")) for c in class_names for t in templates]
    embs = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[i:i + batch_size]).to(device)
        embs.append(F.normalize(clip.encode_text(tokens).float(), dim=-1).cpu())
    per_class = torch.cat(embs).view(len(class_names), len(templates), -1).mean(1)
    out = F.normalize(per_class, dim=-1)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(out, path)
        except OSError:
            pass  # a cache we cannot write only costs time
    return out


def zero_shot_classifier(clip: nn.Module, tokenizer: Callable, class_names: Sequence[str] | None,
                         templates: Sequence[str], pre: EvalTransform, *, spec: str, arch: str,
                         cache_key: str | None) -> ImageClassifier:
    if not class_names:
        raise ClassMappingError(f"{spec} is a zero-shot model and needs class names; use a dataset that has them")
    clip.eval()
    head = ZeroShotHead(clip, class_embeddings(clip, tokenizer, class_names, templates, cache_key=cache_key),
                        tokenizer=tokenizer, class_names=class_names, templates=templates)
    return ImageClassifier(head, pre, class_names=class_names, spec=spec, arch=arch)


def eval_transform(clip: nn.Module, arch: str, tag: str = "") -> EvalTransform:
    """The eval transform open_clip gives ``clip`` (built as ``arch``) when loaded with ``tag``."""
    from open_clip.transform import merge_preprocess_dict

    cfg = dict(getattr(clip.visual, "preprocess_cfg", None) or {})
    tag_cfg = _open_clip().get_pretrained_cfg(arch, tag) if tag else {}
    if tag_cfg:
        cfg = merge_preprocess_dict(cfg, tag_cfg)
    size = clip.visual.image_size  # open_clip sets the final size from the built tower
    cfg["size"] = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    cfg.setdefault("mean", OPENAI_MEAN)
    cfg.setdefault("std", OPENAI_STD)
    where = f"{arch}/{tag}" if tag_cfg else arch
    return EvalTransform.from_open_clip(cfg, origin=f"open_clip preprocess_cfg of {where}")


def _split(spec: Spec) -> tuple[str, str]:
    arch, _, tag = spec.ident.partition("/")
    if not arch:
        raise SpecError("openclip spec needs ARCH/TAG, e.g. openclip:ViT-B-32/openai")
    oc = _open_clip()
    if arch not in oc.list_models():
        raise SpecError(f"open_clip has no architecture {arch!r}; see open_clip.list_models()")
    return arch, tag


def weight_refs(spec: Spec) -> list[WeightRef]:
    arch, tag = _split(spec)
    local = spec.opts.get("weights")
    if local:
        return [WeightRef(f"model {spec}", local, lambda: Path(local).is_file(), how="check the ?weights= path")]
    if not tag:
        return []
    cfg = _open_clip().get_pretrained_cfg(arch, tag)
    if not cfg:
        raise SpecError(f"open_clip has no pretrained tag {tag!r} for {arch}; tags: "
                        f"{', '.join(_open_clip().list_pretrained_tags_by_model(arch))}")
    repo = (cfg.get("hf_hub") or "").rstrip("/")
    if not repo:
        return []
    return [WeightRef(f"{spec}", f"{repo} (Hugging Face Hub)", lambda: hf_cached(repo, HF_FILES),
                      how=f"pass openclip:{arch}/{tag}?weights=/path/to/open_clip_model.safetensors "
                          f"or point HF_HOME at a cache holding {repo}")]


def load(spec: Spec, *, class_names: Sequence[str] | None = None, pretrained: bool = True,
         templates: str | None = None) -> ImageClassifier:
    oc = _open_clip()
    arch, tag = _split(spec)
    local = spec.opts.get("weights")
    source = local or (tag if pretrained and tag else None)
    try:
        clip = oc.create_model(arch, pretrained=source)
    except (RuntimeError, OSError, ValueError) as e:
        raise WeightsError(f"cannot load open_clip weights for {spec} ({first_line(e)}); pass ?weights=PATH") from None
    pre = eval_transform(clip, arch, tag)
    prompt_set = spec.opts.get("prompts", templates or "openai")
    key = f"openclip:{arch}/{source}" if source else None
    if key and local:
        st = Path(local).stat()
        key += f":{st.st_size}:{st.st_mtime_ns}"
    return zero_shot_classifier(clip, oc.get_tokenizer(arch), class_names, templates_for(prompt_set), pre,
                                spec=str(spec), arch=f"openclip:{arch}", cache_key=key)
