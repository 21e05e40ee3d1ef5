"""Generators g; ``GENERATORS`` maps a spec source to its :class:`GeneratorSource`.

A source's registration carries everything the package needs to know about it: how to build
it ``(spec, world, seed)``, the weights it needs (for preflight) and the card holding its
settings. Add a source by writing ``generators/NAME.py`` and registering one
:class:`GeneratorSource` below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..files import cache_dir
from ..registry import GENERATORS
from ..specs import Option, Spec, parse_options, parse_spec
from ..weights import WeightRef, download, sha256_file
from .base import Generator
from .cards import PACKAGE_DIR, load_card
from .sparse import mask_help


def _no_refs(spec: Spec, default: str) -> list[WeightRef]:
    return []


def _no_card(spec: Spec, default: str) -> dict | None:
    return None


@dataclass
class GeneratorSource:
    """What a generator source registers: its builder, its weight refs and its card.

    Each takes the parsed spec and ``default``, the dataset world's generator spec.
    """

    build: Callable[[Spec, str, int], Generator]
    weight_refs: Callable[[Spec, str], list[WeightRef]] = _no_refs  # what preflight checks before any work
    card: Callable[[Spec, str], dict | None] = _no_card  # the card holding its settings (step size η); None: none


def _lazy(target: str) -> Callable[..., Any]:
    """``"module:attr"`` as a function that imports its module on the first call (heavy backends)."""
    def call(*args: Any) -> Any:
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)(*args)
    return call


def _vqgan_card(spec: Spec, default: str) -> dict:
    return load_card(spec.ident or default.partition(":")[2] or "digits", "vqgan")


def _vqgan_weights(spec: Spec, card: dict) -> tuple[Path, WeightRef]:
    w = card["weights"]
    if spec.opts.get("weights"):
        path = Path(spec.opts["weights"]).expanduser()
        return path, WeightRef(f"generator {spec}", str(path), path.is_file, host="", how="check the ?weights= path")
    if "package_file" in w:
        path = PACKAGE_DIR / w["package_file"]
        return path, WeightRef(f"generator {card['name']}", str(path), path.is_file, host="",
                               how="run: python scripts/train_digits_world.py")
    path = cache_dir() / w["filename"]
    host = urlparse(w["url"]).hostname or ""
    return path, WeightRef(
        f"generator {card['name']}", f"{w['filename']} ({w.get('size_hint', '')} from {host})", path.is_file, host=host,
        files=(str(path),),
        how=f"download {w['url']} to {path} (or set FMR_CACHE to a folder holding it), or pass "
            f"--generator vqgan:{card['name'].removeprefix('vqgan-')}?weights=/path/to/last.ckpt",
    )


def vqgan_weight_refs(spec: Spec, default: str) -> list[WeightRef]:
    return [_vqgan_weights(spec, _vqgan_card(spec, default))[1]]


def build_vqgan(spec: Spec, default: str, seed: int = 0) -> Generator:
    from ..errors import WeightsError
    from .vqgan import VQGAN

    card = _vqgan_card(spec, default)
    path, _ = _vqgan_weights(spec, card)
    if not path.is_file() and "url" in card["weights"] and not spec.opts.get("weights"):
        download(card["weights"]["url"], path, sha256=card["weights"].get("sha256"))
    expected = card["weights"].get("sha256")
    if expected and "package_file" in card["weights"] and path.is_file() and sha256_file(path) != expected:
        if spec.opts.get("weights"):  # a copy the user named: the package is fine, the copy is not
            raise WeightsError(f"{path} does not match the sha256 of card {card['name']} (the weights it describes); "
                               "pass an unchanged copy, drop ?weights= to use the shipped file, or give weights of "
                               "your own their own card (generators/*.json) and pass vqgan:CARD")
        raise WeightsError(f"{path} does not match the sha256 of card {card['name']}; reinstall fmr_bench")
    cfg = card["config"]
    g = VQGAN(cfg["ddconfig"], cfg["n_embed"], cfg["embed_dim"], card=card["name"])
    g.load_weights(path)
    if card.get("resolution"):
        g.resolution = int(card["resolution"])
    return g


def build_pixel(spec: Spec, default: str, seed: int = 0) -> Generator:
    from .noise import PixelGenerator

    return PixelGenerator()


def build_noise(spec: Spec, default: str, seed: int = 0) -> Generator:
    from .noise import NoiseGenerator

    return NoiseGenerator(sigma=parse_options(spec, NOISE_OPTIONS, what="generator")["sigma"], seed=seed)


def _class_cond(text: str) -> int | str | None:
    """``none`` (unconditional), ``label`` (each sample's true class) or a fixed class index >= 0."""
    if text in ("", "none"):
        return None
    if text == "label":
        return "label"
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


# The ?key=value options of each generator (checked by parse_spec, typed by parse_options).
VQGAN_OPTIONS = {"weights": Option("path", example="/path/to/last.ckpt", help="a local checkpoint for the card")}
NOISE_OPTIONS = {"sigma": Option("float", 0.02, low=0, example="0.02", help="std of the noise added after each step")}
RESOLUTION = Option("int", None, low=8, example="256", help="pixel size the generator works at")
SUBFOLDER = Option("str", "", example="vae", help="sub-folder of a diffusers pipeline")
VAE_OPTIONS = {"resolution": RESOLUTION, "subfolder": SUBFOLDER}
DIFFUSION_OPTIONS = {
    "strength": Option("float", 0.3, low=0, high=1, low_open=True, example="0.3", help="SDEdit noise level"),
    "steps": Option("int", 10, low=1, example="10", help="denoising steps per perturbation step"),
    "guidance": Option("float", 1.0, low=0, example="1", help="weight of the loss-gradient guidance"),
    "normalize": Option("bool", True, example="1", help="normalise the guidance gradient"),
    "class_cond": Option(convert=_class_cond, expect="none, label or a class index >= 0", example="label",
                         help="class conditioning of a conditional UNet"),
    "scheduler": Option("choice", None, choices=("default",), example="default",
                        help="default: DDIM defaults when the folder has no scheduler config"),
    "resolution": RESOLUTION, "subfolder": SUBFOLDER,
}


def _world_vqgan_card(default: str) -> str | None:
    """Card name of the dataset world's generator when it is a VQGAN (the mask must fit it)."""
    world = parse_spec(default, GENERATORS, what="generator")
    return _vqgan_card(world, default)["name"] if world.source == "vqgan" else None


def _mask_base(card: dict) -> Spec:
    from ..errors import SpecError

    base = parse_spec(card["generator"], GENERATORS, what="generator")
    if base.source == "sparse-vqgan":
        raise SpecError(f"mask card {card['name']} names another sparse generator; fit masks on the dense one (vqgan:CARD)")
    return base


def build_sparse_vqgan(spec: Spec, default: str, seed: int = 0) -> Generator:
    import torch

    from .sparse import SparseGenerator, check_card_fits, find_mask_card, read_mask

    world_card = _world_vqgan_card(default)
    card = find_mask_card(spec.ident, world_card)
    check_card_fits(card, world_card, default)
    base = GENERATORS.get(_mask_base(card).source).build(_mask_base(card), default, seed)
    g = SparseGenerator(base, torch.from_numpy(read_mask(card)), card=card["name"],
                        info={"generator": card["generator"], "mask_sha256": card["mask"].get("sha256"),
                              "mask_sparsity": card.get("sparsity"), "mask_dataset": card.get("dataset")})
    if base.resolution:  # a mask of another latent shape fails here, not mid-run
        with torch.no_grad():
            g._check(base.encode(torch.zeros(1, 3, base.resolution, base.resolution)))
    return g


def sparse_vqgan_weight_refs(spec: Spec, default: str) -> list[WeightRef]:
    from .sparse import find_mask_card, mask_path

    card = find_mask_card(spec.ident, _world_vqgan_card(default))
    path = mask_path(card)
    base = _mask_base(card)
    mask = WeightRef(f"generator {spec}", str(path), path.is_file, host="", how="re-run fmr fit-sparse")
    return GENERATORS.get(base.source).weight_refs(base, default) + [mask]


def generator_weight_refs(spec: str | Spec, default: str) -> list[WeightRef]:
    """The weights the generator a spec names needs (its registration's ``weight_refs``)."""
    spec = parse_spec(spec, GENERATORS, what="generator")
    return GENERATORS.get(spec.source).weight_refs(spec, default)


def _diffusers_card(spec: Spec, default: str) -> dict:
    from . import _diffusers

    return _diffusers.resolve(spec, spec.source).card or {}


def _sparse_base_card(spec: Spec, default: str) -> dict | None:
    """A sparse mask's settings are those of the dense generator it was fitted on."""
    from .sparse import find_mask_card

    base = _mask_base(find_mask_card(spec.ident, _world_vqgan_card(default)))
    return generator_card(base, default)


GENERATORS.register("vqgan", GeneratorSource(build_vqgan, vqgan_weight_refs, _vqgan_card), options=VQGAN_OPTIONS,
                    help="vqgan[:CARD][?weights=PATH] — taming VQGAN (cards in generators/)")
GENERATORS.register("sparse-vqgan", GeneratorSource(build_sparse_vqgan, sparse_vqgan_weight_refs, _sparse_base_card),
                    options={}, help="sparse-vqgan[:MASK|CARD.json] — VQGAN stepping only a fitted mask's latent dims "
                                     f"(fmr fit-sparse; {mask_help()})")
GENERATORS.register("pixel", GeneratorSource(build_pixel), help="pixel — step the pixels themselves", options={})
GENERATORS.register("noise", GeneratorSource(build_noise), options=NOISE_OPTIONS,
                    help="noise[?sigma=0.02] — pixel steps plus seeded Gaussian noise")
GENERATORS.register("diffusion", GeneratorSource(_lazy("fmr_bench.generators.diffusion:build"),
                                                 _lazy("fmr_bench.generators.diffusion:weight_refs"), _diffusers_card),
                    options=DIFFUSION_OPTIONS,
                    help="diffusion[:digits|FOLDER|ORG/REPO][?strength=0.3&steps=10&guidance=1&class_cond=K] — "
                         "diffusers UNet, guided SDEdit steps (a card's defaults replace these: digits has "
                         "strength 0.1, steps 2, guidance 0.5)")
GENERATORS.register("vae", GeneratorSource(_lazy("fmr_bench.generators.vae:build"),
                                           _lazy("fmr_bench.generators.vae:weight_refs"), _diffusers_card),
                    options=VAE_OPTIONS,
                    help="vae[:digits|FOLDER|ORG/REPO][?resolution=N&subfolder=NAME] — diffusers AutoencoderKL / "
                         "VQModel latent")


def generator_card(spec: str | Spec, default: str) -> dict | None:
    """The card of the generator a spec names (its registration's ``card``); ``None`` for a source without cards."""
    spec = parse_spec(spec, GENERATORS, what="generator")
    return GENERATORS.get(spec.source).card(spec, default)


def default_step_size(spec: str | Spec, default: str) -> tuple[float, str] | None:
    """The step size η a generator's card sets, and where it comes from; ``None`` without one.

    η belongs to the generator, not to the data: its latent space sets how far one step
    moves an image (the 32-px digits VQGAN: 0.05; the ImageNet VQGAN: 0.001, the paper's).
    A sparse mask takes the step size of the dense generator it was fitted on.
    """
    card = generator_card(spec, default)
    if not card or card.get("step_size") is None:
        return None
    return float(card["step_size"]), f"generator card {card.get('name', spec)}"


def load_generator(spec: str | Spec, *, default: str = "vqgan:digits", seed: int = 0) -> Generator:
    """Build the generator a spec names; ``default`` is the dataset world's generator spec."""
    spec = parse_spec(spec, GENERATORS, what="generator")
    return GENERATORS.get(spec.source).build(spec, default, seed).freeze()


__all__ = ["Generator", "GeneratorSource", "default_step_size", "generator_weight_refs", "load_generator"]
