"""OOD sets for detection: any folder of images, labels unused.

``ood:PATH`` and the named sets ``inaturalist:``, ``sun:``, ``places:``, ``textures:``
(the MCM subsets), ``imagenet-o:``, ``ninco:``. Images are found recursively, so both
flat folders and class sub-folders (Textures/DTD, ImageNet-O, NINCO) work.
"""

from __future__ import annotations


from ..errors import DataError
from ..registry import DATASETS
from ..specs import Option
from .base import FileImages, dataset_root, list_images
from .imagenet import IMAGENET_WORLD

OOD_SETS = {"inaturalist": "iNaturalist (MCM subset)", "sun": "SUN (MCM subset)", "places": "Places (MCM subset)",
            "textures": "Textures / DTD", "imagenet-o": "ImageNet-O", "ninco": "NINCO"}


def build_ood(spec, name: str | None = None) -> FileImages:
    root = dataset_root(spec, check="folder", what="OOD set")
    paths = list_images(root)
    if not paths:
        raise DataError(f"OOD set {root} holds no images (.jpg, .png, ...); point {spec.source}: at a folder of images")
    ds = FileImages(root=root, paths=paths, spec=str(spec), class_names=["ood"], labels=[-1] * len(paths),
                    world=IMAGENET_WORLD, label_space=None)
    ds.ood_name = name or spec.opts.get("name") or root.name
    return ds


DATASETS.register("ood", lambda spec: build_ood(spec), help="ood:PATH[?name=NAME] — a folder of OOD images",
                  options={"name": Option("str", example="my_ood", help="the set's name in metric keys")})
for _key, _title in OOD_SETS.items():
    DATASETS.register(_key, (lambda k: lambda spec: build_ood(spec, k))(_key), help=f"{_key}:PATH — {_title} OOD images",
                      options={})
