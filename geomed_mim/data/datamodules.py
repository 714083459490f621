"""LightningDataModules for pretraining: RS tiles and CT crops from built stores.

Both expose what the training task needs to build and describe a model, read before any pixel is
loaded: ``in_chans``, ``img_size``, ``spatial_dims``, ``images_per_batch`` and :meth:`metadata`
(band names, per-band mean/std, modality) which the task stores in checkpoints and exports.
:class:`StoreDataModule` holds what they share: batch sizing over ranks and the sharded,
resumable loaders (:mod:`geomed_mim.data.sharding`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from data_pipelines.store.index import build_sample_index
from data_pipelines.store.layout import (
    ATTR_BANDS,
    ATTR_PROFILE,
    ATTR_TILE_SIZE,
    ATTR_TILE_SIZES,
    COL_NATIVE_SIZE,
)
from data_pipelines.store.object_store import is_object_url
from data_pipelines.store.read import read_store_attrs, store_band_stats
from geomed_mim.data.buffers import release
from geomed_mim.data.ct import CTCropDataset
from geomed_mim.data.rs import RSTileDataset, compute_band_stats
from geomed_mim.data.sharding import per_rank_batch_size, sharded_loader, world_of
from geomed_mim.data.splits import SlabSplit
from geomed_mim.data.transforms import TileBatchTransform, is_compact_batch

log = logging.getLogger(__name__)


def resolve_batch_size(datamodule: LightningDataModule, batch_size: int) -> int:
    """Per-rank batch size: from ``global_batch_size`` when the data module sets one."""
    trainer = datamodule.trainer
    world_size, _ = world_of(trainer)
    accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1) if trainer else 1
    return per_rank_batch_size(batch_size, datamodule.global_batch_size, world_size, accumulate)


class StoreDataModule(LightningDataModule):
    """Per-rank shares of whole global batches, resumable mid-epoch, for any store dataset.

    Subclasses set ``train_dataset`` / ``val_dataset`` in ``setup`` (after calling
    :meth:`resolve_batch_size`) and may set ``collate_fn``. Loaders pin memory (with a GPU),
    keep their workers across epochs and prefetch ``prefetch_factor`` batches per worker.
    Compact batches (stored integers, see :mod:`geomed_mim.data.transforms`) become images in
    :meth:`on_after_batch_transfer`, on the device the batch was moved to.
    """

    collate_fn: Callable[[list[Any]], Any] | None = None

    def __init__(
        self,
        batch_size: int,
        num_workers: int,
        val_split: str | None,
        seed: int,
        pin_memory: bool,
        persistent_workers: bool,
        global_batch_size: int | None,
        drop_last: bool = False,
        prefetch_factor: int = 2,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.global_batch_size = global_batch_size
        self.num_workers = num_workers
        self.val_split = val_split
        self.seed = seed
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.drop_last = drop_last
        self.prefetch_factor = prefetch_factor
        self.train_dataset: Any = None
        self.val_dataset: Any = None

    def resolve_batch_size(self) -> None:
        self.batch_size = resolve_batch_size(self, self.batch_size)

    def batch_groups(self, dataset: Any, shuffle: bool) -> dict[str, Any]:
        """``groups``/``group_weights`` for the loader when batches must keep to one group."""
        return {}

    def _loader(self, dataset: Any, shuffle: bool, drop_last: bool) -> DataLoader:
        workers = {"prefetch_factor": self.prefetch_factor} if self.num_workers > 0 else {}
        workers.update(self.batch_groups(dataset, shuffle))
        return sharded_loader(
            dataset,
            self.batch_size,
            trainer=self.trainer,
            shuffle=shuffle,
            seed=self.seed,
            drop_last=drop_last and len(dataset) >= self.batch_size,
            collate_fn=self.collate_fn,
            resumable=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            **workers,
        )

    def batch_transform(self) -> TileBatchTransform:
        raise NotImplementedError(f"{type(self).__name__} delivers finished batches")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Compact batches -> images, where the batch now is (GPU, or CPU without one)."""
        if not is_compact_batch(batch):
            return batch
        images = self.batch_transform()(batch)
        release(batch)  # its buffers are read: the loader may reuse them
        return images

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return []
        return self._loader(self.val_dataset, shuffle=False, drop_last=False)


def missing_crop_size(store: str, attrs: dict[str, Any], crop_size: int | None) -> str | None:
    """Why ``crop_size`` must be given for this RS store (crops kept at their native sizes, so
    no one stored size to train at), or None."""
    if crop_size is not None or attrs.get(ATTR_TILE_SIZE) is not None:
        return None
    return (
        f"--data.init_args.crop_size: store {store} keeps its crops at their native sizes "
        f"{attrs.get(ATTR_TILE_SIZES)}; give one training size (e.g. "
        f"--data.init_args.crop_size 224) or build with --store-size"
    )


class RSDataModule(StoreDataModule):
    """Tiles of an RS store (``build_dataset`` output folder), normalized with its band stats.

    Args:
        store: the build output folder (holds ``store.zarr`` and ``manifest.parquet``), or the
            object-store URL (``s3://bucket/prefix``) a build was published to, read in place
            by range with the same code as a local store (nothing is copied).
        crop_size: training image size; None keeps the store's tile size.
        crop_scale: area range of the random resized crop.
        flips: random left-right and up-down flips of training tiles.
        rotations: random quarter turns of training tiles as well (overhead imagery has no
            "up"; with flips, each tile is seen in all 8 orientations).
        stats_max_tiles: tiles read to compute mean/std when the store has no ``band_stats``.
        global_batch_size: images per optimizer step over all ranks; when set, ``batch_size``
            becomes ``global_batch_size / (world size × accumulate_grad_batches)``, so the
            effective batch, the lr and the data order do not change with the number of GPUs.
        seed: shuffling and per-sample augmentation seed (see :mod:`geomed_mim.data.sharding`).
        drop_last: leave out each epoch's short last global batch (default: every usable tile
            is seen exactly once per epoch).
        prefetch_factor: batches each worker prepares ahead.
        size_weights: stores cut at several tile sizes: the share of training batches drawn
            from each native size, e.g. ``{64: 1, 256: 2}`` (sizes left out are not drawn;
            with ``--store-size`` the keys bound size classes, see :meth:`batch_groups`);
            default: each size as often as it has tiles.

    Workers deliver compact batches (stored integers); calibration, standardization, the
    random resized crop and flips run in :meth:`on_after_batch_transfer` on the whole batch.
    """

    def __init__(
        self,
        store: str,
        batch_size: int = 64,
        num_workers: int = 4,
        crop_size: int | None = None,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        flips: bool = True,
        rotations: bool = False,
        val_split: str | None = "val",
        include_duplicates: bool = False,
        stats_max_tiles: int = 512,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        global_batch_size: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
        prefetch_factor: int = 2,
        size_weights: dict[int, float] | None = None,
    ) -> None:
        super().__init__(
            batch_size, num_workers, val_split, seed, pin_memory, persistent_workers,
            global_batch_size, drop_last, prefetch_factor,
        )  # fmt: skip
        self.store = str(store)  # an s3:// store is read in place, by range, like a local one
        self.size_weights = {int(k): float(v) for k, v in (size_weights or {}).items()} or None
        self.crop_scale = tuple(crop_scale)
        self.flips = flips
        self.rotations = rotations
        self.include_duplicates = include_duplicates
        self.stats_max_tiles = stats_max_tiles
        self.attrs = read_store_attrs(self.store)
        profile = self.attrs.get(ATTR_PROFILE) or {}
        self.bands: list[str] = list(self.attrs.get(ATTR_BANDS) or profile.get("bands") or [])
        if not self.bands:
            raise ValueError(f"store {store} lists no bands in its attributes")
        problem = missing_crop_size(store, self.attrs, crop_size)
        if problem:
            raise ValueError(problem)
        self.img_size = int(crop_size or self.attrs.get(ATTR_TILE_SIZE))
        self._mean: list[float] | None = None
        self._std: list[float] | None = None
        self._transform: TileBatchTransform | None = None
        self.stats_source = ""

    # -- what the task reads --------------------------------------------------------------
    @property
    def in_chans(self) -> int:
        return len(self.bands)

    @property
    def spatial_dims(self) -> int:
        return 2

    @property
    def images_per_batch(self) -> int:
        return self.batch_size

    def band_stats(self) -> tuple[list[float], list[float]]:
        if self._mean is None:
            stats = store_band_stats(self.attrs)
            if stats is not None:
                self._mean, self._std = stats
                self.stats_source = "store attribute band_stats"
            else:
                self._mean, self._std = self._computed_band_stats()
            if len(self._mean) != self.in_chans:
                raise ValueError(
                    f"band_stats has {len(self._mean)} bands, the store lists {self.in_chans}"
                )
        return self._mean, self._std

    def _computed_band_stats(self) -> tuple[list[float], list[float]]:
        samples = build_sample_index(self.store, "train", self.include_duplicates)
        nodata = (self.attrs.get(ATTR_PROFILE) or {}).get("nodata")
        tiles = min(len(samples), self.stats_max_tiles)
        self.stats_source = f"computed from {tiles} tiles"
        log.warning(
            "store %s has no band_stats attribute: per-band mean/std computed on the fly "
            "from %d training tiles",
            self.store,
            tiles,
        )
        return compute_band_stats(self.store, samples, self.stats_max_tiles, nodata)

    def metadata(self) -> dict[str, Any]:
        mean, std = self.band_stats()
        profile = self.attrs.get(ATTR_PROFILE) or {}
        return {
            "modality": "rs",
            "bands": list(self.bands),
            "mean": list(mean),
            "std": list(std),
            "stats_source": self.stats_source,
            "profile": profile.get("name"),
            "wavelengths_nm": profile.get("wavelengths_nm"),
            "preview_bands": [
                self.bands.index(b) for b in profile.get("preview_rgb", []) if b in self.bands
            ],
            "store": _store_record(self.store),
        }

    # -- Lightning hooks -----------------------------------------------------------------------
    def batch_transform(self) -> TileBatchTransform:
        """Calibrate, standardize with the band statistics, crop/flip/resize to ``img_size``."""
        if self._transform is None:
            mean, std = self.band_stats()
            self._transform = TileBatchTransform(mean, std, self.img_size)
        return self._transform

    def batch_groups(self, dataset: Any, shuffle: bool) -> dict[str, Any]:
        """Several tile sizes: the group of each sample for the loader.

        A store that keeps crops at their native sizes batches one size at a time (one shape
        per batch), drawn with ``size_weights`` (keys: the sizes). A store of one stored size
        needs groups only for ``size_weights``, whose keys are then the lower bounds of size
        classes: a crop counts toward the largest key not above its native size (random
        crops of 64-1023 px: ``{64: 1, 256: 2}``)."""
        sizes = dataset.index.columns.get(COL_NATIVE_SIZE)
        one_shape = self.attrs.get(ATTR_TILE_SIZE) is not None
        weights = self.size_weights if shuffle else None
        if sizes is None or (one_shape and weights is None):
            return {}
        if one_shape:
            keys = np.array(sorted(weights))
            sizes = keys[np.maximum(np.searchsorted(keys, sizes, side="right") - 1, 0)]
        if weights is not None:
            present = sorted({int(s) for s in np.unique(sizes)})
            unknown = sorted(set(weights) - set(present))
            if (unknown and not one_shape) or not any(weights.get(s, 0) > 0 for s in present):
                raise ValueError(
                    f"size_weights: {weights} does not weight the store's tile sizes "
                    f"{present}; give a positive weight to at least one of them"
                )
        return {"groups": sizes, "group_weights": weights}

    def setup(self, stage: str | None = None) -> None:
        self.resolve_batch_size()
        mean, std = self.band_stats()
        common = {
            "store_dir": self.store,
            "mean": mean,
            "std": std,
            "crop_size": self.img_size,
            "include_duplicates": self.include_duplicates,
            "buffer_slots": self.prefetch_factor + 2,  # prefetched + in use + being pinned
        }
        every = build_sample_index(self.store, None, self.include_duplicates)  # one pass
        self.train_dataset = RSTileDataset(
            **common, index=every.of_split("train"), crop_scale=self.crop_scale,
            flips=self.flips, rotations=self.rotations, augment=True,
        )  # fmt: skip
        if len(self.train_dataset) == 0:
            raise ValueError(f"store {self.store} has no usable training tiles")
        if self.val_split:
            val = every.of_split(self.val_split)
            self.val_dataset = RSTileDataset(**common, index=val, augment=False)


def concat_crops(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate CT items of [crops, 1, D, H, W] into one batch [B*crops, 1, D, H, W]."""
    images = torch.cat([it["image"] for it in items], dim=0)
    index = torch.cat(
        [
            torch.full((it["image"].shape[0],), int(it.get("index", i)), dtype=torch.long)
            * it["image"].shape[0]
            + torch.arange(it["image"].shape[0])
            for i, it in enumerate(items)
        ]
    )
    return {"image": images, "index": index}


class IndexedDataset(torch.utils.data.Dataset):
    """Adds ``"index"`` to each item of a dataset that does not provide it."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        item.setdefault("index", i)
        return item


class CTDataModule(StoreDataModule):
    """Random 3-D crops from CT stores via :class:`geomed_mim.data.ct.CTCropDataset`.

    A batch holds ``batch_size`` volumes × ``crops_per_volume`` crops; the images are windowed
    to [0, 1] by the loader, so the recorded mean/std are (0, 1) and the window is recorded.

    ``val_split``: the store's split to validate on, or ``"slab"``: every case of the stores
    (whatever its split) trains outside a slab of itself and validates inside it
    (:class:`~geomed_mim.data.splits.SlabSplit`: ``slab_fraction`` of the volume at
    ``slab_side`` of ``slab_axis``, training crops ``slab_margin`` voxels clear of it): held-out
    anatomy of the same scans, for stores of a few volumes each of another body region.

    Validation crops are fixed (the same crops at every validation) and each validation volume
    is visited ``val_visits_per_volume`` times, so that a few volumes still give a loss that
    compares across epochs.
    """

    collate_fn = staticmethod(concat_crops)
    in_chans = 1
    spatial_dims = 3

    def __init__(
        self,
        stores: list[str],
        batch_size: int = 2,
        crops_per_volume: int = 4,
        crop_size: int = 96,
        window: tuple[float, float] = (-175.0, 250.0),
        foreground_fraction: float = 0.5,
        num_workers: int = 4,
        val_split: str | None = "val",
        seed: int = 0,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        global_batch_size: int | None = None,  # volumes per optimizer step, all ranks
        slab_axis: int = 0,
        slab_fraction: float = 0.3,
        slab_margin: int = 4,
        slab_side: str = "end",
        val_visits_per_volume: int = 4,
    ) -> None:
        if val_visits_per_volume < 1:
            raise ValueError(f"val_visits_per_volume: {val_visits_per_volume} must be at least 1")
        self.val_visits_per_volume = int(val_visits_per_volume)
        super().__init__(
            batch_size, num_workers, val_split, seed, pin_memory, persistent_workers,
            global_batch_size,
        )  # fmt: skip
        self.slab = None
        if val_split == "slab":
            self.slab = SlabSplit(slab_axis, slab_fraction, slab_margin, slab_side)
        self.stores = [str(s) for s in stores]  # folders or object-store URLs, read in place
        self.crops_per_volume = crops_per_volume
        self.img_size = int(crop_size)
        self.window = (float(window[0]), float(window[1]))
        self.foreground_fraction = foreground_fraction
        self.bands = ["CT"]

    @property
    def images_per_batch(self) -> int:
        return self.batch_size * self.crops_per_volume

    def metadata(self) -> dict[str, Any]:
        return {
            "modality": "ct",
            "bands": list(self.bands),
            "mean": [0.0],
            "std": [1.0],
            "stats_source": f"HU window {list(self.window)} mapped to [0, 1] by the loader",
            "window_hu": list(self.window),
            "preview_bands": [0],
            "store": [_store_record(s) for s in self.stores],
        }

    def crops(self, split: str | None, augment: bool, **options: Any) -> Any:
        """A :class:`~geomed_mim.data.ct.CTCropDataset` of ``split`` with this module's crop
        settings (``options``: further ``CTCropDataset`` arguments)."""

        return CTCropDataset(
            self.stores,
            crop_size=(self.img_size,) * 3,
            crops_per_volume=self.crops_per_volume,
            window=self.window,
            split=split,
            foreground_fraction=self.foreground_fraction,
            augment=augment,
            seed=self.seed,
            **options,
        )

    def setup(self, stage: str | None = None) -> None:
        self.resolve_batch_size()
        if self.slab is not None:  # every case: outside its slab trains, inside validates
            slab = {"slab": self.slab}
            self.train_dataset = IndexedDataset(self.crops(None, True, **slab, slab_part="train"))
            self.val_dataset = IndexedDataset(self.validation_crops(None, **slab, slab_part="val"))
            return
        self.train_dataset = IndexedDataset(self.crops("train", augment=True))
        if self.val_split:
            self.val_dataset = IndexedDataset(self.validation_crops(self.val_split))

    def validation_crops(self, split: str | None, **options: Any) -> Any:
        """Fixed, unaugmented crops, each volume visited ``val_visits_per_volume`` times."""
        crops = self.crops(split, augment=False, fixed_crops=True, **options)
        crops.samples_per_epoch = len(crops.cases) * self.val_visits_per_volume
        return crops


def _store_record(store: str) -> str:
    """How a checkpoint names its store: the URL of one on object storage, else the folder."""
    return store if is_object_url(store) else str(Path(store).resolve())
