"""Segmentation fine-tuning: metrics with ignore_index, label alignment build → train → predict,
georeferenced outputs, class tables with source ids, and the demo configs through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
import yaml
import zarr
from PIL import Image
from safetensors.torch import load_file
from torchmetrics.classification import MulticlassConfusionMatrix

from data_pipelines.classes import ClassTable, load_class_table
from data_pipelines.errors import LabelError
from data_pipelines.store.read import read_calibrated, read_store_attrs
from geomed_mim.data.segmentation import RSSegDataModule
from geomed_mim.models.segmentation import ViTUNETR, skip_blocks_for
from geomed_mim.models.vit import VisionTransformerEncoder
from geomed_mim.tasks.seg_predict import predict_ct_volume, predict_rs_scene
from geomed_mim.tasks.segmentation import masked_soft_dice_loss, scores_from_confusion
from tests.geomed_mim.conftest import REPO_ROOT, build_store, subprocess_env
from tests.geomed_mim.samples import labeled_rs_samples
from tests.geomed_mim.training import TINY_DECODER, model_checkpoint, read_metrics

CONFIGS = REPO_ROOT / "configs"


@pytest.fixture(scope="module")
def ct_organ_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The abdominal demo scan with TotalSegmentator ids remapped to 4 training classes."""
    out = tmp_path_factory.mktemp("finetune_ct") / "store"
    build_store("--config", str(CONFIGS / "data/demo_ct_organs.yaml"), "--output", str(out))
    return out


# -- metrics and loss ------------------------------------------------------------------------------
def test_prediction_equal_to_the_store_labels_scores_iou_one(lulc_store):
    """Labels as written by the build, fed back as predictions through our metric code → IoU 1;
    ignored pixels (id 0) may hold any prediction without changing the score."""
    classes = read_store_attrs(lulc_store)["classes"]
    num_classes = max(classes["ids"]) + 1
    root = zarr.open_group(str(lulc_store / "store.zarr"), mode="r")
    samples = labeled_rs_samples(lulc_store, None)
    labels = torch.stack(
        [torch.from_numpy(np.asarray(root[lab][i]).astype(np.int64)) for _, lab, i in samples]
    )
    ignore = classes["ignore_index"]
    assert (labels == ignore).any(), "the demo mask has no-data pixels to ignore"
    pred = labels.clone()
    pred[labels == ignore] = 3  # anything at ignored pixels
    cm = MulticlassConfusionMatrix(num_classes, ignore_index=ignore)
    cm.update(pred, labels)
    scores = scores_from_confusion(cm.compute(), classes["ids"])
    present = [c for c in classes["ids"] if (labels == c).any()]
    assert len(present) >= 3
    for cid, iou in zip(classes["ids"], scores["iou"], strict=True):
        if cid in present:
            assert iou.item() == 1.0
        else:
            assert torch.isnan(iou)  # absent from target and prediction: not averaged in
    assert scores["miou"].item() == 1.0
    assert scores["accuracy"].item() == 1.0
    # one wrong valid pixel lowers it
    wrong = pred.clone().view(-1)
    idx = int((labels.view(-1) != ignore).nonzero()[0])
    wrong[idx] = (wrong[idx] % (num_classes - 1)) + 1
    cm.reset()
    cm.update(wrong.view_as(labels), labels)
    assert scores_from_confusion(cm.compute(), classes["ids"])["miou"] < 1.0


def test_ignore_index_is_ignored_by_the_losses():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    target[:, :3] = 255
    changed = logits.clone()
    changed[:, :, :3] = torch.randn(2, 4, 3, 8) * 10  # only at ignored pixels
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(
        ce(logits, target, ignore_index=255), ce(changed, target, ignore_index=255)
    )
    assert torch.allclose(
        masked_soft_dice_loss(logits, target, 255), masked_soft_dice_loss(changed, target, 255)
    )
    # a perfect prediction has (almost) zero Dice loss
    perfect = torch.nn.functional.one_hot(target.clamp(0, 3), 4).movedim(-1, 1).float() * 50
    assert masked_soft_dice_loss(perfect, target, 255) < 1e-3


# -- models ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("dims", "img", "patch"), [(2, 32, 4), (2, 32, 16), (3, 16, 8)])
def test_unetr_decoder_shapes(dims, img, patch):
    enc = VisionTransformerEncoder(
        img_size=img, patch_size=patch, in_chans=2, embed_dim=24, depth=4, num_heads=2,
        spatial_dims=dims,
    )  # fmt: skip
    blocks = skip_blocks_for(4, patch, [1, 2, 3])
    net = ViTUNETR(enc, num_classes=5, skip_blocks=blocks, feature_size=4)
    assert net(torch.randn(1, 2, *(img,) * dims)).shape == (1, 5, *(img,) * dims)


def test_skip_blocks_prefer_recorded_ones():
    assert skip_blocks_for(12, 16, [4, 7, 10]) == [4, 7, 10]  # MONAI UNETR's hidden_states 3,6,9
    assert skip_blocks_for(4, 4, [2, 3]) == [3]
    assert len(skip_blocks_for(4, 8, None)) == 2


# -- class tables --------------------------------------------------------------------------------
def test_class_table_source_ids_remap(tmp_path):
    table = load_class_table(CONFIGS / "data/classes/totalseg_abdomen.yaml")
    raw = np.array([0, 1, 2, 3, 5, 6, 117], dtype=np.float32)  # resampled maps arrive as float
    assert table.remap(raw).tolist() == [0, 2, 3, 3, 1, 255, 255]
    assert ClassTable.from_attrs(table.to_attrs()) == table
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"classes": [{"id": 1, "name": "a", "source_ids": [3]}, {"id": 2, "name": "b"}]}
        )
    )
    with pytest.raises(LabelError, match="source_ids"):
        load_class_table(bad)


def test_ct_store_records_and_applies_the_class_table(ct_organ_store, demo_data):
    attrs = read_store_attrs(ct_organ_store)
    assert attrs["classes"]["names"] == ["background", "liver", "spleen", "kidney"]
    row = pq.read_table(ct_organ_store / "manifest.parquet").to_pylist()[0]
    stored = np.asarray(zarr.open_group(str(ct_organ_store / "store.zarr"))[row["label_array"]][:])
    assert set(np.unique(stored)) <= {0, 1, 2, 3, 255}
    assert {1, 2, 3} <= set(np.unique(stored))
    # the same voxels as the source map remapped: liver (5) in the source → 1 here
    src = nib.load(demo_data / "ct/abdomen_3mm_seg.nii.gz")
    liver_src_ml = (np.asarray(src.dataobj) == 5).sum() * np.prod(src.header.get_zooms()) / 1000
    liver_ml = (stored == 1).sum() * 1.5**3 / 1000
    assert abs(liver_ml - liver_src_ml) / liver_src_ml < 0.05


# -- georeferenced prediction, aligned with the store ----------------------------------------------
def _threshold_predictor(num_classes: int, channel: int = 0):
    """A pixel-wise rule as a 'model': class 2 where the normalized band > 0, else class 1."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        cls = torch.where(x[:, channel] > 0, 2, 1)  # [B, *S]
        return torch.nn.functional.one_hot(cls, num_classes).movedim(-1, 1).float()

    return predict


def test_rs_prediction_overlays_the_scene_and_the_store_tiles(lulc_store, demo_data, tmp_path):
    dm = RSSegDataModule(str(lulc_store), val_split=None)
    scene = demo_data / "sentinel2_l1c/scenes/s2_l1c_reference_scene_2.tif"
    out = predict_rs_scene(
        _threshold_predictor(11),
        str(scene),
        dm.attrs,
        dm.mean,
        dm.std,
        tile=32,
        num_classes=11,
        output_dir=tmp_path,
        overlap=0.5,
        write_probabilities=True,
        classes=dm.classes,
    )
    with rasterio.open(scene) as src, rasterio.open(out["classes"]) as pred:
        assert pred.crs == src.crs
        assert pred.transform == src.transform
        assert pred.shape == src.shape
        ids = pred.read(1)
    with rasterio.open(out["probabilities"]) as probs:
        assert probs.count == 11
        assert probs.transform == src.transform
    assert Path(out["overlay"]).is_file()
    # the same rule on the stored (built) tiles gives the same pixels at each tile's window
    manifest = pq.read_table(lulc_store / "manifest.parquet").to_pylist()
    mean = torch.tensor(dm.mean).view(-1, 1, 1)
    std = torch.tensor(dm.std).view(-1, 1, 1)
    checked = 0
    for row in manifest:
        if row["excluded"] is not None or not str(row["source"]).endswith(scene.name):
            continue
        tile = torch.from_numpy(read_calibrated(lulc_store, row["array"], row["index"]))
        expect = torch.where(((tile - mean) / std)[0] > 0, 2, 1).numpy()
        r, c = int(row["row_off"]), int(row["col_off"])
        h, w = min(32, ids.shape[0] - r), min(32, ids.shape[1] - c)
        np.testing.assert_array_equal(ids[r : r + h, c : c + w], expect[:h, :w])
        checked += 1
    assert checked >= 4


def test_ct_prediction_is_written_on_the_input_grid(demo_data, tmp_path):
    src_path = demo_data / "ct/abdomen_3mm.nii.gz"
    out = predict_ct_volume(
        lambda x: torch.cat([torch.zeros_like(x), (x < 0.5).float(), (x >= 0.5).float()], 1),
        str(src_path),
        spacing=(1.5, 1.5, 1.5),
        window=(-175, 250),
        roi=32,
        num_classes=3,
        output_dir=tmp_path,
        overlap=0.25,
    )
    src, pred = nib.load(src_path), nib.load(out["classes"])
    np.testing.assert_allclose(pred.affine, src.affine)
    assert pred.shape == src.shape
    # the rule applied on the original voxels agrees almost everywhere (two resamplings apart)
    hu = np.asarray(src.dataobj, dtype=np.float32)
    expect = np.where((hu + 175) / 425 >= 0.5, 2, 1)
    assert (np.asarray(pred.dataobj) == expect).mean() > 0.95
    assert Path(out["overlay"]).is_file()


# -- the real CLI ----------------------------------------------------------------------------------
def run_cli(args: list[str], cwd: Path, returncode: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "geomed_mim.finetune_seg", *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == returncode, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def three_band_scene(scene: Path, out: Path) -> Path:
    """The scene with only its first three bands: a file the 13-band model cannot take."""
    with rasterio.open(scene) as src:
        profile = {**src.profile, "count": 3}
        bands = src.read([1, 2, 3])
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(bands)
    return out


@pytest.mark.slow
def test_rs_demo_config_fit_and_predict_through_the_cli(lulc_store, demo_data, tmp_path):
    cfg = str(CONFIGS / "finetune/lulc_demo_cpu.yaml")
    common = ["--config", cfg, "--data.init_args.store", str(lulc_store)]
    fit = run_cli(
        ["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.check_val_every_n_epoch", "1", "--trainer.limit_val_batches", "1",
         "--trainer.log_every_n_steps", "1"],
        tmp_path,
    )  # fmt: skip
    ckpt = tmp_path / "runs/lulc_demo_cpu/checkpoints/last.ckpt"
    assert ckpt.is_file()
    torch.load(ckpt, map_location="cpu", weights_only=True)  # plain data only
    metrics = (tmp_path / "runs/lulc_demo_cpu/logs/version_0/metrics.csv").read_text()
    assert "val/miou" in metrics
    assert "train/loss" in metrics
    (epoch_line,) = [ln for ln in fit.stdout.splitlines() if ln.startswith("epoch 1/1")]
    assert "val/miou" in epoch_line  # fine-tuning's line shows its validation metrics
    assert "checkpoints: runs/lulc_demo_cpu/checkpoints (last.ckpt)" in fit.stdout
    scene = demo_data / "sentinel2_l1c/scenes/s2_l1c_reference_scene_2.tif"
    wrong = three_band_scene(scene, tmp_path / "three_bands.tif")
    inputs = [str(scene), str(wrong), str(tmp_path / "missing.tif")]
    proc = run_cli(
        ["predict", *common, "--ckpt_path", str(ckpt),
         "--data.init_args.predict_inputs", json.dumps(inputs)],
        tmp_path, returncode=2,  # some inputs failed; the others were predicted
    )  # fmt: skip
    out = tmp_path / "runs/lulc_demo_cpu/predictions/s2_l1c_reference_scene_2_classes.tif"
    overlay = out.with_name("s2_l1c_reference_scene_2_overlay.png")
    with rasterio.open(scene) as src, rasterio.open(out) as pred:
        assert (pred.crs, pred.transform, pred.shape) == (src.crs, src.transform, src.shape)
    assert f"{scene} → runs/lulc_demo_cpu/predictions/{out.name}, " in proc.stdout
    assert min(Image.open(overlay).size) >= 512
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [
        f"error: {wrong}: has 3 band(s) but profile sentinel2_l1c expects 13 "
        "(B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B10, B11, B12)",
        f"error: {tmp_path / 'missing.tif'}: no such file",
    ]
    assert "predicted 1 of 3 inputs → runs/lulc_demo_cpu/predictions" in proc.stdout
    # the fine-tuned encoder exports like a pretrained one
    export = subprocess.run(
        [sys.executable, "-m", "geomed_mim.export", str(ckpt), "--output", "exported"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    config = json.loads((tmp_path / "exported/config.json").read_text())
    assert config["checkpoint_kind"] == "segmentation"
    assert config["bands"][:2] == ["B01", "B02"]
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    exported = load_file(tmp_path / "exported/model.safetensors")
    for key, value in exported.items():
        torch.testing.assert_close(value, state[f"net.encoder.{key}"], msg=key)


@pytest.mark.slow
def test_following_the_docs_fine_tuning_from_pretraining_after_a_scratch_run(lulc_store, tmp_path):
    """README: fine-tune from scratch; docs/finetuning.md: then from the pretraining run. The
    second, in the first one's folder, is another run: refused in one line (never a silent
    restore of the finished scratch checkpoint); in its own folder, as the docs write it, it
    trains."""
    from tests.geomed_mim.training import task_checkpoint

    pretrained, _ = task_checkpoint(
        tmp_path, model="mae_vit_tiny_patch16", in_chans=13, img_size=32,
        model_kwargs={"depth": 2, "patch_size": 4, **TINY_DECODER},
        bands=read_store_attrs(lulc_store)["bands"],
    )  # fmt: skip
    cfg = str(CONFIGS / "finetune/lulc_demo_cpu.yaml")
    small = ["--config", cfg, "--data.init_args.store", str(lulc_store),
             "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
             "--trainer.limit_val_batches", "1"]  # fmt: skip
    run_cli(["fit", *small], tmp_path)
    scratch = tmp_path / "runs/lulc_demo_cpu/checkpoints/last.ckpt"
    written = scratch.stat().st_mtime_ns
    init = ["--model.init_args.init_from", str(pretrained)]
    refused = run_cli(["fit", *small, *init], tmp_path, returncode=2)
    (line,) = refused.stderr.strip().splitlines()[-1:]
    assert line.startswith(
        "error: runs/lulc_demo_cpu/checkpoints holds the checkpoint of a different run"
    )
    assert "init_from: null → " in line
    assert scratch.stat().st_mtime_ns == written
    own = ["--trainer.default_root_dir", "runs/lulc_demo_cpu_pretrained"]
    proc = run_cli(["fit", *small, *init, *own], tmp_path)
    assert "new run: checkpoints in runs/lulc_demo_cpu_pretrained/checkpoints" in proc.stdout
    assert (tmp_path / "runs/lulc_demo_cpu_pretrained/checkpoints/last.ckpt").is_file()


@pytest.mark.slow
def test_ct_demo_config_fit_through_the_cli(ct_organ_store, tmp_path):
    cfg = str(CONFIGS / "finetune/ct_organs_demo_cpu.yaml")
    run_cli(
        ["fit", "--config", cfg, "--data.init_args.stores", json.dumps([str(ct_organ_store)]),
         "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
         "--data.init_args.samples_per_epoch", "1", "--data.init_args.crop_size", "32",
         "--model.init_args.sw_overlap", "0.0", "--model.init_args.sw_batch_size", "16",
         "--model.init_args.feature_size", "4",
         "--model.init_args.encoder", json.dumps(
             {"embed_dim": 24, "depth": 2, "num_heads": 2, "patch_size": 8})],
        tmp_path,
    )  # fmt: skip
    metrics = (tmp_path / "runs/ct_organs_demo_cpu/logs/version_0/metrics.csv").read_text()
    assert "val/mdice" in metrics
    assert "val/dice_liver" in metrics


# -- starting points -------------------------------------------------------------------------------
def _task(init_from, bands, **kw):
    from geomed_mim.tasks.segmentation import SegmentationTask

    classes = {"ids": [0, 1, 2], "names": ["a", "b", "c"], "ignore_index": 255}
    return SegmentationTask(
        init_from=init_from, in_chans=len(bands), img_size=16, spatial_dims=2, bands=bands,
        classes=classes, **kw,
    )  # fmt: skip


def test_start_from_checkpoint_or_export_matches_bands_by_name(tmp_path):
    from geomed_mim.export import export_encoder
    from geomed_mim.models.weights import load_pretrained_model

    kwargs = {"in_chans": 3, "img_size": 16, "patch_size": 4, "depth": 2, **TINY_DECODER}
    bands = ["B02", "B03", "B04"]
    ckpt = model_checkpoint(tmp_path / "pre.ckpt", "mae_vit_tiny_patch16", kwargs, bands, [1, 2])
    pretrained = load_pretrained_model(ckpt)[0].encoder.state_dict()
    export_encoder(ckpt, tmp_path / "export")
    for source in (str(ckpt), str(tmp_path / "export")):
        task = _task(source, ["B04", "B08", "b02"])  # reordered, one new band, one dropped
        enc = task.net.encoder.state_dict()
        w, w0 = enc["patch_embed.proj.weight"], pretrained["patch_embed.proj.weight"]
        assert torch.equal(w[:, 0], w0[:, 2])  # B04
        assert torch.equal(w[:, 2], w0[:, 0])  # B02, matched case-insensitively
        assert not torch.equal(w[:, 1], w0[:, 1])  # B08: fresh
        assert torch.equal(enc["blocks.1.mlp.fc1.weight"], pretrained["blocks.1.mlp.fc1.weight"])
        assert task.net.skip_blocks == [1]  # patch 4 → one recorded block, the deepest < depth


def test_probing_freezes_the_encoder_and_layer_decay_scales_lrs():
    frozen = _task(None, ["a", "b"], freeze_encoder=True, encoder={"embed_dim": 24, "depth": 2,
                   "num_heads": 2, "patch_size": 4})  # fmt: skip
    assert not any(p.requires_grad for p in frozen.net.encoder.parameters())
    assert all(p.requires_grad for n, p in frozen.net.named_parameters() if "encoder." not in n)
    task = _task(None, ["a", "b"], lr=1.0, layer_decay=0.5, encoder={"embed_dim": 24, "depth": 2,
                 "num_heads": 2, "patch_size": 4})  # fmt: skip

    class _Trainer:
        estimated_stepping_batches = 10

    task.trainer = _Trainer()  # type: ignore[assignment]
    opt = task.configure_optimizers()["optimizer"]
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    enc = task.net.encoder
    assert lr_of[id(enc.patch_embed.proj.weight)] == 0.5**3  # depth 2: embeddings at d^(2+1)
    assert lr_of[id(enc.blocks[0].attn.qkv.weight)] == 0.5**2
    assert lr_of[id(enc.blocks[1].attn.qkv.weight)] == 0.5**1
    assert lr_of[id(task.net.head.conv.conv.weight)] == 1.0


# -- label conventions: a -1 no-data value end to end ----------------------------------------------
MINUS_ONE_TABLE = """\
# forest or not, with -1 marking pixels without a label (as flood and land-cover sets write it)
ignore_index: -1
classes:
  - {id: 0, name: other, color: [200, 200, 200]}
  - {id: 1, name: forest, color: [5, 73, 7]}
"""


def minus_one_labels(demo_data: Path, folder: Path) -> tuple[Path, Path]:
    """An int16 label raster (forest 1, other 0, -1 where the demo mask has no data) over the
    demo scenes, and its class table."""
    with rasterio.open(demo_data / "sentinel2_l1c/labels/lulc_mask.tif") as src:
        lulc, profile = src.read(1), src.profile
    folder.mkdir(parents=True, exist_ok=True)
    label = folder / "forest.tif"
    profile.update(dtype="int16", nodata=None)
    with rasterio.open(label, "w", **profile) as dst:
        dst.write(np.where(lulc == 0, -1, (lulc == 2).astype(np.int16)).astype(np.int16), 1)
    table = folder / "forest.yaml"
    table.write_text(MINUS_ONE_TABLE)
    return label, table


def test_predictions_never_emit_the_ignore_index():
    """Logits that favour the ignore channel (0, below the class count) or a gap between class
    ids still predict a class id."""
    from geomed_mim.tasks.seg_predict import predicted_ids

    logits = torch.zeros(1, 6, 2, 2)
    logits[:, 0] = 9.0  # the ignore index 0 of a table with classes 1, 2, 5
    logits[:, 3, 0, 0] = 10.0  # a channel between class ids
    logits[:, 5, 1, 1] = 1.0
    ids = predicted_ids(logits, [1, 2, 5])
    assert set(ids.unique().tolist()) <= {1, 2, 5}
    assert ids[0, 1, 1] == 5


def test_minus_one_store_trains_with_the_recorded_ignore_index(demo_data, tmp_path):
    """The store records the value it stores for -1 (255); the task built from the data module
    leaves those pixels out of the loss and predicts only the two classes."""
    from geomed_mim.tasks.segmentation import SegmentationTask

    label, table = minus_one_labels(demo_data, tmp_path / "labels")
    out = tmp_path / "store"
    build_store("--input", "demo:sentinel2_l1c", "--labels", str(label), "--classes", str(table),
                "--tile-size", "32", "--output", str(out))  # fmt: skip
    dm = RSSegDataModule(str(out), val_split=None, flips=False)
    assert dm.classes["ignore_index"] == 255
    assert dm.classes["source_ignore_index"] == -1
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert set(batch["label"].unique().tolist()) == {0, 1, 255}
    task = SegmentationTask.for_data(dm, encoder={"embed_dim": 24, "depth": 2, "num_heads": 2,
                                                  "patch_size": 8}, feature_size=4)  # fmt: skip
    logits = task(batch["image"])
    loss = task.loss(logits, batch["label"])
    assert torch.isfinite(loss)
    ignored = (batch["label"] == 255)[:, None]  # [B, 1, H, W]
    noise = 100.0 * torch.randn_like(logits)
    changed = torch.where(ignored, logits.detach() + noise, logits.detach())  # only there
    assert torch.allclose(task.loss(changed, batch["label"]), loss.detach())
    assert set(task_predictions(task, batch).unique().tolist()) <= {0, 1}


def task_predictions(task, batch):
    from geomed_mim.tasks.seg_predict import predicted_ids

    with torch.no_grad():
        return predicted_ids(task(batch["image"]), task.class_ids)


@pytest.mark.slow
def test_minus_one_labels_build_finetune_and_predict_through_the_clis(demo_data, tmp_path):
    """What a user of a -1 no-data label set runs: build_dataset, finetune_seg fit, predict,
    each as its own process; shrunk only in size (tiny encoder, two steps)."""
    label, table = minus_one_labels(demo_data, tmp_path / "labels")
    store = tmp_path / "store"
    build = subprocess.run(
        [sys.executable, "-m", "geomed_mim.build_dataset", "--input", "demo:sentinel2_l1c",
         "--labels", str(label), "--classes", str(table), "--tile-size", "32",
         "--val-fraction", "0.2", "--output", str(store), "--workers", "1"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    cfg = str(CONFIGS / "finetune/lulc_demo_cpu.yaml")
    tiny = {"embed_dim": 24, "depth": 2, "num_heads": 2, "patch_size": 8}
    common = ["--config", cfg, "--data.init_args.store", str(store),
              "--model.init_args.feature_size", "4",
              "--model.init_args.encoder", json.dumps(tiny)]  # fmt: skip
    run_cli(
        ["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.check_val_every_n_epoch", "1", "--trainer.limit_val_batches", "1",
         "--trainer.log_every_n_steps", "1"],
        tmp_path,
    )  # fmt: skip
    rows = read_metrics(tmp_path / "runs/lulc_demo_cpu")
    logged = {k: float(v) for row in rows for k, v in row.items() if v and "/" in k}
    assert np.isfinite(logged["train/loss"])
    assert np.isfinite(logged["val/miou"])  # the -1 pixels dropped, the two classes scored
    assert "val/iou_forest" in logged
    scene = demo_data / "sentinel2_l1c/scenes/s2_l1c_reference_scene_0.tif"
    ckpt = tmp_path / "runs/lulc_demo_cpu/checkpoints/last.ckpt"
    run_cli(
        ["predict", *common, "--ckpt_path", str(ckpt),
         "--data.init_args.predict_inputs", json.dumps([str(scene)])],
        tmp_path,
    )  # fmt: skip
    out = tmp_path / "runs/lulc_demo_cpu/predictions/s2_l1c_reference_scene_0_classes.tif"
    with rasterio.open(out) as pred:
        ids = pred.read(1)
    assert set(np.unique(ids).tolist()) <= {0, 1}  # never 255, never -1


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_linear_probe_head_trains_only_the_head(spatial_dims):
    """``head="linear"``: logits at full resolution from a linear layer on the patch tokens;
    with the encoder frozen, only that layer has gradients; checkpoints record the head."""
    from geomed_mim.tasks.segmentation import SegmentationTask

    classes = {"ids": [0, 1, 2], "names": ["a", "b", "c"], "ignore_index": 255}
    task = SegmentationTask(
        encoder={"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4},
        head="linear", freeze_encoder=True, in_chans=2, img_size=16,
        spatial_dims=spatial_dims, classes=classes,
    )  # fmt: skip
    x = torch.randn(2, 2, *(16,) * spatial_dims)
    logits = task(x)
    assert logits.shape == (2, 3, *(16,) * spatial_dims)
    # the upsampled logits, averaged per patch, follow the head applied to the patch tokens
    tokens = task.net.encoder.forward_features(x)[:, 1:]  # [B, L, D]
    grid = task.net.encoder.grid_size
    expected = task.net.head(tokens).transpose(1, 2).reshape(2, 3, *grid)
    pooled = torch.nn.functional.interpolate(logits, size=grid, mode="area")  # [B, K, *grid]
    assert torch.corrcoef(torch.stack([pooled.flatten(), expected.flatten()]))[0, 1] > 0.9
    logits.sum().backward()
    trained = {n for n, p in task.named_parameters() if p.grad is not None}
    assert trained == {"net.head.weight", "net.head.bias"}
    assert task.checkpoint_metadata()["head"] == "linear"
    with pytest.raises(ValueError, match="a ViT encoder takes head unetr or linear"):
        SegmentationTask(head="mlp", in_chans=2, img_size=16, classes=classes)
