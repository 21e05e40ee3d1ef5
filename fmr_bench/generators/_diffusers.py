"""Where diffusers generators (``diffusion:``, ``vae:``) find their weights.

The ident of such a spec is one of:

* an alias of weights shipped in the package (``digits`` -> ``fmr_bench/digits/<kind>/``),
  each folder carrying a ``card.json`` (description, training, sha256 of the weights);
* a local folder written by ``save_pretrained``: a model folder (``config.json`` and
  ``diffusion_pytorch_model.safetensors``), or a pipeline folder (``model_index.json``
  with the model in a sub-folder such as ``unet/`` or ``vae/``);
* a Hugging Face Hub id (``google/ddpm-cifar10-32``), loaded from the Hub cache, or
  downloaded when the Hub is reachable.

``?subfolder=NAME`` picks the sub-folder of a pipeline explicitly. Shipped weights are
always read from safetensors; for other folders diffusers reads safetensors when present
(and ``.bin`` files only with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, SpecError, WeightsError, first_line
from ..specs import Spec
from ..weights import HUB_HOST, WeightRef, hf_cached, host_reachable, sha256_file
from .cards import PACKAGE_DIR

#: Shipped weights: alias -> folder (relative to the package), per generator kind.
ALIASES: dict[str, dict[str, str]] = {
    "vae": {"digits": "digits/vae"},
    "diffusion": {"digits": "digits/diffusion"},
}
#: Sub-folders of a pipeline folder that hold the model, tried in order, per kind.
PIPELINE_SUBFOLDERS = {"vae": ("vae", "vqvae"), "diffusion": ("unet",)}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRAINING_SCRIPT = "scripts/train_digits_generators.py"


@dataclass(frozen=True)
class Source:
    """Where a diffusers model comes from.

    Attributes:
        name: how records name it (the alias, the folder as given, or the Hub id).
        location: a local folder, or a Hub id.
        subfolder: the model's sub-folder ("" for a model folder).
        local: whether ``location`` is a folder on disk.
        card: the shipped card (aliases only).
    """

    name: str
    location: str
    subfolder: str = ""
    local: bool = True
    card: dict | None = None

    @property
    def model_dir(self) -> Path:
        return Path(self.location) / self.subfolder

    def model_files(self) -> tuple[str, ...]:
        prefix = f"{self.subfolder}/" if self.subfolder else ""
        return tuple(prefix + f for f in ("config.json",) + WEIGHT_FILES)


def _looks_local(ident: str) -> bool:
    return ident.startswith(("/", "./", "../", "~")) or Path(ident).expanduser().exists()


def resolve(spec: Spec, kind: str) -> Source:
    """The :class:`Source` a ``vae:`` / ``diffusion:`` spec names (nothing is loaded)."""
    ident = spec.ident or "digits"
    sub = spec.opts.get("subfolder", "")
    if ident in ALIASES[kind]:
        folder = PACKAGE_DIR / ALIASES[kind][ident]
        card_path = folder / "card.json"
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        return Source(ident, str(folder), sub, True, card)
    if _looks_local(ident):
        folder = Path(ident).expanduser()
        if not sub and not (folder / "config.json").is_file():
            for candidate in PIPELINE_SUBFOLDERS[kind]:
                if (folder / candidate / "config.json").is_file():
                    sub = candidate
                    break
        return Source(ident, str(folder), sub, True)
    if ident.count("/") != 1:
        shipped = ", ".join(ALIASES[kind])
        raise SpecError(f"{kind} spec needs a shipped alias ({shipped}), a local folder or a Hub id ORG/REPO "
                        f"(got {ident!r}); e.g. {kind}:digits or {kind}:/path/to/folder")
    return Source(ident, ident, sub, False)


def _fix(kind: str, source: Source) -> str:
    if source.card is not None:
        return f"re-create it with: python {TRAINING_SCRIPT}, or reinstall fmr_bench"
    if source.local:
        return ("point the spec at a folder written by save_pretrained (config.json + "
                "diffusion_pytorch_model.safetensors), or a pipeline folder with ?subfolder=NAME")
    return (f"download it on a machine online (huggingface-cli download {source.location}) or pass a local "
            f"folder: {kind}:/path/to/folder")


def weight_refs(spec: Spec, kind: str) -> list[WeightRef]:
    """The files a diffusers generator needs, for :func:`fmr_bench.weights.preflight`."""
    source = resolve(spec, kind)
    component = f"generator {kind}:{source.name}"
    if source.local:
        d = source.model_dir
        return [WeightRef(component, f"{d}/config.json and {d}/{WEIGHT_FILES[0]}", lambda: _missing(d) == [],
                          host="", how=_fix(kind, source),
                          files=tuple(str(d / f) for f in ("config.json", *WEIGHT_FILES)))]
    files = source.model_files()
    return [WeightRef(component, f"{source.location} (Hugging Face Hub)",
                      lambda: hf_cached(source.location, files[:1]), how=_fix(kind, source))]


def _missing(folder: Path) -> list[str]:
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        missing.append(WEIGHT_FILES[0])
    return missing


def _check_card(source: Source) -> None:
    """Shipped weights must match the sha256 in their card (a truncated install fails loudly)."""
    for name, expected in (source.card or {}).get("sha256", {}).items():
        path = source.model_dir / name
        if path.is_file() and sha256_file(path) != expected:
            raise WeightsError(f"{path} does not match the sha256 of its card; reinstall fmr_bench or "
                               f"re-create it with: python {TRAINING_SCRIPT}")


def load_model(spec: Spec, kind: str, classes: tuple[str, ...]) -> tuple[Any, Source]:
    """Load the diffusers model a spec names; its class must be one of ``classes``.

    Raises:
        WeightsError: missing files (one line naming the fix), unreadable weights.
        SpecError: the folder holds another kind of model.
    """
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - diffusers is a dependency
        raise MissingDependencyError(f"the {kind} generator needs diffusers ({e}); run: pip install diffusers") from None
    source = resolve(spec, kind)
    if source.local:
        missing = _missing(source.model_dir)
        if missing:
            raise WeightsError(f"generator {kind}:{source.name}: {source.model_dir} lacks {' and '.join(missing)}; "
                               + _fix(kind, source))
        _check_card(source)
        config = json.loads((source.model_dir / "config.json").read_text())
        cls_name = config.get("_class_name", "")
        location, kwargs = str(source.model_dir), {}
    else:
        location, kwargs = source.location, {"subfolder": source.subfolder or None,
                                             "local_files_only": not host_reachable(HUB_HOST)}
        cls_name = _hub_class_name(source, kwargs["local_files_only"])
    if cls_name and cls_name not in classes:
        raise SpecError(f"{kind} spec {spec}: {location} holds a {cls_name}, not one of {', '.join(classes)}; "
                        f"use ?subfolder=NAME to pick the model of a pipeline folder")
    errors = []
    for name in ([cls_name] if cls_name else list(classes)):
        cls = getattr(diffusers, name)
        safetensors = source.card is not None or (source.local and (source.model_dir / WEIGHT_FILES[0]).is_file())
        try:
            model = cls.from_pretrained(location, use_safetensors=True if safetensors else None,
                                        low_cpu_mem_usage=_has_accelerate(), **kwargs)
            return model, source
        except (OSError, ValueError, RuntimeError) as e:
            errors.append(first_line(e, 200))
    raise WeightsError(f"cannot load generator {kind}:{source.name} ({'; '.join(errors)}); " + _fix(kind, source))


def _has_accelerate() -> bool:
    """diffusers warns on every load without accelerate unless low_cpu_mem_usage is off."""
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


def _hub_class_name(source: Source, offline: bool) -> str:
    """``_class_name`` of a Hub model's config.json ("" when it cannot be read)."""
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(source.location, "config.json", subfolder=source.subfolder or None,
                               local_files_only=offline)
        return json.loads(Path(path).read_text()).get("_class_name", "")
    except Exception:  # noqa: BLE001 - offline or absent: from_pretrained reports it below
        return ""


def load_scheduler_config(source: Source, allow_default: bool) -> dict | None:
    """The scheduler config beside a diffusion model, or None (``allow_default``) when it has none."""
    names = ["scheduler_config.json", "scheduler/scheduler_config.json"]
    if source.subfolder:
        names.insert(0, f"{source.subfolder}/scheduler_config.json")
    if source.local:
        for name in names:
            path = Path(source.location) / name
            if path.is_file():
                return json.loads(path.read_text())
    else:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:  # pragma: no cover
            hf_hub_download = None
        for name in names:
            sub, _, filename = name.rpartition("/")
            try:
                path = hf_hub_download(source.location, filename, subfolder=sub or None,
                                       local_files_only=not host_reachable(HUB_HOST))
                return json.loads(Path(path).read_text())
            except Exception:  # noqa: BLE001, S112 - absent file, offline: try the next place
                continue
    if allow_default:
        return None
    raise WeightsError(f"generator diffusion:{source.name} has no scheduler_config.json (looked for "
                       f"{', '.join(names)}); save one beside the model (DDIMScheduler().save_config(folder)) "
                       f"or pass ?scheduler=default for the standard linear 1000-step DDPM schedule")
