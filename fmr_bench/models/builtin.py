"""``builtin:NAME`` — the models the project trains and ships (the digits world).

Their eval transform is the native one they were trained with: 32 px, no crop
(``crop_pct = 1``), bilinear, their own mean/std. On the 32 px digits sets it is the
identity; image files of other sizes get their shortest side resized to 32 and a centre crop.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import SpecError, WeightsError
from ..registry import BUILTIN_MODELS
from ..specs import Spec
from ..weights import WeightRef
from .base import ImageClassifier
from .transform import EvalTransform


def _native(mean: Sequence[float], std: Sequence[float]) -> EvalTransform:
    from .. import digits

    # trained on whole 32 px images (bilinear upsampling of the 8 px digits): no crop
    return EvalTransform((digits.IMAGE_SIZE, digits.IMAGE_SIZE), tuple(mean), tuple(std), "bilinear", crop_pct=1.0,
                         origin="digits world (native 32 px, no crop)")


def _digits_net(name: str, pretrained: bool) -> ImageClassifier:
    from safetensors.torch import load_file

    from .. import digits

    card = digits.MODEL_CARDS[name]
    net = card.arch()
    if pretrained:
        path = digits.WEIGHTS_DIR / card.weights
        if not path.is_file():
            raise WeightsError(f"{path} is missing; run: python {card.script}")
        net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    pre = _native(digits.MEAN, digits.STD)
    return ImageClassifier(net, pre, class_names=digits.CLASS_NAMES, spec=f"builtin:{name}", arch=f"builtin:{name}",
                           label_space="digits")


def _digits_clip(pretrained: bool, class_names: Sequence[str] | None, templates: str = "single",
                 name: str = "digits-clip") -> ImageClassifier:
    from .. import digits
    from ..digits.clip import create_digits_clip
    from ..digits.clip_captions import create_digits_clip_captions
    from .openclip import templates_for, zero_shot_classifier

    create = {"digits-clip": create_digits_clip, "digits-clip-captions": create_digits_clip_captions}[name]
    clip, mean, std, tokenizer = create(pretrained=pretrained)
    pre = _native(mean, std)
    return zero_shot_classifier(clip, tokenizer, class_names or digits.CLASS_NAMES, templates_for(templates), pre,
                                spec=f"builtin:{name}", arch=f"builtin:{name}", cache_key=None)


def _digits_judge(pretrained: bool, class_names: Sequence[str] | None) -> ImageClassifier:
    from .. import digits
    from ..digits.judge import load_digits_judge

    _check_digit_classes("digits-judge", class_names)
    # Mean 0 / std 1: the judge takes raw [0, 1] pixels and extracts its shape features itself.
    pre = _native((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return ImageClassifier(load_digits_judge(pretrained), pre, class_names=digits.CLASS_NAMES,
                           spec="builtin:digits-judge", arch="builtin:digits-judge", label_space="digits")


def _check_digit_classes(name: str, class_names: Sequence[str] | None) -> None:
    """A fixed-head digits model used as an oracle must answer in the dataset's label order."""
    from .. import digits

    if class_names is not None and [c.lower() for c in class_names] != list(digits.CLASS_NAMES):
        raise SpecError(f"builtin:{name} knows only the ten digits ({', '.join(digits.CLASS_NAMES)}, in that order) "
                        f"but the dataset's classes are {', '.join(list(class_names)[:4])}...; use it on --data digits")


for _name, _help in (("digits-cnn", "small CNN trained on the digits world"),
                     ("digits-mlp", "MLP trained on the digits world"),
                     ("digits-cnn-aug", "CNN trained on the digits world with heavy augmentation")):
    BUILTIN_MODELS.register(_name, (lambda n: lambda pretrained, **_: _digits_net(n, pretrained))(_name), help=_help)


def _digits_gray(pretrained: bool) -> ImageClassifier:
    from .gray import GrayClassifier

    return GrayClassifier(_digits_net("digits-cnn-gray", pretrained), spec="builtin:digits-cnn-gray")


BUILTIN_MODELS.register("digits-cnn-gray", lambda pretrained, **_: _digits_gray(pretrained),
                        help="the digits CNN trained on luminance, fed luminance (seed 002 App. H)")
BUILTIN_MODELS.register(
    "digits-clip",
    lambda pretrained, class_names=None, templates="single": _digits_clip(pretrained, class_names, templates),
    help="tiny open_clip model trained contrastively on captioned digits (the digits oracle)",
)
BUILTIN_MODELS.register(
    "digits-clip-captions",
    lambda pretrained, class_names=None, templates="a photo of a {}": _digits_clip(
        pretrained, class_names, templates, name="digits-clip-captions"),
    help="tiny open_clip model whose captions also name backgrounds, inks, textures (fine-tuning testbed)",
)


BUILTIN_MODELS.register(
    "digits-judge",
    lambda pretrained, class_names=None, **_: _digits_judge(pretrained, class_names),
    help="shape-only MLP on 8x8 grey ink, trained apart from the oracle (the digits world's audit judge)",
)


def weight_refs(spec: Spec) -> list[WeightRef]:
    if spec.ident not in BUILTIN_MODELS:
        raise SpecError(f"builtin spec: {BUILTIN_MODELS.unknown_message(spec.ident)}")
    return []  # shipped inside the package


def load(spec: Spec, *, class_names: Sequence[str] | None = None, pretrained: bool = True,
         templates: str | None = None) -> ImageClassifier:
    factory = BUILTIN_MODELS.get(spec.ident) if spec.ident in BUILTIN_MODELS else None
    if factory is None:
        raise SpecError(f"builtin spec: {BUILTIN_MODELS.unknown_message(spec.ident)}")
    kwargs = {"class_names": class_names}
    if templates or "prompts" in spec.opts:
        kwargs["templates"] = spec.opts.get("prompts", templates)
    return factory(pretrained, **kwargs)
