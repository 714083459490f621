"""The project's import graph has no cycle, and data_pipelines imports its own modules at the
top of the file only (a function-local import is how a cycle hides)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGES = ("geomed_mim", "data_pipelines", "tests")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for package in PACKAGES
        for p in sorted((REPO_ROOT / package).rglob("*.py"))
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: dict[str, Path]
) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base]).rstrip(".")
    # ``from a import b``: the module ``a.b`` when there is one (its package is already being
    # imported, the usual package pattern), else a name defined by ``a`` itself
    submodules = [f"{base}.{alias.name}" for alias in node.names]
    names = [name for name in submodules if name in known]
    return names if len(names) == len(submodules) else [base, *names]


def import_edges(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    """Project modules ``module`` imports when it runs: every import statement, in functions
    too, except those under ``if TYPE_CHECKING:`` (never run)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = {
        id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
        for child in node.body for n in ast.walk(child)
    }  # fmt: skip
    edges = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skipped:
            names = _imported(node, module, path.name == "__init__.py", known)
            edges |= {n for n in names if n in known and n != module}
    return edges


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_the_cycle_search_finds_a_cycle_and_passes_a_chain() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_project_import_graph_has_no_cycle() -> None:
    known = project_modules()
    assert "data_pipelines.rs.scene" in known  # the scan really reads the packages
    graph = {m: import_edges(p, m, known) for m, p in known.items()}
    assert "data_pipelines.rs.scene" in graph["data_pipelines.rs.reader"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_data_pipelines_imports_project_modules_at_the_top_only() -> None:
    known = project_modules()
    local = []
    for path in sorted((REPO_ROOT / "data_pipelines").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = _imported(node, module_name(path), path.name == "__init__.py", known)
                    if any(n.split(".")[0] in ("data_pipelines", "geomed_mim") for n in names):
                        local.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not local, "import at the top of the module: " + ", ".join(local)
