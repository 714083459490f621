"""``CTCropDataset``: random 3-D crops from CT stores, windowed in the loader, for MIM pretraining.

One item is one *visit* to one volume: ``crops_per_volume`` random crops of that volume, so
the volume's metadata and the chunks shared by its crops are handled once per visit. The store
keeps int16 HU; the intensity window is applied here, so one store serves any window.

Item (a dict; the default collate stacks it into a batch with a leading ``B`` axis)::

    image   float32 [crops, 1, D, H, W]   window [lo, hi] HU mapped to [0, 1] (clipped), then
                                           the optional intensity jitter (not clipped)
    label   integer [crops, 1, D, H, W]   only with ``return_labels=True``; uint8 when every id
                                           is < 256, else int16/int32 (call ``.long()`` for losses)
    origin  int64   [crops, 3]            crop start in stored voxels (may be < 0: padded)
    case    str                            case id (manifest ``id``)

``D, H, W`` are the stored RAS voxel axes X, Y, Z (``crop_size`` in that order). Crops running
past a volume edge are padded with air (-1024 HU, label 0). Flips (each axis, p=0.5) and rot90
in the X-Y (axial) plane apply to image and label alike.

Workers: the constructor reads only the parquet manifests; zarr arrays are opened lazily in
whichever process calls ``__getitem__`` (so never in the parent before a DataLoader forks), and
dropped when the dataset is pickled. Randomness: a NumPy generator per process seeded from
``seed`` and ``torch.initial_seed()`` (which DataLoader sets per worker and per epoch), so runs
are reproducible under ``torch.manual_seed`` and workers never draw the same crops.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from data_pipelines.store.index import SampleIndex, build_volume_index
from data_pipelines.store.layout import COL_ARRAY, VOLUMES_GROUP
from data_pipelines.store.read import read_manifest
from data_pipelines.store.source import (
    ByteSource,
    join,
    manifest_location,
    source_for,
    store_location,
)
from geomed_mim.data.chunked_volume import ChunkedVolume
from geomed_mim.data.seeds import crop_rng, fixed_crop_rng
from geomed_mim.data.splits import SlabSplit

DEFAULT_WINDOW = (-175.0, 250.0)


def _is_ct_manifest(table: pa.Table) -> bool:
    """Every row's array is a CT volume (``volumes/<case>``)."""
    if table.num_rows == 0:
        return True
    if COL_ARRAY not in table.column_names:
        return False
    is_volume = pc.starts_with(table.column(COL_ARRAY), f"{VOLUMES_GROUP}/")
    return bool(pc.all(pc.fill_null(is_volume, False)).as_py())


@dataclass(frozen=True)
class CTCaseRef:
    store: str  # dataset folder (holding store.zarr and manifest.parquet)
    case: str
    array: str
    label_array: str | None
    foreground_array: str | None
    shape: tuple[int, int, int]


class CaseRefs(Sequence[CTCaseRef]):
    """The cases of a volume index as :class:`CTCaseRef`, made on access (the index itself
    holds only arrays; nothing per case is kept as a Python object)."""

    def __init__(self, index: SampleIndex) -> None:
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    @overload
    def __getitem__(self, i: int) -> CTCaseRef: ...
    @overload
    def __getitem__(self, i: slice) -> list[CTCaseRef]: ...

    def __getitem__(self, i: int | slice) -> CTCaseRef | list[CTCaseRef]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"case {i} of {len(self)}")
        index, columns = self.index, self.index.columns
        path_id = int(index.array[i])
        fg = int(columns["foreground_array"][i])
        return CTCaseRef(
            store=index.store_of(path_id),
            case=str(columns["ids"][i]),
            array=index.paths[path_id],
            label_array=index.label_path(i),
            foreground_array=index.paths[fg] if fg >= 0 else None,
            shape=tuple(int(s) for s in columns["shape"][i]),  # type: ignore[arg-type]
        )


class CTCropDataset(Dataset):
    """Random crops over one or more CT stores built by ``build_dataset --modality ct``.

    Args:
        stores: dataset folder(s) written by the CT build.
        crop_size: crop edge in voxels per axis (X, Y, Z).
        crops_per_volume: crops returned per item (per visit to a volume).
        window: (lo, hi) HU mapped to [0, 1]; ``None`` returns raw HU as float32.
        split: "train", "val", or None for every case.
        foreground_fraction: share of crops centred on a foreground point (a label voxel, or a
            body voxel for unlabelled cases, recorded at build time); the rest are uniform.
        augment: random flips (``flip_axes``), axial rot90 (``rotate90``) and intensity jitter.
        seed: combined with ``torch.initial_seed()`` per process.
        return_labels: also return label crops; keeps only cases that have a label map.
        include_duplicates: keep volumes the manifest marks as exact duplicates.
        samples_per_epoch: ``len()`` of the dataset (visits); default one visit per volume.
        intensity_jitter: with ``augment``, image * U(1-j, 1+j) + U(-j, j) after windowing.
        slab: crops (and :meth:`extent`) stay inside ``slab_part`` ("train" or "val") of each
            volume along the slab's axis, so training never reads the validation slab or its
            margin.
        fixed_crops: item ``i`` is the same crops every time it is read, in any process (its
            generator is seeded by ``seed`` and ``i``): validation losses then compare across
            epochs instead of moving with the crops drawn.
        overhang: share of the crop edge a crop may reach past its extent (the volume, or its
            slab part), read as padding. Sliding-window inference pads a volume's ends (and a
            held-out slab shorter than a crop) the same way; crops that never overhang leave
            the model unprepared for it (nnU-Net samples patches over the border for this
            reason). 0 keeps every crop inside.
        flip_axes, rotate90: the axes ``augment`` flips (each with p=0.5) and whether it turns
            crops by k×90° in the axial plane. Every orientation suits pretraining; a
            segmentation of organs that lie on one side (liver right, spleen left) loses that
            cue when crops are mirrored left-right.
    """

    def __init__(
        self,
        stores: str | Path | list[str | Path],
        crop_size: tuple[int, int, int] | int = (96, 96, 96),
        crops_per_volume: int = 4,
        window: tuple[float, float] | None = DEFAULT_WINDOW,
        split: str | None = "train",
        foreground_fraction: float = 0.5,
        augment: bool = True,
        seed: int = 0,
        return_labels: bool = False,
        include_duplicates: bool = False,
        samples_per_epoch: int | None = None,
        intensity_jitter: float = 0.1,
        slab: SlabSplit | None = None,
        slab_part: str = "train",
        fixed_crops: bool = False,
        overhang: float = 0.0,
        flip_axes: Sequence[int] = (0, 1, 2),
        rotate90: bool = True,
    ):
        if isinstance(crop_size, int):
            crop_size = (crop_size,) * 3
        if len(crop_size) != 3 or min(crop_size) < 1:
            raise ValueError(f"crop_size: {crop_size} must be three positive voxel counts")
        if crops_per_volume < 1:
            raise ValueError(f"crops_per_volume: {crops_per_volume} must be at least 1")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction: {foreground_fraction} is not in [0, 1]")
        if window is not None and not window[1] > window[0]:
            raise ValueError(f"window: {window} needs lo < hi (HU)")
        if not 0.0 <= overhang <= 0.5:
            raise ValueError(f"overhang: {overhang} is not in [0, 0.5] (a share of the crop edge)")
        if split not in ("train", "val", None):
            raise ValueError(f"split: {split!r} is not 'train', 'val' or None")
        self.crop_size = tuple(int(c) for c in crop_size)
        self.crops_per_volume = int(crops_per_volume)
        self.window = None if window is None else (float(window[0]), float(window[1]))
        self.split = split
        self.foreground_fraction = float(foreground_fraction)
        self.augment = augment
        self.seed = int(seed)
        self.return_labels = return_labels
        self.intensity_jitter = float(intensity_jitter)
        store_list = [stores] if isinstance(stores, str | Path) else list(stores)
        self.cases, max_label = self._read_manifests(
            [str(join(s)) for s in store_list], split, return_labels, include_duplicates
        )
        # an empty split (e.g. no case hashed to "val") is a dataset of length 0, not an error
        self.label_dtype = np.dtype(
            np.uint8 if max_label < 256 else np.int16 if max_label < 2**15 else np.int32
        )
        self.samples_per_epoch = (samples_per_epoch or len(self.cases)) if len(self.cases) else 0
        self.slab, self.slab_part = slab, slab_part
        self.fixed_crops = fixed_crops
        self.overhang = float(overhang)
        if not set(flip_axes) <= {0, 1, 2}:
            raise ValueError(f"flip_axes: {list(flip_axes)} must be axes among 0, 1, 2")
        self.flip_axes, self.rotate90 = tuple(int(a) for a in flip_axes), bool(rotate90)
        self._check_slab()
        self._pid: int | None = None  # process that owns the opened arrays and the generator
        self._arrays: dict[str, ChunkedVolume] = {}
        self._sources: dict[str, ByteSource] = {}  # per store: one connection per process
        self._points: dict[str, np.ndarray] = {}
        self._rng: np.random.Generator | None = None
        self._buffers: dict[str, np.ndarray] = {}

    @staticmethod
    def _read_manifests(
        stores: list[str], split: str | None, need_labels: bool, include_dups: bool
    ) -> tuple[CaseRefs, int]:
        for store in stores:
            table = read_manifest(store, [COL_ARRAY])
            if not _is_ct_manifest(table):
                raise ValueError(
                    f"{manifest_location(store)} is not a CT store manifest (no volumes/ arrays)"
                )
        index = build_volume_index(stores, split, include_dups, labels=need_labels)
        return CaseRefs(index), index.max_label if need_labels else 0

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _check_slab(self) -> None:
        """Training crops must fit inside the training part whole (a crop reaching past it
        would read the validation slab)."""
        if self.slab is None or self.slab_part != "train":
            return
        axis = self.slab.axis
        for ref in self.cases:
            lo, hi = self.slab.bounds(ref.shape[axis], "train")
            if hi - lo < self.crop_size[axis]:
                raise ValueError(
                    f"slab_fraction {self.slab.fraction} with slab_margin {self.slab.margin}: "
                    f"case {ref.case} keeps {max(0, hi - lo)} voxels along axis {axis} for "
                    f"training, fewer than crop_size {self.crop_size[axis]}; give a smaller "
                    f"slab_fraction, slab_margin or crop_size"
                )

    def extent(self, ref: CTCaseRef) -> tuple[tuple[int, int], ...]:
        """[lo, hi) voxels per axis this dataset reads of ``ref``: the whole volume, or its
        part of the slab split."""
        bounds = [(0, d) for d in ref.shape]
        if self.slab is not None:
            axis = self.slab.axis
            bounds[axis] = self.slab.bounds(ref.shape[axis], self.slab_part)
        return tuple(bounds)

    # -- per-process state -------------------------------------------------------------------

    def _ensure_process_state(self) -> None:
        pid = os.getpid()
        if self._pid != pid:  # first use in this process (a fresh worker after fork/spawn)
            self._pid = pid
            self._arrays, self._points, self._buffers, self._sources = {}, {}, {}, {}
            self._rng = crop_rng(self.seed)

    def _array(self, store: str, path: str) -> ChunkedVolume:
        key = f"{store}|{path}"
        arr = self._arrays.get(key)
        if arr is None:
            source = self._sources.get(store)
            if source is None:
                source = self._sources[store] = source_for(store)
            arr = ChunkedVolume(join(store_location(store), path), source=source)
            self._arrays[key] = arr
        return arr

    def _foreground(self, ref: CTCaseRef) -> np.ndarray:
        key = f"{ref.store}|{ref.case}"
        pts = self._points.get(key)
        if pts is None:
            pts = np.zeros((0, 3), np.int32)
            if ref.foreground_array:
                pts = self._array(ref.store, ref.foreground_array).read_all()
            self._points[key] = pts
        return pts

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pid=None, _arrays={}, _points={}, _rng=None, _buffers={}, _sources={})
        return state

    # -- sampling ------------------------------------------------------------------------------

    def crop_origin(self, ref: CTCaseRef, rng: np.random.Generator) -> tuple[int, int, int]:
        """A crop start: centred on a foreground point with ``foreground_fraction``, else uniform.

        Along an axis shorter than the crop the start is <= 0 and the rest is padding; with
        ``overhang`` the start may also move that share of the crop past either end.
        """
        extent, size = self.extent(ref), self.crop_size
        reach = [int(self.overhang * c) for c in size]  # voxels a crop may overhang
        lo = [a + min(0, b - a - c) - r for (a, b), c, r in zip(extent, size, reach, strict=True)]
        hi = [a + max(0, b - a - c) + r for (a, b), c, r in zip(extent, size, reach, strict=True)]
        if self.foreground_fraction > 0 and rng.random() < self.foreground_fraction:
            pts = self._foreground(ref)
            if len(pts):
                centre = pts[rng.integers(len(pts))]
                return tuple(  # type: ignore[return-value]
                    int(np.clip(int(p) - c // 2, a, b))
                    for p, c, a, b in zip(centre, self.crop_size, lo, hi, strict=True)
                )
        return tuple(int(rng.integers(a, b + 1)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]

    def to_intensity(self, hu: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """int16 HU -> float32: the window mapped to [0, 1] (or raw HU without a window)."""
        if out is None:
            out = np.empty(hu.shape, dtype=np.float32)
        if self.window is None:
            out[...] = hu
            return out
        lo, hi = self.window
        np.subtract(hu, np.float32(lo), out=out, dtype=np.float32)  # in place: no temporaries
        np.multiply(out, np.float32(1.0 / (hi - lo)), out=out)
        np.clip(out, 0.0, 1.0, out=out)
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        self._ensure_process_state()
        rng = fixed_crop_rng(self.seed, index) if self.fixed_crops else self._rng
        assert rng is not None
        ref = self.cases[index % len(self.cases)]
        vol = self._array(ref.store, ref.array)
        lab = None
        if self.return_labels and ref.label_array:
            lab = self._array(ref.store, ref.label_array)
        cache: dict = {}
        label_cache: dict = {}
        n = self.crops_per_volume
        images = np.empty((n, 1, *self.crop_size), dtype=np.float32)  # [crops, 1, D, H, W]
        labels = (
            np.empty((n, 1, *self.crop_size), dtype=self.label_dtype) if lab is not None else None
        )
        origins = []
        for c in range(n):
            origin = self.crop_origin(ref, rng)
            hu = vol.read(origin, self.crop_size, cache, out=self._hu_buffer(vol.dtype))
            seg = lab.read(origin, self.crop_size, label_cache) if lab is not None else None
            self._blank_outside_extent(ref, origin, hu, seg, vol.fill_value)
            if self.augment:
                hu, seg = self._flip_rotate(hu, seg, rng)  # views: copied once, below
            img = self.to_intensity(hu, out=images[c, 0])  # [D, H, W], written in place
            if self.augment:
                self._jitter(img, rng)
            if labels is not None and seg is not None:
                labels[c, 0] = seg
            origins.append(origin)
        item: dict[str, Any] = {
            "image": torch.from_numpy(images),  # [crops, 1, D, H, W]
            "origin": torch.tensor(origins, dtype=torch.int64),  # [crops, 3]
            "case": ref.case,
        }
        if self.return_labels:
            item["label"] = torch.from_numpy(labels)  # [crops, 1, D, H, W]
        return item

    def _blank_outside_extent(
        self,
        ref: CTCaseRef,
        origin: Sequence[int],
        hu: np.ndarray,
        seg: np.ndarray | None,
        fill: Any,
    ) -> None:
        """Voxels of the crop outside this dataset's extent become padding (the volume's fill
        value, label 0), as voxels outside the volume are: a slab shorter than the crop is
        read whole, never together with the margin or the other part behind it."""
        for axis, ((lo, hi), start, size) in enumerate(
            zip(self.extent(ref), origin, self.crop_size, strict=True)
        ):
            before, after = max(0, lo - start), max(0, start + size - hi)  # voxels to blank
            for cut in (slice(0, before), slice(size - after, size)):
                if cut.stop > cut.start:
                    box = (slice(None),) * axis + (cut,)
                    hu[box] = fill
                    if seg is not None:
                        seg[box] = 0

    def _hu_buffer(self, dtype: np.dtype) -> np.ndarray:
        """One reusable crop-sized HU buffer per process (fresh pages cost more than decoding)."""
        buf = self._buffers.get(dtype.str)
        if buf is None:
            buf = self._buffers[dtype.str] = np.empty(self.crop_size, dtype=dtype)
        return buf

    def _flip_rotate(
        self, img: np.ndarray, seg: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Random flips (each of ``flip_axes``, p=0.5) and axial rot90 (with ``rotate90``), the
        same for image and label; views."""
        # the same draws whatever is switched off: the rest of the stream stays put
        axes = tuple(ax for ax in range(3) if rng.random() < 0.5 and ax in self.flip_axes)
        k = int(rng.integers(4)) if self.crop_size[0] == self.crop_size[1] else 0
        k = k if self.rotate90 else 0
        if axes:
            img = np.flip(img, axes)
            seg = np.flip(seg, axes) if seg is not None else None
        if k:
            img = np.rot90(img, k, axes=(0, 1))
            seg = np.rot90(seg, k, axes=(0, 1)) if seg is not None else None
        return img, seg

    def _jitter(self, img: np.ndarray, rng: np.random.Generator) -> None:
        """In place: image * U(1-j, 1+j) + U(-j, j) on windowed intensities."""
        j = self.intensity_jitter
        if j > 0 and self.window is not None:
            img *= np.float32(rng.uniform(1 - j, 1 + j))
            img += np.float32(rng.uniform(-j, j))
