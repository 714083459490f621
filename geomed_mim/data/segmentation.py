"""Segmentation data: labeled RS tiles and CT crops/volumes from built stores.

* :class:`RSSegDataModule` — ``tiles/<part>`` with ``labels/<part>`` (aligned index for index),
  delivered as compact batches and, after transfer, calibrated, normalized with the store's
  ``band_stats`` and flipped/rotated (image and label alike) in batch.
* :class:`CTSegDataModule` — random labeled crops (:class:`~geomed_mim.data.ct.CTCropDataset`)
  for training; whole windowed volumes for validation (sliding-window inference in the task).

Both read the store's ``classes`` attribute (ids, names, ignore_index) and expose what the task
is built from: ``in_chans``, ``img_size``, ``spatial_dims``, ``bands``, ``classes``,
``mean``/``std``.
``predict_inputs`` (any scene input the build reads, or NIfTI volumes) feed
``finetune_seg predict``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_pipelines.store.index import SampleIndex, build_sample_index
from data_pipelines.store.layout import (
    ATTR_CALIBRATION,
    ATTR_CLASSES,
    ATTR_SPACING,
)
from data_pipelines.store.read import read_store_attrs
from geomed_mim.data.buffers import TICKET_KEY, BatchBuffers, fresh_buffer, torch_dtype
from geomed_mim.data.ct import CTCropDataset
from geomed_mim.data.datamodules import CTDataModule, RSDataModule
from geomed_mim.data.rs import StoreTiles
from geomed_mim.data.splits import (
    SlabSplit,
    hold_out_locations,
    location_keys,
    spatial_holdout,
    tile_footprints,
)
from geomed_mim.data.transforms import TileBatchTransform

log = logging.getLogger(__name__)


def store_classes(store: str | Path) -> dict[str, Any]:
    """The store's ``classes`` attribute (ids, names, ignore_index, colors); error when absent."""
    classes = read_store_attrs(store).get(ATTR_CLASSES)
    if not classes:
        raise ValueError(
            f"store {store} has no 'classes' attribute: build it with --labels and --classes "
            f"(e.g. configs/data/demo_lulc.yaml or configs/data/demo_ct_organs.yaml)"
        )
    return dict(classes)


class RSSegDataset(StoreTiles):
    """Labeled tiles as compact items: ``tile`` (as stored), its part's ``calibration`` and
    ``invalid``, ``label`` [H, W] (class ids as stored), ``flip`` [2] and ``rot90`` (random
    with ``augment``: geometric only, the same for image and label) and ``index``.

    :attr:`transform` (``TileBatchTransform`` without resizing) makes ``{"image": float
    [B, C, H, W] standardized, "label": int64 [B, H, W], "index"}`` of a batch of them.
    """

    def __init__(
        self,
        store: str | Path,
        index: SampleIndex,
        mean: list[float],
        std: list[float],
        augment: bool = False,
        buffer_slots: int = 4,
    ) -> None:
        if index.label_array is None:
            raise ValueError("RSSegDataset needs an index built with labels=True")
        super().__init__(store, index, buffer_slots)
        self.label_buffers = BatchBuffers(buffer_slots)
        self.augment = augment
        self.transform = TileBatchTransform(mean, std, None)

    def augmentation(self, gen: torch.Generator | None) -> tuple[list[bool], int]:
        """(flip left-right, flip up-down), quarter turns; none without ``augment``."""
        if not self.augment:
            return [False, False], 0
        flips = [bool(torch.rand((), generator=gen) < 0.5) for _ in range(2)]
        return flips, int(torch.randint(4, (), generator=gen))

    def read_labels(self, rows: Sequence[int], pooled: bool) -> tuple[torch.Tensor, Any]:
        """Label tiles ``[n, H, W]`` (as stored) and the ticket of their buffer (or None)."""
        layout = self.reader.layout(self.index.label_path(rows[0]))
        shape, dtype = (len(rows), *layout.shape[1:]), torch_dtype(layout.dtype)
        if pooled:
            labels, ticket = self.label_buffers.acquire(shape, dtype)
        else:
            labels, ticket = fresh_buffer(shape, dtype, False), None
        out = labels.numpy()
        for k, i in enumerate(rows):
            self.reader.read(self.index.label_path(i), int(self.index.tile[i]), out=out[k])
        return labels, ticket

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self._batch([i], [self.augmentation(None)], pooled=False)
        return {k: v[0] for k, v in batch.items()}

    def load_batch(self, indices: Sequence[int], seeds: Sequence[int]) -> dict[str, Any]:
        """The compact batch of ``indices``; sample ``indices[k]`` draws its flips and turns
        from a generator seeded with ``seeds[k]``."""
        gen = torch.Generator()
        augment = [self.augmentation(gen.manual_seed(int(s))) for s in seeds]
        return self._batch(indices, augment, pooled=True)

    def _batch(
        self, indices: Sequence[int], augment: Sequence[tuple[list[bool], int]], pooled: bool
    ) -> dict[str, Any]:
        batch: dict[str, Any] = self.read_tiles(indices, pooled)
        batch["label"], ticket = self.read_labels(indices, pooled)
        if ticket is not None:
            batch[TICKET_KEY] = torch.cat([batch[TICKET_KEY], torch.tensor([ticket])])
        batch["flip"] = torch.tensor([f for f, _ in augment], dtype=torch.bool)
        batch["rot90"] = torch.tensor([k for _, k in augment], dtype=torch.int64)
        batch["index"] = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return batch


class PathDataset(Dataset):
    """One item per input file to predict: ``{"path": str}``."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"path": self.paths[i]}


def _first(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate for whole-file items: batch size 1, no stacking."""
    assert len(items) == 1
    return items[0]


def predict_loader(inputs: list[str], example: str) -> DataLoader:
    """One whole input file per batch, for ``predict``; ``example`` shows the expected inputs."""
    if not inputs:
        raise ValueError(f"predict needs --data.init_args.predict_inputs [{example}, ...]")
    return DataLoader(PathDataset(inputs), batch_size=1, collate_fn=_first)


SUBSET_UNITS = ("tile", "scene")


def label_budget(index: SampleIndex, fraction: float, seed: int, unit: str) -> SampleIndex:
    """The seeded ``fraction`` of ``index``: tiles, or whole scenes (a scene is one store
    array: the build writes one per scene), at least one; 1.0 keeps everything."""
    if fraction >= 1.0 or not len(index):
        return index
    rng = np.random.default_rng(seed)
    if unit == "tile":
        keep = max(1, round(len(index) * fraction))
        return index.take(np.sort(rng.permutation(len(index))[:keep]))
    scenes = np.unique(index.array)
    chosen = rng.permutation(scenes)[: max(1, round(len(scenes) * fraction))]
    return index.take(np.flatnonzero(np.isin(index.array, chosen)))


class RSSegDataModule(RSDataModule):
    """Labeled tiles of an RS store (built with ``--labels``/``--classes``).

    Args:
        store: build output folder, or the object-store URL a build was published to (read in
            place by range).
        train_fraction: share of the labeled training tiles used (a seeded subset; the
            "few labels" setting); 1.0 uses all.
        subset_seed: seed of that subset.
        subset_unit: ``"tile"`` draws the subset tile by tile; ``"scene"`` draws whole scenes
            (``round(fraction · scenes)``, at least one), so a label budget means labeled
            scenes, as annotation is done in practice.
        val_split: the store's split to validate on (``"val"``, ``"train"``), None for none,
            or ``"spatial"``: the store's split column is ignored and tiles of every split are
            assigned by location (:func:`~geomed_mim.data.splits.spatial_holdout`): validation
            is the ``holdout_fraction`` of the area on ``holdout_side`` (every date), training
            the tiles at least ``holdout_margin`` scene pixels clear of it (the rest dropped).
            For stores that image one area on several dates under one label map, where a
            split by scene validates on the training places.
        select_fraction: share of the training locations (every date of each; after the
            label budget) held out as :attr:`select_dataset`, e.g. to pick a training step;
            none when it rounds to zero locations.
        predict_inputs: scenes for ``predict``, any input the build reads (GeoTIFFs, .SAFE,
            MODIS, Landsat, STAC items), read and calibrated as the build does.
        predict_output: folder for predicted GeoTIFFs and PNG overlays.
    """

    def __init__(
        self,
        store: str,
        batch_size: int = 16,
        num_workers: int = 0,
        flips: bool = True,
        val_split: str | None = "val",
        train_fraction: float = 1.0,
        subset_seed: int = 0,
        subset_unit: str = "tile",
        include_duplicates: bool = False,
        predict_inputs: list[str] | None = None,
        predict_output: str = "predictions",
        pin_memory: bool = True,
        persistent_workers: bool = False,
        holdout_side: str = "east",
        holdout_fraction: float = 0.3,
        holdout_margin: int = 0,
        select_fraction: float = 0.0,
    ) -> None:
        super().__init__(
            store,
            batch_size=batch_size,
            num_workers=num_workers,
            flips=flips,
            val_split=val_split,
            include_duplicates=include_duplicates,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
        )
        self.classes = store_classes(self.store)
        self.train_fraction = train_fraction
        self.subset_seed = subset_seed
        if subset_unit not in SUBSET_UNITS:
            raise ValueError(f"subset_unit must be one of {SUBSET_UNITS}, got {subset_unit!r}")
        self.subset_unit = subset_unit
        self.predict_inputs = list(predict_inputs or [])
        self.predict_output = predict_output
        self.holdout = (holdout_side, float(holdout_fraction), int(holdout_margin))
        if not 0 <= select_fraction < 1:
            raise ValueError(f"select_fraction {select_fraction}: give a share in [0, 1)")
        self.select_fraction = float(select_fraction)
        self.select_dataset: RSSegDataset | None = None
        self.split_description = f"store split `{val_split}`"
        self.select_locations = 0

    @property
    def mean(self) -> list[float]:
        return self.band_stats()[0]

    @property
    def std(self) -> list[float]:
        return self.band_stats()[1]

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["classes"] = self.classes
        meta["calibration"] = self.attrs.get(ATTR_CALIBRATION)
        return meta

    def batch_transform(self) -> TileBatchTransform:
        """Calibrate and standardize; flips and quarter turns for image and label alike."""
        if self._transform is None:
            mean, std = self.band_stats()
            self._transform = TileBatchTransform(mean, std, None)
        return self._transform

    def setup(self, stage: str | None = None) -> None:
        mean, std = self.band_stats()
        train, val = self.split_by_location_or_scene()
        train = label_budget(train, self.train_fraction, self.subset_seed, self.subset_unit)
        if not len(train):
            raise ValueError(f"store {self.store} has no labeled training tiles")
        train, select = self.hold_out_select(train)
        slots = self.prefetch_factor + 2  # prefetched + in use + being pinned

        def dataset(index: SampleIndex, augment: bool) -> RSSegDataset:
            return RSSegDataset(self.store, index, mean, std, augment, buffer_slots=slots)

        self.train_dataset = dataset(train, self.flips)
        self.val_dataset = None if val is None else dataset(val, False)
        self.select_dataset = None if select is None else dataset(select, False)

    def split_by_location_or_scene(self) -> tuple[SampleIndex, SampleIndex | None]:
        """(training, validation) samples: by the store's split column, or by location
        (``val_split="spatial"``); footprints ride along when a split needs them."""
        every = build_sample_index(self.store, None, self.include_duplicates, labels=True)
        spatial = self.val_split == "spatial"
        if spatial or self.select_fraction > 0:
            boxes, pixel = tile_footprints(self.store, every)
            columns = {**every.columns, "location": location_keys(boxes, pixel)}
            every = dataclasses.replace(every, columns=columns)
        if not spatial:
            val = every.of_split(self.val_split) if self.val_split else None
            return every.of_split("train"), val
        split = spatial_holdout(boxes, pixel, *self.holdout)
        self.split_description = split.description
        return every.take(np.flatnonzero(split.train)), every.take(np.flatnonzero(split.val))

    def hold_out_select(self, train: SampleIndex) -> tuple[SampleIndex, SampleIndex | None]:
        """(training, select) samples: ``select_fraction`` of the training locations, seeded
        with ``subset_seed``, every date of each; no select split when that is no location."""
        self.select_locations = 0
        if self.select_fraction <= 0:
            return train, None
        keys = train.columns["location"]
        held = hold_out_locations(keys, self.select_fraction, self.subset_seed)
        if not held.any():
            return train, None
        self.select_locations = len(np.unique(keys[held]))
        return train.take(np.flatnonzero(~held)), train.take(np.flatnonzero(held))

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return predict_loader(self.predict_inputs, "scene.tif")


class CTVolumeDataset(Dataset):
    """Whole windowed volumes with labels: ``{"image": [1, 1, X, Y, Z], "label": [1, 1, X, Y, Z],
    "case": str}`` (validation/test by sliding-window inference); with a slab split, the
    crops dataset's part of each volume only."""

    def __init__(self, crops: CTCropDataset) -> None:
        self.crops = crops  # reuses its case list, window and lazy per-process arrays

    def __len__(self) -> int:
        return len(self.crops.cases)

    def __getitem__(self, i: int) -> dict[str, Any]:
        self.crops._ensure_process_state()
        ref = self.crops.cases[i]
        part = tuple(slice(lo, hi) for lo, hi in self.crops.extent(ref))
        hu = self.crops._array(ref.store, ref.array).read_all()[part]
        image = self.crops.to_intensity(np.ascontiguousarray(hu))
        label = self.crops._array(ref.store, ref.label_array).read_all()[part].astype(np.int64)
        return {
            "image": torch.from_numpy(image)[None, None],
            "label": torch.from_numpy(label)[None, None],
            "case": ref.case,
        }


def _concat_labeled_crops(items: list[dict[str, Any]]) -> dict[str, Any]:
    """[crops, 1, D, H, W] items → one batch [B*crops, 1, D, H, W] (images and labels)."""
    return {
        "image": torch.cat([it["image"] for it in items]),
        "label": torch.cat([it["label"] for it in items]).long(),
    }


class CTSegDataModule(CTDataModule):
    """Labeled CT: random crops for training, whole volumes for validation/test.

    Unlike pretraining, batches come from a plain shuffled DataLoader (one process's view).

    Args:
        stores: CT store folders (or object-store URLs) built with labels and ``--classes``.
        val_split: split of whole volumes to validate on (``"val"``, ``"train"``), None for
            none, or ``"slab"``: validate on a slab of every training case that training
            crops never touch (:class:`~geomed_mim.data.splits.SlabSplit`: the
            ``slab_fraction`` of the volume at ``slab_side`` of ``slab_axis``, crops kept
            ``slab_margin`` voxels clear of it). For stores with one labeled case, as the
            embedded demo.
        crop_overhang: share of the crop edge a training crop may reach past its volume (or
            its slab part), read as padding: validation and prediction pad a volume's ends,
            and a held-out slab shorter than a crop, the same way
            (:class:`~geomed_mim.data.ct.CTCropDataset`'s ``overhang``).
        intensity_jitter: training crops' windowed intensities × U(1-j, 1+j) + U(-j, j). Kept
            small: in a (-175, 250) HU window, 0.1 is ±42 HU, more than liver, spleen and
            kidney differ by on a scan without contrast.
        flip_axes, rotate90: the orientation augmentation of training crops
            (:class:`~geomed_mim.data.ct.CTCropDataset`'s). By default none: a crop's
            orientation tells which side of the body it is on (liver right, spleen left).
    """

    def __init__(
        self,
        stores: list[str],
        batch_size: int = 2,
        crops_per_volume: int = 2,
        crop_size: int = 96,
        window: tuple[float, float] = (-175.0, 250.0),
        foreground_fraction: float = 0.7,
        samples_per_epoch: int | None = None,
        num_workers: int = 0,
        val_split: str | None = "val",
        seed: int = 0,
        predict_inputs: list[str] | None = None,
        predict_output: str = "predictions",
        slab_axis: int = 2,
        slab_fraction: float = 0.25,
        slab_margin: int = 4,
        slab_side: str = "start",
        crop_overhang: float = 0.5,
        intensity_jitter: float = 0.02,
        flip_axes: list[int] | None = None,
        rotate90: bool = False,
    ) -> None:
        super().__init__(
            stores,
            batch_size=batch_size,
            crops_per_volume=crops_per_volume,
            crop_size=crop_size,
            window=window,
            foreground_fraction=foreground_fraction,
            num_workers=num_workers,
            val_split=val_split,
            seed=seed,
        )
        self.samples_per_epoch = samples_per_epoch
        self.crop_overhang = crop_overhang
        self.intensity_jitter = intensity_jitter
        self.flip_axes, self.rotate90 = list(flip_axes or []), rotate90
        self.predict_inputs = list(predict_inputs or [])
        self.predict_output = predict_output
        self.classes = store_classes(self.stores[0])
        for other in self.stores[1:]:
            if store_classes(other) != self.classes:
                raise ValueError(f"store {other} has another class table than {self.stores[0]}")
        self.spacing = read_store_attrs(self.stores[0]).get(ATTR_SPACING, [1.5, 1.5, 1.5])
        self.mean, self.std = [0.0], [1.0]  # the window maps HU to [0, 1]
        self.slab = None
        if val_split == "slab":
            self.slab = SlabSplit(slab_axis, slab_fraction, slab_margin, slab_side)
        self.split_description = self.slab.describe() if self.slab else f"split `{val_split}`"

    def metadata(self) -> dict[str, Any]:
        return {
            "modality": "ct",
            "bands": self.bands,
            "window_hu": list(self.window),
            "spacing": list(self.spacing),
            "classes": self.classes,
            "store": [str(Path(s).resolve()) for s in self.stores],
        }

    def _crops(self, split: str | None, augment: bool, part: str = "train") -> CTCropDataset:
        return self.crops(
            split, augment, return_labels=True, samples_per_epoch=self.samples_per_epoch,
            slab=self.slab, slab_part=part, overhang=self.crop_overhang,
            intensity_jitter=self.intensity_jitter, flip_axes=self.flip_axes,
            rotate90=self.rotate90,
        )  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = self._crops("train", augment=True)
        if len(self.train_dataset) == 0 and stage == "fit":
            raise ValueError(f"no labeled training volumes in {self.stores}")
        self.val_dataset = None
        if self.slab is not None:  # the training cases' held-out slabs
            self.val_dataset = CTVolumeDataset(self._crops("train", False, part="val"))
        elif self.val_split:
            self.val_dataset = CTVolumeDataset(self._crops(self.val_split, augment=False))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            collate_fn=_concat_labeled_crops,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return []
        return DataLoader(self.val_dataset, batch_size=1, collate_fn=_first)

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return predict_loader(self.predict_inputs, "volume.nii.gz")


__all__ = [
    "CTSegDataModule",
    "CTVolumeDataset",
    "RSSegDataModule",
    "RSSegDataset",
    "predict_loader",
    "store_classes",
]
