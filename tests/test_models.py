"""Model sources on tiny random-weight models of the real architectures."""

from __future__ import annotations

import json

import pytest
import torch

from fmr_bench import load_model, save_model
from fmr_bench.errors import ClassMappingError, SpecError, WeightsError
from fmr_bench.models import map_classes, model_weight_refs

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip_arch(tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("clipcfg")
    (folder / "fmr-test-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder)
    return "fmr-test-tiny-clip"


def test_timm_tiny_model_carries_its_preprocessing():
    m = load_model("timm:test_resnet", pretrained=False)
    assert m.preprocess.input_size == tuple(m.net.pretrained_cfg["input_size"][1:])
    assert m.preprocess.mean == tuple(m.net.pretrained_cfg["mean"])
    x = torch.rand(2, 3, 40, 40, requires_grad=True)  # other size: resized inside, differentiably
    m(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert m.num_classes == m.net.num_classes


def test_timm_unknown_model_is_a_spec_error():
    with pytest.raises(SpecError, match="timm has no model 'resnet5000'"):
        load_model("timm:resnet5000", pretrained=False)


def test_timm_weights_option_loads_a_local_file(tmp_path):
    from safetensors.torch import save_file

    ref = load_model("timm:test_resnet", pretrained=False)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.net.state_dict().items()}, str(path))
    torch.manual_seed(123)
    m = load_model(f"timm:test_resnet?weights={path}")
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(m.eval()(x), ref.eval()(x))
    assert [r.available() for r in model_weight_refs(f"timm:test_resnet?weights={path}")] == [True]


def test_file_roundtrip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    m = load_model("timm:test_resnet?num_classes=3", pretrained=False).eval()
    path = save_model(m, tmp_path / "m.safetensors", class_names=["cat", "dog", "fox"])
    back = load_model(f"file:{path}").eval()
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(back(x), m(x))
    assert back.class_names == ["cat", "dog", "fox"] and back.preprocess == m.preprocess


def test_file_torch_checkpoint_needs_arch_and_is_read_weights_only(tmp_path):
    m = load_model("timm:test_resnet", pretrained=False).eval()
    path = tmp_path / "m.pt"
    torch.save({"state_dict": m.net.state_dict(), "epoch": 3}, path)
    with pytest.raises(SpecError, match=r"\?arch="):
        load_model(f"file:{path}")
    back = load_model(f"file:{path}?arch=timm:test_resnet").eval()
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(back(x), m(x))
    # A pickle that would run code loads its tensors without running it.
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"
    torch.save({"state_dict": m.net.state_dict(), "hook": _Evil(str(marker))}, evil)
    back = load_model(f"file:{evil}?arch=timm:test_resnet").eval()
    torch.testing.assert_close(back(x), m(x))
    assert not marker.exists()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(WeightsError, match="without running code"):
        load_model(f"file:{garbage}?arch=timm:test_resnet")
    with pytest.raises(WeightsError, match="does not exist"):
        load_model(f"file:{tmp_path / 'missing.pt'}?arch=timm:test_resnet")


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('x')",))


def test_openclip_zero_shot_head_is_normalised_template_average(tiny_clip_arch):
    import open_clip
    import torch.nn.functional as F

    names = ["cat", "dog", "fox"]
    m = load_model(f"openclip:{tiny_clip_arch}?prompts=openai", class_names=names, pretrained=False).eval()
    head = m.net.class_embeddings
    assert head.shape == (3, TINY_CLIP["embed_dim"])
    torch.testing.assert_close(head.norm(dim=-1), torch.ones(3))
    # Independent recomputation for one class.
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    tok = open_clip.get_tokenizer(tiny_clip_arch)
    with torch.no_grad():
        e = F.normalize(m.net.clip.encode_text(tok([t("dog") for t in OPENAI_IMAGENET_TEMPLATES])), dim=-1)
    torch.testing.assert_close(head[1], F.normalize(e.mean(0), dim=0), rtol=1e-4, atol=1e-5)
    logits = m(torch.rand(2, 3, 48, 48))
    assert logits.shape == (2, 3)


def test_zero_shot_needs_class_names(tiny_clip_arch):
    with pytest.raises(ClassMappingError, match="class names"):
        load_model(f"openclip:{tiny_clip_arch}", pretrained=False)


@pytest.mark.parametrize("model_classes,outputs,data_classes,space,expected", [
    (None, 1000, ["a"] * 1000, ("imagenet-1k", "imagenet-1k"), tuple(range(1000))),
    (["dog", "cat"], 2, ["cat", "dog"], (None, None), (1, 0)),
    (["Golden_Retriever", "cat", "x"], 3, ["golden retriever", "cat"], (None, None), (0, 1)),
    (None, 3, ["a", "b", "c"], (None, None), (0, 1, 2)),
])
def test_class_mapping(model_classes, outputs, data_classes, space, expected):
    assert map_classes(model_classes, outputs, data_classes, label_space=space[0], model_label_space=space[1]).index == expected


@pytest.mark.parametrize("model_classes,outputs,data_classes", [
    (None, 1000, ["a", "b"]),
    (["dog", "cat", "cow"], 3, ["car", "bus"]),
])
def test_class_mapping_errors_name_the_fix(model_classes, outputs, data_classes):
    with pytest.raises(ClassMappingError, match="use a model trained on this dataset|evaluate on a dataset"):
        map_classes(model_classes, outputs, data_classes)
