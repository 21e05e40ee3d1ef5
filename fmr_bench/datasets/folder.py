"""``folder:PATH`` — any ImageFolder layout; class names are the folder names."""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecError
from ..registry import DATASETS
from .base import FileImages, class_folders, folder_images
from .imagenet import IMAGENET_WORLD


@DATASETS.register("folder", help="folder:PATH[?crop_pct=P] — ImageFolder layout, class names from folder names")
def build(spec) -> FileImages:
    """``?crop_pct=P`` crops every image to P of its resized short side, for the FMR loop (default
    0.875) and for static evaluators (default: each model's own crop)."""
    if not spec.ident:
        raise SpecError("folder spec needs a path, e.g. folder:/data/my_set")
    crop_pct = None  # each model's own crop (static), 0.875 (FMR loop)
    if "crop_pct" in spec.opts:
        try:
            crop_pct = float(spec.opts["crop_pct"])
        except ValueError:
            crop_pct = -1.0
        if not 0 < crop_pct <= 1:
            raise SpecError(f"crop_pct must be a number in (0, 1] (got {spec.opts['crop_pct']!r}); "
                            "use folder:PATH?crop_pct=1 for images already at the generator's size (fmr export)")
    root = Path(spec.ident).expanduser()
    return folder_images(root, class_folders(root, str(spec)), str(spec), IMAGENET_WORLD, crop_pct=crop_pct)
