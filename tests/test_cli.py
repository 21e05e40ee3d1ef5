"""The ``fmr`` command: one-line errors with exit code 2, listings."""

from __future__ import annotations

import pytest

from fmr_bench.cli import main


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("argv,fragment", [
    (["evaluate", "--model", "resnet50"], "unknown model source 'resnet50'"),
    (["evaluate", "--model", "/tmp/model.pt"], "prefix it with a source, e.g. file:/tmp/model.pt"),
    (["evaluate", "--model", "timm:resnet50", "--data", "imagenet:/nonexistent/val"], "does not exist"),
    (["evaluate", "--model", "builtin:digits-cnn", "--budget", "0"], "budget must be >= 1"),
    (["evaluate", "--model", "builtin:digits-cnn", "--limit", "0"], "limit must be >= 1 (got 0); pass e.g. --limit"),
    (["evaluate", "--model", "builtin:digits-cnn", "--batch-size", "0"], "pass e.g. --batch-size 32"),
    (["evaluate", "--model", "builtin:digits-cnn", "--generator", "vqgn"], "Did you mean 'vqgan'"),
    (["evaluate", "--model", "builtin:digits-cnn", "--optimizer", "rmsprop"], "unknown optimizer"),
    (["evaluate", "--model", "file:/nonexistent.safetensors"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, fragment):
    code, err = _err(capsys, argv)
    assert code == 2
    assert fragment in err
    assert len(err.splitlines()) == 1 and err.startswith("fmr: error: ")


def test_wrong_imagenet_layout(tmp_path, capsys):
    (tmp_path / "n01440764").mkdir()
    (tmp_path / "cats").mkdir()
    code, err = _err(capsys, ["evaluate", "--model", "builtin:digits-cnn", "--data", f"imagenet:{tmp_path}"])
    assert code == 2 and "not ImageNet wnids" in err and "folder:" in err


def test_missing_weights_offline_stop_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FMR_OFFLINE", "1")
    monkeypatch.setenv("FMR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from fmr_bench import weights

    weights.host_reachable.cache_clear()
    val = tmp_path / "val" / "n01440764"
    val.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (64, 48), (120, 30, 200)).save(val / "a.JPEG")
    code, err = _err(capsys, ["evaluate", "--model", "timm:resnet50", "--data", f"imagenet:{tmp_path / 'val'}"])
    assert code == 2
    assert "missing weights and no network" in err
    for needed in ("timm/resnet50", "vqgan_imagenet_f16_16384.ckpt", "timm/vit_base_patch32_clip_224.openai"):
        assert needed in err
    assert "?weights=" in err and len(err.splitlines()) == 1
    weights.host_reachable.cache_clear()


@pytest.mark.parametrize("what,expected", [("models", "builtin:digits-cnn"), ("generators", "vqgan:imagenet-f16-16384"),
                                           ("datasets", "imagenet"), ("oracles", "openclip")])
def test_list(capsys, what, expected):
    assert main(["list", what]) == 0
    assert expected in capsys.readouterr().out


def test_the_batch_size_help_shows_the_default_each_task_uses(capsys):
    """fmr evaluate runs the FMR protocol and static evaluators: --batch-size names both defaults."""
    from fmr_bench.config import EvalSettings, FmrSettings

    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (f"default: {FmrSettings.batch_size} for the FMR protocol, {EvalSettings.batch_size} for static "
            "evaluators") in text


def test_every_command_prints_its_help(capsys):
    """argparse formats help lazily: a stray % in one flag's help breaks only that command's --help."""
    from fmr_bench.registry import COMMANDS

    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0 and f"usage: fmr {name}" in capsys.readouterr().out, name
