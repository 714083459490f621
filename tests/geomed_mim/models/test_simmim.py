"""SimMIM on Swin V2 against pytorch-caney (SatVision-TOA's code): the same weights, batch and
mask give the same loss and encoder features; its encoder keys map into timm's; the mask unit
generator, checkpointing, compile and the giant config's size."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from timm.models.swin_transformer_v2 import (
    SwinTransformerV2,
    SwinTransformerV2Block,
    checkpoint_filter_fn,
)

from geomed_mim.models import create_model, list_models
from geomed_mim.models.masking import MaskUnitMasking
from geomed_mim.models.swin import NoTimmTwinError
from geomed_mim.tasks.distributed import BlockFSDPStrategy
from geomed_mim.tasks.pretraining import MIMPretrainTask

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "pretrain"

TINY = {
    "embed_dim": 24,
    "depths": (2, 2, 2, 2),
    "num_heads": (2, 2, 2, 2),
    "window_size": 4,
    "drop_path_rate": 0.0,
}


def tiny_simmim(**kwargs):
    return create_model(
        "simmim_swinv2_tiny_window8", **{"in_chans": 5, "img_size": 64, **TINY, **kwargs}
    )


def caney_pair(caney, in_chans: int = 5, img_size: int = 64, **kwargs):
    torch.manual_seed(0)
    encoder = caney.SwinTransformerV2ForSimMIM(
        img_size=img_size,
        patch_size=4,
        in_chans=in_chans,
        num_classes=0,
        embed_dim=TINY["embed_dim"],
        depths=list(TINY["depths"]),
        num_heads=list(TINY["num_heads"]),
        window_size=TINY["window_size"],
        drop_path_rate=0.0,
        **kwargs,
    )
    return caney.MiMModel(encoder=encoder, encoder_stride=32, in_chans=in_chans, patch_size=4)


def ours_from_caney(ref) -> torch.nn.Module:
    """Our model with the reference's weights: the encoder through timm's checkpoint filter."""
    ours = tiny_simmim()
    enc = checkpoint_filter_fn(ref.encoder.state_dict(), ours.encoder)
    ours.encoder.load_state_dict(enc, strict=True)
    dec = {f"decoder.{k}": v for k, v in ref.decoder.state_dict().items()}
    ours.decoder.load_state_dict(dec, strict=True)
    return ours


def test_registered_names():
    assert {
        "simmim_swinv2_tiny_window8",
        "simmim_swinv2_base_window8",
        "simmim_swinv2_giant_window8",
    } <= set(list_models("simmim_*"))


def test_loss_and_features_equal_pytorch_caney_on_the_same_weights_batch_and_mask(caney):
    ref = caney_pair(caney).eval()
    # the reference's own weights perturbed, so that post-norms and the mask token are not zero
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = ours_from_caney(ref).eval()
    torch.manual_seed(1)
    x = torch.randn(3, 5, 64, 64)
    noise = torch.rand(3, 64)  # 8 x 8 mask units of 8 px over the 16 x 16 patch grid
    mask = MaskUnitMasking(0.6, unit=2).unit_mask(noise, (16, 16)).reshape(3, 16, 16)
    with torch.no_grad():
        ref_loss = ref(x, mask)
        ref_feat = ref.encoder(x, mask)  # [B, C', h', w']
        out = ours(x, mask=mask)
        feat = ours.encoder(x, mask.reshape(3, -1)).permute(0, 3, 1, 2)  # [B, C', h', w']
    torch.testing.assert_close(feat, ref_feat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-6, atol=1e-6)
    # the noise path: the same mask drawn by the masking strategy
    with torch.no_grad():
        torch.testing.assert_close(ours(x, noise=noise).loss, ref_loss, rtol=1e-6, atol=1e-6)


def test_caney_encoder_keys_map_into_timms_swin_v2(caney):
    """timm's checkpoint filter maps the reference encoder (downsample at a stage's end) into
    timm's layout (at the next stage's start); timm's own class loads it strictly, less the
    mask token, and gives our features when nothing is masked."""
    ref = caney_pair(caney)
    timm_model = SwinTransformerV2(
        img_size=64, patch_size=4, in_chans=5, num_classes=0, **TINY
    ).eval()
    mapped = checkpoint_filter_fn(ref.encoder.state_dict(), timm_model)
    assert "layers.1.downsample.reduction.weight" in mapped
    assert not any(k.startswith("layers.0.downsample") for k in mapped)
    timm_model.load_state_dict({k: v for k, v in mapped.items() if k != "mask_token"})
    ours = ours_from_caney(ref).eval()
    x = torch.randn(2, 5, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(timm_model.forward_features(x), ours.encoder(x))


def test_mask_units_as_the_reference_mask_generator():
    """SimMIM's MaskGenerator: ceil(units x ratio) units masked, each unit a block of
    (mask patch / model patch)^2 patches; per-sample seeds give the same mask whatever the
    batch."""
    strategy = MaskUnitMasking(0.6, unit=2)  # 8-px units over 4-px patches
    grid = (32, 32)  # 128 px
    units = 16 * 16
    seeds = torch.tensor([3, 7, 11])
    result = strategy(3, grid, torch.device("cpu"), sample_seeds=seeds)
    mask = result.mask.reshape(3, 32, 32)
    assert (result.mask.sum(1) == math.ceil(units * 0.6) * 4).all()  # 154 units, 616 patches
    coarse = mask[:, ::2, ::2]
    expanded = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.equal(mask, expanded)  # constant within each unit
    alone = strategy(1, grid, torch.device("cpu"), sample_seeds=seeds[1:2])
    assert torch.equal(alone.mask[0], result.mask[1])
    assert result.num_visible == 32 * 32 - 616
    assert (result.mask.gather(1, result.keep_idx) == 0).all()


def test_mae_family_needs_a_vit():
    with pytest.raises(ValueError, match="drops masked tokens, which needs a plain ViT"):
        create_model("mae_vit_tiny_patch16", encoder="swinv2")


def test_baseline_is_the_l1_of_each_masked_patch_mean():
    torch.manual_seed(0)
    model = tiny_simmim(img_size=32)
    x = torch.randn(2, 5, 32, 32) * 2 + 1
    with torch.no_grad():
        out = model(x, sample_seeds=torch.tensor([0, 1]))
        baseline = model.trivial_baseline_loss(x, out)
    m = out.mask.reshape(2, 8, 8).repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
    patch_mean = x.reshape(2, 5, 8, 4, 8, 4).mean(dim=(1, 3, 5), keepdim=True)
    own = patch_mean.expand(2, 5, 8, 4, 8, 4).reshape(2, 5, 32, 32)
    expected = ((x - own).abs() * m).sum() / (m.sum() + 1e-5) / 5
    torch.testing.assert_close(baseline, expected)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = tiny_simmim(img_size=32)
    ckpt = tiny_simmim(img_size=32, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 32, 32)
    seeds = torch.tensor([0, 1])
    plain(x, sample_seeds=seeds).loss.backward()
    ckpt(x, sample_seeds=seeds).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_compiled_encoder_and_decoder_give_the_eager_loss_and_gradients():
    """The task's ``compile`` option, with the ``aot_eager`` backend: inductor's C++ build took
    111 s on 2 CPU cores for this tiny model (measured once), too long for the suite; aot_eager
    traces the same graphs (dynamo, AOT autograd) without code generation."""
    kwargs = {**TINY, "depths": (2, 2), "num_heads": (2, 2)}
    torch.manual_seed(0)
    eager = MIMPretrainTask("simmim_swinv2_tiny_window8", kwargs, in_chans=5, img_size=32)
    compiled = MIMPretrainTask(
        "simmim_swinv2_tiny_window8", kwargs, in_chans=5, img_size=32,
        compile=True, compile_backend="aot_eager",
    )  # fmt: skip
    compiled.load_state_dict(eager.state_dict())
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # names unchanged
    x = torch.randn(2, 5, 32, 32)
    mask = eager.model.masking.unit_mask(torch.rand(2, 16), (8, 8))
    a, b = eager.model(x, mask=mask), compiled.model(x, mask=mask)
    torch.testing.assert_close(b.pred, a.pred)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_extra_norms_after_every_nth_block():
    model = tiny_simmim(img_size=32, depths=(2, 2, 6, 2), extra_norm_period=3)
    assert sorted(model.encoder.extra_norms) == ["2_2", "2_5"]
    staged = tiny_simmim(img_size=32, extra_norm_stage=True)
    assert sorted(staged.encoder.extra_norms) == ["0_1", "1_1", "2_1"]  # the last: final norm
    with pytest.raises(NoTimmTwinError, match="no extra norms"):
        staged.encoder.timm_state_dict()


def test_the_giant_config_builds_on_the_meta_device_at_about_3_billion_parameters():
    """The shipped SatVision-TOA config's model (14 bands, 128 px): 2.65 B parameters, 2.60 B
    of them the encoder's (the published "3 B" rounds up), one extra norm every 6 blocks, each
    block checkpointed, the strategy sharding per block."""
    cfg = yaml.safe_load((CONFIGS / "simmim_swinv2_giant_modis_toa14.yaml").read_text())
    init = cfg["model"]["init_args"]
    with torch.device("meta"):
        model = create_model(init["model"], in_chans=14, img_size=128, **init["model_kwargs"])
    n = sum(p.numel() for p in model.parameters())
    assert 2.6e9 < n < 2.7e9, n
    assert 2.55e9 < sum(p.numel() for p in model.encoder.parameters()) < 2.65e9
    assert len(model.encoder.extra_norms) == 7  # stage 3's 42 blocks, one after every 6th
    assert model.encoder.grad_checkpointing
    assert cfg["trainer"]["strategy"]["class_path"].endswith("BlockFSDPStrategy")
    strategy = BlockFSDPStrategy(**cfg["trainer"]["strategy"]["init_args"])
    policy = strategy.kwargs["auto_wrap_policy"]
    assert SwinTransformerV2Block in policy._module_classes


# -- 3-D: MONAI's SwinUNETR encoder --------------------------------------------------------------
TINY_3D = {
    "img_size": 32,
    "in_chans": 2,
    "embed_dim": 12,
    "depths": (1, 1, 1, 1),
    "num_heads": (1, 2, 2, 4),
    "window_size": 4,
    "mask_patch_size": 8,
}


def test_3d_simmim_features_are_monais_and_the_loss_the_reference_formula():
    """Unmasked, the encoder computes MONAI's own SwinTransformer (its last output, layer-normed
    as SwinUNETR reads it); the 3-D pixel shuffle puts channel c·s³ + i·s² + j·s + k at voxel
    offset (i, j, k) (PixelShuffle's order, one axis more); the loss is the masked L1."""
    from monai.networks.nets.swin_unetr import SwinTransformer

    torch.manual_seed(0)
    model = create_model("simmim_swinvit3d_feat48", **TINY_3D).eval()
    enc = model.encoder
    monai = SwinTransformer(
        in_chans=2, embed_dim=12, window_size=(4,) * 3, patch_size=(2,) * 3,
        depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), spatial_dims=3,
    ).eval()  # fmt: skip
    state = {k: v for k, v in enc.state_dict().items() if k != "mask_token"}
    monai.load_state_dict(state, strict=True)
    x = torch.randn(2, 2, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), monai(x)[4])
        feats = torch.randn(1, 192, 1, 1, 1)
        rec = model.decoder(feats)  # [1, 2, 32, 32, 32]
        conv = model.decoder.conv(feats)[0, :, 0, 0, 0]  # [2 · 32³]
        s = 32
        for c, i, j, k in [(0, 0, 0, 1), (1, 3, 5, 7), (1, 31, 0, 30)]:
            assert rec[0, c, i, j, k] == conv[c * s**3 + i * s**2 + j * s + k]
        out = model(x, sample_seeds=torch.tensor([0, 1]))
        x_rec = model.decoder(enc.forward_features(x, out.mask))
    assert out.mask.shape == (2, 16**3)
    assert (out.mask.sum(1) == math.ceil(4**3 * 0.6) * 4**3).all()  # 39 units of 4³ patches
    m = out.mask.reshape(2, 16, 16, 16)
    m = m.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3).unsqueeze(1)
    expected = ((x - x_rec).abs() * m).sum() / (m.sum() + 1e-5) / 2
    torch.testing.assert_close(out.loss, expected)
