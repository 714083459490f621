"""Remote-sensing tiles from a built store, delivered as compact batches for batched transforms.

The samples are a :class:`~data_pipelines.store.index.SampleIndex` (NumPy columns, no Python
object per sample). The parent process reads only ``zarr.json`` files and the manifest; each
DataLoader worker opens what it reads itself. A worker decodes tiles straight from their shard
files into one batch buffer (shared memory inside a worker, so handing the batch to the main
process copies nothing; reused once released, :mod:`geomed_mim.data.buffers`) and adds each
sample's calibration, crop box and flips; the data module turns that into normalized,
augmented images on the batch's device (:mod:`geomed_mim.data.transforms`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from data_pipelines.store.calibration import NO_INVALID, TABLE_COLUMNS, identity_table
from data_pipelines.store.index import SampleIndex, build_sample_index
from data_pipelines.store.read import LazyZarrArrays
from data_pipelines.store.source import join
from geomed_mim.data.buffers import TICKET_KEY, BatchBuffers, fresh_buffer, torch_dtype
from geomed_mim.data.transforms import TileBatchTransform

log = logging.getLogger(__name__)

# one sample's augmentation row (RSTileDataset.augmentation): the crop box (top, left, h, w),
# the flips (left-right, up-down), the quarter turns
AUGMENT_CROP, AUGMENT_FLIPS, AUGMENT_TURNS = slice(0, 4), slice(4, 6), 6
AUGMENT_WIDTH = 7


class CompactTileBatch(TypedDict, total=False):
    """What a worker delivers: stored integers plus what turns them into training images,
    kept as tensors so that a batch crosses processes as a few shared buffers. Keys, shapes and
    dtypes: the compact batch of :mod:`geomed_mim.data.transforms`."""

    tile: torch.Tensor
    calibration: torch.Tensor
    invalid: torch.Tensor
    crop: torch.Tensor
    flip: torch.Tensor
    rot90: torch.Tensor
    index: torch.Tensor
    buffer: torch.Tensor


def compute_band_stats(
    store_dir: str | Path,
    index: SampleIndex,
    max_tiles: int = 512,
    nodata: float | None = None,
) -> tuple[list[float], list[float]]:
    """Per-band mean/std of physical values over up to ``max_tiles`` evenly spaced samples
    (float64 sums). Pixels with a non-finite band (nodata in calibrated stores) or where every
    band equals ``nodata`` (raw stores) are left out."""
    if not len(index):
        raise ValueError(f"no usable samples in {store_dir} to compute band statistics from")
    reader = LazyZarrArrays(store_dir)
    picks = np.linspace(0, len(index) - 1, min(max_tiles, len(index))).round().astype(int)
    total = total_sq = None
    count = 0
    for i in sorted(set(picks.tolist())):
        tile = reader.read_calibrated(*index.sample(i)).astype(np.float64)  # [C, H, W]
        pixels = tile.reshape(tile.shape[0], -1)  # [C, H*W]
        keep = np.isfinite(pixels).all(axis=0)
        if nodata is not None:
            keep &= ~np.all(pixels == nodata, axis=0)
        pixels = pixels[:, keep]
        if total is None:
            total = np.zeros(pixels.shape[0])
            total_sq = np.zeros(pixels.shape[0])
        total += pixels.sum(axis=1)
        total_sq += (pixels**2).sum(axis=1)
        count += pixels.shape[1]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 0.0))
    return mean.tolist(), np.maximum(std, 1e-6).tolist()


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, h, w), with an optional generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=gen))
        aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio, generator=gen)))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    # fallback: the whole image, clipped to the ratio range (torchvision's rule)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class StoreTiles(Dataset):
    """The samples of an index over one store, read as stored, with their part's calibration.

    :meth:`read_tiles` decodes a list of samples into one ``[n, C, H, W]`` buffer, reused once
    the consumer released it (:mod:`geomed_mim.data.buffers`, ``buffer_slots`` per process);
    calibration tables are looked up once per part and process.
    """

    def __init__(self, store_dir: str | Path, index: SampleIndex, buffer_slots: int = 4) -> None:
        self.store_dir = join(store_dir)  # a local Path or an object-store URL
        self.index = index
        self.reader = LazyZarrArrays(store_dir)
        self.tile_buffers = BatchBuffers(buffer_slots)
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._tables_pid: int | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tables": {}, "_tables_pid": None}

    def calibration_of(self, path_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(``[C, 8]`` table, ``[2]`` invalid values) of one part (identity for final values)."""
        if self._tables_pid != os.getpid():
            self._tables, self._tables_pid = {}, os.getpid()
        found = self._tables.get(path_id)
        if found is None:
            path = self.index.paths[path_id]
            calibration = self.reader.calibration(path)
            if calibration is None:
                found = (identity_table(self.reader.layout(path).shape[1]), NO_INVALID)
            else:
                found = (calibration.table(), calibration.invalid_values())
            self._tables[path_id] = found
        return found

    def sample_dtype(self, rows: Sequence[int]) -> np.dtype:
        """The dtype every listed sample fits (one part's dtype, unless parts differ)."""
        path_ids = np.unique(self.index.array[np.asarray(rows, dtype=np.int64)])
        return np.result_type(*[self.reader.layout(self.index.paths[k]).dtype for k in path_ids])

    def read_tiles(self, rows: Sequence[int], pooled: bool = True) -> CompactTileBatch:
        """``tile`` [n, C, H, W] (as stored), ``calibration`` [n, C, 8], ``invalid`` [n, 2] and,
        with ``pooled``, the ``buffer`` ticket [1, 4] of a reusable buffer."""
        first = self.index.paths[int(self.index.array[rows[0]])]
        shape = (len(rows), *self.reader.layout(first).shape[1:])
        dtype = self.sample_dtype(rows)
        if pooled:
            tiles, ticket = self.tile_buffers.acquire(shape, torch_dtype(dtype))
        else:
            tiles, ticket = fresh_buffer(shape, torch_dtype(dtype), False), None
        out = tiles.numpy()
        table = np.empty((len(rows), shape[1], len(TABLE_COLUMNS)), dtype=np.float32)
        invalid = np.empty((len(rows), len(NO_INVALID)), dtype=np.float32)
        for k, i in enumerate(rows):
            path_id = int(self.index.array[i])
            path = self.index.paths[path_id]
            if self.reader.layout(path).dtype == dtype:
                self.reader.read(path, int(self.index.tile[i]), out=out[k])
            else:  # a part of another dtype in a mixed batch
                out[k] = self.reader.read(path, int(self.index.tile[i]))
            table[k], invalid[k] = self.calibration_of(path_id)
        batch: CompactTileBatch = {
            "tile": tiles,
            "calibration": torch.from_numpy(table),
            "invalid": torch.from_numpy(invalid),
        }
        if ticket is not None:
            batch[TICKET_KEY] = torch.tensor([ticket], dtype=torch.int64)
        return batch


class RSTileDataset(StoreTiles):
    """Tiles of one split as compact items, with per-sample crop boxes and flips.

    ``ds[i]`` is one sample (crop and flips drawn from torch's global generator, which
    :class:`~geomed_mim.data.sharding.SeededBatchDataset` seeds per sample);
    :meth:`load_batch` is the same for a list of samples with given seeds, decoded into one
    buffer. :attr:`transform` (``TileBatchTransform``) makes images of either: standardized with
    ``mean``/``std``, cropped, flipped and resized to ``crop_size`` (default: the tile size).
    """

    def __init__(
        self,
        store_dir: str | Path,
        mean: Sequence[float],
        std: Sequence[float],
        split: str | None = "train",
        crop_size: int | None = None,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flips: bool = True,
        augment: bool = True,
        include_duplicates: bool = False,
        index: SampleIndex | None = None,
        buffer_slots: int = 4,
        rotations: bool = False,
    ) -> None:
        if index is None:
            index = build_sample_index(store_dir, split, include_duplicates)
        super().__init__(store_dir, index, buffer_slots)
        self.crop_size = crop_size
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.flips = flips
        self.rotations = rotations
        self.augment = augment
        self.transform = TileBatchTransform(mean, std, crop_size)
        self._gen: torch.Generator | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_gen": None}

    def augmentation(self, height: int, width: int, gen: torch.Generator | None) -> np.ndarray:
        """``[top, left, h, w, flip_lr, flip_ud, quarter_turns]`` of one sample (the whole tile
        without augmentation); draws from ``gen`` (None: torch's global generator). The turns
        are drawn last, so turning them on leaves every sample's box and flips as they were."""
        if not self.augment:
            return np.array([0, 0, height, width, 0, 0, 0], dtype=np.int64)  # whole, unturned
        box = random_resized_crop_params(height, width, self.crop_scale, self.crop_ratio, gen)
        flips = [0, 0]
        if self.flips:
            flips = [int(torch.rand((), generator=gen) < 0.5) for _ in range(2)]
        turns = int(torch.randint(4, (), generator=gen)) if self.rotations else 0
        return np.array([*box, *flips, turns], dtype=np.int64)

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self.read_tiles([i], pooled=False)
        aug = self.augmentation(*batch["tile"].shape[-2:], None)
        return {
            "tile": batch["tile"][0],
            "calibration": batch["calibration"][0],
            "invalid": batch["invalid"][0],
            "crop": torch.from_numpy(aug[AUGMENT_CROP]),
            "flip": torch.from_numpy(aug[AUGMENT_FLIPS] > 0),
            "rot90": torch.tensor(aug[AUGMENT_TURNS]),
            "index": i,
        }

    def load_batch(self, indices: Sequence[int], seeds: Sequence[int]) -> CompactTileBatch:
        """The compact batch of ``indices``; sample ``indices[k]`` draws its crop and flips
        from a generator seeded with ``seeds[k]`` (so it gets the same ones in any batch)."""
        batch = self.read_tiles(indices)
        if self._gen is None:
            self._gen = torch.Generator()
        aug = np.empty((len(indices), AUGMENT_WIDTH), dtype=np.int64)
        for k, seed in enumerate(seeds):
            self._gen.manual_seed(int(seed))
            aug[k] = self.augmentation(*batch["tile"].shape[-2:], self._gen)
        batch["crop"] = torch.from_numpy(aug[:, AUGMENT_CROP])
        batch["flip"] = torch.from_numpy(aug[:, AUGMENT_FLIPS] > 0)
        batch["rot90"] = torch.from_numpy(aug[:, AUGMENT_TURNS])
        batch["index"] = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return batch
