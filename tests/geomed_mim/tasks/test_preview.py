"""What users look at: the training preview (titled columns) and the prediction overlay
(enlarged, titled, with a legend of the class colours)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from geomed_mim.models.patches import patchify
from geomed_mim.tasks.preview import (
    ERROR_SCALE,
    MASKED_GREY,
    PANEL_TITLES,
    TITLE_HEIGHT,
    render_preview,
)
from geomed_mim.tasks.seg_predict import OVERLAY_MIN_SIZE, class_colors, save_overlay


def panels_of(grid: np.ndarray, row: int, tile: int, scale: int = 4) -> list[np.ndarray]:
    """The four panels of one row of a preview grid (title strip and gaps left out)."""
    panel, gap = tile * scale, 2 * scale
    top = TITLE_HEIGHT + row * (panel + gap)
    body = grid[top : top + panel]
    return [body[:, k * (panel + gap) : k * (panel + gap) + panel] for k in range(4)]


def test_preview_columns_are_titled_and_a_perfect_reconstruction_has_no_error():
    images = torch.rand(2, 3, 32, 32)  # the demo's tile size
    pred = patchify(images, (16, 16))  # a perfect reconstruction: [B, L, P]
    mask = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]])
    grid = render_preview(images, pred, mask, (16, 16), (2, 2), False, [0, 1, 2], scale=4)
    panel, gap = 32 * 4, 2 * 4
    assert grid.shape == (TITLE_HEIGHT + (2 * 32 + 2) * 4, 4 * panel + 3 * gap, 3)
    titles = grid[:TITLE_HEIGHT]
    for k in range(len(PANEL_TITLES)):  # some text over every column, none over the gaps
        column = titles[:, k * (panel + gap) : k * (panel + gap) + panel]
        assert (column < 128).any(), k
        if k < len(PANEL_TITLES) - 1:
            assert (titles[:, k * (panel + gap) + panel : (k + 1) * (panel + gap)] == 255).all()
    for row in (0, 1):
        source, masked, recon, error = panels_of(grid, row, 32)
        np.testing.assert_array_equal(recon, source)  # reconstruction == input
        assert (error == 0).all()  # and no error anywhere
        hidden = (masked == MASKED_GREY).all(axis=-1)
        assert 0.4 < hidden.mean() < 0.6  # two of four patches masked


def test_preview_scales_normalized_predictions_back_and_shows_the_error():
    """Per-patch normalized predictions come back in the input's units (the target patch's own
    mean and std); a patch predicted wrong lights up in the error panel, the others stay black;
    patches that were not predicted (SelectiveMAE's non-targets) stay grey."""
    torch.manual_seed(0)
    images = torch.randn(1, 2, 8, 8)
    target = patchify(images, (4, 4))  # [1, 4, 32]
    normalized = (target - target.mean(-1, keepdim=True)) / (
        target.var(-1, keepdim=True) + 1e-6
    ).sqrt()
    pred = normalized.clone()
    pred[0, 1] += 3.0  # patch 1 is off by 3 normalized units
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # patch 3 was seen
    predicted = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # patch 2 masked but not predicted
    grid = render_preview(images, pred, mask, (4, 4), (2, 2), True, [0], predicted=predicted)
    _, _, recon, error = panels_of(grid, 0, 8)
    q = 4 * 4  # one patch, enlarged

    def patch(img: np.ndarray, k: int) -> np.ndarray:
        r, c = divmod(k, 2)
        return img[r * q : (r + 1) * q, c * q : (c + 1) * q]

    assert (patch(error, 0) == 0).all()
    assert (patch(error, 3) == 0).all()
    expected_error = float(3.0 * target[0, 1].std()) / ERROR_SCALE  # mean |error| over bands
    assert abs(patch(error, 1).mean() / 255 - min(expected_error, 1.0)) < 0.02
    assert (patch(recon, 2) == MASKED_GREY).all()
    assert not (patch(recon, 0) == MASKED_GREY).all()


def test_preview_stretch_is_the_inputs_so_a_band_shift_changes_nothing():
    """Training previews show band-shifted images: each band is stretched by the input's own
    percentiles, so the shift (and any per-band offset) leaves the picture as it was."""
    images = torch.rand(1, 3, 8, 8)
    shifted = images + torch.tensor([2.0, -1.0, 0.5]).view(1, 3, 1, 1)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    plain = render_preview(images, patchify(images, (4, 4)), mask, (4, 4), (2, 2), False, [0, 1, 2])
    moved = render_preview(
        shifted, patchify(shifted, (4, 4)), mask, (4, 4), (2, 2), False, [0, 1, 2]
    )
    np.testing.assert_array_equal(moved, plain)


def test_overlay_is_enlarged_titled_and_has_a_legend(tmp_path):
    classes = {
        "ids": [1, 2, 3],
        "names": ["water", "forest", "urban"],
        "colors": [[0, 0, 255], [0, 128, 0], [255, 0, 0]],
        "ignore_index": 0,
    }
    class_map = np.zeros((40, 30), np.int64)
    class_map[:20] = 2  # forest on the top half, ignored below
    class_map[20:, :10] = 3
    rgb = np.full((40, 30, 3), 0.5, np.float32)
    path = tmp_path / "overlay.png"
    save_overlay(rgb, class_map, classes, 4, path)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] >= OVERLAY_MIN_SIZE
    assert image.shape[1] >= 2 * OVERLAY_MIN_SIZE * 30 / 40  # both panels, enlarged alike
    palette = class_colors(classes, 4)
    body_end = image.shape[0]
    legend = image[-40:body_end]
    for cid in classes["ids"]:  # a swatch of every class colour in the legend strip
        swatch = np.all(legend == palette[cid], axis=-1)
        assert swatch.sum() >= 100, classes["names"][cid - 1]
