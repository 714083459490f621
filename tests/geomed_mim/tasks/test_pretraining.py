"""The pretraining task and CLI: weight-decay groups, mask seeds, real CLI runs in a subprocess,
a 3-D run on a real CT store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geomed_mim.tasks.pretraining import MIMPretrainTask, mask_seeds_for
from tests.geomed_mim.training import (
    TINY_DECODER,
    epoch_losses,
    fit_on_ct_crops,
    read_metrics,
    run_module,
    timm_from_export,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
DEMO_CONFIG = REPO_ROOT / "configs" / "pretrain" / "demo_cpu.yaml"


def test_no_weight_decay_on_norms_biases_and_tokens():
    task = MIMPretrainTask(
        model="mae_vit_tiny_patch16",
        in_chans=3,
        img_size=32,
        model_kwargs={"depth": 1, **TINY_DECODER},
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


def pretrain_demo(demo_store: Path, cwd: Path, env: dict[str, str], *overrides: str) -> Path:
    """The demo config through ``python -m geomed_mim.pretrain fit``; returns the run folder."""
    config = ["--config", str(DEMO_CONFIG), "--data.init_args.store", str(demo_store)]
    run_module(["-m", "geomed_mim.pretrain", "fit", *config, *overrides], cwd, env, timeout=300)
    return cwd / "runs" / "demo_cpu"


@pytest.mark.slow
def test_demo_config_through_the_cli_writes_a_loadable_checkpoint(demo_store, tmp_path, child_env):
    run_dir = pretrain_demo(
        demo_store, tmp_path, child_env,
        "--trainer.max_epochs", "2", "--trainer.accumulate_grad_batches", "2",
        "--trainer.log_every_n_steps", "1", "--trainer.check_val_every_n_epoch", "1",
        "--model.init_args.preview_every_n_steps", "2",
    )  # fmt: skip
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
    export = ["-m", "geomed_mim.export", str(ckpt_path), "--output", str(tmp_path / "export")]
    run_module(export, tmp_path, child_env, timeout=300)
    model = timm_from_export(tmp_path / "export")
    assert model.forward_features(torch.randn(1, 13, 32, 32)).shape == (1, 65, 192)


@pytest.mark.slow
def test_demo_loss_falls(demo_store, tmp_path, child_env):
    run_dir = pretrain_demo(
        demo_store, tmp_path, child_env,
        "--trainer.max_epochs", "12", "--model.init_args.preview_every_n_steps", "0",
    )  # fmt: skip
    losses = epoch_losses(run_dir)
    assert len(losses) == 12
    assert losses[-1] < 0.75 * losses[0], losses


def test_ct_datamodule_trains_a_3d_mae(tmp_path, ct_demo_store):
    kwargs = {"depth": 2, **TINY_DECODER}
    task, trainer = fit_on_ct_crops(ct_demo_store, tmp_path, "mae_vit_tiny_patch16", kwargs)
    assert trainer.global_step == 2
    assert task.effective_batch_size() == 4
    meta = task.checkpoint_metadata()
    assert meta["spatial_dims"] == 3
    assert meta["bands"] == ["CT"]
    assert meta["window_hu"] == [-175.0, 250.0]
    assert meta["patch_size"] == [16, 16, 16]
    assert list((tmp_path / "previews").glob("step_*.png"))
