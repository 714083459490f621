"""The timm-style registry: decorator registration, duplicates refused, listing by pattern,
``create_model`` recording how to rebuild, and a registry that knows no model."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

import geomed_mim.models  # noqa: F401  (registers every model)
from geomed_mim.models import registry
from geomed_mim.models.registry import (
    create_model,
    is_model,
    list_models,
    model_module,
    register_model,
)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry, "_MODEL_BUILDERS", dict(registry._MODEL_BUILDERS))
    monkeypatch.setattr(registry, "_MODEL_MODULES", dict(registry._MODEL_MODULES))


def test_decorator_registers_under_the_function_name(scratch_registry):
    @register_model
    def toy_linear_net(width: int = 3) -> nn.Module:
        return nn.Linear(width, 2)

    assert is_model("toy_linear_net")
    assert model_module("toy_linear_net") == __name__
    model = create_model("toy_linear_net", width=5)
    assert isinstance(model, nn.Linear)
    assert model.in_features == 5
    assert model.registry_name == "toy_linear_net"
    assert model.registry_kwargs == {"width": 5}
    assert "toy_linear_net" in list_models("toy_*")


def test_duplicate_names_are_refused(scratch_registry):
    def mae_vit_base_patch16() -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match=r"already registered \(by geomed_mim\.models\.mae\)"):
        register_model(mae_vit_base_patch16)
    assert model_module("mae_vit_base_patch16") == "geomed_mim.models.mae"  # the first one stays


def test_list_models_by_pattern_and_patterns():
    everything = list_models()
    assert everything == sorted(everything)
    assert len(everything) == 4 + 4 + 8 + 4  # MAE, SelectiveMAE, Hi-End-MAE, SimMIM
    assert list_models("*_large_*") == [
        "hi_end_mae_vit_large_patch12",
        "hi_end_mae_vit_large_patch16",
        "mae_vit_large_patch16",
        "selective_mae_vit_large_patch16",
    ]
    assert list_models(["mae_vit_tiny*", "selective_mae_vit_tiny*"]) == [
        "mae_vit_tiny_patch16",
        "selective_mae_vit_tiny_patch16",
    ]
    assert list_models("no_such_*") == []


def test_unknown_model_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown model 'mae_vit_giant_patch99'.*mae_vit_base"):
        create_model("mae_vit_giant_patch99")


@pytest.mark.parametrize(
    ("prefix", "module"),
    [
        ("mae_vit_", "geomed_mim.models.mae"),
        ("selective_mae_vit_", "geomed_mim.models.selective"),
        ("hi_end_mae_vit_", "geomed_mim.models.hi_end"),
        ("simmim_swin", "geomed_mim.models.simmim"),
    ],
)
def test_each_model_file_registers_its_own_names(prefix, module):
    names = list_models(f"{prefix}*")
    assert names
    assert {model_module(n) for n in names} == {module}


def test_registry_module_imports_no_model():
    tree = ast.parse(Path(registry.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported  # the walk found the imports
    assert not [m for m in imported if m.startswith("geomed_mim")], imported


@pytest.mark.slow
def test_importing_the_package_registers_every_model(child_env, tmp_path):
    """In a fresh interpreter, ``import geomed_mim.models`` is enough for ``create_model``."""
    code = (
        "import geomed_mim.models as m; "
        "print(len(m.list_models())); "
        "print(type(m.create_model('hi_end_mae_vit_tiny_patch16', img_size=32)).__name__)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=child_env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["20", "HiEndMAE"]
