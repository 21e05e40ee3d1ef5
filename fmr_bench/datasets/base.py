"""What every dataset source returns: labelled images at the generator's resolution."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch.utils.data import Dataset

from ..errors import DataError, SpecError, first_line

if TYPE_CHECKING:  # a type only: datasets do not import the models layer
    from ..models.transform import EvalTransform

#: Crop of image files read at the generator's resolution when the dataset spec sets none.
DEFAULT_FILE_CROP_PCT = 0.875
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


@dataclass(frozen=True)
class WorldDefaults:
    """The generator, oracle, step size and acceptance rule a dataset world runs with by default."""

    generator: str
    oracle: str
    step_size: float
    accept: str = "argmax"


class ImageDataset(Dataset):
    """Images as float tensors in [0, 1], (3, R, R), with an integer label and a stable id.

    ``ids`` name samples independently of their position, so a resumed run recognises
    finished samples even if files were added or removed.
    """

    def __init__(self, *, spec: str, class_names: Sequence[str], ids: Sequence[str], labels: Sequence[int],
                 world: WorldDefaults, label_space: str | None = None) -> None:
        self.spec = spec
        self.class_names = list(class_names)
        self.ids = list(ids)
        self.labels = list(labels)
        self.world = world
        self.label_space = label_space
        self.resolution: int | None = None

    def set_resolution(self, resolution: int) -> None:
        self.resolution = int(resolution)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor, int]:
        return self.ids[i], self.load(i), self.labels[i]

    def fingerprints(self, indices: Sequence[int]) -> list[str | None]:
        """What each sample's content is, for run identity (``None``: the id says it all).

        A finished outcome is reused only when its sample's fingerprint is unchanged, so an
        image replaced under the same name is evaluated again.
        """
        return [None] * len(indices)

    def eval_transform(self, model_transform: EvalTransform) -> EvalTransform | None:
        """The transform this dataset's images get when a model with ``model_transform`` scores them.

        Static evaluators feed each model its own eval transform. ``None`` means this dataset
        feeds its pixels as :meth:`load` gives them (at ``resolution``) and the model resizes
        them itself, as in the FMR loop (e.g. an export, read exactly as it was generated).
        """
        return None

    def load_eval(self, i: int, transform: EvalTransform | None) -> torch.Tensor:
        """Image ``i`` through ``transform`` (from :meth:`eval_transform`; ``None``: :meth:`load`)."""
        return self.load(i)

    def describe(self) -> dict:
        return {"spec": self.spec, "n": len(self), "num_classes": len(self.class_names),
                "label_space": self.label_space, "resolution": self.resolution}


class FileImages(ImageDataset):
    """Images read from files with PIL.

    Two ways to read them: at the generator's resolution for the FMR loop (:meth:`load`:
    short side resized to ``resolution / crop_pct``, bicubic, then centre-cropped), or
    through a model's eval transform for static inference (:meth:`load_eval`).

    Args:
        crop_pct: the crop the dataset spec asks for (``folder:PATH?crop_pct=1``); it also
            replaces the crop of every model's eval transform. ``None``: the FMR loop crops
            0.875 (short side 256 for 224 px) and static inference uses each model's own.
    """

    def __init__(self, *, root: Path, paths: list[Path], crop_pct: float | None = None, **kw) -> None:
        super().__init__(ids=[str(p.relative_to(root)) for p in paths], **kw)
        self.root, self.paths = root, paths
        self.crop_override = crop_pct
        self.crop_pct = DEFAULT_FILE_CROP_PCT if crop_pct is None else crop_pct

    def fingerprints(self, indices: Sequence[int]) -> list[str | None]:
        """First 16 hex digits of each file's full sha256 (cached by path, size and mtime)."""
        from ..files import file_hashes

        paths = [self.paths[i] for i in indices]
        try:
            return [h[:16] for h in file_hashes(paths)]
        except OSError as e:
            raise DataError(f"cannot read {e.filename} ({e.strerror}); check the dataset folder") from None

    def prepare(self, im):
        """Hook for dataset-specific pixel work before resize and crop (a PIL image)."""
        return im

    def read_image(self, i: int):
        """Image ``i`` as an RGB PIL image, after :meth:`prepare`."""
        from PIL import Image

        path = self.paths[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.load()
        except Exception as e:
            raise DataError(f"cannot read image {path} ({type(e).__name__}: {first_line(e, 160)}); "
                            "replace or delete the file and re-run (finished samples are kept)") from None
        return self.prepare(im)

    def load(self, i: int) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        if self.resolution is None:
            raise RuntimeError("set_resolution() first")
        im = self.read_image(i)
        r = self.resolution
        im = TF.resize(im, int(round(r / self.crop_pct)), interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        return TF.to_tensor(TF.center_crop(im, [r, r])).clamp(0, 1)

    def eval_transform(self, model_transform: EvalTransform) -> EvalTransform:
        if self.crop_override is None:
            return model_transform
        return model_transform.replace(crop_pct=self.crop_override,
                                       origin=f"{model_transform.origin}; crop_pct {self.crop_override} from {self.spec}")

    def load_eval(self, i: int, transform: EvalTransform | None) -> torch.Tensor:
        return self.load(i) if transform is None else transform(self.read_image(i))


def dataset_root(spec, *, check: str | None = "exists", what: str = "dataset") -> Path:
    """The path a ``SOURCE:PATH`` spec names, checked: ``"exists"``, ``"folder"``, or None (the caller checks).

    Raises:
        SpecError: the spec names no path.
        DataError: the path fails the check.
    """
    if not spec.ident:
        raise SpecError(f"{spec.source} spec needs a path, e.g. {spec.source}:/data/{spec.source}")
    root = Path(spec.ident).expanduser()
    if check == "folder" and not root.is_dir():
        raise DataError(f"{what} path {root} does not exist or is not a folder; check the path in {spec}")
    if check == "exists" and not root.exists():
        raise DataError(f"{what} path {root} does not exist; check the path in {spec}")
    return root


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def class_folders(root: Path, spec: str) -> list[Path]:
    if not root.exists():
        raise DataError(f"dataset path {root} does not exist; check the path in {spec}")
    if not root.is_dir():
        raise DataError(f"dataset path {root} is not a folder; {spec} expects one sub-folder per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = list_images(root)
        hint = f" ({len(loose)} images lie directly in it)" if loose else ""
        raise DataError(f"{root} has no class sub-folders{hint}; lay it out as {root}/CLASS/image.jpg")
    return folders


def collect_images(root: Path, folders: Sequence[Path], label_of: dict[str, int], spec: str
                   ) -> tuple[list[Path], list[int]]:
    """Image paths under ``folders`` and their labels (``label_of[folder name]``)."""
    paths, labels = [], []
    for folder in folders:
        files = list_images(folder)
        paths += files
        labels += [label_of[folder.name]] * len(files)
    if not paths:
        raise DataError(f"{root} holds no images (.jpg, .png, ...) in its class folders; check the path in {spec}")
    return paths, labels


def folder_images(root: Path, folders: Sequence[Path], spec: str, world, **kw) -> FileImages:
    """Images under class folders: label = position in ``folders``, class name = folder name."""
    paths, labels = collect_images(root, folders, {f.name: k for k, f in enumerate(folders)}, spec)
    names = [f.name.replace("_", " ") for f in folders]
    return FileImages(root=root, paths=paths, spec=spec, class_names=names, labels=labels, world=world, **kw)


class TensorImages(ImageDataset):
    """In-memory images (N, 3, H, W) in [0, 1] or uint8, e.g. from a training script."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int], class_names: Sequence[str], *,
                 spec: str = "tensors", world: WorldDefaults | None = None, ids: Sequence[str] | None = None,
                 label_space: str | None = None) -> None:
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels; pass one label per image")
        world = world or WorldDefaults(generator="pixel", oracle="builtin:digits-clip", step_size=1e-3)
        super().__init__(spec=spec, class_names=class_names, ids=ids or [f"{spec}/{i}" for i in range(len(labels))],
                         labels=[int(v) for v in labels], world=world, label_space=label_space)
        self.images = images
        self.native = int(images.shape[-1])
        self.resolution = self.native

    def fingerprints(self, indices: Sequence[int]) -> list[str | None]:
        """sha256 of each image tensor's bytes (in-memory sets of the same name may differ)."""
        import hashlib

        out = []
        for i in indices:
            x = self.images[i].detach().cpu().contiguous()
            h = hashlib.sha256(str((x.dtype, tuple(x.shape))).encode())
            h.update(x.view(-1).view(torch.uint8).numpy().tobytes())
            out.append(h.hexdigest()[:16])
        return out

    def eval_transform(self, model_transform: EvalTransform) -> EvalTransform:
        return model_transform

    def load_eval(self, i: int, transform: EvalTransform | None) -> torch.Tensor:
        # uint8 arrays (CIFAR, STL-10, digits) are resized as the image files they stand for
        return self.load(i) if transform is None else transform(self.images[i])

    def load(self, i: int) -> torch.Tensor:
        x = self.images[i]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if self.resolution != self.native:
            x = torch.nn.functional.interpolate(x[None], size=(self.resolution,) * 2, mode="bilinear",
                                                align_corners=False)[0].clamp(0, 1)
        return x
