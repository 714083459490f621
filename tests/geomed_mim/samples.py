"""Helpers of the data and model tests: the labeled samples of a store as a plain list, one tile
as training sees it, and an encoder's patch tokens."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import default_collate

from data_pipelines.store.layout import COL_ARRAY, COL_INDEX, COL_LABEL_ARRAY
from data_pipelines.store.read import read_manifest, usable_rows
from geomed_mim.data.rs import RSTileDataset
from geomed_mim.models.vit import VisionTransformerEncoder


def labeled_rs_samples(
    store: str | Path, split: str | None, include_duplicates: bool = False
) -> list[tuple[str, str, int]]:
    """(tile array, label array, index) of usable labeled samples in ``split``, as a list
    (the loaders use the columnar ``build_sample_index(..., labels=True)`` of the same rows)."""
    rows = usable_rows(
        read_manifest(store), split, include_duplicates, require=(COL_ARRAY, COL_LABEL_ARRAY)
    )
    columns = (rows.column(c).to_pylist() for c in (COL_ARRAY, COL_LABEL_ARRAY, COL_INDEX))
    return [(a, lab, int(i)) for a, lab, i in zip(*columns, strict=True)]


def training_image(dataset: RSTileDataset, i: int) -> torch.Tensor:
    """Sample ``i`` as training sees it (``[C, S, S]``, this process's torch RNG)."""
    return dataset.transform(default_collate([dataset[i]]))["image"][0]


def embed_patches(encoder: VisionTransformerEncoder, x: torch.Tensor) -> torch.Tensor:
    """Patch tokens with their position embedding, no class token: [B, L, D]."""
    return encoder.patch_embed(x) + encoder.pos_embed[:, 1:, :]
