"""The pretraining task and CLI: weight-decay groups, mask seeds, real CLI runs in a subprocess,
a 3-D run on a real CT store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from geomed_mim.models import create_model
from geomed_mim.models.patches import gather_tokens, patchify
from geomed_mim.tasks.pretraining import MIMPretrainTask, mask_seeds_for, trivial_baseline_loss
from tests.conftest import REPO_ROOT
from tests.geomed_mim.training import (
    TINY_DECODER,
    fit_on_ct_crops,
    read_metrics,
    run_module,
    timm_from_export,
    tiny_pretrain_task,
)

DEMO_CONFIG = REPO_ROOT / "configs" / "pretrain" / "demo_cpu.yaml"


def test_no_weight_decay_on_norms_biases_and_tokens():
    task = tiny_pretrain_task(MIMPretrainTask, "mae_vit_tiny_patch16", depth=1)
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
    base_lr = yaml.safe_load(DEMO_CONFIG.read_text())["model"]["init_args"]["base_lr"]
    assert max(lrs) == pytest.approx(base_lr * (16 * 2) / 256)  # base_lr × effective batch / 256
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
@pytest.mark.parametrize(
    "config", ["demo_cpu.yaml", "selective_mae_demo_cpu.yaml", "hi_end_mae_demo_cpu.yaml"]
)
def test_the_shipped_2d_demos_learn_and_say_so(config, demo_store, tmp_path, child_env):
    """Each 2-D pretraining demo as shipped (MAE, SelectiveMAE, Hi-End-MAE), shrunk to half its
    epochs (the full runs end near 0.47x, docs/pretraining.md), in a log (no terminal): one
    line per epoch with the loss and the throughput, the validation loss beside its
    predict-zeros baseline, a summary; the validation masked loss ends below 0.8x the baseline
    (the model learned something a constant cannot do) and the last validation preview is
    written."""
    path = DEMO_CONFIG.parent / config
    shipped = yaml.safe_load(path.read_text())
    epochs = shipped["trainer"]["max_epochs"] // 2
    proc = run_module(
        ["-m", "geomed_mim.pretrain", "fit", "--config", str(path),
         "--data.init_args.store", str(demo_store), "--trainer.max_epochs", str(epochs)],
        tmp_path, child_env, timeout=600,
    )  # fmt: skip
    root = shipped["trainer"]["default_root_dir"]
    run_dir = tmp_path / root
    lines = proc.stdout.splitlines()
    epoch_lines = [ln for ln in lines if ln.startswith("epoch ")]
    assert len(epoch_lines) == epochs
    assert all("train/loss" in ln and "images/s" in ln for ln in epoch_lines)
    assert "(predict-zeros " in epoch_lines[-1]  # validated at the last epoch
    rows = [r for r in read_metrics(run_dir) if r.get("val/loss")]
    val, baseline = float(rows[-1]["val/loss"]), float(rows[-1]["val/baseline_loss"])
    assert 0.9 < baseline < 1.01  # per-patch normalized targets: (P - 1) / P
    assert val < 0.8 * baseline, (val, baseline)
    summary = lines[lines.index(next(ln for ln in lines if ln.startswith("done: "))) :]
    assert summary[0].startswith(f"done: {epochs * 4} steps")
    assert any(f"val/loss {val:.3f}" in ln and "predict-zeros baseline" in ln for ln in summary)
    assert any(
        ln.strip().startswith(f"checkpoints: {root}/checkpoints (last.ckpt") for ln in summary
    )
    (log_dir,) = run_dir.glob("logs/version_*")
    assert (log_dir / "previews" / f"val_step_{epochs * 4:07d}.png").is_file()  # the last one
    assert list(log_dir.glob("previews/step_*.png"))
    if config.startswith("hi_end"):  # its export records the levels its decoder read
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        export = ["-m", "geomed_mim.export", str(ckpt), "--output", str(tmp_path / "export")]
        run_module(export, tmp_path, child_env, timeout=300)
        cfg = json.loads((tmp_path / "export" / "config.json").read_text())
        assert cfg["intermediate_blocks"] == [1, 2, 3]
        assert cfg["encoder_levels"] == [3, 2, 1]


@pytest.mark.slow
def test_the_simmim_demo_learns_and_says_so(demo_store, tmp_path, child_env):
    """The SimMIM / Swin V2 demo as shipped, at 40 of its 100 epochs (the full run ends near
    0.74x, docs/pretraining.md): validation prints SimMIM's L1 beside the same L1 of predicting
    each masked patch's own mean, the loss ends below 0.95x of it (0.91x measured at 40 epochs;
    the patch mean is an oracle of the hidden patch's level), and the previews are written."""
    path = DEMO_CONFIG.parent / "simmim_swinv2_demo_cpu.yaml"
    root = yaml.safe_load(path.read_text())["trainer"]["default_root_dir"]
    epochs = 40
    proc = run_module(
        ["-m", "geomed_mim.pretrain", "fit", "--config", str(path),
         "--data.init_args.store", str(demo_store), "--trainer.max_epochs", str(epochs)],
        tmp_path, child_env, timeout=600,
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    epoch_lines = [ln for ln in lines if ln.startswith("epoch ")]
    assert len(epoch_lines) == epochs
    assert "(patch-mean " in epoch_lines[-1]
    rows = [r for r in read_metrics(tmp_path / root) if r.get("val/loss")]
    val, baseline = float(rows[-1]["val/loss"]), float(rows[-1]["val/baseline_loss"])
    assert 0.2 < baseline < 0.4  # standardized bands: the L1 of within-patch variation
    assert val < 0.95 * baseline, (val, baseline)
    assert any(f"val/loss {val:.3f}" in ln and "patch-mean baseline" in ln for ln in lines)
    (log_dir,) = (tmp_path / root).glob("logs/version_*")
    assert (log_dir / "previews" / f"val_step_{epochs * 4:07d}.png").is_file()
    assert list(log_dir.glob("previews/step_*.png"))


@pytest.mark.parametrize("norm_pix_loss", [True, False])
@pytest.mark.parametrize("name", ["mae_vit_tiny_patch16", "selective_mae_vit_tiny_patch16"])
def test_baseline_is_the_models_own_loss_of_a_prediction_without_structure(name, norm_pix_loss):
    """val/baseline_loss: the loss the model's own forward_loss gives, on the same loss patches
    (all masked ones for MAE, the reconstruction targets for SelectiveMAE), to predicting zeros
    for normalized targets, and for raw targets each sample's mean over its loss patches (the
    best constant: predicting the mean intensity does not pass as learning); ``per_patch`` gives
    the stricter figure of each loss patch's own mean."""
    torch.manual_seed(0)
    model = create_model(
        name, in_chans=5, img_size=16, patch_size=4, depth=1, norm_pix_loss=norm_pix_loss,
        **TINY_DECODER,
    )  # fmt: skip
    images = torch.randn(3, 5, 16, 16) * 2 + torch.arange(3.0).view(3, 1, 1, 1) * 3
    noise = torch.rand(3, model.encoder.num_patches)
    with torch.no_grad():
        out = model(images, noise=noise)
        choice = model.choose_tokens(images, model.encoder.patch_embed(images), None, noise)
        pred_shape = model.forward_decoder(model.forward_encoder(
            model.encoder.patch_embed(images), choice), choice).shape  # fmt: skip
        patches = patchify(images, model.encoder.patch_size)  # [B, L, P]
        if pred_shape[1] != patches.shape[1]:  # SelectiveMAE predicts its targets only
            patches = gather_tokens(patches, choice.target_idx)
            loss_mask = torch.ones(patches.shape[:2])
        else:
            loss_mask = out.mask
        own_mean = patches.mean(-1, keepdim=True).expand(pred_shape)  # [B, L', P]
        # each sample's mean over the values of its loss patches, written out
        sample_mean = torch.stack([
            patches[b][loss_mask[b].bool()].mean() for b in range(3)
        ]).view(3, 1, 1).expand(pred_shape)  # fmt: skip
        structureless = torch.zeros(pred_shape) if norm_pix_loss else sample_mean
        expected, _ = model.forward_loss(images, structureless, choice)
        expected_per_patch, _ = model.forward_loss(
            images, torch.zeros(pred_shape) if norm_pix_loss else own_mean, choice
        )
    got = trivial_baseline_loss(images, out, model.encoder.patch_size, norm_pix_loss)
    torch.testing.assert_close(got, expected)
    strict = trivial_baseline_loss(
        images, out, model.encoder.patch_size, norm_pix_loss, per_patch=True
    )
    torch.testing.assert_close(strict, expected_per_patch)
    if norm_pix_loss:  # per-patch standardized targets: (P - 1) / P with the unbiased variance
        p = 4 * 4 * 5
        assert float(got) == pytest.approx((p - 1) / p, rel=1e-4)
    else:  # the samples' offsets (0, 3, 6) are not structure a constant per sample misses
        assert 3.5 < float(got) < 4.5
        assert float(strict) < float(got)


def test_band_shift_is_one_offset_per_sample_and_band_whatever_the_batch():
    task = MIMPretrainTask(
        model="mae_vit_tiny_patch16", in_chans=4, img_size=8,
        model_kwargs={"patch_size": 4, "depth": 1, **TINY_DECODER}, band_shift_std=0.5,
    )  # fmt: skip
    images = torch.zeros(3, 4, 8, 8)
    whole = task.training_images({"image": images, "index": torch.tensor([7, 2, 5])})
    alone = task.training_images({"image": images[:1], "index": torch.tensor([7])})
    torch.testing.assert_close(whole[:1], alone)  # the sample's own seed, not its batch's
    offsets = whole[:, :, 0, 0]  # [B, C]
    assert torch.equal(whole, offsets[:, :, None, None].expand_as(whole))  # same for all pixels
    assert len({tuple(o.tolist()) for o in offsets}) == 3  # each sample its own
    assert 0.1 < float(offsets.std()) < 1.5
    task.hparams.band_shift_std = 0.0
    assert torch.equal(task.training_images({"image": images, "index": torch.arange(3)}), images)


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
