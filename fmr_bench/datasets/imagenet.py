"""``imagenet:PATH`` — an ImageNet-style folder with one ``nXXXXXXXX`` (wnid) folder per class.

Folders are mapped to the standard 1000 ImageNet indices (the sorted wnid list that timm
ships as ``timm/data/_info/imagenet_synsets.txt``), so a folder holding only some
classes still yields ImageNet labels. Class names are CLIP's ImageNet class names
(``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from ..errors import DataError, SpecError
from ..registry import DATASETS
from ..specs import Option, parse_options
from .base import FileImages, WorldDefaults, class_folders, collect_images

IMAGENET_WORLD = WorldDefaults(generator="vqgan:imagenet-f16-16384", oracle="openclip:ViT-B-32/openai", step_size=1e-3)
WNID = re.compile(r"^n\d{8}$")
#: ``?crop_pct=``: the centre crop keeps this share of the resized short side; 1 reads images that are
#: already at the generator's size (an ``fmr export``) pixel for pixel.
#: Absent (None): each model's own crop in static evaluators, 0.875 in the FMR loop.
CROP_OPTIONS = {"crop_pct": Option("float", None, low=0, high=1, low_open=True, example="1",
                                   help="share of the short side kept by the centre crop (1: images already at size)")}


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> list[str]:
    import timm

    path = os.path.join(os.path.dirname(timm.__file__), "data", "_info", "imagenet_synsets.txt")
    with open(path) as f:
        return f.read().split()


def imagenet_class_names() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


@DATASETS.register("imagenet", help="imagenet:PATH[?crop_pct=P] — ImageNet val/train folder with wnid sub-folders",
                   options=CROP_OPTIONS)
def build(spec) -> FileImages:
    if not spec.ident:
        raise SpecError("imagenet spec needs a path, e.g. imagenet:/data/imagenet/val")
    root = Path(spec.ident).expanduser()
    folders = class_folders(root, str(spec))
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    bad = [f.name for f in folders if f.name not in index]
    if bad:
        kind = "are not ImageNet wnids" if any(not WNID.match(b) for b in bad) else "are not among the 1000 ImageNet-1k classes"
        raise DataError(f"{len(bad)} folders of {root} (e.g. {bad[0]!r}) {kind}; imagenet: expects "
                        f"{root}/nXXXXXXXX/*.JPEG (use folder:{root} for other class folders)")
    paths, labels = collect_images(root, folders, index, str(spec))
    return FileImages(root=root, paths=paths, spec=str(spec), class_names=imagenet_class_names(), labels=labels,
                      world=IMAGENET_WORLD, label_space="imagenet-1k",
                      crop_pct=parse_options(spec, CROP_OPTIONS, what="dataset")["crop_pct"])
