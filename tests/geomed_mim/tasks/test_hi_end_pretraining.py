"""Hi-End-MAE in the training task and through the real CLI: levels recorded, demos, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from geomed_mim.export import export_encoder
from geomed_mim.models.weights import build_monai_vit, load_encoder
from tests.geomed_mim import training

REPO_ROOT = Path(__file__).resolve().parents[3]
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


def hi_end_checkpoint(tmp_path, model, in_chans, img_size, spatial_dims, **task_kwargs):
    """A pretraining checkpoint of a tiny Hi-End-MAE (levels 5, 3, 1 of 6 blocks)."""
    return training.task_checkpoint(
        tmp_path, None, model=model, model_kwargs=TINY, in_chans=in_chans, img_size=img_size,
        spatial_dims=spatial_dims, **task_kwargs,
    )  # fmt: skip


def test_levels_become_the_recorded_blocks_and_reach_the_2d_export(tmp_path):
    ckpt, task = hi_end_checkpoint(tmp_path, "hi_end_mae_vit_tiny_patch12", 4, 24, 2)
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
    vit = training.timm_from_export(tmp_path / "export")
    x = torch.randn(2, 4, 24, 24)
    with torch.no_grad():
        ours = task.model.encoder.forward_features(x)
        assert torch.allclose(vit.forward_features(x), ours, atol=1e-5)


def test_3d_export_loads_in_monai_and_keeps_the_levels(tmp_path):
    ckpt, task = hi_end_checkpoint(
        tmp_path, "hi_end_mae_vit_tiny_patch16", 1, 32, 3,
        intermediate_blocks=[2, 4, 6],  # an explicit choice wins (with a warning)
    )  # fmt: skip
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
    task, trainer = training.fit_on_ct_crops(
        ct_demo_store, tmp_path, "hi_end_mae_vit_tiny_patch16", TINY
    )
    assert trainer.global_step == 2
    meta = task.checkpoint_metadata()
    assert meta["spatial_dims"] == 3
    assert meta["encoder_levels"] == [5, 3, 1]
    assert meta["window_hu"] == [-175.0, 250.0]
    assert list((tmp_path / "previews").glob("step_*.png"))


@pytest.mark.slow
def test_ct_demo_trains_on_held_out_slabs_and_its_encoder_starts_the_ct_fine_tuning(
    tmp_path, child_env
):
    """The shipped CT pretraining demo (300 of its 400 epochs): trains on both demo scans outside
    their held-out Z slabs and learns there: its validation loss on fixed crops inside the slabs
    ends below 0.8x the crop-mean baseline printed beside it (a model predicting the mean
    intensity scores 1.0x). Its checkpoint starts the shipped CT fine-tuning demo (same
    encoder), which then validates on its own held-out slab."""
    stores = {"ct": tmp_path / "geomed_demo_ct", "organs": tmp_path / "geomed_demo_ct_organs"}
    build = ["-m", "geomed_mim.build_dataset", "--workers", "1", "--scheduler", "synchronous"]
    training.run_module([*build, "--modality", "ct", "--input", "demo:ct", "--output",
                         str(stores["ct"])], cwd=tmp_path, env=child_env)  # fmt: skip
    organs_config = str(REPO_ROOT / "configs/data/demo_ct_organs.yaml")
    training.run_module([*build, "--config", organs_config, "--output", str(stores["organs"])],
                        cwd=tmp_path, env=child_env)  # fmt: skip
    proc = training.run_module(
        ["-m", "geomed_mim.pretrain", "fit", "--config", str(CT_DEMO),
         "--data.init_args.stores", f"[{stores['ct']}]", "--trainer.max_epochs", "300",
         "--trainer.check_val_every_n_epoch", "100"],
        cwd=tmp_path, env=child_env,
    )  # fmt: skip
    run_dir = tmp_path / "runs" / "hi_end_demo_ct_cpu"
    losses = training.epoch_losses(run_dir)  # two steps of 8 crops per epoch (one per scan)
    assert len(losses) == 300
    val = [r for r in training.read_metrics(run_dir) if r.get("val/loss")]
    assert len(val) == 3
    baselines = {float(r["val/baseline_loss"]) for r in val}
    assert len(baselines) == 1  # the same fixed crops and masks at every validation
    loss, baseline = float(val[-1]["val/loss"]), baselines.pop()
    assert loss < 0.8 * baseline, (loss, baseline)
    # the stricter figure is logged beside it: each masked patch's own mean
    assert float(val[-1]["val/patch_mean_loss"]) < baseline
    assert f"val/loss {loss:.3f} (crop-mean {baseline:.3f}" in proc.stdout
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    meta = torch.load(ckpt, weights_only=True)["geomed_mim"]
    assert meta["spatial_dims"] == 3
    assert meta["encoder_levels"] == [3, 2, 1]
    assert meta["model_kwargs"]["pos_embed_scale"] == 8.0
    pretrained = torch.load(ckpt, weights_only=True)["state_dict"]
    finetune = REPO_ROOT / "configs" / "finetune" / "ct_organs_demo_cpu.yaml"
    training.run_module(
        ["-m", "geomed_mim.finetune_seg", "fit", "--config", str(finetune),
         "--data.init_args.stores", f"[{stores['organs']}]", "--trainer.max_epochs", "1",
         "--trainer.check_val_every_n_epoch", "1", "--model.init_args.init_from", str(ckpt),
         "--model.init_args.lr", "1e-6"],
        cwd=tmp_path, env=child_env,
    )  # fmt: skip
    tuned = torch.load(tmp_path / "runs/ct_organs_demo_cpu/checkpoints/last.ckpt",
                       weights_only=True)["state_dict"]  # fmt: skip
    name = "encoder.blocks.0.attn.qkv.weight"
    ours = next(v for k, v in tuned.items() if k.endswith(name))
    torch.testing.assert_close(ours, pretrained[f"model.{name}"], atol=1e-4, rtol=0)
    rows = training.read_metrics(tmp_path / "runs" / "ct_organs_demo_cpu")
    assert any(r.get("val/mdice") for r in rows)  # validated on the held-out slab
