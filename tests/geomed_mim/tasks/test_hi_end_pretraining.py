"""Hi-End-MAE in the training task and through the real CLI: levels recorded, demos, export."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from geomed_mim.export import export_encoder
from geomed_mim.models.weights import build_monai_vit, load_encoder
from geomed_mim.tasks.pretraining import MIMPretrainTask

REPO_ROOT = Path(__file__).resolve().parents[3]
RS_DEMO = REPO_ROOT / "configs" / "pretrain" / "hi_end_mae_demo_cpu.yaml"
CT_DEMO = REPO_ROOT / "configs" / "pretrain" / "hi_end_mae_demo_ct_cpu.yaml"
TINY = {
    "embed_dim": 48,
    "num_heads": 3,
    "depth": 6,
    "encoder_levels": [5, 3, 1],
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
}


def run_cli(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def epoch_losses(run_dir: Path) -> list[float]:
    (metrics,) = run_dir.glob("logs/version_*/metrics.csv")
    return [
        float(r["train/loss_epoch"])
        for r in csv.DictReader(metrics.open())
        if r.get("train/loss_epoch")
    ]


def checkpoint(tmp_path: Path, **task_kwargs) -> tuple[Path, MIMPretrainTask]:
    torch.manual_seed(0)
    task = MIMPretrainTask(**task_kwargs)
    with torch.no_grad():  # off the init, so a wrong key mapping cannot pass by accident
        for name, p in task.model.named_parameters():
            if "pos_embed" not in name:
                p.add_(torch.randn_like(p) * 0.02)
    bands = [f"b{i}" for i in range(task.model.encoder.in_chans)]
    task.data_metadata = {"bands": bands, "mean": [0.0] * len(bands), "std": [1.0] * len(bands)}
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": task.state_dict(), "geomed_mim": task.checkpoint_metadata()}, path)
    return path, task


def test_levels_become_the_recorded_blocks_and_reach_the_2d_export(tmp_path):
    ckpt, task = checkpoint(
        tmp_path,
        model="hi_end_mae_vit_tiny_patch12",
        model_kwargs=TINY,
        in_chans=4,
        img_size=24,
        spatial_dims=2,
    )
    assert task.intermediate_blocks == [1, 3, 5]  # the decoder's levels, ascending for UNETR
    assert task.checkpoint_metadata()["encoder_levels"] == [5, 3, 1]
    cfg = export_encoder(ckpt, tmp_path / "export")
    on_disk = json.loads((tmp_path / "export" / "config.json").read_text())
    assert on_disk["intermediate_blocks"] == [1, 3, 5]
    assert on_disk["encoder_levels"] == [5, 3, 1]
    assert on_disk["pretraining_model"] == "hi_end_mae_vit_tiny_patch12"
    # timm has no patch-12 ViT-Ti: the patch-16 architecture with patch_size=12 loads strictly
    assert cfg["architecture"] == "vit_tiny_patch16_224"
    assert cfg["timm_kwargs"]["patch_size"] == 12
    vit = timm.create_model(
        cfg["architecture"],
        in_chans=4,
        img_size=24,
        num_classes=0,
        checkpoint_path=str(tmp_path / "export" / "model.safetensors"),
        **cfg["timm_kwargs"],
    )
    x = torch.randn(2, 4, 24, 24)
    with torch.no_grad():
        ours = task.model.encoder.forward_features(x)
        assert torch.allclose(vit.forward_features(x), ours, atol=1e-5)


def test_3d_export_loads_in_monai_and_keeps_the_levels(tmp_path):
    ckpt, task = checkpoint(
        tmp_path,
        model="hi_end_mae_vit_tiny_patch16",
        model_kwargs=TINY,
        in_chans=1,
        img_size=32,
        spatial_dims=3,
        intermediate_blocks=[2, 4, 6],  # an explicit choice wins (with a warning)
    )
    assert task.intermediate_blocks == [2, 4, 6]
    cfg = export_encoder(ckpt, tmp_path / "export")
    assert cfg["encoder_levels"] == [5, 3, 1]
    assert cfg["intermediate_blocks"] == [2, 4, 6]
    vit = build_monai_vit(tmp_path / "export")
    encoder, _, _ = load_encoder(tmp_path / "export")
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        _, hidden = vit(x)
        _, ours = task.model.encoder.forward_with_block_outputs(x, block_numbers=[5, 3, 1])
        _, loaded = encoder.forward_with_block_outputs(x, block_numbers=[5, 3, 1])
    for n, a, b in zip([5, 3, 1], ours, loaded, strict=True):
        assert torch.allclose(hidden[n - 1], a, atol=1e-5)
        assert torch.allclose(a, b, atol=1e-6)


def test_3d_hi_end_trains_on_the_ct_datamodule(tmp_path, ct_demo_store):
    from lightning.pytorch import Trainer

    from geomed_mim.data.datamodules import CTDataModule

    dm = CTDataModule(
        [str(ct_demo_store)], batch_size=2, crops_per_volume=2, crop_size=32, num_workers=0
    )
    task = MIMPretrainTask(
        model="hi_end_mae_vit_tiny_patch16",
        in_chans=dm.in_chans,
        img_size=dm.img_size,
        spatial_dims=dm.spatial_dims,
        model_kwargs=TINY,
        preview_every_n_steps=1,
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
    )
    trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 2
    meta = task.checkpoint_metadata()
    assert meta["spatial_dims"] == 3
    assert meta["encoder_levels"] == [5, 3, 1]
    assert meta["window_hu"] == [-175.0, 250.0]
    assert list((tmp_path / "previews").glob("step_*.png"))


@pytest.mark.slow
def test_rs_demo_config_trains_through_the_cli_and_exports_the_levels(
    demo_store, tmp_path, child_env
):
    run_cli(
        [
            "-m",
            "geomed_mim.pretrain",
            "fit",
            "--config",
            str(RS_DEMO),
            "--data.init_args.store",
            str(demo_store),
            "--trainer.max_epochs",
            "10",
            "--trainer.check_val_every_n_epoch",
            "10",
            "--model.init_args.preview_every_n_steps",
            "0",
        ],
        cwd=tmp_path,
        env=child_env,
    )
    run_dir = tmp_path / "runs" / "hi_end_demo_cpu"
    losses = epoch_losses(run_dir)
    assert len(losses) == 10
    assert losses[-1] < 0.75 * losses[0], losses
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    meta = torch.load(ckpt, map_location="cpu", weights_only=True)["geomed_mim"]
    assert meta["model_name"] == "hi_end_mae_vit_tiny_patch16"
    assert meta["encoder_levels"] == [3, 2, 1]
    run_cli(
        ["-m", "geomed_mim.export", str(ckpt), "--output", str(tmp_path / "export")],
        cwd=tmp_path,
        env=child_env,
    )
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    assert cfg["intermediate_blocks"] == [1, 2, 3]
    assert cfg["encoder_levels"] == [3, 2, 1]


@pytest.mark.slow
def test_ct_demo_config_trains_through_the_cli(tmp_path, child_env):
    store = tmp_path / "geomed_demo_ct"
    run_cli(
        [
            "-m",
            "geomed_mim.build_dataset",
            "--modality",
            "ct",
            "--input",
            "demo:ct",
            "--output",
            str(store),
            "--workers",
            "1",
            "--scheduler",
            "synchronous",
        ],
        cwd=tmp_path,
        env=child_env,
    )
    run_cli(
        [
            "-m",
            "geomed_mim.pretrain",
            "fit",
            "--config",
            str(CT_DEMO),
            "--data.init_args.stores",
            f"[{store}]",
            "--trainer.max_epochs",
            "50",
            "--model.init_args.preview_every_n_steps",
            "0",
        ],
        cwd=tmp_path,
        env=child_env,
    )
    run_dir = tmp_path / "runs" / "hi_end_demo_ct_cpu"
    losses = epoch_losses(run_dir)  # one step of 4 crops per epoch: compare 10-epoch means
    assert len(losses) == 50
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.85 * first, losses
    meta = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["geomed_mim"]
    assert meta["spatial_dims"] == 3
    assert meta["encoder_levels"] == [3, 2, 1]
