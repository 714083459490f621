"""Sen1Floods11 through the command with the shipped config, shrunk in size only (steps,
encoder width), on a fixture in the release's layout: every method × fraction × seed row, the
NDWI baseline's water IoU (−1 ignored) equal to an independent computation, and a folder not in
that layout refused in one line naming ``--data.root`` with exit status 2."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geomed_mim.evaluate import is_flood_task, is_scene_task, main
from tests.conftest import REPO_ROOT
from tests.geomed_mim.evaluation.sen1floods11_fixture import HAND, write_sen1floods11

CONFIG = REPO_ROOT / "configs/evaluate/sen1floods11.yaml"
SHRINK = [
    "--steps", "{linear: 6, finetune: 2}", "--check_every", "3", "--fractions", "[0.5, 1.0]",
    "--task.encoder", "{embed_dim: 16, depth: 1, num_heads: 2, patch_size: 16}",
]  # fmt: skip


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sen1floods11")
    return root, write_sen1floods11(root)


def read(root: Path, chips: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Green, NIR reflectance [N, H, W] each, and labels, read with rasterio."""
    green, nir, labels = [], [], []
    for chip in chips:
        with rasterio.open(root / HAND / "S2Hand" / f"{chip}_S2Hand.tif") as f:
            green.append(f.read(3) * 1e-4)
            nir.append(f.read(8) * 1e-4)
        with rasterio.open(root / HAND / "LabelHand" / f"{chip}_LabelHand.tif") as f:
            labels.append(f.read(1))
    return np.stack(green), np.stack(nir), np.stack(labels)


def independent_ndwi_iou(root: Path, train: list[str], test: list[str]) -> float:
    """The NDWI threshold with the best water IoU over 256 quantiles of the labeled training
    pixels, and the test water IoU over the labeled pixels."""
    g, n, y = read(root, train)
    ok = y != -1
    ndwi = ((g - n) / (g + n))[ok]
    water = y[ok] == 1
    best, t_best = -1.0, None
    for t in np.unique(np.quantile(ndwi, np.linspace(0, 1, 256))):
        iou = np.sum(water & (ndwi > t)) / np.sum(water | (ndwi > t))
        if iou > best:
            best, t_best = iou, t
    g, n, y = read(root, test)
    ok = y != -1
    pred, truth = ((g - n) / (g + n))[ok] > t_best, y[ok] == 1
    return float(np.sum(pred & truth) / np.sum(pred | truth))


def test_the_shipped_config_end_to_end(release, tmp_path, capsys):
    root, names = release
    out = tmp_path / "out"
    args = ["--config", str(CONFIG)]
    assert is_flood_task(args)
    assert not is_scene_task(args)
    main([*args, "--data.root", str(root), *SHRINK, "--output", str(out)])
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    methods = {r["method"] for r in rows}
    assert methods == {"NDWI > t (water)", "scratch / linear", "scratch / finetune"}
    assert len(rows) == 3 * 2 * 3  # methods × fractions × seeds
    for r in rows:
        assert 0.0 <= float(r["iou_water"]) <= 1.0
    full = [r for r in rows if r["method"].startswith("NDWI") and float(r["budget"]) == 1.0]
    expected = independent_ndwi_iou(root, names["train"], names["test"])
    assert expected > 0.5  # the fixture's water is NDWI-separable, up to the flipped labels
    for r in full:
        assert float(r["iou_water"]) == pytest.approx(expected, abs=1e-9)
        assert int(r["train_units"]) == 4
    half = [r for r in rows if float(r["budget"]) == 0.5]
    assert {int(r["train_units"]) for r in half} == {2}
    for name in ("results.md", "score_vs_budget.png", "config.yaml"):
        assert (out / name).is_file()
    assert "iou_water" in (out / "results.md").read_text()


def test_the_probe_ignores_no_data():
    from geomed_mim.evaluation.floods import water_iou

    target = np.array([[1, 1, 0, -1], [0, -1, 1, 0]])
    water = np.array([[1, 0, 0, 1], [1, 1, 1, 0]], dtype=bool)
    # labeled: (1,1) (1,0) (0,0) (0,1) (1,1) (0,0) → tp 2, union 4
    assert water_iou(target, water) == pytest.approx(2 / 4)


@pytest.mark.parametrize("break_it", ["no_splits", "flat", "missing_chip"])
def test_a_folder_not_in_the_layout_is_one_line(release, tmp_path, capsys, break_it):
    root, names = release
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    if break_it == "no_splits":
        shutil.rmtree(bad / "v1.1/splits")
    elif break_it == "flat":  # the chips straight under ROOT
        shutil.move(str(bad / HAND / "S2Hand"), str(bad / "S2Hand"))
    else:
        (bad / HAND / "LabelHand" / f"{names['test'][0]}_LabelHand.tif").unlink()
    with pytest.raises(SystemExit) as e:
        main(["--config", str(CONFIG), "--data.root", str(bad), *SHRINK,
              "--output", str(tmp_path / "out")])  # fmt: skip
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert "--data.root" in err, err


def test_a_pretrained_encoder_is_probed_with_its_bands_by_name(release, tmp_path, capsys):
    from tests.geomed_mim.test_export import S2_BANDS, s2_checkpoint

    root, _ = release
    ckpt, _ = s2_checkpoint(tmp_path)  # ViT-Ti/16 on the 13 L1C bands, recorded at 32 × 32
    out = tmp_path / "out"
    main(["--config", str(CONFIG), "--data.root", str(root), *SHRINK, "--baselines", "[]",
          "--encoders", f"[{ckpt}]", "--output", str(out)])  # fmt: skip
    said = capsys.readouterr().out
    assert "normalised by its recorded statistics" in said
    assert "the training split's for" not in said  # every band found by name
    assert len(S2_BANDS) == 13
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 3  # probes × fractions × seeds
    assert {r["kind"] for r in rows} == {"linear", "finetune"}
    assert all(0.0 <= float(r["iou_water"]) <= 1.0 for r in rows)


def test_each_token_predicts_its_own_patch():
    import torch

    from geomed_mim.evaluation.floods import PatchLinear

    patch, grid = 4, (2, 3)
    probe = PatchLinear(dim=8, patch=patch, grid=grid)
    with torch.no_grad():  # logit (class c, pixel dy, dx of the patch) = token value × (c+1)
        probe.norm = torch.nn.Identity()
        probe.linear.weight.zero_()
        probe.linear.bias.zero_()
        probe.linear.weight[: patch * patch, 0] = 1.0
        probe.linear.weight[patch * patch :, 0] = 2.0
        tokens = torch.zeros(1, grid[0] * grid[1], 8)
        tokens[0, :, 0] = torch.arange(grid[0] * grid[1]).float()  # row-major token index
        logits = probe(tokens)
    assert logits.shape == (1, 2, grid[0] * patch, grid[1] * patch)
    yy, xx = np.mgrid[: grid[0] * patch, : grid[1] * patch]
    expected = (yy // patch) * grid[1] + xx // patch
    np.testing.assert_array_equal(logits[0, 0].numpy(), expected)
    np.testing.assert_array_equal(logits[0, 1].numpy(), 2 * expected)


def test_training_chips_all_no_data_give_nan_rows(release, tmp_path, capsys):
    root, names = release
    bad = tmp_path / "nodata"
    shutil.copytree(root, bad)
    for chip in names["train"]:
        path = bad / HAND / "LabelHand" / f"{chip}_LabelHand.tif"
        with rasterio.open(path, "r+") as f:
            f.write(np.full((1, f.height, f.width), -1, np.int16))
    out = tmp_path / "out"
    main(["--config", str(CONFIG), "--data.root", str(bad), *SHRINK, "--output", str(out)])
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * 3
    assert all(np.isnan(float(r["iou_water"])) for r in rows)


def test_a_swin_encoder_is_refused_in_one_line(release, tmp_path, capsys):
    from tests.geomed_mim.tasks.test_segmentation_swin import converted_swinv2

    root, _ = release
    folder, _ = converted_swinv2(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["--config", str(CONFIG), "--data.root", str(root), *SHRINK,
              "--encoders", f"[{folder}]", "--output", str(tmp_path / "out")])  # fmt: skip
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert "--encoders" in err, err
    assert "Swin" in err, err
