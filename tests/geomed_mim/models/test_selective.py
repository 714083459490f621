"""SelectiveMAE: registry, any band count, 2-D and 3-D, loss on targets only, CrossMAE decoder."""

from __future__ import annotations

import pytest
import torch

from geomed_mim.models import (
    SelectiveMAE,
    create_model,
    list_models,
    normalized_patch_targets,
    patchify,
)

TINY = {
    "depth": 2,
    "embed_dim": 48,
    "num_heads": 3,
    "decoder_embed_dim": 32,
    "decoder_depth": 2,
    "decoder_num_heads": 4,
}


def test_registry_names_and_defaults():
    assert list_models("selective_mae_*") == [
        f"selective_mae_vit_{s}_patch16" for s in ("base", "large", "small", "tiny")
    ]
    model = create_model("selective_mae_vit_base_patch16", in_chans=14, img_size=224, depth=1)
    assert isinstance(model, SelectiveMAE)
    assert model.encoder.embed_dim == 768
    assert model.encoder.num_heads == 12
    assert model.decoder.embed_dim == 512
    assert len(model.decoder.decoder_blocks) == 8
    assert (model.masking.mask_ratio, model.masking.reconstruction_ratio) == (0.85, 0.25)
    assert model.norm_pix_loss
    assert model.lr_scale == pytest.approx(0.25 / 0.85)
    assert model.encoder_arch == {"size": "base", "patch_size": 16}
    with pytest.raises(ValueError, match=r"K \+ T <= L|both >= 1"):
        create_model("selective_mae_vit_tiny_patch16", img_size=32, mask_ratio=0.95, **TINY)


@pytest.mark.parametrize(
    ("bands", "spatial_dims", "img_size", "patch"),
    [(1, 2, 32, 4), (3, 2, 32, 4), (13, 2, 32, 4), (14, 2, 64, 16), (1, 3, 32, 8)],
)
def test_forward_backward_any_bands_2d_and_3d(bands, spatial_dims, img_size, patch):
    torch.manual_seed(0)
    model = create_model(
        "selective_mae_vit_tiny_patch16",
        in_chans=bands,
        img_size=img_size,
        patch_size=patch,
        spatial_dims=spatial_dims,
        **TINY,
    )
    B = 3
    x = torch.randn(B, bands, *([img_size] * spatial_dims)).cumsum(-1)
    out = model(x, sample_seeds=torch.arange(B))
    L = (img_size // patch) ** spatial_dims
    K, _, T = model.masking.set_sizes(L)
    P = patch**spatial_dims * bands
    assert out.pred.shape == (B, L, P)
    assert out.keep_idx.shape == (B, K)
    assert out.target_idx.shape == (B, T)
    assert out.per_sample_loss.shape == (B,)
    assert torch.isfinite(out.loss)
    # predictions only at the targets
    assert (out.pred.abs().sum(-1) > 0).eq(out.target_mask.bool()).all()
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert grads["encoder.blocks.0.attn.qkv.weight"].abs().sum() > 0
    assert grads["decoder.decoder_blocks.0.attn.kv.weight"].abs().sum() > 0
    assert grads["decoder.mask_token"].abs().sum() > 0


def fixed_order(B: int, L: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, L, generator=torch.Generator().manual_seed(seed))


def test_loss_is_normalized_pixel_mse_on_targets_only():
    torch.manual_seed(0)
    model = create_model(
        "selective_mae_vit_tiny_patch16", in_chans=3, img_size=32, patch_size=4, **TINY
    )
    x = torch.randn(2, 3, 32, 32)
    noise = fixed_order(2, 64)
    out = model(x, noise=noise)
    ids = torch.argsort(noise, dim=1)
    K, _, T = model.masking.set_sizes(64)
    assert torch.equal(out.keep_idx, ids[:, :K])
    assert torch.equal(out.target_idx, ids[:, K : K + T])
    target = normalized_patch_targets(patchify(x, (4, 4)))  # [B, L, P]
    tmask = out.target_mask
    expected = (((out.pred - target) ** 2).mean(-1) * tmask).sum() / tmask.sum()
    torch.testing.assert_close(out.loss, expected)
    # pixels of ignored patches do not enter the loss (not encoded, not reconstructed)
    ignored = ids[0, K + T]
    gy, gx = divmod(int(ignored), 8)
    y = x.clone()
    y[0, :, gy * 4 : gy * 4 + 4, gx * 4 : gx * 4 + 4] += 5.0
    torch.testing.assert_close(model(y, noise=noise).loss, out.loss)
    # ...but those of a target patch do
    tgt = ids[0, K]
    gy, gx = divmod(int(tgt), 8)
    y = x.clone()
    y[0, :, gy * 4 : gy * 4 + 4, gx * 4 : gx * 4 + 4] = torch.randn(3, 4, 4)
    assert not torch.allclose(model(y, noise=noise).loss, out.loss)


def test_decoder_predicts_each_target_from_the_encoder_output_only():
    """CrossMAE: queries do not attend to each other, so a target's prediction does not depend on
    which other targets are asked for."""
    torch.manual_seed(0)
    model = create_model(
        "selective_mae_vit_tiny_patch16", in_chans=2, img_size=32, patch_size=4, **TINY
    )
    model.eval()
    latent = torch.randn(1, 10, 48)
    sel = torch.arange(9).unsqueeze(0)
    a = model.decoder(latent, sel, torch.tensor([[20, 30, 40]]))
    b = model.decoder(latent, sel, torch.tensor([[40, 50]]))
    torch.testing.assert_close(a[:, 2], b[:, 0])


def test_seeded_forward_is_reproducible_and_draws_follow_progress():
    model = create_model(
        "selective_mae_vit_tiny_patch16", in_chans=3, img_size=32, patch_size=4, **TINY
    )
    x = torch.randn(4, 3, 32, 32).cumsum(-1)
    seeds = torch.tensor([1, 2, 3, 4])
    a = model(x, sample_seeds=seeds)
    b = model(x, sample_seeds=seeds)
    assert torch.equal(a.keep_idx, b.keep_idx)
    assert torch.equal(a.target_idx, b.target_idx)
    model.masking.set_progress(1.0)  # random PSTS stage: the seeds stay, the rest changes
    c = model(x, sample_seeds=seeds)
    k0 = a.selection.num_seeds
    assert torch.equal(c.keep_idx[:, :k0], a.keep_idx[:, :k0])
    assert not torch.equal(c.keep_idx[:, k0:], a.keep_idx[:, k0:])
