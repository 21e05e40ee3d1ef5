"""``folder:PATH`` — any ImageFolder layout; class names are the folder names."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError, SpecError
from ..registry import DATASETS
from .base import FileImages, class_folders, list_images
from .imagenet import IMAGENET_WORLD


@DATASETS.register("folder", help="folder:PATH[?crop_pct=0.875] — ImageFolder layout, class names from folder names")
def build(spec) -> FileImages:
    if not spec.ident:
        raise SpecError("folder spec needs a path, e.g. folder:/data/my_set")
    try:
        crop_pct = float(spec.opts.get("crop_pct", 0.875))
    except ValueError:
        crop_pct = -1.0
    if not 0 < crop_pct <= 1:
        raise SpecError(f"crop_pct must be a number in (0, 1] (got {spec.opts['crop_pct']!r}); "
                        "use folder:PATH?crop_pct=1 for images already at the generator's size (fmr export)")
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
    return FileImages(root=root, paths=paths, spec=str(spec), class_names=names, labels=labels, world=IMAGENET_WORLD,
                      crop_pct=crop_pct)
