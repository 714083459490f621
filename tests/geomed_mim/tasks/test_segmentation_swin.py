"""Segmentation fine-tuning on Swin encoders: Swin V2 + FPN (2-D) and MONAI SwinUNETR (3-D).

The networks are checked against their references on the same weights (timm's
SwinTransformerV2 stage features, MONAI's SwinUNETR output), every ``init_from`` source loads
into the encoder tensor for tensor, user mistakes are one line naming the flag, and the shipped
configs run fit and predict through the command line, shrunk in size only."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import nibabel as nib
import pytest
import rasterio
import torch
from monai.networks.nets import SwinUNETR
from safetensors.torch import load_file
from timm.models.swin_transformer_v2 import SwinTransformerV2

from data_pipelines.store.read import read_store_attrs
from geomed_mim.convert import main as convert_main
from geomed_mim.convert.common import Converted, write_export
from geomed_mim.export import export_encoder
from geomed_mim.finetune_seg import main as finetune_main
from geomed_mim.models.swin import SwinV2Encoder
from geomed_mim.tasks.segmentation import SegmentationTask
from geomed_mim.usage import UsageError
from tests.geomed_mim.conftest import REPO_ROOT, usage_error_line
from tests.geomed_mim.training import model_checkpoint, read_metrics

CONFIGS = REPO_ROOT / "configs/finetune"
CLASSES = {"ids": [0, 1, 2], "names": ["a", "b", "c"], "ignore_index": 255}
# tiny sizes: four stages each, as the standard Swins have
SWIN2 = {"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 2], "window_size": 4,
         "patch_size": 4}  # fmt: skip
SWIN3 = {"embed_dim": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4,
         "patch_size": 2}  # fmt: skip


def perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """Weights moved off their initialization, so that a wrong mapping cannot pass by chance."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return module


def swin_task(spatial_dims: int = 2, **kw) -> SegmentationTask:
    bands = kw.pop("bands", ["B02", "B03", "B04"] if spatial_dims == 2 else ["CT"])
    args = {"img_size": 32 if spatial_dims == 2 else 64, "spatial_dims": spatial_dims,
            "head": "fpn" if spatial_dims == 2 else "unetr", **kw}  # fmt: skip
    if "init_from" not in kw and "encoder" not in kw:
        family = "swinv2" if spatial_dims == 2 else "swin3d"
        args["encoder"] = {"family": family, **(SWIN2 if spatial_dims == 2 else SWIN3)}
    return SegmentationTask(in_chans=len(bands), bands=bands, classes=CLASSES, **args)


# -- the networks against their references ----------------------------------------------------
def test_swinv2_seg_encoder_gives_timms_stage_features():
    task = swin_task()
    enc = perturbed(task.net.encoder).eval()
    ref = SwinTransformerV2(**enc.timm_kwargs).eval()
    ref.load_state_dict(enc.timm_state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = enc.forward_stage_maps(x)
        theirs = ref.forward_intermediates(x, norm=True, intermediates_only=True)
        logits = task.eval()(x)
    assert [tuple(m.shape) for m in ours] == [(2, 24, 8, 8), (2, 48, 4, 4), (2, 96, 2, 2),
                                               (2, 192, 1, 1)]  # fmt: skip
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    assert logits.shape == (2, 3, 32, 32)


def test_swinunetr_segmenter_is_monais_swinunetr_on_the_same_state_dict():
    task = swin_task(spatial_dims=3)
    net = perturbed(task.net).eval()
    ref = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=(1, 1, 1, 1),
                    num_heads=(1, 1, 2, 2), window_size=4, patch_size=2).eval()  # fmt: skip
    ref.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(task(x), ref(x))


# -- starting points ---------------------------------------------------------------------------
def assert_loaded(encoder: torch.nn.Module, source: dict[str, torch.Tensor], bands_map: dict):
    """Every source weight is in ``encoder``; the patch embedding's channels by band name
    (``bands_map``: target channel → source channel)."""
    own = encoder.state_dict()
    for key, value in source.items():
        if key == "patch_embed.proj.weight":
            for j, i in bands_map.items():
                assert torch.equal(own[key][:, j], value[:, i])
        else:
            assert torch.equal(own[key], value), key


def converted_swinv2(tmp_path: Path, extra_norm_period: int = 0) -> tuple[Path, dict]:
    """A folder as ``--from satvision`` writes it (converted Swin V2, timm keys)."""
    sizes = {k: v for k, v in SWIN2.items() if k != "patch_size"}
    enc = perturbed(SwinV2Encoder(img_size=32, in_chans=3, patch_size=4, **sizes,
                                  extra_norm_period=extra_norm_period))  # fmt: skip
    state = {k: v for k, v in enc.state_dict().items() if k != "mask_token"}
    out = tmp_path / f"satvision{extra_norm_period}"
    write_export(
        Converted(family="swinv2", encoder=state, patch_size=4, img_size=32,
                  arch={"img_size": [32, 32], "patch_size": 4, **sizes, "mlp_ratio": 4.0},
                  bands=["B02", "B03", "B04"], source_format="satvision", checkpoint="x.pt",
                  extra_norm_period=extra_norm_period),
        out, None,
    )  # fmt: skip
    return out, state


def test_swinv2_starts_from_a_simmim_checkpoint_its_export_and_a_converted_folder(tmp_path):
    kwargs = {"img_size": 32, "in_chans": 3, "mask_patch_size": 8, **SWIN2}
    ckpt = model_checkpoint(tmp_path / "simmim.ckpt", "simmim_swinv2_tiny_window8", kwargs,
                            ["B02", "B03", "B04"], [])  # fmt: skip
    export_encoder(ckpt, tmp_path / "export")
    exported = load_file(str(tmp_path / "export/model.safetensors"))
    sources = [(ckpt, exported), (tmp_path / "export", exported)]
    sources += [converted_swinv2(tmp_path), converted_swinv2(tmp_path, extra_norm_period=1)]
    for source, state in sources:
        task = swin_task(init_from=str(source), bands=["B04", "B08", "b02"])
        assert task.family == "swinv2"
        assert_loaded(task.net.encoder, state, {0: 2, 2: 0})  # B08 is new: left fresh
    assert len(task.net.encoder.extra_norms) == 4  # the giant's layout, in our encoder


def converted_swinunetr(tmp_path: Path) -> Path:
    """A folder ``--from swinunetr`` converted from a (tiny) ``model_swinvit.pt``."""
    source = perturbed(
        SwinUNETR(
            in_channels=1,
            out_channels=2,
            feature_size=12,
            depths=(1, 1, 1, 1),
            num_heads=(1, 1, 2, 2),
            window_size=4,
        )
    )
    state = {f"module.{k}".replace(".linear1.", ".fc1.").replace(".linear2.", ".fc2."): v
             for k, v in source.swinViT.state_dict().items()}  # fmt: skip
    torch.save({"state_dict": state}, tmp_path / "model_swinvit.pt")
    out = tmp_path / "swinvit"
    argv = ["--from", "swinunetr", "--checkpoint", str(tmp_path / "model_swinvit.pt")]
    assert convert_main([*argv, "--img-size", "64", "--output", str(out)]) == 0
    return out


def test_swinunetr_starts_from_a_converted_swinvit_folder_or_a_simmim_3d_checkpoint(tmp_path):
    out = converted_swinunetr(tmp_path)
    task = swin_task(spatial_dims=3, init_from=str(out))
    assert task.family == "swin3d"
    assert_loaded(task.net.swinViT, load_file(str(out / "model.safetensors")), {0: 0})
    kwargs = {"img_size": 64, "in_chans": 1, "mask_patch_size": 8, **SWIN3}
    ckpt = model_checkpoint(tmp_path / "simmim3d.ckpt", "simmim_swinvit3d_feat48", kwargs,
                            ["CT"], [])  # fmt: skip
    source = torch.load(ckpt, weights_only=True)["state_dict"]
    state = {k.removeprefix("model.encoder."): v for k, v in source.items()
             if k.startswith("model.encoder.") and not k.endswith("mask_token")}  # fmt: skip
    task = swin_task(spatial_dims=3, init_from=str(ckpt))
    assert_loaded(task.net.swinViT, state, {0: 0})
    assert task.checkpoint_metadata()["encoder"] == {"family": "swin3d", **SWIN3,
                                                     "mlp_ratio": 4.0}  # fmt: skip


def test_layer_decay_and_probing_on_swin_encoders():
    class _Trainer:
        estimated_stepping_batches = 10

    for dims, first, last, head in [
        (2, "encoder.layers.0.blocks.0.attn.qkv.weight",
         "encoder.layers.3.blocks.0.attn.qkv.weight", "classifier.weight"),
        (3, "swinViT.layers1.0.blocks.0.attn.qkv.weight",
         "swinViT.layers4.0.blocks.0.attn.qkv.weight", "out.conv.conv.weight"),
    ]:  # fmt: skip
        task = swin_task(spatial_dims=dims, lr=1.0, layer_decay=0.5)
        task.trainer = _Trainer()  # type: ignore[assignment]
        opt = task.configure_optimizers()["optimizer"]
        lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        params = dict(task.net.named_parameters())
        lrs = [lr_of[id(params[n])] for n in (f"{task.net.encoder_prefix}patch_embed.proj.weight",
                                              first, last, head)]  # fmt: skip
        assert lrs[0] < lrs[1] < lrs[2] < lrs[3] == 1.0, lrs
        assert math.isclose(lrs[1] / lrs[2], 0.5**3)  # the first and last stages: 3 layers
        frozen = swin_task(spatial_dims=dims, freeze_encoder=True)
        assert not any(p.requires_grad for p in frozen.net.encoder.parameters())


# -- user mistakes: one line naming the flag ---------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"head": "unetr"}, "--model.init_args.head unetr: a Swin V2 encoder takes head fpn"),
        ({"img_size": 48}, "--tile-size.*48 px does not fit.*give a multiple of 32"),
        ({"spatial_dims": 3, "img_size": 32},
         "--data.init_args.crop_size: 32 px.*a multiple of 32 of at least 64"),
        ({"spatial_dims": 3, "encoder": {"family": "swin3d", **SWIN3, "embed_dim": 16}},
         "--model.init_args.encoder.embed_dim 16: SwinUNETR needs a multiple of 12"),
        ({"encoder": {"family": "resnet"}}, "--model.init_args.encoder.family resnet: use one"),
        ({"encoder": {"family": "swinv2"}}, "--model.init_args.encoder: a swinv2 encoder needs"),
        ({"encoder": {"family": "swinv2", **SWIN2, "depth": 4}},
         r"--model.init_args.encoder: \['depth'\] are not swinv2 sizes"),
    ],
)  # fmt: skip
def test_swin_mistakes_are_one_line_naming_the_flag(kwargs, message):
    with pytest.raises(UsageError, match=message) as e:
        swin_task(**kwargs)
    assert "\n" not in str(e.value)


def test_evaluate_refuses_a_swin_encoder_without_a_mode_in_one_line(
    lulc_store, tmp_path, capsys, monkeypatch
):
    from geomed_mim.evaluate import main as evaluate_main

    monkeypatch.setattr(sys, "argv", ["geomed_mim.evaluate"])
    out, _ = converted_swinv2(tmp_path)
    args = ["--config", str(REPO_ROOT / "configs/evaluate/lulc_sentinel2_demo.yaml"),
            "--data.init_args.store", str(lulc_store), "--output", str(tmp_path / "eval"),
            "--encoders", f"[scratch, {out}]", "--modes", "[attentive]"]  # fmt: skip
    line = usage_error_line(evaluate_main, args, capsys)
    assert line.startswith(f"error: --encoders {out}: a swinv2 encoder runs --modes")


# -- the shipped configs through the command line ----------------------------------------------
@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    """The command line runs in this process: it must not see pytest's arguments."""
    monkeypatch.setattr(sys, "argv", ["geomed_mim.finetune_seg"])


def test_cli_says_a_swin_mistake_in_one_line_exit_2(lulc_store, tmp_path, capsys):
    args = ["fit", "--config", str(CONFIGS / "lulc_swinv2_demo_cpu.yaml"),
            "--data.init_args.store", str(lulc_store), "--model.init_args.head", "unetr",
            "--trainer.default_root_dir", str(tmp_path / "run")]  # fmt: skip
    line = usage_error_line(finetune_main, args, capsys, alone=False)
    assert line == (
        "error: --model.init_args.head unetr: a Swin V2 encoder takes head fpn or linear; pass "
        "--model.init_args.head fpn"
    )


def assert_in_state(state: dict[str, torch.Tensor], weights: Path, prefix: str) -> None:
    """Every weight of the safetensors file ``weights`` is in ``state`` under ``prefix``."""
    for key, value in load_file(str(weights)).items():
        assert torch.equal(state[f"{prefix}{key}"], value), key


def fit_and_predict(args: list[str], predict_inputs: list[str], root: Path) -> dict:
    """``finetune_seg fit`` then ``predict`` in this process; the checkpoint it wrote."""
    finetune_main(["fit", *args])
    ckpt = root / "checkpoints/last.ckpt"
    rows = read_metrics(root)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses
    assert all(math.isfinite(v) for v in losses)
    # predict rebuilds the network from the checkpoint: the size overrides are not needed
    if "--model.init_args.feature_size" in args:
        i = args.index("--model.init_args.feature_size")
        args = args[:i] + args[i + 2 :]
    finetune_main(["predict", *args, "--ckpt_path", str(ckpt),
                   "--data.init_args.predict_inputs", json.dumps(predict_inputs)])  # fmt: skip
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def test_rs_swinv2_config_fits_from_an_export_and_predicts(lulc_store, demo_data, tmp_path):
    """The frozen (probed) encoder keeps the export's weights through training: the checkpoint
    holds them; predict rebuilds the Swin V2 network from the checkpoint alone."""
    bands = read_store_attrs(lulc_store)["bands"]
    kwargs = {"img_size": 32, "in_chans": len(bands), "mask_patch_size": 8, **SWIN2,
              "depths": [1, 1], "num_heads": [1, 2], "window_size": 8}  # fmt: skip
    ckpt = model_checkpoint(tmp_path / "simmim.ckpt", "simmim_swinv2_tiny_window8", kwargs,
                            bands, [])  # fmt: skip
    export_encoder(ckpt, tmp_path / "export")
    root = tmp_path / "run"
    scene = demo_data / "sentinel2_l1c/scenes/s2_l1c_reference_scene_2.tif"
    args = ["--config", str(CONFIGS / "lulc_swinv2_demo_cpu.yaml"),
            "--data.init_args.store", str(lulc_store), "--trainer.default_root_dir", str(root),
            "--model.init_args.init_from", str(tmp_path / "export"),
            "--model.init_args.freeze_encoder", "true", "--model.init_args.feature_size", "8",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.log_every_n_steps", "1"]  # fmt: skip
    written = fit_and_predict(args, [str(scene)], root)
    assert written["geomed_mim"]["encoder"]["family"] == "swinv2"
    state = written["state_dict"]
    assert_in_state(state, tmp_path / "export/model.safetensors", "net.encoder.")
    out = root / "predictions/s2_l1c_reference_scene_2_classes.tif"
    with rasterio.open(scene) as src, rasterio.open(out) as pred:
        assert (pred.crs, pred.shape) == (src.crs, src.shape)
    # the fine-tuned encoder exports as a pretrained Swin V2 does
    config = export_encoder(root / "checkpoints/last.ckpt", tmp_path / "finetuned")
    assert config["checkpoint_kind"] == "segmentation"
    assert_in_state(state, tmp_path / "finetuned/model.safetensors", "net.encoder.")


def test_ct_swinunetr_config_fits_from_a_converted_folder_and_predicts(
    ct_organs_store, demo_data, tmp_path
):
    folder = converted_swinunetr(tmp_path)
    root = tmp_path / "run"
    volume = demo_data / "ct/abdomen_3mm.nii.gz"
    args = ["--config", str(CONFIGS / "ct_organs_swinunetr_demo_cpu.yaml"),
            "--data.init_args.stores", json.dumps([str(ct_organs_store)]),
            "--trainer.default_root_dir", str(root),
            "--model.init_args.init_from", str(folder),
            "--model.init_args.freeze_encoder", "true",
            "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.log_every_n_steps", "1", "--data.init_args.samples_per_epoch", "1",
            "--model.init_args.sw_overlap", "0.0",
            "--model.init_args.sw_batch_size", "4"]  # fmt: skip
    written = fit_and_predict(args, [str(volume)], root)
    assert written["geomed_mim"]["encoder"]["family"] == "swin3d"
    state = written["state_dict"]
    assert_in_state(state, folder / "model.safetensors", "net.swinViT.")
    (out,) = (root / "predictions").glob("*_classes.nii.gz")
    assert nib.load(out).shape == nib.load(volume).shape
