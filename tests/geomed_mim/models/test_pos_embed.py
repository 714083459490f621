"""Sin-cos position embeddings: values from the closed form, 2-D and 3-D."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geomed_mim.models.pos_embed import get_2d_sincos_pos_embed, get_3d_sincos_pos_embed


def closed_form_1d(pos: float, dim: int) -> list[float]:
    freqs = [1.0 / 10000 ** (k / (dim / 2)) for k in range(dim // 2)]
    return [math.sin(pos * f) for f in freqs] + [math.cos(pos * f) for f in freqs]


def test_2d_values_match_the_reference_layout():
    emb = get_2d_sincos_pos_embed(8, (2, 3), cls_token=True)
    assert emb.shape == (1 + 6, 8)
    assert np.all(emb[0] == 0)  # class slot
    for r in range(2):
        for c in range(3):
            # MAE's reference puts the column (w) first, then the row (h)
            expected = closed_form_1d(c, 4) + closed_form_1d(r, 4)
            np.testing.assert_allclose(emb[1 + r * 3 + c], expected, atol=1e-7)


@pytest.mark.parametrize("dim", [48, 192, 768, 1024])
def test_3d_values_and_uniqueness(dim):
    grid = (2, 3, 4)
    emb = get_3d_sincos_pos_embed(dim, grid, cls_token=False)
    assert emb.shape == (24, dim)
    assert len({row.tobytes() for row in emb}) == 24
    part = (dim // 6) * 2
    d, h, w = 1, 2, 3
    row = emb[d * 12 + h * 4 + w]
    expected = closed_form_1d(d, part) + closed_form_1d(h, part) + closed_form_1d(w, dim - 2 * part)
    np.testing.assert_allclose(row, expected, atol=1e-7)


@pytest.mark.parametrize("dims", [2, 3])
def test_scaled_positions_are_every_nth_position_of_a_wider_grid(dims):
    """``scale`` spaces the positions: a 4-patch grid at scale 8 is positions 0, 8, 16, 24 of
    a 32-patch grid; the class slot stays zero. Encoders and their decoders share it."""
    from geomed_mim.models import create_model

    build = get_2d_sincos_pos_embed if dims == 2 else get_3d_sincos_pos_embed
    scaled = build(96, 4, cls_token=True, scale=8.0)
    wide = build(96, 32).reshape(*([32] * dims), 96)
    every_8th = wide[(slice(None, None, 8),) * dims].reshape(-1, 96)
    np.testing.assert_allclose(scaled[1:], every_8th, atol=1e-6)
    assert not scaled[0].any()
    model = create_model(
        "mae_vit_tiny_patch16", img_size=32, patch_size=8, in_chans=1, spatial_dims=dims,
        embed_dim=96, num_heads=3, depth=1, decoder_embed_dim=96, decoder_depth=1,
        decoder_num_heads=3, pos_embed_scale=8.0,
    )  # fmt: skip
    np.testing.assert_allclose(model.encoder.pos_embed[0].numpy(), scaled, atol=1e-6)
    np.testing.assert_allclose(model.decoder.decoder_pos_embed[0].numpy(), scaled, atol=1e-6)
