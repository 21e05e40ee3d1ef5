"""The package's import graph: every module imports, lower layers never import higher ones,
and module-level imports form no circle."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import fmr_bench

ROOT = Path(fmr_bench.__file__).parent
#: Parts that the engine and the commands build on; they must not reach up.
LOWER = ("datasets", "models", "generators", "oracles", "protocol", "digits", "errors", "registry", "specs",
         "config", "weights", "files", "runtime", "metrics")
HIGHER = ("runner", "evaluators", "studies", "commands", "cli", "sparse")


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(node: ast.stmt) -> bool:
    """``if TYPE_CHECKING:`` blocks: read by type checkers, never run, so no import at run time."""
    return isinstance(node, ast.If) and isinstance(node.test, (ast.Name, ast.Attribute)) and \
        getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"


def _imports(name: str, path: Path, top_level_only: bool) -> set[str]:
    """Modules of fmr_bench that ``name`` imports (``from . import x`` resolved to the module x)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # also imports under module-level if/try blocks
        nodes = [n for top in tree.body for n in ast.walk(top)
                 if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 and not _type_checking_only(top)]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fmr_bench")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("fmr_bench"):
                mod = node.module
            else:
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    mods = _modules()
    return {m for m in found if m in mods and m != name}


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


@pytest.mark.parametrize("module", sorted(_modules()))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_lower_layers_never_import_higher_ones():
    bad = []
    for name, path in _modules().items():
        if _layer(name) not in LOWER:
            continue
        for target in _imports(name, path, top_level_only=False):
            if _layer(target) in HIGHER:
                bad.append(f"{name} -> {target}")
    assert not bad, "lower layers import higher ones: " + ", ".join(sorted(bad))


def test_module_level_imports_have_no_circle():
    import networkx as nx

    graph = nx.DiGraph()
    for name, path in _modules().items():
        graph.add_node(name)
        for target in _imports(name, path, top_level_only=True):
            # a package importing its own sub-modules (registration) is not a circle
            if not target.startswith(name + "."):
                graph.add_edge(name, target)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import circles: {cycles[:3]}"


def test_the_checker_sees_a_planted_circle(tmp_path, monkeypatch):
    """The circle check can fail: a package whose two modules import each other."""
    import networkx as nx

    pkg = tmp_path / "fmr_bench"
    pkg.mkdir()
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("from .a import y\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    mods = _modules()
    graph = nx.DiGraph((n, t) for n, p in mods.items() for t in _imports(n, p, top_level_only=True))
    assert list(nx.simple_cycles(graph))
