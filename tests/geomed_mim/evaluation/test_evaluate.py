"""The evaluation command on the labeled demo store, with the shipped task config shrunk in size
only: every method × budget × seed row, baselines equal to an independent computation from the
source GeoTIFFs (on a spatial split recomputed from the manifest's windows), the same number of
optimizer steps at every budget, early stopping that keeps the best held-out state, and user
mistakes as one line with exit status 2."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
import yaml
from lightning.pytorch import Callback
from rasterio.windows import Window
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch.optim.optimizer import register_optimizer_step_post_hook

from geomed_mim.evaluate import main
from geomed_mim.evaluation.deep import (
    MODES,
    SCRATCH,
    DeepRun,
    fit_and_select,
    run_deep,
    validating_on,
)
from geomed_mim.evaluation.protocol import (
    Protocol,
    baseline_rows,
    datamodule,
    deep_rows,
    write_report,
)
from geomed_mim.tasks.segmentation import SegmentationTask
from tests.conftest import REPO_ROOT
from tests.geomed_mim.conftest import usage_error_line

CONFIG = REPO_ROOT / "configs/evaluate/lulc_sentinel2_demo.yaml"
DEMO = REPO_ROOT / "geomed_mim/demo_data/sentinel2_l1c"
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
FOREST = 2  # class id in configs/data/classes/eolearn_lulc.yaml


def shipped_protocol(store: Path, out: Path, **changes) -> Protocol:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["data"]["init_args"]["store"] = str(store)
    cfg.update(output=str(out), **changes)
    return Protocol(**cfg)


# -- an independent computation, from the GeoTIFFs the store was built from ---------------------
def spatial_side(manifest: pd.DataFrame) -> pd.Series:
    """The shipped config's east hold-out from the windows: validation starts at the tile
    column edge leaving the share of the width nearest ``holdout_fraction``; training tiles
    end ``holdout_margin`` pixels before it; the rest (between) is None."""
    args = yaml.safe_load(CONFIG.read_text())["data"]["init_args"]
    width = int((manifest.col_off + manifest.width).max())
    edges = np.unique(manifest.col_off[manifest.col_off > 0])
    line = edges[np.argmin(np.abs((width - edges) / width - args["holdout_fraction"]))]
    side = pd.Series(None, index=manifest.index, dtype=object)
    side[manifest.col_off >= line] = "val"
    side[manifest.col_off + manifest.width <= line - args["holdout_margin"]] = "train"
    return side


def scene_pixels(store: Path, side: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per scene: (reflectance [N, 13] = DN · 1e-4, label [N]) of the manifest's usable tiles
    (not excluded, not a duplicate) on ``side`` of the spatial split, label 0 (no data)
    dropped."""
    manifest = pd.read_parquet(store / "manifest.parquet")
    usable = manifest["excluded"].isna() & manifest["dup_of"].isna()
    manifest = manifest[usable]
    rows = manifest[spatial_side(manifest) == side]
    with rasterio.open(DEMO / "labels/lulc_mask.tif") as src:
        mask = src.read(1)
    out = {}
    for scene, tiles in rows.groupby("scene"):
        with rasterio.open(DEMO / f"scenes/{scene}.tif") as src:
            values, labels = [], []
            for t in tiles.itertuples():
                win = Window(t.col_off, t.row_off, t.width, t.height)
                dn = src.read(window=win).astype(np.float64)  # [13, h, w]
                lab = mask[t.row_off : t.row_off + t.height, t.col_off : t.col_off + t.width]
                values.append(dn.reshape(13, -1).T * 1e-4)
                labels.append(lab.reshape(-1))
        v, lab = np.concatenate(values), np.concatenate(labels)
        out[scene] = (v[lab != 0], lab[lab != 0])
    return out


def merged(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def iou(target: np.ndarray, pred: np.ndarray) -> float:
    return float(np.sum(target & pred) / np.sum(target | pred))


def independent_ndvi_iou(train, val) -> float:
    """NDVI = (NIR − red) / (NIR + red) (B08, B04); the threshold among 256 quantiles of the
    training NDVI with the best training forest IoU; forest IoU on val."""

    def ndvi(v):
        nir, red = v[:, BANDS.index("B08")], v[:, BANDS.index("B04")]
        return (nir - red) / (nir + red)

    tr = ndvi(train[0])
    best, best_t = -1.0, None
    for t in np.unique(np.quantile(tr, np.linspace(0, 1, 256))):
        score = iou(train[1] == FOREST, tr > t)
        if score > best:
            best, best_t = score, t
    return iou(val[1] == FOREST, ndvi(val[0]) > best_t)


def independent_logistic_miou(train, val) -> float:
    """Standardize on train, multinomial logistic regression; mIoU over the classes present in
    the val target or prediction."""
    scaler = StandardScaler().fit(train[0])
    model = LogisticRegression(max_iter=500, random_state=0).fit(
        scaler.transform(train[0]), train[1]
    )
    pred = model.predict(scaler.transform(val[0]))
    ious = [iou(val[1] == c, pred == c) for c in np.union1d(val[1], pred)]
    return float(np.mean(ious))


def test_baselines_equal_an_independent_computation(lulc_store, tmp_path):
    """All training scenes (budget 1.0), each seed: the same numbers as written out here."""
    protocol = shipped_protocol(lulc_store, tmp_path, budgets=[1.0])
    rows = baseline_rows(protocol, lambda line: None)
    train, val = scene_pixels(lulc_store, "train"), merged(scene_pixels(lulc_store, "val").values())
    assert len(train) == 5  # every date of the training area
    assert len(val[1]) > 10_000
    check_baseline_rows(rows, merged(list(train.values())), val, budget=1.0)


def check_baseline_rows(rows, train, val, budget: float) -> None:
    ndvi_rows = [r for r in rows if r["method"] == "NDVI > t (forest)" and r["budget"] == budget]
    lr_rows = [r for r in rows if r["method"].startswith("logistic") and r["budget"] == budget]
    assert [r["seed"] for r in ndvi_rows] == [r["seed"] for r in lr_rows] == [0, 1, 2]
    ndvi, lr = independent_ndvi_iou(train, val), independent_logistic_miou(train, val)
    assert ndvi > 0.5  # forest is most of the area: a real signal, not a degenerate threshold
    for r in ndvi_rows:
        assert float(r["iou_forest"]) == pytest.approx(ndvi, abs=1e-3)
    for r in lr_rows:
        assert float(r["miou"]) == pytest.approx(lr, abs=1e-3)


@pytest.mark.slow
def test_shipped_config_writes_every_row_table_and_plot(lulc_store, tmp_path, capsys):
    """The shipped config, steps and budgets shrunk: every method × budget has 3 seeds in the
    CSV and a mean ± std row in the markdown, which names the split; the plot is a PNG;
    baselines match as above."""
    out = tmp_path / "run"
    main(["--config", str(CONFIG), "--data.init_args.store", str(lulc_store),
          "--steps", "{probe: 2, attentive: 2, finetune: 2}", "--check_every", "1",
          "--budgets", "[0.2, 1.0]",
          "--output", str(out)])  # fmt: skip
    assert "results.md" in capsys.readouterr().out
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    methods = {"logistic regression (pixels)", "NDVI > t (forest)",
               "scratch / probe", "scratch / attentive", "scratch / finetune"}  # fmt: skip
    assert {r["method"] for r in rows} == methods
    for m in methods:
        for b in ("0.2", "1.0"):
            seeds = sorted(int(r["seed"]) for r in rows if r["method"] == m and r["budget"] == b)
            assert seeds == [0, 1, 2], (m, b)
    for r in rows:
        assert math.isfinite(float(r["iou_forest"]))
        if not r["method"].startswith("NDVI"):
            assert 0 <= float(r["miou"]) <= 1
    table = (out / "results.md").read_text()
    assert len([ln for ln in table.splitlines() if ln.startswith("| ") and "±" in ln]) == 10
    assert "Validation: spatial hold-out: the east 32% of the area" in table
    assert "4 px margin" in table
    for r in rows:
        if r["kind"] in ("probe", "attentive", "finetune"):
            assert int(r["step"]) in (1, 2)  # a checked step, the best on the select split
            assert int(r["select_units"]) >= 1
    assert (out / "score_vs_budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    train = scene_pixels(lulc_store, "train")
    val = merged(scene_pixels(lulc_store, "val").values())
    for r in rows:
        r["seed"], r["budget"] = int(r["seed"]), float(r["budget"])
    check_baseline_rows(rows, merged(list(train.values())), val, budget=1.0)
    # budget 0.2: one training scene (date) per seed, whichever the seed drew
    one_scene = [independent_ndvi_iou(p, val) for p in train.values()]
    for r in rows:
        if r["method"].startswith("NDVI") and r["budget"] == 0.2:
            assert r["train_units"] == "1"
            assert min(abs(float(r["iou_forest"]) - v) for v in one_scene) < 1e-3, r


def store_error_line(store, tmp_path, args: list[str], capsys) -> str:
    """The usage error line of the shipped config on ``store``, output under ``tmp_path/run``."""
    base = ["--config", str(CONFIG), "--data.init_args.store", str(store),
            "--output", str(tmp_path / "run")]  # fmt: skip
    return usage_error_line(main, base + args, capsys)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--seeds", "[0, 1]"], "--seeds"),
        (["--budgets", "[0, 1.0]"], "--budgets"),
        (["--encoders", "[scratch, no/such.ckpt]"], "--encoders no/such.ckpt"),
        (["--modes", "[probe, lora]"], "--modes"),
        (["--baselines", "[{kind: spectral_index, index: ndwi, class: lake}]"], ".class 'lake'"),
        (["--baselines", "[{kind: spectral_index, index: evi, class: forest}]"], ".index 'evi'"),
        (["--baselines", "[{kind: hu_window}]"], "--baselines[0]"),
        (["--step", "3"], "--step"),
        (["--epochs", "{probe: 3}"], "--epochs"),
        (["--steps", "{probe: 0, finetune: 2}"], "--steps.probe"),
        (["--select_fraction", "1.0"], "--select_fraction"),
        (["--check_every", "0"], "--check_every"),
    ],
)
def test_mistakes_are_one_line_naming_the_flag(lulc_store, tmp_path, capsys, args, needle):
    line = store_error_line(lulc_store, tmp_path, args, capsys)
    assert line.startswith("error: "), line
    assert needle in line, line
    assert not (tmp_path / "run" / "results.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--data.init_args.holdout_margin", "90"], "--data.init_args.holdout_margin 90"),
        (["--data.init_args.holdout_side", "up"], "--data.init_args.holdout_side 'up'"),
    ],
)
def test_split_mistakes_are_one_line_naming_the_flag(lulc_store, tmp_path, capsys, args, needle):
    line = store_error_line(lulc_store, tmp_path, args, capsys)
    assert needle in line, line


@pytest.mark.slow
def test_a_missing_store_is_one_line(tmp_path, capsys):
    args = ["--config", str(CONFIG), "--data.init_args.store", str(tmp_path / "nope")]
    line = usage_error_line(main, args, capsys)
    assert "--data.init_args.store" in line, line


@pytest.mark.parametrize("name", ["lulc_sentinel2_demo.yaml", "ct_organs_demo.yaml"])
def test_shipped_evaluate_configs_parse(name):
    """Every shipped task config parses into the protocol with >= 3 seeds and known kinds."""
    from geomed_mim.evaluate import parser
    from geomed_mim.evaluation.baselines import BASELINE_KINDS
    from geomed_mim.evaluation.deep import MODES

    args = ["--config", str(REPO_ROOT / "configs/evaluate" / name)]
    cfg = parser().parse_args(args).as_dict()
    assert len(set(cfg["seeds"])) >= 3
    assert set(cfg["modes"]) <= set(MODES)
    assert all(0 < b <= 1 for b in cfg["budgets"])
    assert {b["kind"] for b in cfg["baselines"]} <= set(BASELINE_KINDS)
    assert cfg["data"]["class_path"].startswith("geomed_mim.data.segmentation.")


def counting_optimizer_steps() -> tuple[list[int], Any]:
    """A counter of every optimizer step taken in this process, and its hook handle."""
    count = [0]

    def hook(optimizer, args, kwargs) -> None:
        count[0] += 1

    return count, register_optimizer_step_post_hook(hook)


@pytest.mark.slow
def test_every_budget_trains_the_same_number_of_optimizer_steps(lulc_store, tmp_path):
    """The shipped protocol at its smallest and largest budget: the optimizer steps counted
    by torch are the configured steps at both, though one scene fills under one batch."""
    protocol = shipped_protocol(lulc_store, tmp_path, steps={"probe": 7, "finetune": 7},
                                check_every=3)  # fmt: skip
    counted, steps = {}, []
    for budget in (min(protocol.budgets), max(protocol.budgets)):
        dm = datamodule(protocol, budget, seed=0, select=True)
        count, handle = counting_optimizer_steps()
        try:
            scores = run_deep(DeepRun(SCRATCH, "probe", budget, 0, 7, 3), dm, protocol.task, "cpu")
        finally:
            handle.remove()
        counted[budget] = (count[0], len(dm.train_dataset))
        steps.append(scores["step"])
    (small, small_tiles), (large, large_tiles) = counted.values()
    assert small == large == 7
    assert small_tiles < protocol.data["init_args"]["batch_size"] < large_tiles
    assert all(s in (3, 6, 7) for s in steps)  # the kept state is from a checked step


class WorseAfter(Callback):
    """After ``step``, the linear head predicts one class absent from the select split
    everywhere (select mIoU about 0): later states are worse by construction."""

    def __init__(self, step: int, channel: int) -> None:
        self.step, self.channel = step, channel

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.step:
            head = pl_module.net.head
            with torch.no_grad():
                head.weight.zero_()
                head.bias.fill_(-100.0)
                head.bias[self.channel] = 100.0


@pytest.mark.slow
def test_early_stopping_keeps_the_best_select_state(lulc_store, tmp_path):
    """Checks every 3 of 12 steps, states after step 6 spoiled: the kept step is one of the
    first two checks, the best of the select scores, and the kept state scores exactly that
    on the select split again (it is that step's state, not the last one)."""
    protocol = shipped_protocol(lulc_store, tmp_path)
    dm = datamodule(protocol, 1.0, seed=0, select=True)
    present = set()
    for i in range(len(dm.select_dataset)):
        present |= set(np.unique(dm.select_dataset[i]["label"].numpy()).tolist())
    task = SegmentationTask.for_data(dm, **{**protocol.task, **MODES["probe"]})
    absent = [k for k, c in enumerate(task.class_ids) if c not in present]
    run = DeepRun(SCRATCH, "probe", 1.0, 0, steps=12, check_every=3)
    trainer, keep = fit_and_select(run, task, dm, "cpu", callbacks=[WorseAfter(6, absent[0])])
    steps, scores = zip(*keep.history, strict=True)
    assert steps == (3, 6, 9, 12)
    assert max(scores[2:]) < 0.01  # spoiled: one class that (nearly) never occurs
    assert keep.step in (3, 6)
    assert keep.best == max(scores) > max(scores[2:])
    assert keep.step == steps[scores.index(keep.best)]  # the first of equals
    with validating_on(dm, dm.select_dataset):
        (again,) = trainer.validate(task, datamodule=dm, verbose=False)
    assert float(again["val/miou"]) == pytest.approx(keep.best, abs=1e-6)


CT_CONFIG = REPO_ROOT / "configs/evaluate/ct_organs_demo.yaml"


def independent_hu_window_dice(store: Path) -> dict[str, float]:
    """The shipped slab split recomputed from the whole volume (read with the store's own
    windowing, split by Z index here): per organ, the 2nd–98th percentile HU of its training
    voxels (clear of the slab and margin); Dice of that interval on the slab's labeled voxels
    (ignore_index left out)."""
    from geomed_mim.data.segmentation import CTSegDataModule

    args = yaml.safe_load(CT_CONFIG.read_text())["data"]["init_args"]
    dm = CTSegDataModule(**{**args, "stores": [str(store)], "val_split": "train"})
    dm.setup("fit")
    item = dm.val_dataset[0]
    lo, hi = dm.window
    hu = item["image"][0, 0].double().numpy() * (hi - lo) + lo
    label = item["label"][0, 0].numpy()
    size = round(hu.shape[2] * args["slab_fraction"])
    train = (slice(None), slice(None), slice(size + args["slab_margin"], None))
    val = (slice(None), slice(None), slice(0, size))
    labeled = label[val] != dm.classes["ignore_index"]
    out = {}
    for cid, name in zip(dm.classes["ids"][1:], dm.classes["names"][1:], strict=True):
        a, b = np.percentile(hu[train][label[train] == cid], [2, 98])
        pred = (hu[val] >= a) & (hu[val] <= b) & labeled
        target = label[val] == cid
        out[name] = 2 * float(np.sum(pred & target)) / float(pred.sum() + target.sum())
    return out


@pytest.mark.slow
def test_ct_config_validates_on_the_held_out_slab(ct_organs_store, tmp_path, capsys):
    """The shipped CT config, steps shrunk: every row, the note names the slab split, and the
    HU-window baseline equals the same computation on the Z slices recomputed here."""
    out = tmp_path / "ct"
    main(["--config", str(CT_CONFIG), "--data.init_args.stores", f"[{ct_organs_store}]",
          "--steps", "{probe: 1, finetune: 1}", "--output", str(out)])  # fmt: skip
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 3  # HU window, probe, finetune × 3 seeds
    table = (out / "results.md").read_text()
    assert "Validation: slab hold-out: the start 30% of each volume along Z" in table
    assert "4 voxel margin" in table
    expected = independent_hu_window_dice(ct_organs_store)
    for r in rows:
        if r["method"].startswith("HU window"):
            for name, dice in expected.items():
                assert float(r[f"dice_{name}"]) == pytest.approx(dice, abs=1e-6), name
        else:
            assert int(r["step"]) == 1


@pytest.mark.slow
def test_a_budget_without_select_locations_trains_every_step_and_says_so(lulc_store, tmp_path):
    """A select share that rounds to no location: each run takes all its steps on every
    training location and keeps its last state; the table shows 0 select units."""
    protocol = shipped_protocol(lulc_store, tmp_path, budgets=[0.2], modes=["probe"],
                                steps={"probe": 3}, select_fraction=0.05)  # fmt: skip
    count, handle = counting_optimizer_steps()
    try:
        rows = deep_rows(protocol, lambda line: None)
    finally:
        handle.remove()
    assert count[0] == 3 * len(protocol.seeds)
    assert [(r["select_units"], r["step"]) for r in rows] == [(0, 3)] * 3
    write_report(protocol, rows, ["no_data", "cultivated", "forest"], "a split")
    table = (tmp_path / "results.md").read_text()
    (row,) = [ln for ln in table.splitlines() if ln.startswith("| scratch / probe")]
    assert row.split(" | ")[3] == "0"  # the select units column
    assert "or the last state where none is held out" in table


def test_a_ct_progress_line_names_the_organs_not_the_background():
    from geomed_mim.evaluation.protocol import Protocol, headline

    p = Protocol(data={"class_path": "geomed_mim.data.segmentation.CTSegDataModule"})
    line = headline(p, {"dice_background": 0.99, "dice_liver": 0.5, "mean_organ_dice": 0.5})
    assert line == "mean_organ_dice 0.500  dice_liver 0.500"


@pytest.mark.slow
def test_a_converted_swin_v2_is_probed_and_fine_tuned_on_a_store(lulc_store, tmp_path, capsys):
    """A Swin V2 folder as ``convert --from satvision`` writes it runs the store protocol: a
    linear head on its last stage (probe) and the FPN (finetune), every seed a row; a mode its
    family has no head for is one line naming the flags."""
    from tests.geomed_mim.tasks.test_segmentation_swin import converted_swinv2

    folder, _ = converted_swinv2(tmp_path)
    out = tmp_path / "run"
    main(["--config", str(CONFIG), "--data.init_args.store", str(lulc_store),
          "--encoders", f"[{folder}]", "--modes", "[probe, finetune]", "--baselines", "[]",
          "--steps", "{probe: 2, finetune: 2}", "--check_every", "1", "--budgets", "[1.0]",
          "--output", str(out)])  # fmt: skip
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["method"], int(r["seed"])) for r in rows) == [
        (f"{folder.name} / {mode}", seed) for mode in ("finetune", "probe") for seed in (0, 1, 2)
    ]
    for r in rows:
        assert 0 <= float(r["miou"]) <= 1
    # the shipped modes: the attentive head is a ViT's, so that mode is skipped and said
    capsys.readouterr()
    main(["--config", str(CONFIG), "--data.init_args.store", str(lulc_store),
          "--encoders", f"[{folder}]", "--baselines", "[]", "--budgets", "[1.0]",
          "--seeds", "[0, 1, 2]", "--steps", "{probe: 1, attentive: 1, finetune: 1}",
          "--output", str(tmp_path / "shipped")])  # fmt: skip
    said = capsys.readouterr().out
    assert f"{folder.name} / attentive: skipped, a swinv2 encoder has no attentive head" in said
    with open(tmp_path / "shipped" / "results.csv") as f:
        kinds = {r["kind"] for r in csv.DictReader(f)}
    assert kinds == {"probe", "finetune"}
    table = (tmp_path / "shipped" / "results.md").read_text()
    assert f"Not run (no such head for the encoder's family): {folder.name} / attentive" in table
