"""The docs run as written: every Python snippet executes, every ``fmr`` command parses.

Python: every ```` ```python ```` fence of README.md and docs/*.md runs, in order, one
namespace per file (a later snippet may use what an earlier one of the same file made), in
a scratch folder holding a copy of ``leaderboards/`` and a small finished FMR run under
``runs/``; ``<run folder>`` in a snippet stands for that run's folder name. A snippet that
cannot run offline (external data or weights) says so in the doc, visibly, with an HTML
comment right before its fence: ``<!-- no-run: needs ImageNet -->``; it is reported as
skipped with that reason. Shell: every line of a ```` ```bash ```` fence that runs ``fmr``
(or ``python -m fmr_bench``, ``torchrun ... -m fmr_bench``) is parsed by the real CLI
parser, without running anything; an ellipsis argument (``…``, ``...``: "the other
arguments, as above") ends what is parsed. A usage synopsis (``[--ood DATA ...]``) goes in
a ```` ```text ```` fence.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
NO_RUN = re.compile(r"<!--\s*no-run:\s*(.*?)\s*-->\s*$")
PLACEHOLDER = re.compile(r"<([A-Za-z][^<>\n]*)>")  # <run folder>, <board>: a name the reader fills in


@dataclass(frozen=True)
class Snippet:
    doc: Path
    line: int  # of the opening fence
    lang: str
    code: str
    no_run: str | None  # the reason given in the doc, or None

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def snippets(doc: Path) -> list[Snippet]:
    text = doc.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NO_RUN.search(before)
        out.append(Snippet(doc, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2),
                           reason.group(1) if reason else None))
    return out


ALL = [s for doc in DOCS for s in snippets(doc)]
PYTHON = [s for s in ALL if s.lang == "python"]


def shell_commands(code: str) -> list[list[str]]:
    """Each simple command of a shell snippet as argv: continuations joined, comments dropped."""
    code = PLACEHOLDER.sub(lambda m: m.group(1).replace(" ", "-").upper(), code.replace("\\\n", " "))
    commands = []
    for line in code.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split, lex.commenters = True, "#"
        argv: list[str] = []
        for tok in lex:
            if tok in {";", "&&", "||", "|", "&"}:
                commands.append(argv)
                argv = []
            else:
                argv.append(tok)
        commands.append(argv)
    return [c for c in commands if c]


def fmr_argv(argv: list[str]) -> list[str] | None:
    """The arguments given to fmr's parser, or None for a command that does not run fmr."""
    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):  # VAR=value fmr ...
        argv = argv[1:]
    if "…" in argv or "..." in argv:  # "the other arguments, as above": what is written before it must parse
        argv = argv[:min(argv.index(e) for e in ("…", "...") if e in argv)]
    if argv[:1] == ["fmr"]:
        return argv[1:]
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] == "fmr_bench" and (argv[0].startswith("python") or argv[0] == "torchrun"):
            return argv[i + 2:]
    return None


FMR_COMMANDS = [(s, argv) for s in ALL if s.lang in {"bash", "sh", "shell"} for c in shell_commands(s.code)
                if (argv := fmr_argv(c)) is not None]


def test_the_docs_hold_snippets_and_say_why_one_does_not_run():
    runnable = [s for s in PYTHON if s.no_run is None]
    skipped = [s for s in PYTHON if s.no_run is not None]
    print(f"\nPython snippets: {len(runnable)} run, {len(skipped)} skipped"
          + "".join(f"\n  skipped {s.id}: {s.no_run}" for s in skipped)
          + f"\nfmr commands parsed: {len(FMR_COMMANDS)}")
    assert len(runnable) >= 8 and len(FMR_COMMANDS) >= 50
    assert all(s.no_run for s in skipped), "a no-run marker must give its reason"
    for s in ALL:  # a marker stands right before a fence: one elsewhere would silently skip nothing
        assert s.no_run is None or s.lang == "python", f"{s.id}: no-run marks Python snippets only"


def test_shell_splitting_follows_the_shell():
    cmds = shell_commands('pip install -e . && fmr evaluate --model a \\\n  --data "folder:x?crop_pct=1"  # c\n'
                          'SLURM_ARRAY_TASK_ID=2 fmr merge runs/<run folder>\n'
                          'torchrun --nproc-per-node 2 -m fmr_bench evaluate --shard 0/2\n')
    assert cmds == [["pip", "install", "-e", "."], ["fmr", "evaluate", "--model", "a", "--data", "folder:x?crop_pct=1"],
                    ["SLURM_ARRAY_TASK_ID=2", "fmr", "merge", "runs/RUN-FOLDER"],
                    ["torchrun", "--nproc-per-node", "2", "-m", "fmr_bench", "evaluate", "--shard", "0/2"]]
    assert [fmr_argv(c) for c in cmds] == [None, ["evaluate", "--model", "a", "--data", "folder:x?crop_pct=1"],
                                           ["merge", "runs/RUN-FOLDER"], ["evaluate", "--shard", "0/2"]]


def _parse(argv: list[str]) -> tuple[int | str | None, str]:
    from fmr_bench.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as e:
        return e.code, err.getvalue().strip()
    return 0, ""


def test_a_wrong_command_does_not_parse():
    assert _parse(["evaluate", "--model", "builtin:digits-cnn"])[0] == 0
    assert _parse(["evaluate", "--modle", "builtin:digits-cnn"])[0] not in (0, None)
    assert _parse(["transfer", "..."])[0] not in (0, None)


@pytest.mark.parametrize("snippet,argv", FMR_COMMANDS, ids=[f"{s.id}:{' '.join(a[:1])}" for s, a in FMR_COMMANDS])
def test_every_fmr_command_in_the_docs_parses(snippet, argv):
    code, err = _parse(argv)
    assert code in (0, None), f"{snippet.id}: `fmr {shlex.join(argv)}` does not parse: {err.splitlines()[-1:]}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A scratch folder as a reader's: the boards (a copy: building them rewrites their READMEs), one small run."""
    import fmr_bench

    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(REPO / "leaderboards", root / "leaderboards")
    res = fmr_bench.evaluate("builtin:digits-cnn", "digits", limit=4, budget=2, out=root / "runs", write_grid=False)
    return root, res.path.name


_namespaces: dict[Path, tuple[dict, int]] = {}  # doc -> (namespace, snippets of it run so far)


def _run_up_to(snippet: Snippet, workspace) -> None:
    root, run = workspace
    doc_snippets = [s for s in PYTHON if s.doc == snippet.doc and s.no_run is None]
    ns, done = _namespaces.get(snippet.doc, ({"__name__": "__doc_snippet__"}, 0))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for s in doc_snippets[done:doc_snippets.index(snippet) + 1]:
            code = s.code.replace("<run folder>", run)
            _namespaces[snippet.doc] = (ns, done)  # a failure leaves the later snippets to fail too
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(code, s.id, "exec"), ns)  # noqa: S102  (the docs are the code under test)
            done += 1
            _namespaces[snippet.doc] = (ns, done)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("snippet", PYTHON, ids=[s.id for s in PYTHON])
def test_every_python_snippet_in_the_docs_runs(snippet, workspace):
    if snippet.no_run is not None:
        pytest.skip(f"marked no-run in the doc: {snippet.no_run}")
    _run_up_to(snippet, workspace)
