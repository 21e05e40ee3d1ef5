"""Issue 16: every bad command line is one line naming the fix, exit 2 (argparse's errors too);
no option silently taken for another; messages that say what is wrong; help lists that come
from the registries. All through the real entry point, :func:`fmr_bench.cli.main`."""

from __future__ import annotations

import json
import re

import pytest

import fmr_bench.cli.commands  # noqa: F401  (registers the commands, for the parametrisations below)
from fmr_bench.cli import build_parser, main
from fmr_bench.cli.main import Parser
from fmr_bench.errors import first_line
from fmr_bench.registry import BUILTIN_MODELS, COMMANDS, DATASETS, GENERATORS, ORACLE_SOURCES, Entry
from fmr_bench.results.shards import Shard, shard_from_env

MODEL = ["--model", "builtin:digits-cnn"]


def _one_line(capsys, argv, prog: str = "fmr") -> str:
    """Run ``fmr argv``: exit code 2, exactly one stderr line ``PROG: error: ...``; that line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"{prog}: error: "), err
    assert "Traceback" not in err and "usage:" not in err, err
    return err.strip()


# --- argparse's own errors: one line, the fix, exit 2 -----------------------------------------

#: (argv, the prog the line starts with, what the line must say)
ARGPARSE = [
    (["evaluate", *MODEL, "--budget", "x"], "fmr evaluate", r"--budget takes a whole number, not 'x'"),
    (["evaluate", *MODEL, "--step-size", "big"], "fmr evaluate", r"--step-size takes a number, not 'big'"),
    (["results", "runs", "--format", "xml"], "fmr results",
     r"--format 'xml' is not one of 'table', 'csv', 'json', 'markdown'"),
    (["leaderboard", "render"], "fmr leaderboard", r"'render' is not one of 'build', 'run'"),
    (["leaderboard"], "fmr leaderboard", r"missing action \(one of build, run\)"),
    (["leaderboard", "run"], "fmr leaderboard run", r"missing BOARD"),
    (["leaderboard", "run", "digits", "--nope"], "fmr leaderboard run", r"unrecognized arguments: --nope"),
    (["finetune", "--method", "sgd"], "fmr finetune", r"--method 'sgd' is not one of 'flyp', 'ft', "),
    (["finetune", "--preset", "fast"], "fmr finetune", r"--preset 'fast' is not one of 'digits', "),
    (["finetune", "--eval-limit", "0"], "fmr finetune", r"--eval-limit takes a whole number >= 1, not '0'"),
    (["finetune", "--eval-budget", "-2"], "fmr finetune", r"--eval-budget takes a whole number >= 1"),
    (["finetune", "--mix", "file:a"], "fmr finetune", r"--mix needs 2 values"),
    (["finetune", "--wise", "x"], "fmr finetune", r"--wise: alphas as 0,0.5,1 or 0:1:0.1 \(got 'x'\)"),
    (["audit", "runs/x"], "fmr audit", r"missing --judge"),
    (["audit", "runs/x", "--judge", "builtin:digits-judge", "--batch-size", "0"], "fmr audit",
     r"--batch-size takes a whole number >= 1, not '0'"),
    (["list", "judges"], "fmr list", r"'judges' is not one of 'models', 'generators', 'oracles'"),
    (["list"], "fmr list", r"missing what \(one of models, generators, oracles, datasets, evaluators\)"),
    (["evaluate", "--model"], "fmr evaluate", r"--model needs a value"),
    (["evaluate", *MODEL, "--nope"], "fmr evaluate", r"unrecognized arguments: --nope"),
    (["evaluate", "--modle", "builtin:digits-cnn"], "fmr evaluate", r"--modle builtin:digits-cnn \(did you mean --model\?\)"),
    (["evaluate", *MODEL, "--budg", "3"], "fmr evaluate", r"unrecognized arguments: --budg 3"),  # no abbreviations
    (["sweep", *MODEL, "--step-sizes", "0.05", "--budgets", "2", "--step-size", "0.1"], "fmr sweep",
     r"unrecognized arguments: --step-size 0.1 \(did you mean --step-sizes\?\)"),
    (["transfer", "--source", "builtin:digits-cnn", "--sources", "builtin:digits-mlp"], "fmr transfer",
     r"--sources and --source exclude each other"),
    (["transfer"], "fmr transfer", r"give one of --source --sources"),
    (["merge"], "fmr merge", r"missing FOLDER"),
    (["fit-sparse", *MODEL, "--max-iter", "0"], "fmr fit-sparse", r"--max-iter takes a whole number >= 1"),
    ([], "fmr", r"missing command \(one of attack-oracle, audit, (\w|-|, )*evaluate, "),
    (["evalute"], "fmr", r"'evalute' is not one of 'attack-oracle', 'audit', "),
]


@pytest.mark.parametrize("argv, prog, message", ARGPARSE, ids=[" ".join(a)[:50] or "(none)" for a, _, _ in ARGPARSE])
def test_argparse_errors_are_one_line_naming_the_fix(capsys, argv, prog, message):
    line = _one_line(capsys, argv, prog)
    assert re.search(message, line), line
    assert line.endswith(f"(see {prog} --help)"), line


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_reports_an_unknown_flag_in_one_line(capsys, name):
    line = _one_line(capsys, [name, "--no-such-flag"], f"fmr {name}")
    assert line.endswith(f"(see fmr {name} --help)"), line


def test_help_and_version_still_print_and_exit_0(capsys):
    for argv in (["--help"], ["evaluate", "--help"], ["leaderboard", "run", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0 and capsys.readouterr().out.startswith("usage: fmr"), argv
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("fmr_bench ")


def test_every_parser_of_the_cli_is_the_one_line_parser():
    """Sub-commands of sub-commands too: the class is set once, in build_parser."""
    seen, todo = [], [build_parser()]
    while todo:
        p = todo.pop()
        seen.append(p)
        assert isinstance(p, Parser) and not p.allow_abbrev, p.prog
        for action in p._actions:
            todo += list((action.choices or {}).values()) if isinstance(action.choices, dict) else []
    assert {p.prog for p in seen} >= {f"fmr {name}" for name in COMMANDS} | {"fmr leaderboard run"}


def test_sweep_step_size_is_refused_before_any_run(capsys, tmp_path):
    _one_line(capsys, ["sweep", *MODEL, "--step-sizes", "0.05", "--budgets", "2", "--step-size", "0.1",
                       "--out", str(tmp_path), "--quiet"], "fmr sweep")
    assert not any(tmp_path.iterdir())


# --- SLURM arrays with gaps ---------------------------------------------------------------------

GAPS = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "5",
        "SLURM_ARRAY_TASK_COUNT": "3"}


def test_slurm_array_with_gaps_is_refused_in_one_line(capsys, tmp_path, monkeypatch):
    for k, v in GAPS.items():
        monkeypatch.setenv(k, v)
    line = _one_line(capsys, ["evaluate", *MODEL, "--limit", "2", "--budget", "1", "--out", str(tmp_path),
                              "--quiet"])
    assert "SLURM array tasks 0..5 are 3 tasks" in line and "contiguous --array=A-B" in line, line
    assert "--shard i/n" in line and not any(tmp_path.iterdir())


@pytest.mark.parametrize("env, shard", [
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_MAX": "6",
      "SLURM_ARRAY_TASK_COUNT": "4"}, Shard(2, 4)),  # --array=3-6
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "0",
      "SLURM_ARRAY_TASK_COUNT": "1"}, Shard(0, 1)),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}, Shard(1, 2)),  # no MIN/MAX: 0-based
])
def test_contiguous_slurm_arrays_map_to_shards(env, shard):
    assert shard_from_env(env) == shard


@pytest.mark.parametrize("ids", ["0,2,5", "0-10:5"])  # gaps; a step
def test_slurm_arrays_that_are_not_contiguous_are_refused(ids):
    from fmr_bench.errors import SettingsError

    tasks = [int(t) for t in ids.split(",")] if "," in ids else list(range(0, 11, 5))
    env = {"SLURM_ARRAY_TASK_MIN": str(min(tasks)), "SLURM_ARRAY_TASK_MAX": str(max(tasks)),
           "SLURM_ARRAY_TASK_COUNT": str(len(tasks))}
    for task in tasks:
        with pytest.raises(SettingsError, match="contiguous"):
            shard_from_env({**env, "SLURM_ARRAY_TASK_ID": str(task)})


# --- --cache-dir on a file --------------------------------------------------------------------

#: the least each command that takes --cache-dir needs to reach its run (and little work, were it not refused)
SMALL = ["--limit", "1", "--budget", "1"]
CACHE_ARGV = {
    "evaluate": ["evaluate", *MODEL, *SMALL],
    "sweep": ["sweep", *MODEL, "--step-sizes", "0.1", "--budgets", "1", "--limit", "1"],
    "export": ["export", *MODEL, *SMALL],
    "transfer": ["transfer", "--source", "builtin:digits-cnn", *SMALL],
    "compare-generators": ["compare-generators", "--models", "builtin:digits-cnn,builtin:digits-mlp",
                           "--generators", "pixel,noise", *SMALL],
    "audit": ["audit", "{tmp}", "--judge", "builtin:digits-judge"],
    "fit-sparse": ["fit-sparse", *MODEL, *SMALL, "--latents", "{tmp}/out/latents.npz"],
    "finetune": ["finetune", "--model", "builtin:digits-clip", "--out", "{tmp}/ft", "--epochs", "1"],
    "attack-oracle": ["attack-oracle", "--oracle", "builtin:digits-clip", "--compare", "builtin:digits-cnn",
                      "--limit", "2", "--steps", "1"],
}


def test_the_cache_dir_table_covers_every_command_that_takes_it():
    takes = set()
    for entry in COMMANDS.items():
        p = Parser(prog=f"fmr {entry.name}")
        entry.load().add_arguments(p)
        if "--cache-dir" in p.format_help():
            takes.add(entry.name)
    assert takes == set(CACHE_ARGV)


@pytest.mark.parametrize("name", list(CACHE_ARGV))
@pytest.mark.parametrize("under", [False, True], ids=["file", "under-a-file"])
def test_cache_dir_on_a_file_is_refused_in_one_line(capsys, tmp_path, name, under):
    blocker = tmp_path / "weights.bin"
    blocker.write_bytes(b"not a folder")
    cache = blocker / "cache" if under else blocker
    argv = [a.format(tmp=tmp_path) for a in CACHE_ARGV[name]]
    line = _one_line(capsys, [*argv, "--cache-dir", str(cache), "--out", str(tmp_path / "out"), "--quiet"]
                     if name not in ("audit", "finetune") else [*argv, "--cache-dir", str(cache), "--quiet"])
    assert f"--cache-dir {cache}" in line and "not a folder; pass a folder" in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "ft").exists()


# --- messages that say what is wrong ------------------------------------------------------------

@pytest.mark.parametrize("judge, says", [
    ("builtin:nope", "unknown builtin model 'nope'"),
    ("builtin:digits-judge+builtin:nah", "unknown builtin model 'nah'"),
    ("builtin:digits-clip?prompts=zz", "unknown prompt set 'zz'"),
])
def test_a_bad_audit_judge_is_reported_as_the_judge(capsys, tmp_path, judge, says):
    run = tmp_path / "run"
    run.mkdir()
    (run / "record.json").write_text(json.dumps({"evaluator": "fmr"}))
    line = _one_line(capsys, ["audit", str(run), "--judge", judge, "--quiet"])
    assert f"judge {judge}: " in line and says in line, line
    assert "rebuild" not in line and "in-memory" not in line and "record" not in line, line


@pytest.mark.parametrize("name, content, says", [
    ("empty.safetensors", b"", "is empty (0 bytes"),
    ("empty.pt", b"", "is empty (0 bytes"),
    ("foreign.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "as a safetensors file"),
])
def test_an_empty_or_foreign_checkpoint_is_not_called_a_pickle(capsys, tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    line = _one_line(capsys, ["evaluate", "--model", f"file:{path}", "--out", str(tmp_path), "--quiet"])
    assert says in line and str(path) in line and "pickle" not in line, line


def _fake_shard(folder, index: int, count: int, record: str | None) -> None:
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps({"budget": 1}))
    (folder / "shard.json").write_text(json.dumps({"index": index, "count": count, "n_selected": 2,
                                                   "selection_sha256": "x", "ids": [f"s{index}"]}))
    (folder / "samples.jsonl").write_text("")
    if record is not None:
        (folder / "record.json").write_text(record)


def test_a_corrupt_shard_record_is_called_corrupt_naming_the_file(capsys, tmp_path):
    run = tmp_path / "run"
    _fake_shard(run / "shard-0-of-2", 0, 2, '{"schema_version": 2, "met')  # cut short by a copy
    _fake_shard(run / "shard-1-of-2", 1, 2, None)
    line = _one_line(capsys, ["merge", str(run)])
    assert f"{run / 'shard-0-of-2' / 'record.json'} is corrupt (not JSON" in line, line
    assert "no record.json" not in line and "re-run the shard's command" in line, line


HF_OFFLINE = ("Failed to download file (open_clip_pytorch_model.bin) for laion/CLIP-ViT-B-32-laion2B-s34B-b79K. "
              "Last error: An error happened while trying to locate the files on the Hub and we cannot find the "
              "requested files in the local cache. Please check your connection and try again or make sure your "
              "Internet connection is on.")


def test_an_openclip_weights_error_is_quoted_whole(monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    from fmr_bench.errors import WeightsError
    from fmr_bench.models import load_model

    def offline(arch, pretrained=None, **_):
        raise RuntimeError(HF_OFFLINE + "\nsecond line of the library's message")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(WeightsError) as e:
        load_model("openclip:ViT-B-32/laion2b_s34b_b79k", class_names=["a", "b"])
    assert HF_OFFLINE in str(e.value) and "second line" not in str(e.value)


@pytest.mark.parametrize("limit", [20, 57, 100, 199])
def test_first_line_cuts_only_between_words(limit):
    text = first_line(RuntimeError(HF_OFFLINE), limit)
    assert len(text) <= limit + 2 and text.endswith(" …")
    words = text.removesuffix(" …").split(" ")
    assert words == HF_OFFLINE.split(" ")[:len(words)]  # whole words, in order, none cut
    assert first_line(ValueError("short\nmore")) == "short" and first_line(KeyError()) == "KeyError"


# --- help lists from the registries ---------------------------------------------------------------

def _help(capsys, monkeypatch, argv) -> str:
    monkeypatch.setenv("COLUMNS", "100000")  # one line per option: names are never wrapped apart
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return capsys.readouterr().out


def test_evaluate_help_lists_every_registered_part(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, ["evaluate"])
    blocks = [" ".join(b.split()) for b in re.split(r"\n  (?=-)", text)]  # one per option, its help joined
    lines = {flag: next(b for b in blocks if b.startswith(flag + " "))
             for flag in ("--model", "--data", "--generator", "--oracle")}
    for name in DATASETS:
        assert re.search(rf"\b{re.escape(name)}\b", lines["--data"]), name
    for name in GENERATORS:
        assert name in lines["--generator"], name
    for name in ORACLE_SOURCES:
        assert f"{name}:" in lines["--oracle"], name
    for name in BUILTIN_MODELS:
        assert name in lines["--oracle"] and name in lines["--model"], name
    assert "digits-judge" in lines["--oracle"] and "A+B" in lines["--oracle"]


def test_a_newly_registered_dataset_and_generator_show_in_every_help(capsys, monkeypatch):
    monkeypatch.setattr(DATASETS, "_entries", {**DATASETS._entries, "zz-new-set": Entry(
        "zz-new-set", "nowhere:x", "zz-new-set:PATH — a set registered by a test")})
    monkeypatch.setattr(GENERATORS, "_entries", {**GENERATORS._entries, "zz-new-gen": Entry(
        "zz-new-gen", "nowhere:x", "zz-new-gen[:CARD][?k=1] — a generator registered by a test")})
    for cmd in ("evaluate", "sweep", "export", "transfer"):
        text = _help(capsys, monkeypatch, [cmd])
        assert "zz-new-set" in text and "zz-new-gen[:CARD]" in text and "?k=1" not in text, cmd
    for cmd in ("compare-generators", "fit-sparse"):
        assert "zz-new-set" in _help(capsys, monkeypatch, [cmd]), cmd
