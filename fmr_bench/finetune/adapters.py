"""How fine-tuning reaches inside a classifier: image features, head, text tower.

Methods speak to a model through :class:`Parts` rather than through its class, so a
loss term written once works for an open_clip zero-shot model, the digits CLIP and a
timm classifier. Add a model family by writing a ``Parts`` subclass and appending it to
:data:`PARTS`.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SettingsError
from ..models import ImageClassifier
from ..models.openclip import ZeroShotHead


class Parts:
    """A view of an :class:`ImageClassifier` split into encoder and head."""

    has_text = False

    def __init__(self, clf: ImageClassifier) -> None:
        self.clf = clf

    @classmethod
    def accepts(cls, clf: ImageClassifier) -> bool:
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Image-level features of pixels in [0, 1] (the encoder ``f`` of seed 000, Eq. 2)."""
        raise NotImplementedError

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits from :meth:`features` (the head ``g``)."""
        raise NotImplementedError

    def head_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def encoder_parameters(self) -> list[nn.Parameter]:
        head = {id(p) for p in self.head_parameters()}
        return [p for p in self.image_module().parameters() if id(p) not in head]

    def image_module(self) -> nn.Module:
        """The module holding the image encoder (CAM hooks attach here)."""
        raise NotImplementedError

    def make_head_trainable(self) -> None:
        """Turn the head into parameters an optimiser can update (no-op when it already is)."""

    def text_parameters(self) -> list[nn.Parameter]:
        return []

    def prepare_eval(self) -> None:
        """Bring the head up to date before the model is scored (FLYP rebuilds it from text)."""

    def require_text(self, method: str) -> None:
        if not self.has_text:
            raise SettingsError(f"{method} needs a model with a text tower (openclip:ARCH/TAG or builtin:digits-clip); "
                                f"{self.clf.spec or 'this model'} has none — use --method ft, lp, lp-ft or maskcf")


class ClipParts(Parts):
    """An open_clip model behind :class:`ZeroShotHead` (openclip:..., builtin:digits-clip)."""

    has_text = True

    @classmethod
    def accepts(cls, clf: ImageClassifier) -> bool:
        return isinstance(clf.net, ZeroShotHead)

    @property
    def zs(self) -> ZeroShotHead:
        return self.clf.net

    @property
    def clip(self) -> nn.Module:
        return self.zs.clip

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(self.clf.normalize(x))

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp() if hasattr(self.clip, "logit_scale") else torch.tensor(100.0)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        # The zero-shot head is linear with weights logit_scale * class embeddings; the
        # scale stays fixed (WiSE-FT fine-tunes the weights, not the temperature).
        scale = self.logit_scale().detach()
        return scale * F.normalize(feats, dim=-1) @ self.zs.class_embeddings.to(feats.dtype).t()

    def head_parameters(self) -> list[nn.Parameter]:
        emb = self.zs.class_embeddings
        return [emb] if isinstance(emb, nn.Parameter) else []

    def image_module(self) -> nn.Module:
        return self.clip.visual

    def make_head_trainable(self) -> None:
        zs = self.zs
        if not isinstance(zs.class_embeddings, nn.Parameter):
            emb = zs._buffers.pop("class_embeddings")
            zs.class_embeddings = nn.Parameter(emb.detach().clone())  # same state-dict key: file: still loads it

    def text_parameters(self) -> list[nn.Parameter]:
        visual = {id(p) for p in self.clip.visual.parameters()}
        return [p for n, p in self.clip.named_parameters() if id(p) not in visual and n != "logit_scale"]

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        if self.zs.tokenizer is None:
            raise SettingsError("this CLIP model carries no tokenizer; load it with fmr_bench.load_model")
        return self.zs.tokenizer(list(texts)).to(self.zs.class_embeddings.device)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.clip.encode_text(self.tokenize(texts))

    def prepare_eval(self) -> None:
        self.zs.rebuild()


class TimmParts(Parts):
    """A timm classifier: ``forward_features`` then ``forward_head``."""

    @classmethod
    def accepts(cls, clf: ImageClassifier) -> bool:
        return hasattr(clf.net, "forward_features") and hasattr(clf.net, "forward_head")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        net = self.clf.net
        return net.forward_head(net.forward_features(self.clf.normalize(x)), pre_logits=True)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.clf.net.get_classifier()(feats)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.clf.net.get_classifier().parameters())

    def image_module(self) -> nn.Module:
        return self.clf.net


#: Tried in order; the first that accepts a classifier handles it.
PARTS: list[type[Parts]] = [ClipParts, TimmParts]


def parts_of(clf: ImageClassifier) -> Parts:
    """The :class:`Parts` view of ``clf``.

    Raises:
        SettingsError: no registered family knows the model's layout.
    """
    for cls in PARTS:
        if cls.accepts(clf):
            return cls(clf)
    raise SettingsError(f"cannot fine-tune {clf.spec or type(clf.net).__name__}: its encoder and head are not known; "
                        "use an openclip:, builtin:digits-clip or timm: model, or register a Parts class in "
                        "fmr_bench.finetune.adapters.PARTS")


def trainable(params: Iterator[nn.Parameter] | list[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]
