"""Dependencies point one way: data_pipelines never imports geomed_mim, CT and RS share only
common modules, and only the store's layout module spells the store's file names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from data_pipelines.store import layout

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "data_pipelines"


def _modules(package: Path) -> list[Path]:
    return sorted(package.rglob("*.py"))


def _imports(path: Path, package: str | None = None) -> list[str]:
    """Every module a file imports, lazily or not (relative imports resolved in ``package``,
    by default the file's own)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.append(".".join([*base, node.module or ""]).rstrip("."))
            else:
                names.append(node.module or "")
    return names


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_scan_sees_imports_of_every_kind(tmp_path: Path) -> None:
    """The checks below are only as good as this scan: it must see lazy and relative imports."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nfrom . import dicom\nfrom ..rs import labels\n"
        "def f():\n    import geomed_mim.models\n    from geomed_mim import data\n"
    )
    found = _imports(sample, package="data_pipelines.ct")
    assert found == ["os", "data_pipelines.ct", "data_pipelines.rs", "geomed_mim.models",
                     "geomed_mim"]  # fmt: skip


@pytest.mark.parametrize("path", _modules(PIPELINES), ids=lambda p: str(p.relative_to(REPO)))
def test_data_pipelines_never_imports_geomed_mim(path: Path) -> None:
    bad = [n for n in _imports(path) if _under(n, "geomed_mim")]
    assert not bad, f"{path.relative_to(REPO)} imports {bad}"


@pytest.mark.parametrize(
    ("modality", "other"), [("ct", "data_pipelines.rs"), ("rs", "data_pipelines.ct")]
)
def test_modalities_share_only_common_modules(modality: str, other: str) -> None:
    for path in _modules(PIPELINES / modality):
        bad = [n for n in _imports(path) if _under(n, other)]
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def _code_strings(path: Path) -> set[str]:
    """String constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    }


def test_only_the_layout_module_spells_the_store_file_names() -> None:
    names = {layout.STORE_DIRNAME, layout.MANIFEST_NAME, layout.BUILD_RECORD_NAME,
             layout.QUARANTINE_NAME, layout.SETTINGS_NAME, layout.LOCK_NAME}  # fmt: skip
    layout_module = PIPELINES / "store" / "layout.py"
    assert names <= _code_strings(layout_module)
    for path in _modules(PIPELINES) + _modules(REPO / "geomed_mim"):
        if path != layout_module:
            spelled = names & _code_strings(path)
            assert not spelled, (
                f"{path.relative_to(REPO)} spells {spelled}; use data_pipelines.store"
            )
