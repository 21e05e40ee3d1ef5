"""Each model sees exactly its own preprocessing in static inference.

The tensor that reaches the network is compared with what timm (``create_transform`` of
``resolve_data_config``) and open_clip (``create_model_and_transforms``) make of the same
image file, on real-sized images of several aspect ratios. Models are random-weight
(``pretrained=False``) builds that carry the real pretrained configs.
"""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch
from torch import nn

from fmr_bench import load_model, save_model
from fmr_bench.datasets import TensorImages, load_dataset
from fmr_bench.errors import OutputError, SettingsError, WeightsError
from fmr_bench.engine.logits import compute_logits, logits_key
from fmr_bench.models import EvalTransform, ImageClassifier, wrap_module

# (width, height): landscape, portrait, square, and a long strip
SIZES = [(500, 375), (375, 500), (640, 640), (300, 900)]
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLIP_ARCH = "fmr-test-preprocess-clip"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FMR_LOGITS_CACHE", str(tmp_path / "logits-cache"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """An ImageFolder of noisy RGB photos (noise is the hardest case for resize filters)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for k, (w, h) in enumerate(SIZES):
        cls = root / ("a" if k % 2 == 0 else "b")
        cls.mkdir(exist_ok=True)
        smooth = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
        noise = rng.integers(-60, 60, (h, w, 3))
        Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8)).save(cls / f"img{k}.png")
    return root


class Capture(nn.Module):
    """Stands in for a network: keeps what it is fed, returns zero logits."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone().contiguous())
        return torch.zeros(x.shape[0], self.num_classes)


def fed_tensors(clf: ImageClassifier, dataset, **kw) -> torch.Tensor:
    """What ``compute_logits`` feeds ``clf.net`` for every image of ``dataset``, in order."""
    capture = Capture(clf.num_classes or 2)
    clf.net = capture
    compute_logits(clf, dataset, batch_size=3, num_workers=0, cache=False, **kw)
    return torch.cat(capture.seen)


def files_of(dataset, only: tuple[int, ...] | None = None):
    from PIL import Image

    return [Image.open(p).convert("RGB") for k, p in enumerate(dataset.paths) if only is None or k in only]


#: for the geometry tables: a landscape photo and a portrait strip (both orientations, odd ratios)
TWO = (0, 3)

# name, architecture kwargs that keep the build small (the pretrained config is the real one),
# and what that config says
TIMM_MODELS = [
    ("resnet50", {"layers": (1, 1, 1, 1)}, (224, 0.95, "center", "bicubic")),
    ("vit_base_patch16_224", {"depth": 1}, (224, 0.9, "center", "bicubic")),
    ("eva02_base_patch14_448.mim_in22k_ft_in22k_in1k", {"depth": 1}, (448, 1.0, "squash", "bicubic")),
    ("tf_efficientnetv2_b3.in21k_ft_in1k", {}, (240, 0.9, "squash", "bicubic")),
    ("test_resnet", {}, (160, 0.95, "center", "bilinear")),
]


@pytest.mark.parametrize("name,kwargs,expected", TIMM_MODELS, ids=[m[0].split(".")[0] for m in TIMM_MODELS])
def test_timm_model_is_fed_exactly_timms_eval_transform(photos, monkeypatch, name, kwargs, expected):
    import timm

    real_create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda n, **kw: real_create(n, **{**kw, **kwargs}))
    clf = load_model(f"timm:{name}", pretrained=False)
    size, crop_pct, crop_mode, interpolation = expected
    pre = clf.preprocess
    assert (pre.input_size, pre.crop_pct, pre.crop_mode, pre.interpolation) == ((size, size), crop_pct, crop_mode,
                                                                                  interpolation)
    reference = timm.data.create_transform(**timm.data.resolve_data_config({}, model=clf.net))
    dataset = load_dataset(f"folder:{photos}")
    expected_tensors = torch.stack([reference(im) for im in files_of(dataset)])
    fed = fed_tensors(clf, dataset)
    assert fed.shape == (len(SIZES), 3, size, size)
    torch.testing.assert_close(fed, expected_tensors, rtol=0, atol=0)


# crop_pct 1.0 of each mode is open_clip's shortest / squash / longest, tested below
def test_hf_model_is_fed_the_timm_config_of_its_repo(photos, tmp_path, monkeypatch):
    """``hf:`` reads the repo's config.json (here from an offline Hub cache the test writes)."""
    import huggingface_hub.constants as hub
    import timm

    repo, commit = tmp_path / "hub" / "models--fmr--tiny-resnet", "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    pretrained_cfg = {"input_size": [3, 96, 128], "crop_pct": 0.8, "crop_mode": "squash", "interpolation": "bicubic",
                      "mean": [0.1, 0.2, 0.3], "std": [0.3, 0.3, 0.3], "num_classes": 3}
    (repo / "snapshots" / commit / "config.json").write_text(json.dumps(
        {"architecture": "test_resnet", "num_classes": 3, "pretrained_cfg": pretrained_cfg}))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    clf = load_model("hf:fmr/tiny-resnet", pretrained=False)
    pre = clf.preprocess
    assert (pre.input_size, pre.crop_pct, pre.crop_mode, pre.mean) == ((96, 128), 0.8, "squash", (0.1, 0.2, 0.3))
    assert "fmr/tiny-resnet" in pre.origin
    reference = timm.data.create_transform(**timm.data.resolve_data_config({}, model=clf.net))
    dataset = load_dataset(f"folder:{photos}")
    expected = torch.stack([reference(im) for im in files_of(dataset)])
    torch.testing.assert_close(fed_tensors(clf, dataset), expected, rtol=0, atol=0)


@pytest.mark.parametrize("crop_pct", [0.875, 1.15])
@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize("input_size", [(224, 224), (192, 256)])
def test_geometry_equals_timm_for_every_mode(photos, crop_pct, crop_mode, input_size):
    from timm.data import create_transform

    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    t = EvalTransform(input_size, mean, std, "bicubic", crop_pct, crop_mode)
    reference = create_transform((3, *input_size), crop_pct=crop_pct, crop_mode=crop_mode, interpolation="bicubic",
                                 mean=mean, std=std)
    clf = ImageClassifier(Capture(), t)
    for im in files_of(load_dataset(f"folder:{photos}"), TWO):
        ours = clf.normalize(t(im)[None])[0]
        torch.testing.assert_close(ours, reference(im), rtol=0, atol=0)


@pytest.fixture(scope="module")
def clip_arch(tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("clipcfg")
    (folder / f"{CLIP_ARCH}.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder)
    return CLIP_ARCH


# real open_clip tags whose preprocessing differ: CLIP's, SigLIP's squash, MobileCLIP's bilinear
# (no tag: the default PreprocessCfg, which is also what ViT-B-32/openai defines)
CLIP_TAGS = {"webli": ("ViT-B-16-SigLIP", "webli"), "datacompdr": ("MobileCLIP-S1", "datacompdr")}


@pytest.mark.parametrize("tag", ["", *CLIP_TAGS])
def test_openclip_model_is_fed_exactly_open_clips_preprocess(photos, clip_arch, monkeypatch, tag):
    import open_clip

    kwargs = {}
    if tag:
        cfg = dict(open_clip.get_pretrained_cfg(*CLIP_TAGS[tag]))
        assert cfg, "open_clip no longer has this tag"
        # the tiny architecture takes the real tag's settings (weights are never fetched)
        monkeypatch.setitem(open_clip.pretrained._PRETRAINED, clip_arch, {tag: {**cfg, "hf_hub": "", "url": ""}})
        kwargs = {"image_mean": cfg["mean"], "image_std": cfg["std"], "image_interpolation": cfg["interpolation"],
                  "image_resize_mode": cfg["resize_mode"]}
    spec = f"openclip:{clip_arch}/{tag}" if tag else f"openclip:{clip_arch}"
    clf = load_model(spec, class_names=["a", "b"], pretrained=False, templates="single")
    assert clf.preprocess.crop_pct == 1.0
    _, _, reference = open_clip.create_model_and_transforms(clip_arch, pretrained=None, **kwargs)
    dataset = load_dataset(f"folder:{photos}")
    expected = torch.stack([reference(im) for im in files_of(dataset)])
    torch.testing.assert_close(fed_tensors(clf, dataset), expected, rtol=0, atol=0)


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("size", [224, (160, 224)])
def test_geometry_equals_open_clip_for_every_resize_mode(photos, resize_mode, size):
    interpolation = "bilinear"  # not open_clip's default: shows where it is (not) honoured
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = {"size": size, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.4), "interpolation": interpolation,
           "resize_mode": resize_mode, "fill_color": 37}
    reference = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    t = EvalTransform.from_open_clip(cfg)
    clf = ImageClassifier(Capture(), t)
    for im in files_of(load_dataset(f"folder:{photos}"), TWO):
        torch.testing.assert_close(clf.normalize(t(im)[None])[0], reference(im), rtol=0, atol=0)


def test_uint8_arrays_are_resized_as_the_image_files_they_stand_for():
    """CIFAR-like uint8 arrays reach a 160 px model as timm would read the PNGs."""
    import timm
    from PIL import Image

    rng = np.random.default_rng(1)
    arrays = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    data = TensorImages(torch.from_numpy(arrays), [0, 1, 0], ["a", "b"], spec="arrays")
    clf = load_model("timm:test_resnet", pretrained=False)
    reference = timm.data.create_transform(**timm.data.resolve_data_config({}, model=clf.net))
    expected = torch.stack([reference(Image.fromarray(a.transpose(1, 2, 0))) for a in arrays])
    torch.testing.assert_close(fed_tensors(clf, data), expected, rtol=0, atol=0)


def test_digits_models_keep_their_native_32px_pixels():
    rng = np.random.default_rng(3)
    images = torch.from_numpy(rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8))
    data = TensorImages(images, [0, 1, 2, 3, 4], [str(k) for k in range(10)], spec="digits-like")
    clf = load_model("builtin:digits-cnn", pretrained=False)
    assert clf.preprocess.crop_pct == 1.0 and clf.preprocess.is_identity_for(32, 32)
    x = images.float() / 255.0
    mean, std = torch.tensor(clf.preprocess.mean).view(1, 3, 1, 1), torch.tensor(clf.preprocess.std).view(1, 3, 1, 1)
    torch.testing.assert_close(fed_tensors(clf, data), (x - mean) / std, rtol=0, atol=0)


def test_float_tensors_are_resized_on_the_tensor_close_to_pil():
    """Float images in [0, 1] (e.g. a training loop's) stay float: resized by torch, antialiased."""
    rng = np.random.default_rng(2)
    u8 = torch.from_numpy(rng.integers(0, 256, (2, 3, 48, 64), dtype=np.uint8))
    t = EvalTransform((32, 32), interpolation="bilinear", crop_pct=0.875)
    as_float = torch.stack([t(x.float() / 255) for x in u8])
    as_file = torch.stack([t(x) for x in u8])
    assert as_float.shape == as_file.shape == (2, 3, 32, 32)
    assert 0 <= as_float.min() and as_float.max() <= 1
    assert (as_float - as_file).abs().mean() < 0.01  # two resize implementations, same geometry


def test_dataset_crop_option_replaces_the_models_crop_and_is_recorded(photos):
    from fmr_bench.evaluators import run_evaluator

    clf = load_model("timm:test_resnet", pretrained=False)
    whole = load_dataset(f"folder:{photos}?crop_pct=1")
    t = whole.eval_transform(clf.preprocess)
    assert t.crop_pct == 1.0 and t.interpolation == clf.preprocess.interpolation and "crop_pct 1.0" in t.origin
    assert load_dataset(f"folder:{photos}").eval_transform(clf.preprocess) == clf.preprocess
    res = run_evaluator("timm:test_resnet?num_classes=2", "ood-accuracy", f"folder:{photos}", [f"folder:{photos}?crop_pct=1"],
                        out=None, pretrained=False, num_workers=0)
    rec = res.record
    assert rec["model"]["preprocess"]["crop_pct"] == 0.95 and rec["model"]["preprocess"]["crop_mode"] == "center"
    assert "timm pretrained_cfg of test_resnet" in rec["model"]["preprocess"]["origin"]
    fed = [(p["dataset"], p["transform"]["crop_pct"]) for p in rec["inference"]]
    assert fed == [(f"folder:{photos}", 0.95), (f"folder:{photos}?crop_pct=1", 1.0)]


def test_logits_cache_key_follows_the_transform(photos):
    clf = load_model("timm:test_resnet", pretrained=False)
    dataset = load_dataset(f"folder:{photos}")
    t = clf.preprocess
    base = logits_key(clf, dataset, t)
    changed = {logits_key(clf, dataset, t.replace(**c)) for c in (
        {"crop_pct": 0.875}, {"crop_mode": "squash"}, {"interpolation": "bicubic"}, {"input_size": (128, 128)},
        {"crop_mode": "border", "fill": (0, 0, 0)})}
    assert base not in changed and len(changed) == 5
    assert logits_key(clf, dataset, t.replace(origin="elsewhere")) == base  # the origin is a record, not pixels
    assert logits_key(clf, dataset, None) != base  # the FMR-style feed is another entry

    first = compute_logits(clf, dataset, num_workers=0)
    again = compute_logits(clf, dataset, num_workers=0)
    assert not first.cached and again.cached and again.transform == first.transform == t.to_dict()
    clf.set_preprocess(t.replace(crop_pct=1.0))  # same weights, other transform: not the cached logits
    other = compute_logits(clf, dataset, num_workers=0)
    assert not other.cached and other.key != first.key


def test_protocol_feed_keeps_the_datasets_resolution(photos):
    """Studies that compare with FMR runs feed the generator-resolution pixels, as the loop does."""
    clf = load_model("timm:test_resnet", pretrained=False)
    dataset = load_dataset(f"folder:{photos}")
    dataset.set_resolution(64)
    fed = fed_tensors(clf, dataset, feed="protocol")
    x = torch.stack([dataset.load(i) for i in range(len(dataset))])
    torch.testing.assert_close(fed, clf.normalize(x))
    with pytest.raises(SettingsError, match="feed 'pixels' is unknown"):
        compute_logits(clf, dataset, feed="pixels")


def test_disk_full_on_the_cache_write_is_the_one_line_error(photos, monkeypatch, tmp_path):
    from fmr_bench.engine import logits as inference

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inference.torch, "save", full)
    clf = load_model("timm:test_resnet", pretrained=False)
    with pytest.raises(OutputError, match="disk full while writing .*free space and re-run"):
        compute_logits(clf, load_dataset(f"folder:{photos}"), num_workers=0)
    assert not list((tmp_path / "logits-cache").glob("*.part"))  # no torn entry left behind


def test_disk_full_on_the_cache_write_exits_2_from_the_cli(monkeypatch, tmp_path, capsys):
    from fmr_bench.engine import logits as inference
    from fmr_bench.cli import main

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inference.torch, "save", full)
    code = main(["evaluate", "--model", "builtin:digits-cnn", "--evaluator", "ood-accuracy", "--ood",
                 "digits-shift:rotated", "--quiet", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "disk full" in err[0]


def test_unwritable_cache_is_a_warning_and_the_logits_still_come(photos, monkeypatch):
    from fmr_bench.engine import logits as inference

    def read_only(*_a, **_k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(inference.torch, "save", read_only)
    clf = load_model("timm:test_resnet", pretrained=False)
    with pytest.warns(RuntimeWarning, match="not writable"):
        out = compute_logits(clf, load_dataset(f"folder:{photos}"), num_workers=0)
    assert out.logits.shape == (len(SIZES), clf.num_classes) and not out.cached


def test_corrupt_entry_in_a_read_only_cache_is_recomputed(photos, monkeypatch, tmp_path):
    from fmr_bench.engine import logits as inference

    clf = load_model("timm:test_resnet", pretrained=False)
    dataset = load_dataset(f"folder:{photos}")
    first = compute_logits(clf, dataset, num_workers=0)
    path = tmp_path / "logits-cache" / f"{first.key}.pt"
    path.write_bytes(b"torn")
    real_unlink = type(path).unlink

    def denied(*_a, **_k):
        raise PermissionError(errno.EACCES, "Permission denied")

    # the folder is read-only: the torn entry can be neither removed nor replaced
    monkeypatch.setattr(type(path), "unlink", lambda self, *a, **k: denied() if self == path
                        else real_unlink(self, *a, **k))
    monkeypatch.setattr(inference.torch, "save", denied)
    with pytest.warns(RuntimeWarning, match="not writable"):
        again = compute_logits(clf, dataset, num_workers=0)
    assert not again.cached
    torch.testing.assert_close(again.logits, first.logits)


def test_file_checkpoint_keeps_its_transform_and_falls_back_to_its_architectures(tmp_path):
    torch.manual_seed(0)
    m = load_model("timm:test_resnet?num_classes=3", pretrained=False)
    m.set_preprocess(m.preprocess.replace(crop_pct=0.8, crop_mode="border", fill=(1, 2, 3)))
    path = save_model(m, tmp_path / "m.safetensors", class_names=["a", "b", "c"])
    back = load_model(f"file:{path}")
    assert back.preprocess == m.preprocess and "m.safetensors" in back.preprocess.origin

    # a file saved before crops were recorded: size/mean/std/interpolation only
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["fmr_bench"])
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    meta["preprocess"] = {"input_size": [96, 96], "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5],
                          "interpolation": "bicubic"}
    old = tmp_path / "old.safetensors"
    save_file(state, str(old), metadata={"fmr_bench": json.dumps(meta)})
    pre = load_model(f"file:{old}").preprocess
    arch = load_model("timm:test_resnet", pretrained=False).preprocess
    assert (pre.input_size, pre.mean, pre.interpolation) == ((96, 96), (0.1, 0.2, 0.3), "bicubic")
    assert (pre.crop_pct, pre.crop_mode) == (arch.crop_pct, arch.crop_mode)

    meta["preprocess"] = {"input_size": "big"}
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata={"fmr_bench": json.dumps(meta)})
    with pytest.raises(WeightsError, match="unusable preprocessing.*re-save"):
        load_model(f"file:{bad}")

    pt = tmp_path / "m.pt"  # a plain state dict: the architecture's own transform
    torch.save(load_model("timm:test_resnet", pretrained=False).net.state_dict(), pt)
    assert load_model(f"file:{pt}?arch=timm:test_resnet").preprocess == arch


def test_wrap_module_transform_arguments():
    net = nn.Conv2d(3, 2, 1)
    plain = wrap_module(net, input_size=32)
    assert plain.preprocess.crop_pct == 1.0 and plain.preprocess.is_identity_for(32, 32)
    timm_like = wrap_module(net, input_size=224, crop_pct=0.875, interpolation="bicubic")
    assert timm_like.preprocess.scale_size() == (256, 256)
    given = EvalTransform((64, 48), crop_mode="squash")
    assert wrap_module(net, transform=given).preprocess == given
    with pytest.raises(SettingsError, match="input_size"):
        wrap_module(net)


@pytest.mark.parametrize("kwargs,match", [
    ({"crop_mode": "letterbox"}, "crop_mode 'letterbox' is unknown; use one of center, squash, border"),
    ({"crop_pct": 0}, "crop_pct must be a positive number"),
    ({"crop_pct": float("nan")}, "crop_pct must be a positive number"),
    ({"interpolation": "cubic"}, "interpolation 'cubic' is unknown"),
    ({"input_size": (0, 10)}, "input size must be positive"),
    ({"input_size": (1, 2, 3, 4)}, "not \\(height, width\\)"),
    ({"std": (0.2, 0.0, 0.2)}, "positive std"),
])
def test_bad_transform_values_name_the_fix(kwargs, match):
    with pytest.raises(SettingsError, match=match):
        EvalTransform(**{"input_size": (32, 32), **kwargs})


def test_transform_round_trips_through_its_dict():
    t = EvalTransform((224, 192), (0.5,) * 3, (0.25,) * 3, "lanczos", 0.9, "border", fill=7, origin="x")
    assert t.fill == (7, 7, 7)
    back = EvalTransform.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back == t and back.origin == "x" and hash(back) == hash(t)
