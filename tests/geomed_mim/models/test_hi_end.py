"""Hi-End-MAE: which encoder blocks the decoder reads, gradients through them, shapes, loss."""

from __future__ import annotations

import math

import pytest
import torch

from geomed_mim.models import create_model, list_models, patchify
from geomed_mim.models.base import normalized_patch_targets
from geomed_mim.models.hi_end import HiEndMAE, default_encoder_levels
from geomed_mim.tasks.pretraining import default_intermediate_blocks
from tests.geomed_mim.training import TINY_DECODER


def tiny_hi_end(**kwargs) -> HiEndMAE:
    cfg = dict(
        img_size=16,
        patch_size=4,
        in_chans=3,
        spatial_dims=2,
        embed_dim=48,
        depth=6,
        num_heads=3,
        encoder_levels=(5, 3, 1),
        **TINY_DECODER,
    )
    cfg.update(kwargs)
    return create_model("hi_end_mae_vit_tiny_patch16", **cfg)


def test_registry_names_sizes_and_defaults():
    names = list_models("hi_end_mae_*")
    assert names == sorted(
        f"hi_end_mae_vit_{s}_patch{p}" for s in ("tiny", "small", "base", "large") for p in (12, 16)
    )
    model = create_model("hi_end_mae_vit_base_patch12", img_size=24)  # 3-D by default, 2³ grid
    assert model.encoder.spatial_dims == 3
    assert model.encoder.patch_size == (12, 12, 12)
    assert model.encoder.embed_dim == 768
    assert model.encoder_levels == (10, 7, 4)
    assert model.decoder.embed_dim == 384
    assert len(model.decoder.decoder_blocks) == 2
    assert len(model.decoder.level_blocks) == 3
    assert model.norm_pix_loss
    assert model.mask_ratio == 0.75
    assert model.encoder_arch == {"size": "base", "patch_size": 16}  # timm has no patch-12 ViT


@pytest.mark.parametrize("depth", [4, 8, 12, 24])
def test_default_levels_are_the_task_default_blocks_deep_to_shallow(depth):
    assert default_encoder_levels(depth) == tuple(reversed(default_intermediate_blocks(depth)))


@pytest.mark.parametrize("levels", [(3, 3, 1), (7, 2), (0, 2)])
def test_bad_levels_are_rejected(levels):
    with pytest.raises(ValueError, match="encoder_levels"):
        tiny_hi_end(encoder_levels=levels)


@pytest.mark.parametrize(
    ("spatial_dims", "img", "patch", "chans"),
    [(2, 16, 4, 13), (2, 24, 12, 1), (3, 16, 8, 1), (3, 24, 12, 2)],
)
def test_shapes_2d_and_3d(spatial_dims, img, patch, chans):
    model = tiny_hi_end(img_size=img, patch_size=patch, in_chans=chans, spatial_dims=spatial_dims)
    B = 3
    x = torch.randn(B, chans, *(img,) * spatial_dims)
    out = model(x)
    L = (img // patch) ** spatial_dims
    K = int(L * 0.25)
    assert out.pred.shape == (B, L, patch**spatial_dims * chans)
    assert out.mask.shape == (B, L)
    assert out.mask.sum(1).tolist() == [L - K] * B
    assert out.keep_idx.shape == (B, K)
    assert out.loss.ndim == 0
    assert torch.isfinite(out.loss)
    assert model.unpatchify(model.patchify(x)).shape == x.shape


def capture(model: HiEndMAE):
    """Forward hooks: every encoder block's output; each level projection's input and output;
    each cross-attention's (queries, context) arguments."""
    seen: dict[str, dict[int, list[torch.Tensor]]] = {
        "block": {},
        "proj_in": {},
        "proj_out": {},
        "context": {},
    }
    handles = []

    def keep(kind, i, tensor):
        seen[kind].setdefault(i, []).append(tensor)

    for n, blk in enumerate(model.encoder.blocks, start=1):
        handles.append(blk.register_forward_hook(lambda m, a, o, n=n: keep("block", n, o)))
    for i, proj in enumerate(model.decoder.level_embed):
        handles.append(proj.register_forward_hook(lambda m, a, o, i=i: keep("proj_in", i, a[0])))
        handles.append(proj.register_forward_hook(lambda m, a, o, i=i: keep("proj_out", i, o)))
    for i, blk in enumerate(model.decoder.level_blocks):
        handles.append(
            blk.cross_attn.register_forward_pre_hook(lambda m, a, i=i: keep("context", i, a[1]))
        )
    return seen, handles


@pytest.mark.parametrize("levels", [(5, 3, 1), (2, 6, 4, 3), (6,)])
def test_cross_attention_reads_exactly_the_chosen_blocks(levels):
    torch.manual_seed(0)
    model = tiny_hi_end(encoder_levels=levels)
    seen, handles = capture(model)
    model(torch.randn(2, 3, 16, 16))
    for h in handles:
        h.remove()
    blocks = {n: outs[0] for n, outs in seen["block"].items()}
    assert sorted(blocks) == list(range(1, 7))
    assert len(seen["context"]) == len(levels)
    for i, n in enumerate(levels):
        (proj_in,) = seen["proj_in"][i]  # each level is projected once...
        (context,) = seen["context"][i]  # ...and read by exactly one cross-attention
        assert proj_in.shape == (2, 1 + 4, 48)  # class token + the 4 visible patches
        assert torch.equal(proj_in, blocks[n])  # block n's output, before the final norm
        for other, out in blocks.items():
            if other != n:
                assert not torch.allclose(proj_in, out), (i, n, other)
        assert not torch.allclose(proj_in, model.encoder.norm(blocks[n]))
        assert torch.equal(context, seen["proj_out"][i][0])  # cross-attends to the projection


def test_gradients_reach_the_chosen_blocks_through_the_decoder():
    torch.manual_seed(0)
    model = tiny_hi_end(encoder_levels=(4, 3, 1))
    seen, handles = capture(model)
    # cut the final-output path: what reaches the encoder now comes through the level blocks only
    handles.append(model.encoder.norm.register_forward_hook(lambda m, a, o: o.detach()))
    out = model(torch.randn(2, 3, 16, 16))
    for h in handles:
        h.remove()
    level_inputs = [seen["proj_in"][i][0] for i in range(3)]
    grads = torch.autograd.grad(out.loss, level_inputs, retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)
    out.loss.backward()

    def grad_norm(module):
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    for n in (1, 2, 3, 4):  # up to the deepest level: reached through the decoder
        assert grad_norm(model.encoder.blocks[n - 1]) > 0, n
    for n in (5, 6):  # after it: only the (cut) final path would reach them
        assert grad_norm(model.encoder.blocks[n - 1]) == 0, n
    assert grad_norm(model.encoder.norm) == 0
    assert grad_norm(model.decoder.decoder_embed) > 0  # still trained (on a constant input)
    for proj in model.decoder.level_embed:
        assert grad_norm(proj) > 0


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_is_on_masked_patches_only(norm_pix):
    torch.manual_seed(0)
    model = tiny_hi_end(norm_pix_loss=norm_pix)
    x = torch.randn(2, 3, 16, 16)
    out = model(x)
    out.pred.retain_grad()
    out.loss.backward()
    masked = out.mask.bool()
    assert masked.any()
    assert (~masked).any()
    assert torch.all(out.pred.grad[~masked] == 0)  # visible patches: no gradient at all
    assert torch.all(out.pred.grad[masked].abs().sum(-1) > 0)
    target = patchify(x, (4, 4))
    if norm_pix:
        target = normalized_patch_targets(target)
    per_patch = ((out.pred - target) ** 2).mean(-1)  # [B, L]
    assert torch.allclose(out.loss, per_patch[masked].mean(), rtol=1e-6)
    assert not torch.allclose(out.loss, per_patch.mean())


def reference_order_prediction(model: HiEndMAE, x: torch.Tensor, noise: torch.Tensor):
    """The released code's decoder order: queries [cls, visible, mask tokens] kept in *shuffle*
    order with the shuffled decoder positions; predictions put back in patch order at the end."""
    enc, dec = model.encoder, model.decoder
    L = enc.num_patches
    K = int(L * (1 - model.mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    latent, levels = enc.forward_with_block_outputs(x, ids_shuffle[:, :K], model.encoder_levels)
    B = x.shape[0]
    q = torch.cat(
        [dec.decoder_embed(latent), dec.mask_token.expand(B, L - K, -1)], dim=1
    )  # [B, 1+L, Dd]
    pos = dec.decoder_pos_embed[:, 1:, :].expand(B, -1, -1)
    shuffled_pos = torch.gather(pos, 1, ids_shuffle.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))
    q = q + torch.cat([dec.decoder_pos_embed[:, :1, :].expand(B, -1, -1), shuffled_pos], dim=1)
    for blk in dec.decoder_blocks:
        q = blk(q)
    for blk, proj, feats in zip(dec.level_blocks, dec.level_embed, levels, strict=True):
        q = blk(q, proj(feats))
    pred = dec.decoder_pred(dec.decoder_norm(q))[:, 1:, :]  # [B, L, P] in shuffle order
    restore = torch.argsort(ids_shuffle, dim=1)
    return torch.gather(pred, 1, restore.unsqueeze(-1).expand(-1, -1, pred.shape[-1]))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_patch_order_queries_equal_the_released_shuffle_order(spatial_dims):
    torch.manual_seed(0)
    model = tiny_hi_end(spatial_dims=spatial_dims, img_size=8 if spatial_dims == 3 else 16)
    with torch.no_grad():  # move off the init (zero biases, zero class slot) so order matters
        for name, p in model.named_parameters():
            if "pos_embed" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 3, *(8 if spatial_dims == 3 else 16,) * spatial_dims)
    noise = torch.rand(2, model.encoder.num_patches)
    with torch.no_grad():
        ours = model(x, noise=noise).pred
        ref = reference_order_prediction(model, x, noise)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_seeded_masks_reproduce():
    model = tiny_hi_end()
    x = torch.randn(2, 3, 16, 16)
    seeds = torch.tensor([11, 12])
    with torch.no_grad():
        a, b = model(x, sample_seeds=seeds), model(x, sample_seeds=seeds)
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.loss, b.loss)


def test_no_weight_decay_names_exist():
    model = tiny_hi_end()
    names = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(names)
    assert "decoder.mask_token" in model.no_weight_decay()
    params = sum(p.numel() for p in model.decoder.level_embed.parameters())
    assert params == 3 * (48 * 32 + 32)  # one projection per level
    assert math.prod(model.encoder.grid_size) == model.encoder.num_patches
