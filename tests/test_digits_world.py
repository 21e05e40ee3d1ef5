"""The embedded digits world end to end, with the shipped weights."""

from __future__ import annotations

import json

import torch

from fmr_bench.cli import main
from fmr_bench.datasets import load_dataset
from fmr_bench.generators import load_generator
from fmr_bench.generators.cards import load_card
from fmr_bench.models import load_model
from fmr_bench.oracles import load_oracle
from fmr_bench.protocol import LoopConfig, run_batched, run_reference
from fmr_bench.weights import sha256_file


def test_cli_runs_the_protocol_on_the_digits_world(tmp_path, capsys):
    code = main(["evaluate", "--model", "builtin:digits-cnn", "--data", "digits", "--limit", "24", "--budget", "6",
                 "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    for column in ("SA", "VR", "PA", "FMR", "PA_all", "oracle", "steps", "valid"):
        assert column in out
    (folder,) = tmp_path.iterdir()
    rec = json.loads((folder / "record.json").read_text())
    m = rec["metrics"]
    assert m["n"] == 24 and rec["generator"]["card"] == "vqgan-digits" and rec["oracle"]["spec"] == "builtin:digits-clip"
    assert m["sa"] >= 80 and m["oracle_acc"] >= 80  # trained models, not random ones
    assert m["pa"] is None or m["pa"] <= 100
    assert (folder / "grid.png").is_file()


def test_batched_loop_matches_reference_on_the_digits_world():
    data = load_dataset("digits")
    model = load_model("builtin:digits-mlp").freeze()
    oracle = load_oracle("builtin:digits-clip", data.class_names)
    gen = load_generator("vqgan:digits")
    samples = [(data.ids[i], i, data.load(i), data.labels[i]) for i in range(0, 120, 12)]
    kw = dict(model=model, oracle=oracle, generator=gen, target_of=torch.arange(10))
    ref = run_reference(samples, budget=12, step_size=data.world.step_size, **kw)
    out = []
    run_batched(iter(samples), cfg=LoopConfig(12, data.world.step_size, "adam", 4), device=torch.device("cpu"),
                on_sample=lambda o, *_: out.append(o), **kw)
    out.sort(key=lambda o: o.index)
    assert [o.key() for o in out] == [o.key() for o in ref]


def test_shipped_vqgan_matches_its_card_checksum():
    card = load_card("digits", "vqgan")
    from fmr_bench.generators.cards import PACKAGE_DIR

    assert sha256_file(PACKAGE_DIR / card["weights"]["package_file"]) == card["weights"]["sha256"]


def test_digits_clip_loads_without_open_clips_random_init_warning_and_keeps_other_lines(caplog, monkeypatch):
    import logging

    import open_clip

    from fmr_bench.digits.clip import create_digits_clip
    from fmr_bench.digits.clip_captions import create_digits_clip_captions

    caplog.set_level(logging.WARNING)
    create_digits_clip(pretrained=False)  # open_clip gets no weights: we load ours, or none on purpose
    create_digits_clip_captions()  # open_clip gets no weights, ours are loaded right after
    assert not [r for r in caplog.records if "No pretrained weights loaded" in r.getMessage()]
    # exactly that line, for our model only: any other warning during the load, and the same line
    # for another model, still come through; and after the load nothing is filtered
    real = open_clip.create_model

    def noisy(name, **kw):
        logging.warning("No pretrained weights loaded for model 'someone-else'. Model initialized randomly.")
        logging.warning("something else went wrong")
        logging.warning(f"No pretrained weights loaded for model '{name}'. Model initialized randomly.")
        return real(name, **kw)

    monkeypatch.setattr(open_clip, "create_model", noisy)
    caplog.clear()
    create_digits_clip(pretrained=False)
    logging.warning("No pretrained weights loaded for model 'fmr-digits-clip'. (after the load)")
    assert [r.getMessage() for r in caplog.records] == [
        "No pretrained weights loaded for model 'someone-else'. Model initialized randomly.",
        "something else went wrong",
        "No pretrained weights loaded for model 'fmr-digits-clip'. (after the load)"]
