"""MAE against the reference formula, written out here independently with plain tensor ops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geomed_mim.models import create_model, list_models, patchify, unpatchify
from tests.geomed_mim.training import TINY_DECODER


def tiny_mae(**kwargs):
    cfg = dict(depth=2, embed_dim=48, num_heads=3, **TINY_DECODER)
    cfg.update(kwargs)
    return create_model("mae_vit_tiny_patch16", **cfg)


# -- the reference, written out -------------------------------------------------------------------
def ref_patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """Loop-based: patch (row-major over the grid) values ordered (p, p[, p], C)."""
    B, C, *spatial = imgs.shape
    grid = [s // p for s in spatial]
    out = torch.empty(B, math.prod(grid), p ** len(spatial) * C)
    for n in range(B):
        for li, cell in enumerate(
            torch.cartesian_prod(*[torch.arange(g) for g in grid]).view(-1, len(grid))
        ):
            k = 0
            for offs in torch.cartesian_prod(*[torch.arange(p)] * len(spatial)).view(
                -1, len(spatial)
            ):
                for c in range(C):
                    idx = tuple(int(g) * p + int(o) for g, o in zip(cell, offs, strict=False))
                    out[n, li, k] = imgs[(n, c, *idx)]
                    k += 1
    return out


def ref_block(x: torch.Tensor, blk) -> torch.Tensor:
    B, N, D = x.shape
    H = blk.attn.num_heads
    h = F.layer_norm(x, (D,), blk.norm1.weight, blk.norm1.bias, 1e-6)
    qkv = F.linear(h, blk.attn.qkv.weight, blk.attn.qkv.bias).reshape(B, N, 3, H, D // H)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (D // H) ** -0.5).softmax(dim=-1)
    o = (attn @ v).transpose(1, 2).reshape(B, N, D)
    x = x + F.linear(o, blk.attn.proj.weight, blk.attn.proj.bias)
    h = F.layer_norm(x, (D,), blk.norm2.weight, blk.norm2.bias, 1e-6)
    h = F.linear(
        F.gelu(F.linear(h, blk.mlp.fc1.weight, blk.mlp.fc1.bias)),
        blk.mlp.fc2.weight,
        blk.mlp.fc2.bias,
    )
    return x + h


def reference_mae_loss(
    model, imgs: torch.Tensor, noise: torch.Tensor, mask_ratio: float, norm_pix: bool
):
    enc, dec = model.encoder, model.decoder
    p = enc.patch_size[0]
    conv = F.conv2d if imgs.dim() == 4 else F.conv3d
    x = conv(imgs, enc.patch_embed.proj.weight, enc.patch_embed.proj.bias, stride=p)
    x = x.flatten(2).transpose(1, 2)
    x = x + enc.pos_embed[:, 1:, :]
    # random_masking, as in models_mae.py
    N, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones([N, L])
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    cls = enc.cls_token + enc.pos_embed[:, :1, :]
    x = torch.cat((cls.expand(N, -1, -1), x), dim=1)
    for blk in enc.blocks:
        x = ref_block(x, blk)
    x = F.layer_norm(x, (D,), enc.norm.weight, enc.norm.bias, 1e-6)
    # decoder
    x = F.linear(x, dec.decoder_embed.weight, dec.decoder_embed.bias)
    mask_tokens = dec.mask_token.repeat(N, ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1) + dec.decoder_pos_embed
    for blk in dec.decoder_blocks:
        x = ref_block(x, blk)
    x = F.layer_norm(x, (x.shape[-1],), dec.decoder_norm.weight, dec.decoder_norm.bias, 1e-6)
    pred = F.linear(x, dec.decoder_pred.weight, dec.decoder_pred.bias)[:, 1:, :]
    # forward_loss
    target = ref_patchify(imgs, p)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)
    return (loss * mask).sum() / mask.sum(), pred, mask


@pytest.mark.parametrize(
    ("spatial_dims", "in_chans", "norm_pix"),
    [(2, 3, True), (2, 13, False), (2, 1, True), (3, 1, True), (3, 2, False)],
)
def test_loss_equals_reference_formula(spatial_dims, in_chans, norm_pix):
    torch.manual_seed(0)
    img, patch = (32, 8) if spatial_dims == 2 else (16, 4)
    model = tiny_mae(
        in_chans=in_chans,
        img_size=img,
        patch_size=patch,
        spatial_dims=spatial_dims,
        norm_pix_loss=norm_pix,
        mask_ratio=0.6,
    ).eval()
    imgs = torch.randn(3, in_chans, *(img,) * spatial_dims)
    L = model.encoder.num_patches
    noise = torch.rand(3, L)
    with torch.no_grad():
        out = model(imgs, noise=noise)
        ref_loss, ref_pred, ref_mask = reference_mae_loss(model, imgs, noise, 0.6, norm_pix)
    torch.testing.assert_close(out.mask, ref_mask)
    torch.testing.assert_close(out.pred, ref_pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref_loss, atol=1e-6, rtol=1e-6)
    # the loss really depends on the mask: another noise gives another loss
    with torch.no_grad():
        other = model(imgs, noise=torch.rand(3, L))
    assert not torch.isclose(other.loss, out.loss)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_patchify_order_and_inverse(spatial_dims):
    imgs = torch.randn(2, 3, *(8,) * spatial_dims)
    p = (4,) * spatial_dims
    patches = patchify(imgs, p)
    torch.testing.assert_close(patches, ref_patchify(imgs, 4))
    torch.testing.assert_close(unpatchify(patches, p, (2,) * spatial_dims, 3), imgs)


@pytest.mark.parametrize("in_chans", [1, 3, 13, 14])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_any_channel_count_shapes_and_backward(in_chans, spatial_dims):
    img, patch = (32, 8) if spatial_dims == 2 else (16, 8)
    model = tiny_mae(in_chans=in_chans, img_size=img, patch_size=patch, spatial_dims=spatial_dims)
    imgs = torch.randn(2, in_chans, *(img,) * spatial_dims)
    out = model(imgs)
    L = (img // patch) ** spatial_dims
    assert out.pred.shape == (2, L, patch**spatial_dims * in_chans)
    assert out.mask.shape == (2, L)
    assert out.loss.ndim == 0
    out.loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.encoder.pos_embed.grad is None  # fixed sin-cos


def test_registry():
    names = list_models()
    for size in ("tiny", "small", "base", "large"):
        assert f"mae_vit_{size}_patch16" in names
    assert list_models("mae_*large*") == ["mae_vit_large_patch16"]  # other methods add their own
    with pytest.raises(ValueError, match="unknown model"):
        create_model("mae_vit_giant_patch99")
    model = create_model("mae_vit_base_patch16", in_chans=14, img_size=64, mask_ratio=0.9)
    assert model.encoder.embed_dim == 768
    assert model.encoder.depth == 12
    assert model.decoder.embed_dim == 512
    assert len(model.decoder.decoder_blocks) == 8
    assert model.mask_ratio == 0.9
    assert model.encoder.in_chans == 14
    assert model.registry_name == "mae_vit_base_patch16"
    assert model.registry_kwargs["in_chans"] == 14
