"""The CPU pretraining study's table and diagnostics, on made-up rows and arrays (the study
itself takes tens of minutes; ``--quick`` checks that it runs end to end)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def study():
    path = REPO_ROOT / "benchmarks" / "cpu_pretraining_study.py"
    spec = importlib.util.spec_from_file_location("cpu_pretraining_study", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def rows(method: str, kind: str, mious: list[float], forest: list[float]) -> list[dict]:
    return [
        {"method": method, "kind": kind, "seed": str(i), "step": "10",
         "miou": str(m), "iou_forest": str(f)}
        for i, (m, f) in enumerate(zip(mious, forest, strict=True))
    ]  # fmt: skip


def test_table_ratios_and_seed_spread(study):
    table = study.summary_table(
        rows("logistic regression (pixels)", "baseline", [0.3] * 3, [0.9] * 3)
        + rows("NDVI > t (forest)", "baseline", ["nan"] * 3, [0.8] * 3)
        + rows("scratch / probe", "probe", [0.10, 0.11, 0.12], [0.5, 0.6, 0.7])
        + rows("mae / probe", "probe", [0.20, 0.21, 0.22], [0.6, 0.6, 0.6])
    )
    header, rule, *body = table
    assert header.count("|") == rule.count("|") == 9
    by_method = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in body}
    assert set(by_method) == {"logistic regression (pixels)", "NDVI > t (forest)",
                              "scratch / probe", "mae / probe"}  # fmt: skip
    assert by_method["scratch / probe"][3] == "1.00 (reference)"
    mae = by_method["mae / probe"]
    assert mae[2] == "0.210 ± 0.010"
    assert mae[3] == "1.91"
    assert mae[4].startswith("yes (better)")  # 0.10 apart, spreads 0.01 + 0.01
    assert mae[7].startswith("no")  # forest: 0.0 apart, spread 0.1
    assert by_method["NDVI > t (forest)"][2] == "—"


def test_effective_rank_sees_collapse(study):
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(2000, 32))
    collapsed = rng.normal(size=(2000, 1)) @ rng.normal(size=(1, 32))
    assert study.effective_rank(spread) > 25
    assert study.effective_rank(collapsed) < 1.5


def test_patch_labels_and_miou(study):
    y = torch.zeros(1, 8, 8, dtype=torch.long)
    y[0, :4, :4] = 2  # top-left patch: forest
    y[0, :4, 4:] = 3
    y[0, 4:, :4] = 0  # unlabeled
    y[0, 4:, 4:] = 2
    y[0, 4, 4] = 3  # the majority stays 2
    labels = study.patch_labels(y, 4, ignore=0)
    assert labels.tolist() == [2, 3, 0, 2]
    assert study.patch_miou(np.array([2, 3, 2]), np.array([2, 3, 2])) == 1.0
    assert study.patch_miou(np.array([2, 2, 2]), np.array([2, 3, 2])) == pytest.approx(1 / 3)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    assert tuple(study.patches(x, 4).shape) == (8, 3 * 4 * 4)
