"""The package's shape: one-way stage imports, no import circle, small modules.

The layer contract itself lives in pyproject.toml (``[tool.importlinter]``) and runs here
through import-linter's own command, so a violation fails the suite with its import chain.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "biomedica_kit"
MAX_LINES = 600


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # Every import statement counts, also those inside functions and TYPE_CHECKING blocks:
    # a lazy import is still a dependency, and hides circles from a plain import test.
    return grimp.build_graph("biomedica_kit")


def test_layer_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in out.stdout


def _cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import circle among the library's modules, or None (iterative DFS, 3 colours)."""
    state: dict[str, int] = {}
    for start in sorted(graph.modules):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.find_modules_directly_imported_by(
                    child)))))
    return None


def test_no_import_circle(graph: grimp.ImportGraph):
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_planted_circle():
    g = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c"):
        g.add_module(m)
    g.add_import(importer="p.a", imported="p.b")
    g.add_import(importer="p.b", imported="p.c")
    assert _cycle(g) is None
    g.add_import(importer="p.c", imported="p.a")
    assert _cycle(g) == ["p.a", "p.b", "p.c", "p.a"]


def test_no_module_over_the_size_limit():
    big = {p.relative_to(ROOT).as_posix(): n for p in LIBRARY.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (one job each?): {big}"


def test_the_library_never_imports_the_curation_bridge_or_training():
    # grimp graphs only the library itself, so this is read from the source text.
    offenders = [p.relative_to(ROOT).as_posix() for p in LIBRARY.rglob("*.py")
                 if any(line.lstrip().startswith(("import curation", "from curation",
                                                  "import biomedica_train",
                                                  "from biomedica_train"))
                        for line in p.read_text().splitlines())]
    assert not offenders, offenders


def test_py_typed_marker_ships():
    assert (LIBRARY / "py.typed").is_file()
