"""``folder:PATH`` — any ImageFolder layout; class names are the folder names."""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecError
from ..registry import DATASETS
from ..specs import parse_options
from .base import FileImages, class_folders, folder_images
from .imagenet import CROP_OPTIONS, IMAGENET_WORLD


@DATASETS.register("folder", help="folder:PATH[?crop_pct=P] — ImageFolder layout, class names from folder names",
                   options=CROP_OPTIONS)
def build(spec) -> FileImages:
    """``?crop_pct=P`` crops every image to P of its resized short side, for the FMR loop (default
    0.875) and for static evaluators (default: each model's own crop)."""
    if not spec.ident:
        raise SpecError("folder spec needs a path, e.g. folder:/data/my_set")
    # None: each model's own crop (static evaluators), 0.875 in the FMR loop
    crop_pct = parse_options(spec, CROP_OPTIONS, what="dataset")["crop_pct"]
    root = Path(spec.ident).expanduser()
    return folder_images(root, class_folders(root, str(spec)), str(spec), IMAGENET_WORLD, crop_pct=crop_pct)
