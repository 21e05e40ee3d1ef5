"""The oracle h: a zero-shot CLIP classifier over the dataset's class names.

``openclip:ARCH/TAG`` (default ``openclip:ViT-B-32/openai``) or ``builtin:digits-clip``;
queried with "an image of {class}" as in the paper, or ``?prompts=openai`` for the 80
OpenAI ImageNet templates, or any template (``?prompts=a photo of a {}``). Oracles
built from several specs joined by ``+`` average their probabilities (an ensemble, §5.2).
When the oracle accepts an image is an acceptance rule (:mod:`fmr_bench.oracles.acceptance`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import ORACLE_TEMPLATE
from ..errors import SettingsError
from ..models import BUILTIN_OPTIONS, OPENCLIP_OPTIONS
from ..registry import ORACLE_SOURCES
from ..specs import Spec, parse_spec

ORACLE_SOURCES.register("openclip", "fmr_bench.models.openclip", options=OPENCLIP_OPTIONS,
                        help="openclip:ARCH/TAG[?prompts=openai] — open_clip zero-shot oracle")
ORACLE_SOURCES.register("builtin", "fmr_bench.models.builtin", options=BUILTIN_OPTIONS,
                        help="builtin:NAME[?prompts=SET] — a builtin digits-world model, e.g. digits-clip (the digits oracle)")


class Oracle(nn.Module):
    """Zero-shot classifier(s) whose argmax is a dataset label."""

    def __init__(self, members: Sequence[nn.Module], spec: str, prompts: str) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.spec, self.prompts = spec, prompts

    @torch.no_grad()
    def member_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of each member, (M, N, C): what acceptance rules decide on.

        A subclass that overrides only :meth:`forward` (returning (N, C) probabilities) is one
        member: its own probabilities are what the rules decide on.
        """
        if type(self).forward is not Oracle.forward:
            return self(x).float().unsqueeze(0)
        return self._members(x)

    def _members(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 0:
            raise SettingsError(f"oracle {self.spec or type(self).__name__} has no members: build it from member "
                                "modules (Oracle([clip], spec, prompts)) or override forward(x) to return (N, C) "
                                "class probabilities")
        return torch.stack([m(x).float().softmax(-1) for m in self.members])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, C), averaged over members."""
        return self._members(x).mean(0)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).argmax(-1)

    def settings(self) -> dict:
        return {"spec": self.spec, "prompts": self.prompts,
                "templates": [ORACLE_TEMPLATE] if self.prompts == "single" else self.prompts}


def oracle_specs(text: str) -> list[Spec]:
    return [parse_spec(part, ORACLE_SOURCES, what="oracle") for part in text.split("+")]


def oracle_weight_refs(text: str):
    from ..models import model_weight_refs

    refs = []
    for spec in oracle_specs(text):
        refs += model_weight_refs(spec)
    return refs


def load_oracle(text: str, class_names: Sequence[str], *, pretrained: bool = True) -> Oracle:
    """Build the oracle for ``class_names``; default prompt "an image of {class}"."""
    from ..models import load_model

    members = []
    prompts = "single"
    for spec in oracle_specs(text):
        prompts = spec.opts.get("prompts", "single")
        members.append(load_model(spec, class_names=class_names, pretrained=pretrained, templates=prompts).freeze())
    return Oracle(members, text, prompts)
