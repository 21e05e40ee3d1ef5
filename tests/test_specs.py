"""Spec parsing: a table of valid and invalid forms."""

from __future__ import annotations

import pytest

from fmr_bench.datasets import load_dataset
from fmr_bench.errors import SpecError
from fmr_bench.registry import DATASETS, GENERATORS, MODEL_SOURCES, Registry
from fmr_bench.specs import Spec, parse_spec

import fmr_bench.models  # noqa: F401  (registers sources)
import fmr_bench.generators  # noqa: F401


@pytest.mark.parametrize("text,registry,expected", [
    ("timm:resnet50", MODEL_SOURCES, Spec("timm", "resnet50")),
    ("timm:resnet50.a1_in1k", MODEL_SOURCES, Spec("timm", "resnet50.a1_in1k")),
    ("openclip:ViT-B-32/openai", MODEL_SOURCES, Spec("openclip", "ViT-B-32/openai")),
    ("file:/ckpt/m.pt?arch=timm:resnet18", MODEL_SOURCES, Spec("file", "/ckpt/m.pt", (("arch", "timm:resnet18"),))),
    ("timm:resnet50?weights=/w/a.safetensors&num_classes=10", MODEL_SOURCES,
     Spec("timm", "resnet50", (("weights", "/w/a.safetensors"), ("num_classes", "10")))),
    ("hf:timm/resnet50.a1_in1k", MODEL_SOURCES, Spec("hf", "timm/resnet50.a1_in1k")),
    ("builtin:digits-cnn", MODEL_SOURCES, Spec("builtin", "digits-cnn")),
    ("digits", DATASETS, Spec("digits", "")),
    ("imagenet:/data/val", DATASETS, Spec("imagenet", "/data/val")),
    ("vqgan", GENERATORS, Spec("vqgan", "")),
    ("vqgan:digits?weights=/tmp/x.ckpt", GENERATORS, Spec("vqgan", "digits", (("weights", "/tmp/x.ckpt"),))),
    ("noise?sigma=0.1", GENERATORS, Spec("noise", "", (("sigma", "0.1"),))),
])
def test_valid_specs(text, registry, expected):
    spec = parse_spec(text, registry, what="x")
    assert spec == expected
    assert parse_spec(str(spec), registry, what="x") == spec  # round trip


@pytest.mark.parametrize("text,registry,fragment", [
    ("", MODEL_SOURCES, "empty model spec"),
    ("resnet50", MODEL_SOURCES, "unknown model source 'resnet50'"),
    ("tim:resnet50", MODEL_SOURCES, "Did you mean 'timm'"),
    ("/models/resnet.pt", MODEL_SOURCES, "bare path; prefix it with a source, e.g. file:/models/resnet.pt"),
    ("./val", DATASETS, "bare path; prefix it with a source, e.g. folder:./val"),
    ("C:/data/val", DATASETS, "bare path"),
    ("timm:resnet50?weights", MODEL_SOURCES, "key=value"),
    ("vqgn", GENERATORS, "Did you mean 'vqgan'"),
])
def test_invalid_specs_name_the_fix(text, registry, fragment):
    with pytest.raises(SpecError, match=None) as err:
        parse_spec(text, registry, what="model" if registry is MODEL_SOURCES else "dataset")
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_registry_rejects_duplicates_and_resolves_lazy_entries():
    reg = Registry("thing")
    reg.register("a", "json:dumps")
    with pytest.raises(ValueError):
        reg.register("a", "json:loads")
    import json

    assert reg.get("a") is json.dumps
    with pytest.raises(SpecError, match="Did you mean 'a'"):
        reg.get("aa")


def test_dataset_specs_check_paths(tmp_path):
    from fmr_bench.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"imagenet:{tmp_path / 'nope'}")
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match="not ImageNet wnids"):
        load_dataset(f"imagenet:{tmp_path}")
    with pytest.raises(DataError, match="no images"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(SpecError, match="splits test and train"):
        load_dataset("digits:val")
