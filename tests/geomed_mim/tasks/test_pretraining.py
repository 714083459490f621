"""The pretraining task and CLI: schedule, weight-decay groups, real CLI runs in a subprocess."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from geomed_mim.tasks.pretraining import MIMPretrainTask, mask_seeds_for

REPO_ROOT = Path(__file__).resolve().parents[3]
DEMO_CONFIG = REPO_ROOT / "configs" / "pretrain" / "demo_cpu.yaml"


def test_no_weight_decay_on_norms_biases_and_tokens():
    task = MIMPretrainTask(
        model="mae_vit_tiny_patch16",
        in_chans=3,
        img_size=32,
        model_kwargs={
            "depth": 1,
            "decoder_depth": 1,
            "decoder_embed_dim": 32,
            "decoder_num_heads": 2,
        },
    )
    decay, no_decay = task.parameter_groups()
    names = {id(p): n for n, p in task.model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05
    assert no_decay["weight_decay"] == 0.0
    assert {
        "encoder.cls_token",
        "decoder.mask_token",
        "encoder.norm.weight",
        "encoder.blocks.0.attn.qkv.bias",
    } <= no_decay_names
    assert {
        "encoder.blocks.0.attn.qkv.weight",
        "encoder.patch_embed.proj.weight",
        "decoder.decoder_pred.weight",
    } <= decay_names
    assert "encoder.pos_embed" not in decay_names | no_decay_names  # fixed, not optimized
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert decay_names | no_decay_names == trainable


def test_mask_seeds_depend_on_sample_and_epoch_only():
    a = mask_seeds_for(torch.tensor([5, 9, 2]), 0, 3)
    assert torch.equal(mask_seeds_for(torch.tensor([2, 5]), 0, 3), a[[2, 0]])
    assert not torch.equal(mask_seeds_for(torch.tensor([5, 9, 2]), 0, 4), a)
    assert len(set(a.tolist())) == 3


def run_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    (metrics,) = run_dir.glob("logs/version_*/metrics.csv")
    return list(csv.DictReader(metrics.open()))


@pytest.mark.slow
def test_demo_config_through_the_cli_writes_a_loadable_checkpoint(demo_store, tmp_path, child_env):
    run_cli(
        [
            "-m",
            "geomed_mim.pretrain",
            "fit",
            "--config",
            str(DEMO_CONFIG),
            "--data.init_args.store",
            str(demo_store),
            "--trainer.max_epochs",
            "2",
            "--trainer.accumulate_grad_batches",
            "2",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.check_val_every_n_epoch",
            "1",
            "--model.init_args.preview_every_n_steps",
            "2",
        ],
        cwd=tmp_path,
        env=child_env,
    )
    run_dir = tmp_path / "runs" / "demo_cpu"
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # no pickled objects
    assert ckpt["global_step"] == 4  # 64 tiles / 16 per batch / 2 accumulated × 2 epochs
    meta = ckpt["geomed_mim"]
    assert meta["bands"][:3] == ["B01", "B02", "B03"]
    assert len(meta["mean"]) == 13
    assert meta["model_name"] == "mae_vit_tiny_patch16"
    assert meta["in_chans"] == 13
    assert not [p for p in ckpt_path.parent.iterdir() if p.suffix == ".tmp"]
    rows = read_metrics(run_dir)
    lrs = [float(r["lr-AdamW/pg1"]) for r in rows if r.get("lr-AdamW/pg1")]
    assert max(lrs) == pytest.approx(1e-3 * (16 * 2) / 256)  # base_lr × effective batch / 256
    assert any(r.get("perf/images_per_s") for r in rows)
    assert any(r.get("perf/tokens_per_s") for r in rows)
    assert any(r.get("val/loss") for r in rows)
    assert list(run_dir.glob("logs/version_*/previews/step_*.png"))
    assert list(run_dir.glob("logs/version_*/events.out.tfevents.*"))  # TensorBoard
    # export from the real checkpoint and load it into timm
    run_cli(
        ["-m", "geomed_mim.export", str(ckpt_path), "--output", str(tmp_path / "export")],
        cwd=tmp_path,
        env=child_env,
    )
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    model = timm.create_model(
        cfg["architecture"],
        in_chans=cfg["in_chans"],
        img_size=cfg["img_size"][0],
        num_classes=0,
        checkpoint_path=str(tmp_path / "export" / "model.safetensors"),
        **cfg["timm_kwargs"],
    )
    assert model.forward_features(torch.randn(1, 13, 32, 32)).shape == (1, 65, 192)


@pytest.mark.slow
def test_demo_loss_falls(demo_store, tmp_path, child_env):
    run_cli(
        [
            "-m",
            "geomed_mim.pretrain",
            "fit",
            "--config",
            str(DEMO_CONFIG),
            "--data.init_args.store",
            str(demo_store),
            "--trainer.max_epochs",
            "12",
            "--model.init_args.preview_every_n_steps",
            "0",
        ],
        cwd=tmp_path,
        env=child_env,
    )
    losses = [
        float(r["train/loss_epoch"])
        for r in read_metrics(tmp_path / "runs" / "demo_cpu")
        if r.get("train/loss_epoch")
    ]
    assert len(losses) == 12
    assert losses[-1] < 0.75 * losses[0], losses


def test_ct_datamodule_trains_a_3d_mae(tmp_path, ct_demo_store):

    from lightning.pytorch import Trainer

    from geomed_mim.data.datamodules import CTDataModule

    dm = CTDataModule(
        [str(ct_demo_store)], batch_size=2, crops_per_volume=2, crop_size=32, num_workers=0
    )
    task = MIMPretrainTask(
        model="mae_vit_tiny_patch16",
        in_chans=dm.in_chans,
        img_size=dm.img_size,
        spatial_dims=dm.spatial_dims,
        preview_every_n_steps=1,
        model_kwargs={
            "depth": 2,
            "decoder_depth": 1,
            "decoder_embed_dim": 32,
            "decoder_num_heads": 2,
        },
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
    assert task.effective_batch_size() == 4
    meta = task.checkpoint_metadata()
    assert meta["spatial_dims"] == 3
    assert meta["bands"] == ["CT"]
    assert meta["window_hu"] == [-175.0, 250.0]
    assert meta["patch_size"] == [16, 16, 16]
    assert list((tmp_path / "previews").glob("step_*.png"))
