"""Sen1Floods11 through the command with the shipped configs (Sentinel-2 and Sentinel-1), shrunk
in size only (steps, encoder width), on a fixture in the release's layout: every method ×
fraction × seed row with its test and Bolivia hold-out water IoU, the NDWI and VV baselines'
water IoUs (−1 and NaN pixels ignored) equal to an independent computation, the report saying
when the Bolivia file is absent, and a folder not in that layout or a flag that does not fit
the sensor refused in one line naming the flag with exit status 2."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from geomed_mim.evaluate import is_flood_task, is_scene_task, main
from tests.conftest import REPO_ROOT
from tests.geomed_mim.evaluation.sen1floods11_fixture import HAND, write_sen1floods11

CONFIG = REPO_ROOT / "configs/evaluate/sen1floods11.yaml"
S1_CONFIG = REPO_ROOT / "configs/evaluate/sen1floods11_s1.yaml"
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


def read_vv(root: Path, chips: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """VV backscatter (dB) [N, H, W] and labels, −1 wherever VV or VH is NaN."""
    vv, labels = [], []
    for chip in chips:
        with rasterio.open(root / HAND / "S1Hand" / f"{chip}_S1Hand.tif") as f:
            both = f.read()
        with rasterio.open(root / HAND / "LabelHand" / f"{chip}_LabelHand.tif") as f:
            label = f.read(1)
        vv.append(both[0])
        labels.append(np.where(np.isnan(both).any(0), -1, label))
    return np.stack(vv), np.stack(labels)


def independent_ndwi_iou(root: Path, train: list[str], *scored: list[str]) -> list[float]:
    """The NDWI threshold with the best water IoU over 256 quantiles of the labeled training
    pixels, and each scored split's water IoU over its labeled pixels."""
    g, n, y = read(root, train)
    ok = y != -1
    ndwi = ((g - n) / (g + n))[ok]
    water = y[ok] == 1
    best, t_best = -1.0, None
    for t in np.unique(np.quantile(ndwi, np.linspace(0, 1, 256))):
        iou = np.sum(water & (ndwi > t)) / np.sum(water | (ndwi > t))
        if iou > best:
            best, t_best = iou, t
    out = []
    for chips in scored:
        g, n, y = read(root, chips)
        ok = y != -1
        pred, truth = ((g - n) / (g + n))[ok] > t_best, y[ok] == 1
        out.append(float(np.sum(pred & truth) / np.sum(pred | truth)))
    return out


def independent_vv_iou(root: Path, train: list[str], *scored: list[str]) -> list[float]:
    """``VV < t`` with the threshold of the best water IoU over 256 quantiles of the labeled
    training pixels' VV, and each scored split's water IoU over its labeled pixels."""
    vv, y = read_vv(root, train)
    ok = y != -1
    vv, water = vv[ok], y[ok] == 1
    best, t_best = -1.0, None
    for t in np.unique(np.quantile(vv, np.linspace(0, 1, 256))):
        iou = np.sum(water & (vv < t)) / np.sum(water | (vv < t))
        if iou > best:
            best, t_best = iou, t
    out = []
    for chips in scored:
        vv, y = read_vv(root, chips)
        ok = y != -1
        pred, truth = vv[ok] < t_best, y[ok] == 1
        out.append(float(np.sum(pred & truth) / np.sum(pred | truth)))
    return out


def results(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def refused(args: list[str], capsys) -> str:
    """The command's one-line refusal (exit status 2) of ``args``."""
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_the_shipped_config_end_to_end(release, tmp_path, capsys):
    root, names = release
    out = tmp_path / "out"
    args = ["--config", str(CONFIG)]
    assert is_flood_task(args)
    assert not is_scene_task(args)
    main([*args, "--data.root", str(root), *SHRINK, "--output", str(out)])
    rows = results(out)
    methods = {r["method"] for r in rows}
    assert methods == {"NDWI > t (water)", "scratch / linear", "scratch / finetune"}
    assert len(rows) == 3 * 2 * 3  # methods × fractions × seeds
    for r in rows:  # every row scored on the test split and on the Bolivia hold-out
        assert 0.0 <= float(r["iou_water"]) <= 1.0
        assert 0.0 <= float(r["bolivia_water_iou"]) <= 1.0
    full = [r for r in rows if r["method"].startswith("NDWI") and float(r["budget"]) == 1.0]
    test, bolivia = independent_ndwi_iou(root, names["train"], names["test"], names["bolivia"])
    assert min(test, bolivia) > 0.5  # the fixture's water is NDWI-separable, up to flipped labels
    for r in full:
        assert float(r["iou_water"]) == pytest.approx(test, abs=1e-9)
        assert float(r["bolivia_water_iou"]) == pytest.approx(bolivia, abs=1e-9)
        assert int(r["train_units"]) == 4
    half = [r for r in rows if float(r["budget"]) == 0.5]
    assert {int(r["train_units"]) for r in half} == {2}
    for name in ("results.md", "score_vs_budget.png", "config.yaml"):
        assert (out / name).is_file()
    report = (out / "results.md").read_text()
    assert "iou_water" in report
    assert "bolivia_water_iou" in report
    assert "Bolivia hold-out (flood_bolivia_data.csv, 2 chips" in report
    assert "bolivia_water_iou" in capsys.readouterr().out


def test_the_sentinel1_config_end_to_end(release, tmp_path, capsys):
    """S1Hand's VV, VH (dB, NaN no data) with the VV < t baseline; NaN pixels score nowhere."""
    root, names = release
    out = tmp_path / "out"
    main(["--config", str(S1_CONFIG), "--data.root", str(root), *SHRINK, "--output", str(out)])
    rows = results(out)
    methods = {r["method"] for r in rows}
    assert methods == {"VV < t (water)", "scratch / linear", "scratch / finetune"}
    assert len(rows) == 3 * 2 * 3
    for r in rows:
        assert 0.0 <= float(r["iou_water"]) <= 1.0
        assert 0.0 <= float(r["bolivia_water_iou"]) <= 1.0
    full = [r for r in rows if r["method"].startswith("VV") and float(r["budget"]) == 1.0]
    test, bolivia = independent_vv_iou(root, names["train"], names["test"], names["bolivia"])
    assert min(test, bolivia) > 0.5  # water is dark in the fixture's VV, up to noise and flips
    for r in full:
        assert float(r["iou_water"]) == pytest.approx(test, abs=1e-9)
        assert float(r["bolivia_water_iou"]) == pytest.approx(bolivia, abs=1e-9)
        assert -19.0 < float(r["threshold"]) < -10.0  # in dB, between water's and land's
    report = (out / "results.md").read_text()
    assert "S1Hand chips" in report
    assert "VV, VH" in report


def test_sentinel1_no_data_is_unlabeled_and_enters_the_encoder_as_zero(release):
    import torch

    from geomed_mim.evaluation.floods import Filled, FloodData, Sen1Floods11
    from geomed_mim.evaluation.scene_data import normalise

    root, _ = release
    chips = Sen1Floods11(root, "train", sensor="s1")
    assert chips.bands == ["VV", "VH"]
    item = chips[0]
    nan = item["image"].isnan()  # [2, H, W]
    assert nan[1].sum() > nan[0].sum() > 0  # VH alone is missing in places
    assert (item["mask"][nan.any(0)] == -1).all()
    mean, std = torch.tensor([-14.0, -21.0]), torch.tensor([5.0, 5.0])
    filled = Filled(chips, mean.numpy())[0]["image"]  # the fill encode() uses: mean / scale
    x = normalise(filled[None], FloodData(sensor="s1", scale=1.0), mean, std)[0]  # type: ignore[arg-type]
    assert torch.isfinite(x).all()
    assert (x[nan] == 0).all()
    assert (x[~nan] != 0).all()


def test_without_the_bolivia_file_the_report_says_so(release, tmp_path, capsys):
    root, _ = release
    bare = tmp_path / "no_bolivia"
    shutil.copytree(root, bare)
    (bare / "v1.1/splits/flood_handlabeled/flood_bolivia_data.csv").unlink()
    out = tmp_path / "out"
    main(["--config", str(CONFIG), "--data.root", str(bare), *SHRINK, "--encoders", "[]",
          "--output", str(out)])  # fmt: skip
    assert "the Bolivia hold-out is not scored" in capsys.readouterr().out
    rows = results(out)
    assert len(rows) == 2 * 3
    assert "bolivia_water_iou" not in rows[0]  # no column rather than a NaN one
    assert all(0.0 <= float(r["iou_water"]) <= 1.0 for r in rows)
    report = (out / "results.md").read_text()
    assert (
        "Bolivia hold-out: not scored, no v1.1/splits/flood_handlabeled/flood_bolivia_data.csv"
        in report
    )
    assert "bolivia_water_iou" not in report


@pytest.mark.parametrize(
    ("config", "flags", "named"),
    [
        (S1_CONFIG, ["--baselines", "[ndwi]"], "--baselines"),
        (CONFIG, ["--baselines", "[vv]"], "--baselines"),
        (S1_CONFIG, ["--data.scale", "1.0e-4"], "--data.scale"),
        (S1_CONFIG, ["--data.sensor", "s3"], "--data.sensor"),
    ],
)
def test_a_flag_that_does_not_fit_the_sensor_is_one_line(
    release, tmp_path, capsys, config, flags, named
):
    root, _ = release
    err = refused(["--config", str(config), "--data.root", str(root), *SHRINK, *flags,
                   "--output", str(tmp_path / "out")], capsys)  # fmt: skip
    assert named in err, err
    assert not (tmp_path / "out").exists()


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
    err = refused(["--config", str(CONFIG), "--data.root", str(bad), *SHRINK,
                   "--output", str(tmp_path / "out")], capsys)  # fmt: skip
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


def test_an_s2_encoder_on_the_sentinel1_chips_is_refused_in_one_line(release, tmp_path, capsys):
    from tests.geomed_mim.test_export import s2_checkpoint

    root, _ = release
    ckpt, _ = s2_checkpoint(tmp_path)  # records the 13 L1C bands: none is VV or VH
    err = refused(["--config", str(S1_CONFIG), "--data.root", str(root), *SHRINK,
                   "--baselines", "[]", "--encoders", f"[{ckpt}]",
                   "--output", str(tmp_path / "out")], capsys)  # fmt: skip
    assert "--encoders" in err, err
    assert "none of the dataset's (VV, VH)" in err, err


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


def test_a_converted_swin_v2_is_probed_through_its_last_stage(release, tmp_path, capsys):
    """A Swin V2 folder (as ``convert --from satvision`` writes it) on the chips: each token of
    its last stage (32 px apart here) gives its square's pixel logits, every probe a row; its
    three bands matched by name among the 13."""
    from geomed_mim.evaluation.patch_probes import PatchLinear
    from geomed_mim.evaluation.scene_data import PatchTokens
    from geomed_mim.models.swin import SwinV2Encoder
    from tests.geomed_mim.tasks.test_segmentation_swin import SWIN2, converted_swinv2

    root, _ = release
    folder, _ = converted_swinv2(tmp_path)
    out = tmp_path / "out"
    main(["--config", str(CONFIG), "--data.root", str(root), *SHRINK, "--baselines", "[]",
          "--encoders", f"[{folder}]", "--output", str(out)])  # fmt: skip
    rows = results(out)
    assert {r["kind"] for r in rows} == {"linear", "finetune"}
    assert len(rows) == 2 * 2 * 3  # probes × fractions × seeds
    assert all(0 <= float(r["iou_water"]) <= 1 for r in rows)
    assert "bands: 3 shared" in capsys.readouterr().out

    # the head's geometry: one token per 32 px square of a 64 px chip, logits at every pixel
    sizes = {k: v for k, v in SWIN2.items() if k != "patch_size"}
    enc = SwinV2Encoder(img_size=64, in_chans=13, patch_size=4, **sizes)
    tokens = PatchTokens(enc)
    assert tokens.stride == 32
    x = torch.randn(2, 13, 64, 64)
    t = tokens(x)
    assert t.shape == (2, 4, tokens.embed_dim)
    assert PatchLinear(tokens.embed_dim, 32, (2, 2))(t).shape == (2, 2, 64, 64)
