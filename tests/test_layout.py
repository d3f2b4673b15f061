"""Imports go one way (benchmarks -> ablations -> vlm_core) and no module imports itself back in a cycle."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


MODULES = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
           for pkg in ("ablations", "vlm_core") for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}


def _imports(path: Path, module: str) -> set[str]:
    """Modules of our two packages that ``path`` imports at run time (TYPE_CHECKING blocks left out)."""
    tree, out = ast.parse(path.read_text()), set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y / from . import x
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:  # "from pkg import module" imports the module
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {n for n in out if n in MODULES and n != module}


def _graph() -> dict[str, set[str]]:
    graph = {}
    for pkg in ("ablations", "vlm_core"):
        for p in sorted((ROOT / pkg).rglob("*.py")):
            if "__pycache__" in p.parts:
                continue
            module = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            graph[module] = _imports(p, module)
    return graph


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
