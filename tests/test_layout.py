"""Imports go one way (benchmarks -> ablations -> vlm_core) and no module imports itself back in a cycle."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path, package: str) -> set[str]:
    """Modules of our two packages that ``path`` imports at run time (TYPE_CHECKING blocks left out)."""
    tree, out = ast.parse(path.read_text()), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from . import x
                names = [f"{package}.{node.module}"] if node.module else [f"{package}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            out |= {n for n in names if n.split(".")[0] in ("ablations", "vlm_core")}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] in ("ablations", "vlm_core")}
    return {".".join(n.split(".")[:2]) for n in out}


def _graph() -> dict[str, set[str]]:
    return {f"{pkg}.{p.stem}": _imports(p, pkg) for pkg in ("ablations", "vlm_core")
            for p in sorted((ROOT / pkg).glob("*.py")) if p.stem != "__init__"}


def test_vlm_core_never_imports_the_harness():
    assert {m: deps for m, deps in _graph().items() if m.startswith("vlm_core") and
            any(d.startswith("ablations") for d in deps)} == {}


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(m, path):
        state[m] = "open"
        for d in graph.get(m, ()):
            if state.get(d) == "open":
                cycles.append(path + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert cycles == []
