"""``folder:PATH`` — any ImageFolder layout; class names are the folder names."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError, SpecError
from ..registry import DATASETS
from .base import FileImages, class_folders, list_images
from .imagenet import IMAGENET_WORLD


@DATASETS.register("folder", help="folder:PATH — ImageFolder layout, class names from folder names")
def build(spec) -> FileImages:
    if not spec.ident:
        raise SpecError("folder spec needs a path, e.g. folder:/data/my_set")
    root = Path(spec.ident).expanduser()
    folders = class_folders(root, str(spec))
    paths, labels = [], []
    for label, folder in enumerate(folders):
        files = list_images(folder)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"{root} holds no images ({', '.join(s for s in ('.jpg', '.png'))}...) in its class folders")
    names = [f.name.replace("_", " ") for f in folders]
    return FileImages(root=root, paths=paths, spec=str(spec), class_names=names, labels=labels, world=IMAGENET_WORLD)
