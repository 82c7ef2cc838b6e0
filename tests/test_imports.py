"""The library's modules form layers: no module imports another that (directly or not) imports it.

A cycle (loadgen <-> serving was one) makes the import order matter and hides which module is the
lower one; lazy imports inside functions count too.
"""

import ast
from pathlib import Path

import labs_lib

PKG = Path(labs_lib.__file__).parent


def _imports(path: Path) -> set[str]:
    """labs_lib modules that `path` imports, at the top or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1 or node.module == "labs_lib":
                out.update(a.name for a in node.names)
            elif node.module and node.module.startswith("labs_lib."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("labs_lib."))
    return out


def test_no_import_cycles_between_library_modules():
    mods = {p.stem: p for p in PKG.glob("*.py") if p.stem != "__init__"}
    graph = {m: _imports(p) & set(mods) - {m} for m, p in mods.items()}
    cycles = []

    def visit(m, stack):
        for dep in sorted(graph[m]):
            if dep in stack:
                cycles.append(" -> ".join([*stack[stack.index(dep):], dep]))
            elif dep not in done:
                visit(dep, [*stack, dep])
        done.add(m)

    done: set[str] = set()
    for m in sorted(graph):
        if m not in done:
            visit(m, [m])
    assert not cycles, f"import cycles: {sorted(set(cycles))}"


def test_loadgen_keeps_the_names_notebooks_import():
    from labs_lib import loadgen, loadtypes, serving

    assert (loadgen.Load, loadgen.Request, loadgen.LoadResult) == (
        loadtypes.Load, loadtypes.Request, loadtypes.LoadResult)
    assert "loadgen" not in _imports(Path(serving.__file__))
