"""SelectiveMAE through the real pretraining CLI (demo config, subprocess), pruning included."""

from __future__ import annotations

import json

import pytest
import torch

from geomed_mim.tasks.selective_pretraining import SelectivePretrainTask
from tests.conftest import REPO_ROOT
from tests.geomed_mim.training import (
    read_metrics,
    run_module,
    timm_from_export,
    tiny_pretrain_task,
)

DEMO_CONFIG = REPO_ROOT / "configs" / "pretrain" / "selective_mae_demo_cpu.yaml"


def test_lr_is_scaled_by_reconstruction_over_mask_ratio():
    task = tiny_pretrain_task(
        SelectivePretrainTask, "selective_mae_vit_tiny_patch16", patch_size=4, depth=1
    )
    assert task.pruner is None  # pruning is off unless asked for
    assert task.model.lr_scale == pytest.approx(0.25 / 0.85)


@pytest.mark.slow
def test_demo_config_trains_through_the_cli_with_pruning(demo_store, tmp_path, child_env):
    run_module(
        ["-m", "geomed_mim.pretrain", "fit", "--config", str(DEMO_CONFIG),
         "--data.init_args.store", str(demo_store),
         "--trainer.max_epochs", "2",  # epoch 1 records every sample's loss, epoch 2 prunes
         "--trainer.log_every_n_steps", "1", "--trainer.check_val_every_n_epoch", "2",
         "--model.init_args.easy_sample_pruning", "true",
         "--model.init_args.preview_every_n_steps", "4"],
        tmp_path, child_env, timeout=300,
    )  # fmt: skip
    run_dir = tmp_path / "runs" / "selective_mae_demo_cpu"
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    meta = ckpt["geomed_mim"]
    assert meta["model_name"] == "selective_mae_vit_tiny_patch16"
    assert meta["model_kwargs"]["mask_ratio"] == 0.85
    assert meta["in_chans"] == 13
    rows = read_metrics(run_dir)
    lrs = [float(r["lr-AdamW/pg1"]) for r in rows if r.get("lr-AdamW/pg1")]
    assert max(lrs) == pytest.approx(1e-3)  # the demo's absolute lr (lr_scale scales base_lr)
    kept = [float(r["perf/kept_fraction"]) for r in rows if r.get("perf/kept_fraction")]
    assert kept[0] == 1.0  # nothing is known about the samples at the first step
    assert min(kept) < 1.0  # later, easy samples are dropped
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(r.get("val/loss") for r in rows)
    assert list(run_dir.glob("logs/version_*/previews/step_*.png"))
    # the pretrained encoder exports and loads into timm like MAE's
    out = tmp_path / "export"
    run_module(
        ["-m", "geomed_mim.export", str(ckpt_path), "--output", str(out)], tmp_path, child_env
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pretraining_model"] == "selective_mae_vit_tiny_patch16"
    model = timm_from_export(out)
    assert model.forward_features(torch.randn(1, 13, 32, 32)).shape == (1, 65, 192)


@pytest.mark.parametrize(
    ("name", "in_chans", "img_size", "spatial_dims", "sizes"),
    [
        ("selective_mae_vit_base_modis_toa14", 14, 224, 2, (29, 49)),
        ("selective_mae_vit_base_sentinel2", 13, 224, 2, (29, 49)),
        ("selective_mae_vit_base_ct96", 1, 96, 3, (32, 54)),
        ("selective_mae_demo_cpu", 13, 32, 2, (9, 16)),
    ],
)
def test_selective_configs_build_their_model(name, in_chans, img_size, spatial_dims, sizes):
    """Each config's task and model arguments build (encoder cut to one block to stay cheap)."""
    import yaml

    from geomed_mim.models import create_model

    cfg = yaml.safe_load((REPO_ROOT / "configs" / "pretrain" / f"{name}.yaml").read_text())
    init = cfg["model"]["init_args"]
    assert cfg["model"]["class_path"].endswith("SelectivePretrainTask")
    assert init["easy_sample_pruning"] is False  # explicit and off
    kwargs = {**init["model_kwargs"], "depth": 1, "decoder_depth": 1}
    model = create_model(
        init["model"], in_chans=in_chans, img_size=img_size, spatial_dims=spatial_dims, **kwargs
    )
    K, _, T = model.masking.set_sizes(model.encoder.num_patches)
    assert sizes == (K, T)
