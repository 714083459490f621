"""What users look at: the training preview (titled columns) and the prediction overlay
(enlarged, titled, with a legend of the class colours)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from geomed_mim.models.patches import patchify
from geomed_mim.tasks.preview import PANEL_TITLES, TITLE_HEIGHT, render_preview
from geomed_mim.tasks.seg_predict import OVERLAY_MIN_SIZE, class_colors, save_overlay


def test_preview_columns_are_titled_and_the_panels_are_unchanged():
    images = torch.rand(2, 3, 32, 32)  # the demo's tile size
    pred = patchify(images, (16, 16))  # a perfect reconstruction: [B, L, P]
    mask = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]])
    grid = render_preview(images, pred, mask, (16, 16), (2, 2), False, [0, 1, 2], scale=4)
    panel, gap = 32 * 4, 2 * 4
    assert grid.shape == (TITLE_HEIGHT + (2 * 32 + 2) * 4, 4 * panel + 3 * gap, 3)
    titles, body = grid[:TITLE_HEIGHT], grid[TITLE_HEIGHT:]
    for k in range(len(PANEL_TITLES)):  # some text over every column, none over the gaps
        column = titles[:, k * (panel + gap) : k * (panel + gap) + panel]
        assert (column < 128).any(), k
        if k < len(PANEL_TITLES) - 1:
            assert (titles[:, k * (panel + gap) + panel : (k + 1) * (panel + gap)] == 255).all()
    # reconstruction == input when the prediction is the input itself
    first_row = body[:panel]
    np.testing.assert_array_equal(
        first_row[:, :panel], first_row[:, 2 * (panel + gap) :][:, :panel]
    )


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
