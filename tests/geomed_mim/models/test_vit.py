"""The ViT encoder on its own: shapes in 2-D and 3-D, encoding a subset of patches, block outputs
numbered from 1, timm's ``forward_intermediates`` contract, and strict loading into timm."""

from __future__ import annotations

import pytest
import timm
import torch

from geomed_mim.models.vit import VisionTransformerEncoder, take_indices
from tests.geomed_mim.samples import embed_patches


def encoder(**kwargs) -> VisionTransformerEncoder:
    cfg = dict(img_size=32, patch_size=8, in_chans=4, embed_dim=48, depth=4, num_heads=3)
    cfg.update(kwargs)
    torch.manual_seed(0)
    enc = VisionTransformerEncoder(**cfg).eval()
    with torch.no_grad():  # off the init (zero biases, zero class slot) so mix-ups show
        for name, p in enc.named_parameters():
            if name != "pos_embed":
                p.add_(torch.randn_like(p) * 0.05)
    return enc


def timm_twin(enc: VisionTransformerEncoder) -> torch.nn.Module:
    """timm's VisionTransformer of the same shape, our weights loaded with strict keys."""
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=enc.img_size[0],
        patch_size=enc.patch_size[0],
        in_chans=enc.in_chans,
        embed_dim=enc.embed_dim,
        depth=enc.depth,
        num_heads=enc.num_heads,
    )
    model.load_state_dict(enc.state_dict(), strict=True)
    return model.eval()


@pytest.mark.parametrize(("spatial_dims", "img", "patch"), [(2, 32, 8), (3, 16, 4), (2, 24, 4)])
def test_token_shapes_2d_and_3d(spatial_dims, img, patch):
    enc = encoder(img_size=img, patch_size=patch, spatial_dims=spatial_dims)
    x = torch.randn(2, 4, *(img,) * spatial_dims)
    L = (img // patch) ** spatial_dims
    assert enc.num_patches == L
    assert enc.grid_size == (img // patch,) * spatial_dims
    assert embed_patches(enc, x).shape == (2, L, 48)
    assert enc.forward_features(x).shape == (2, 1 + L, 48)
    assert enc(x).shape == (2, 1 + L, 48)
    keep = torch.stack([torch.randperm(L)[:5] for _ in range(2)])
    assert enc.forward_features(x, keep).shape == (2, 1 + 5, 48)
    with pytest.raises(ValueError, match="expected input"):
        enc(torch.randn(2, 3, *(img,) * spatial_dims))


def test_encoder_keep_idx_and_intermediates():
    torch.manual_seed(0)
    enc = encoder()
    x = torch.randn(2, 4, 32, 32)
    full = enc.forward_features(x)
    all_idx = torch.arange(enc.num_patches).expand(2, -1)
    torch.testing.assert_close(enc.forward_features(x, all_idx), full)
    keep = torch.tensor([[0, 5, 9], [15, 1, 2]])
    normed, inter = enc.forward_with_block_outputs(x, keep, block_numbers=(4, 1, 3))
    assert normed.shape == (2, 4, enc.embed_dim)
    assert len(inter) == 3
    torch.testing.assert_close(enc.norm(inter[0]), normed)  # block 4 is the last, pre-norm
    # block 1's output computed by hand from the kept tokens
    tokens = enc.prepend_cls(torch.stack([embed_patches(enc, x)[i, keep[i]] for i in range(2)]))
    torch.testing.assert_close(inter[1], enc.blocks[0](tokens))
    with pytest.raises(ValueError, match="1-indexed"):
        enc.forward_with_block_outputs(x, block_numbers=(0,))


def test_forward_from_patches_reuses_a_patch_embedding():
    enc = encoder()
    x = torch.randn(2, 4, 32, 32)
    keep = torch.tensor([[3, 0, 7], [1, 2, 15]])
    a = enc.forward_from_patches(enc.patch_embed(x), keep, block_numbers=(2,))
    b = enc.forward_with_block_outputs(x, keep, block_numbers=(2,))
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1][0], b[1][0], rtol=0, atol=0)


def test_take_indices_follows_timm():
    assert take_indices(12, None) == list(range(12))
    assert take_indices(12, 3) == [9, 10, 11]  # the last n
    assert take_indices(12, [9, 3, 6, -1]) == [3, 6, 9, 11]  # in the order blocks run
    with pytest.raises(ValueError, match="0-indexed"):
        take_indices(12, [12])
    with pytest.raises(ValueError, match="last-n"):
        take_indices(12, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"indices": 2},
        {"indices": [0, 2]},
        {"indices": [-1, 1], "norm": True},
        {"indices": [1], "output_fmt": "NLC"},
        {"indices": [0, 3], "intermediates_only": True},
        {"indices": [1, 2], "stop_early": True},
        {"indices": [2], "return_prefix_tokens": True},
    ],
)
def test_forward_intermediates_is_timms(kwargs):
    """Same arguments, same results as timm's VisionTransformer holding our weights."""
    enc = encoder()
    twin = timm_twin(enc)
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        ours = enc.forward_intermediates(x, **kwargs)
        theirs = twin.forward_intermediates(x, **kwargs)
    if not kwargs.get("intermediates_only"):
        (ours_final, ours), (theirs_final, theirs) = ours, theirs
        torch.testing.assert_close(ours_final, theirs_final, atol=1e-5, rtol=1e-5)
        assert ours_final.shape == (2, 1 + 16, 48)  # normed, class token first
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        for a_part, b_part in zip(*((a, b) if isinstance(a, tuple) else ((a,), (b,))), strict=True):
            assert a_part.shape == b_part.shape
            torch.testing.assert_close(a_part, b_part, atol=1e-5, rtol=1e-5)
    if kwargs.get("output_fmt", "NCHW") == "NCHW" and not kwargs.get("return_prefix_tokens"):
        assert all(t.shape == (2, 48, 4, 4) for t in ours)  # [B, C, H, W], class token dropped


def test_forward_intermediates_are_the_numbered_block_outputs_in_3d():
    enc = encoder(img_size=16, patch_size=4, spatial_dims=3, in_chans=1)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        final, maps = enc.forward_intermediates(x, indices=[0, 3])
        normed, blocks = enc.forward_with_block_outputs(x, block_numbers=(1, 4))
    torch.testing.assert_close(final, normed)
    for m, tokens in zip(maps, blocks, strict=True):
        assert m.shape == (2, 48, 4, 4, 4)  # [B, C, D, H, W]
        expected = tokens[:, 1:].transpose(1, 2).reshape(2, 48, 4, 4, 4)
        torch.testing.assert_close(m, expected)
    with pytest.raises(ValueError, match="output_fmt"):
        enc.forward_intermediates(x, output_fmt="NHWC")


def test_state_dict_loads_strict_into_timm_with_equal_features():
    enc = encoder()
    twin = timm_twin(enc)  # strict: raises on any missing or unexpected key
    assert set(enc.state_dict()) == set(twin.state_dict())
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            enc.forward_features(x), twin.forward_features(x), atol=1e-5, rtol=1e-5
        )


def test_no_weight_decay_names_exist():
    enc = encoder()
    assert enc.no_weight_decay() <= set(dict(enc.named_parameters()))
    assert not enc.pos_embed.requires_grad  # fixed sin-cos
