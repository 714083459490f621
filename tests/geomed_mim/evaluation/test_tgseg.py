"""A torchgeo segmentation dataset through the command: the shipped Cloud Cover Detection config,
shrunk in size only (steps, encoder width, fractions), on a fixture in torchgeo's layout (read
by torchgeo's own class) gives every method × fraction × seed row; the per-pixel logistic
regression's mIoU and pixel accuracy equal an independent computation; another dataset
(LandCover.ai: RGB with no band names, a validation split, its own class names) runs through
the same protocol; user mistakes are one line naming the flag, exit status 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from sklearn.linear_model import LogisticRegression

from geomed_mim.evaluate import is_flood_task, is_torchgeo_segmentation_task, main
from tests.conftest import REPO_ROOT
from tests.geomed_mim.evaluation.cloudcover_fixture import BANDS, write_cloudcover
from tests.geomed_mim.evaluation.test_floods import SHRINK, refused, results  # the same shrink

CONFIG = REPO_ROOT / "configs/evaluate/cloud_cover.yaml"


@pytest.fixture(scope="module")
def cloudcover(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("cloudcover")
    return root, write_cloudcover(root)


def read(root: Path, split: str, chips: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance pixels [N, 4] (B02, B03, B04, B08) and labels [N], read with rasterio."""
    x, y = [], []
    for chip in chips:
        bands = []
        for band in BANDS:
            with rasterio.open(root / split / f"{split}_features" / chip / f"{band}.tif") as f:
                bands.append(f.read(1).astype(np.float64) * 1e-4)
        x.append(np.stack(bands, -1).reshape(-1, len(BANDS)))
        with rasterio.open(root / split / f"{split}_labels" / f"{chip}.tif") as f:
            y.append(f.read(1).reshape(-1).astype(np.int64))
    return np.concatenate(x), np.concatenate(y)


def independent_scores(root: Path, names: dict[str, list[str]], seed: int) -> tuple[float, float]:
    """Standardize on every training pixel, logistic regression, the test pixels' mIoU (mean
    of the two classes' IoU) and pixel accuracy."""
    x, y = read(root, "train", names["train"])
    mean, std = x.mean(0), x.std(0)
    model = LogisticRegression(max_iter=500, random_state=seed).fit((x - mean) / std, y)
    xt, yt = read(root, "test", names["test"])
    pred = model.predict((xt - mean) / std)
    ious = [np.sum((pred == c) & (yt == c)) / np.sum((pred == c) | (yt == c)) for c in (0, 1)]
    return float(np.mean(ious)), float(np.mean(pred == yt))


def test_torchgeo_reads_the_fixture(cloudcover):
    from torchgeo.datasets import CloudCoverDetection

    root, names = cloudcover
    for split in ("train", "test"):
        ds = CloudCoverDetection(root, split, download=False)
        assert len(ds) == len(names[split])
        item = ds[0]
        assert item["image"].shape == (4, 32, 32)
        assert item["mask"].shape == (32, 32)
        assert set(item["mask"].unique().tolist()) == {0, 1}
    assert tuple(ds.bands) == BANDS


def test_a_torchgeo_class_with_masks_selects_this_protocol():
    config = ["--config", str(CONFIG)]
    assert is_torchgeo_segmentation_task(config)
    assert not is_flood_task(config)
    eurosat = ["--config", str(REPO_ROOT / "configs/evaluate/eurosat_ms.yaml")]
    assert not is_torchgeo_segmentation_task(eurosat)
    # another torchgeo class on top of this config: this protocol, which checks its samples
    assert is_torchgeo_segmentation_task([*config, "--data.class_path=torchgeo.datasets.EuroSAT"])
    assert not is_torchgeo_segmentation_task([*eurosat, "--data.class_path", "x.Module"])


def test_the_shipped_config_end_to_end(cloudcover, tmp_path, capsys):
    root, names = cloudcover
    out = tmp_path / "report"
    main(["--config", str(CONFIG), "--data.root", str(root), *SHRINK, "--output", str(out)])
    rows = results(out)
    assert len(rows) == 3 * 2 * 3  # methods × fractions × seeds
    assert {r["kind"]: r["method"] for r in rows} == {
        "baseline": "pixel logistic regression",  # beside each probe at each fraction
        "linear": "scratch / linear",
        "finetune": "scratch / finetune",
    }
    for r in rows:
        for m in ("miou", "pixel_accuracy", "iou_clear", "iou_cloud"):
            assert 0.0 <= float(r[m]) <= 1.0
    for r in (r for r in rows if r["kind"] == "baseline" and float(r["budget"]) == 1.0):
        miou, accuracy = independent_scores(root, names, int(r["seed"]))
        assert miou > 0.8  # clouds are bright in every band, up to noise and flipped labels
        assert float(r["miou"]) == pytest.approx(miou, abs=1e-9)
        assert float(r["pixel_accuracy"]) == pytest.approx(accuracy, abs=1e-9)
        assert int(r["pixels"]) == 6 * 32 * 32
    assert {int(r["train_units"]) for r in rows if float(r["budget"]) == 0.5} == {3}
    for name in ("results.md", "score_vs_budget.png", "config.yaml"):
        assert (out / name).is_file()
    report = (out / "results.md").read_text()
    assert "bands B02, B03, B04, B08; classes clear, cloud" in report
    assert "no validation split" in report
    assert "has no val split" in capsys.readouterr().out


def test_the_training_pixels_are_subsample_s_draw(cloudcover):
    """Read chip by chip, the pixel limit keeps the pixels a draw over all of them keeps."""
    from geomed_mim.evaluation.baselines import Pixels
    from geomed_mim.evaluation.pixels import subsample
    from geomed_mim.evaluation.tgseg import SegData, SegProtocol, read_chips, training_pixels

    root, _ = cloudcover
    p = SegProtocol(data=SegData(root=str(root), classes=["clear", "cloud"]))
    chips = read_chips(p, lambda line: None)
    idx = np.array([1, 3, 4])
    whole = training_pixels(chips, idx, 10**9, 0, 1e-4)
    assert len(whole.labels) == 3 * 32 * 32
    kept = training_pixels(chips, idx, 500, 7, 1e-4)
    expected = subsample(Pixels(whole.values, whole.labels), 500, 7)
    np.testing.assert_array_equal(kept.values, expected.values)
    np.testing.assert_array_equal(kept.labels, expected.labels)


def write_landcoverai(root: Path, rng: np.random.Generator) -> None:
    """LandCover.ai in torchgeo's layout: ``output/<id>.jpg`` (RGB), ``output/<id>_m.png``
    (class ids 0..4) and ``{train,val,test}.txt`` listing the ids."""
    (root / "output").mkdir(parents=True)
    for split, n in {"train": 4, "val": 2, "test": 2}.items():
        ids = [f"M-33-20-D-c-4-2_{split}{i}" for i in range(n)]
        for id_ in ids:
            mask = np.zeros((32, 32), np.uint8)
            mask[:16] = 2  # woodland above, background below
            mask[20:, 20:] = 3  # water
            image = np.stack([mask * 40 + 30, 200 - mask * 30, mask * 20 + 60], -1)
            noisy = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(root / "output" / f"{id_}.jpg", quality=95)
            Image.fromarray(mask).save(root / "output" / f"{id_}_m.png")
        (root / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


def test_another_torchgeo_dataset_without_band_names(tmp_path, capsys):
    """LandCover.ai (RGB orthophotos): the class's own class names, a validation split that
    keeps the probes' states; no band names, so a pretrained encoder is refused."""
    from tests.geomed_mim.test_export import s2_checkpoint

    root = tmp_path / "landcoverai"
    write_landcoverai(root, np.random.default_rng(0))
    lc = ["--config", str(CONFIG), "--data.class_path", "torchgeo.datasets.LandCoverAI",
          "--data.classes", "null", "--data.scale", "1.0", "--data.root", str(root),
          *SHRINK]  # fmt: skip
    assert is_torchgeo_segmentation_task(lc)
    out = tmp_path / "out"
    main([*lc, "--output", str(out)])
    rows = results(out)
    assert len(rows) == 3 * 2 * 3
    assert {"iou_Background", "iou_Woodland", "iou_Water", "iou_Road"} <= set(rows[0])
    assert {int(r["select_units"]) for r in rows if r["kind"] != "baseline"} == {2}
    assert "bands unnamed" in (out / "results.md").read_text()
    ckpt, _ = s2_checkpoint(tmp_path)
    err = refused([*lc, "--encoders", f"[{ckpt}]", "--output", str(tmp_path / "o2")], capsys)
    assert "--encoders" in err, err
    assert "names no bands" in err, err


def test_a_pretrained_encoder_is_probed_with_its_bands_by_name(cloudcover, tmp_path, capsys):
    """An encoder of the 13 L1C bands reads the four chips' bands by name, each normalised by
    the encoder's recorded statistics (none falls back to the training split's)."""
    from tests.geomed_mim.test_export import s2_checkpoint

    root, _ = cloudcover
    ckpt, _ = s2_checkpoint(tmp_path)
    report = tmp_path / "report"
    flags = ["--baselines", "[]", "--encoders", f"[{ckpt}]", "--output", str(report)]
    main(["--config", str(CONFIG), "--data.root", str(root), *SHRINK, *flags])
    rows = results(report)
    assert [r["kind"] for r in rows[:2]] == ["linear", "finetune"]
    assert len(rows) == 2 * 2 * 3  # probes × fractions × seeds
    assert all(0.0 <= float(r["miou"]) <= 1.0 for r in rows)
    said = capsys.readouterr().out
    assert "the dataset's bands B02, B03, B04, B08" in said
    assert "normalised by its recorded statistics" in said
    assert "the training split's for" not in said


def sar_checkpoint(tmp_path: Path) -> Path:
    from tests.geomed_mim.training import TINY_DECODER, task_checkpoint

    path, _ = task_checkpoint(tmp_path, ["VV", "VH"], model="mae_vit_tiny_patch16", in_chans=2,
                              img_size=32, model_kwargs=TINY_DECODER)  # fmt: skip
    return path


@pytest.mark.parametrize("mistake", ["no_root", "empty_root", "classification", "sar_encoder"])
def test_a_user_mistake_is_one_line(cloudcover, tmp_path, capsys, mistake):
    root, _ = cloudcover
    flags, named, says = ["--data.root", str(root)], "--data.root", ""
    if mistake == "no_root":
        flags, says = ["--data.root", str(tmp_path / "nowhere")], "no such folder"
    elif mistake == "empty_root":
        (tmp_path / "empty").mkdir()
        flags, says = ["--data.root", str(tmp_path / "empty")], "no CloudCoverDetection there"
    elif mistake == "classification":
        from tests.geomed_mim.evaluation.eurosat_fixture import write_eurosat

        write_eurosat(tmp_path / "eurosat", size=32)
        flags = ["--data.root", str(tmp_path / "eurosat"), "--data.class_path",
                 "torchgeo.datasets.EuroSAT", "--data.classes", "null"]  # fmt: skip
        named, says = "--data.class_path", "not a segmentation dataset"
    else:
        flags += ["--encoders", f"[{sar_checkpoint(tmp_path)}]", "--baselines", "[]"]
        named, says = "--encoders", "none of the dataset's (B02, B03, B04, B08)"
    out = tmp_path / "out"
    err = refused(["--config", str(CONFIG), *SHRINK, *flags, "--output", str(out)], capsys)
    assert named in err, err
    assert says in err, err
    assert not out.exists()
