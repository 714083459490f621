"""Semantic segmentation on a torchgeo segmentation dataset the user has on disk: any
:class:`~torchgeo.datasets.NonGeoDataset` taking ``root`` and ``split`` (and, where it has
them, ``bands``) whose samples are ``{"image": [C, H, W], "mask": [H, W]}``, read through
torchgeo's own class with ``download=False`` (so the layout is torchgeo's).

Splits: ``train`` and ``test`` (required), ``val`` when the class has one (it keeps each
trained probe's state of best validation mIoU; without it a probe keeps its last step). Bands
are the dataset's names (its ``bands``, else the class's ``all_bands``/``rgb_bands`` when they
count the image's channels), matched to a pretrained encoder's by name and normalised by its
recorded statistics; a dataset naming no band takes only the scratch encoder. Pixels of the
ignore index (``--data.ignore_index``, else the dataset's ``ignore_index``) and pixels with a
NaN band are scored nowhere.

Methods: per-pixel logistic regression on the standardized bands (at most ``--pixel_limit``
drawn training pixels) and, per encoder, the patch-token probes of
:mod:`~geomed_mim.evaluation.patch_probes` (``linear``, ``finetune``). Scores on the test
split, pooled over its labeled pixels: ``miou`` (mean over the classes of their IoU),
``pixel_accuracy`` and ``iou_<class>``. A label fraction is a seeded uniform draw of the
training chips.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from geomed_mim.evaluation import baselines as bl
from geomed_mim.evaluation import scene_data as sd
from geomed_mim.evaluation.deep import SCRATCH
from geomed_mim.evaluation.patch_probes import (
    PATCH_PROBES,
    PatchProtocol,
    Scorer,
    draw_chips,
    encoder_rows,
    write_report,
)
from geomed_mim.evaluation.protocol import encoder_label
from geomed_mim.evaluation.scene_protocol import check_run_flags
from geomed_mim.tasks.segmentation import scores_from_confusion
from geomed_mim.usage import UsageError

SEG_BASELINES = ("logistic_regression",)
IGNORED = -1  # the masks' value, once read, of a pixel scored nowhere
KIND = "segmentation dataset, e.g. torchgeo.datasets.CloudCoverDetection"
LAYOUT = "for CloudCoverDetection: train/train_metadata.csv, train/train_features/, ..."
Say = Callable[[str], None]


@dataclass
class SegData(sd.SceneData):
    """Which dataset to read (the ``--data.*`` flags): scene data's, and what a mask needs."""

    class_path: str = "torchgeo.datasets.CloudCoverDetection"
    batch_size: int = 8
    ignore_index: int | None = None  # mask value scored nowhere; None: the dataset's, if any
    classes: list[str] | None = None  # names in class-id order; None: the dataset's, or 0..K-1


@dataclass
class SegProtocol(PatchProtocol):
    """A torchgeo segmentation dataset's evaluation (the fields are the command's flags; see
    docs/evaluation.md)."""

    data: SegData = field(default_factory=SegData)
    baselines: list[str] = field(default_factory=lambda: list(SEG_BASELINES))
    output: str = "runs/evaluate_segmentation"
    title: str = "semantic segmentation"


def yields_masks(class_path: str) -> bool:
    """True when ``class_path`` is a torchgeo non-geo dataset whose own code (its class and
    the torchgeo classes it derives from) puts a ``mask`` into its samples; the protocol still
    checks a real sample."""
    if not class_path.startswith("torchgeo."):
        return False
    try:
        cls = sd.dataset_class(SegData(class_path=class_path), KIND)
        from torchgeo.datasets import NonGeoClassificationDataset, NonGeoDataset
    except (UsageError, ImportError):
        return False
    if not isinstance(cls, type) or not issubclass(cls, NonGeoDataset):
        return False
    if issubclass(cls, NonGeoClassificationDataset):
        return False
    own = [c for c in cls.__mro__ if c.__module__.startswith("torchgeo.datasets.")]
    for c in own:
        try:
            if re.search(r"""["']mask["']\s*[:\]]""", inspect.getsource(c)):
                return True
        except (OSError, TypeError):
            continue
    return False


def check_seg_protocol(p: SegProtocol) -> None:
    """Every flag, before any work: a mistake is a :class:`UsageError` naming the flag."""
    sd.check_data_root(p.data.root, "the dataset as torchgeo lays it out")
    sd.dataset_class(p.data, KIND)
    if p.pixel_limit < 1:
        raise UsageError(f"--pixel_limit {p.pixel_limit}: give a number of pixels >= 1")
    if p.data.classes is not None and len(p.data.classes) < 2:
        raise UsageError(f"--data.classes {p.data.classes}: name at least 2 classes, or null")
    check_run_flags(p, PATCH_PROBES, PATCH_PROBES, SEG_BASELINES)


# -- data ---------------------------------------------------------------------------------------
def open_optional(data: SegData, split: str) -> Dataset | None:
    """One split, or None when the class has no such split (it refuses ``split=...``, as
    CloudCoverDetection refuses ``val``). A split it takes is opened by ``open_split`` (train
    first, so a refused band or argument has already been said)."""
    cls = sd.dataset_class(data, KIND)
    args = {"root": data.root, "split": split, "download": False, **data.init_args}
    if data.bands is not None:
        args["bands"] = list(data.bands)
    try:
        cls(**args)
    except (AssertionError, ValueError, KeyError):
        return None
    except Exception:  # a missing file and the like: open_split says it in one line
        pass
    return sd.open_split(data, split, LAYOUT)


def open_splits(data: SegData, say: Say) -> dict[str, Dataset]:
    """train, val (when the class has one) and test."""
    train = sd.open_split(data, "train", LAYOUT)
    val, test = open_optional(data, "val"), open_optional(data, "test")
    if test is None:
        raise UsageError(f"--data.class_path {data.class_path}: the class has no test split; "
                         "this protocol scores one")  # fmt: skip
    if val is None:
        say(f"{data.class_path} has no val split: each trained probe keeps its last step")
        return {"train": train, "test": test}
    return {"train": train, "val": val, "test": test}


def band_names(dataset: Dataset, channels: int) -> list[str] | None:
    """The dataset's band names in image order: its ``bands``, else its class's
    ``all_bands``/``all_band_names``/``rgb_bands``, the first that counts ``channels``."""
    for attr in ("bands", "all_bands", "all_band_names", "rgb_bands"):
        names = getattr(dataset, attr, None)
        if isinstance(names, list | tuple) and len(names) == channels:
            return [str(b) for b in names]
    return None


def first_sample(ds: Dataset, data: SegData) -> dict[str, Any]:
    """The training split's first sample, checked to be an image [C, H, W] and a mask."""
    item = ds[0]
    if "mask" not in item:
        keys = ", ".join(sorted(item))
        raise UsageError(f"--data.class_path {data.class_path}: its samples carry {keys}, no "
                         f"mask; not a segmentation dataset (give a torchgeo {KIND})")  # fmt: skip
    if item["image"].ndim != 3:
        raise UsageError(f"--data.class_path {data.class_path}: images of shape "
                         f"{tuple(item['image'].shape)}; this protocol reads [C, H, W] images "
                         "(one date)")  # fmt: skip
    return item


@dataclass
class SegChips:
    """The splits, read once: masks (ignored pixels at −1), the training split's per-band
    mean and std (scaled, NaN left out), band names (None: the dataset names none), classes."""

    datasets: dict[str, Dataset]
    masks: dict[str, torch.Tensor]  # [N, H, W] int16
    band_mean: np.ndarray
    band_std: np.ndarray
    bands: list[str] | None
    classes: list[str]
    ignore_index: int | None

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.masks["train"].shape[-2:]
        return int(h), int(w)

    @property
    def band_labels(self) -> list[str]:
        return self.bands or [f"band{i + 1}" for i in range(len(self.band_mean))]


def ignore_index(ds: Dataset, data: SegData) -> int | None:
    if data.ignore_index is not None:
        return int(data.ignore_index)
    for attr in ("ignore_index", "_ignore_index"):
        value = getattr(ds, attr, None)
        if isinstance(value, int):
            return value
    return None


def read_masks(
    ds: Dataset, data: SegData, ignore: int | None, sums: np.ndarray | None
) -> torch.Tensor:
    """[N, H, W] int16 masks (ignored and NaN-band pixels −1); adds the scaled bands' sums,
    squares and counts to ``sums`` [3, C] when given (the training split)."""
    masks = []
    for i in range(len(ds)):  # type: ignore[arg-type]
        item = ds[i]
        mask = item["mask"].long().squeeze(0) if item["mask"].ndim == 3 else item["mask"].long()
        image = item["image"].double() * data.scale
        if (masks and mask.shape != masks[0].shape) or mask.shape != image.shape[1:]:
            raise UsageError(f"--data.root {data.root}: chips or masks of several sizes "
                             f"({tuple(image.shape)}, mask {tuple(mask.shape)})")  # fmt: skip
        if ignore is not None:
            mask[mask == ignore] = IGNORED
        mask[image.isnan().any(0)] = IGNORED
        masks.append(mask.to(torch.int16))
        if sums is not None:
            sums[0] += image.nansum(dim=(1, 2)).numpy()
            sums[1] += (image**2).nansum(dim=(1, 2)).numpy()
            sums[2] += (~image.isnan()).sum(dim=(1, 2)).numpy()
    return torch.stack(masks) if masks else torch.empty(0, 0, 0, dtype=torch.int16)


def class_names(ds: Dataset, data: SegData, masks: dict[str, torch.Tensor]) -> list[str]:
    """``--data.classes``, else the dataset's ``classes``, else ``0..K-1`` for the largest
    class id in the masks; a class id beyond the names is refused."""
    names = data.classes or getattr(ds, "classes", None)
    top = max(int(m.max()) if m.numel() else 0 for m in masks.values())
    if not isinstance(names, list | tuple) or not names:
        return [str(c) for c in range(max(top + 1, 2))]
    if top >= len(names):
        raise UsageError(f"--data.classes: the masks hold class id {top}, beyond the "
                         f"{len(names)} names {list(names)}; name every class")  # fmt: skip
    return [str(c) for c in names]


def read_chips(p: SegProtocol, say: Say) -> SegChips:
    data = p.data
    datasets = open_splits(data, say)
    train = datasets["train"]
    if len(train) == 0 or len(datasets["test"]) == 0:  # type: ignore[arg-type]
        raise UsageError(f"--data.root {data.root}: the training or test split holds no chip")
    item = first_sample(train, data)
    channels = int(item["image"].shape[0])
    ignore = ignore_index(train, data)
    sums = np.zeros((3, channels))
    masks = {s: read_masks(ds, data, ignore, sums if s == "train" else None)
             for s, ds in datasets.items()}  # fmt: skip
    count = np.maximum(sums[2], 1)
    mean = sums[0] / count
    std = np.sqrt(np.maximum(sums[1] / count - mean**2, 0.0))
    bands = band_names(train, channels)
    classes = class_names(train, data, masks)
    return SegChips(datasets, masks, mean, np.where(std > 0, std, 1.0), bands, classes, ignore)


def check_encoders_read_bands(p: SegProtocol, chips: SegChips) -> None:
    """A pretrained encoder needs the dataset's band names to match its own."""
    for source in p.encoders:
        if source != SCRATCH and chips.bands is None:
            raise UsageError(f"--encoders {source}: {p.data.class_path} names no bands (no "
                             "bands, all_bands or rgb_bands of its channel count), so none can "
                             "be matched to the encoder's; use --encoders [scratch]")  # fmt: skip


# -- scores -------------------------------------------------------------------------------------
def segmentation_scores(
    target: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor, classes: list[str]
) -> dict[str, float]:
    """``miou`` (NaN-mean over the classes of their IoU), ``pixel_accuracy`` and
    ``iou_<class>``, pooled over the labeled pixels (target −1 ignored)."""
    target, pred = np.asarray(target).reshape(-1), np.asarray(pred).reshape(-1)
    keep = target != IGNORED
    k = len(classes)
    s = scores_from_confusion(bl.confusion(target[keep], pred[keep], k), list(range(k)))
    out = {"miou": float(s["miou"]), "pixel_accuracy": float(s["accuracy"])}
    out.update({f"iou_{c}": float(v) for c, v in zip(classes, s["iou"].tolist(), strict=True)})
    return out


def seg_scorer(chips: SegChips) -> Scorer:
    """The test split's scores; the validation split's mIoU selects."""

    def score(split: str, pred: torch.Tensor) -> dict[str, float]:
        return segmentation_scores(chips.masks[split], pred, chips.classes)

    def select(pred: torch.Tensor) -> float:
        return segmentation_scores(chips.masks["val"], pred, chips.classes)["miou"]

    return Scorer(len(chips.classes), ["test"], columns(chips), score, select)


def columns(chips: SegChips) -> list[str]:
    return ["miou", "pixel_accuracy", *(f"iou_{c}" for c in chips.classes)]


def said(scores: dict[str, float]) -> str:
    return f"miou {scores['miou']:.3f}  pixel_accuracy {scores['pixel_accuracy']:.3f}"


# -- baseline -----------------------------------------------------------------------------------
def chip_values(ds: Dataset, i: int, scale: float) -> np.ndarray:
    """Chip ``i``'s pixels [H W, C] in the encoders' units (stored value × scale)."""
    image = ds[i]["image"].double() * scale
    return image.movedim(0, -1).reshape(-1, image.shape[0]).numpy()


def training_pixels(
    chips: SegChips, idx: np.ndarray, limit: int, seed: int, scale: float
) -> bl.Pixels:
    """The drawn chips' labeled pixels, at most ``limit`` of them: the seeded uniform draw of
    :func:`~geomed_mim.evaluation.pixels.subsample`, read chip by chip so only the kept
    pixels are ever held."""
    masks = [chips.masks["train"][int(i)].reshape(-1).numpy() for i in idx]
    counts = np.array([int((m != IGNORED).sum()) for m in masks])
    total, starts = int(counts.sum()), np.concatenate([[0], np.cumsum(counts)])
    rows = None
    if total > limit:
        rows = np.sort(np.random.default_rng(seed).choice(total, limit, replace=False))
    values, labels = [], []
    for j, i in enumerate(idx):
        labeled = masks[j] != IGNORED
        local = slice(None)
        if rows is not None:
            local = rows[(rows >= starts[j]) & (rows < starts[j + 1])] - starts[j]
            if not len(local):
                continue
        values.append(chip_values(chips.datasets["train"], int(i), scale)[labeled][local])
        labels.append(masks[j][labeled][local])
    if not values:
        return bl.Pixels(np.empty((0, len(chips.band_mean))), np.empty(0, dtype=np.int64))
    return bl.Pixels(np.concatenate(values), np.concatenate(labels).astype(np.int64))


def predict_split(model: Any, chips: SegChips, split: str, scale: float) -> torch.Tensor:
    """The fitted per-pixel classifier's class ids [N, H, W] (NaN bands read as 0; those
    pixels are scored nowhere)."""
    ds, (h, w) = chips.datasets[split], chips.image_size
    out = []
    for i in range(len(ds)):  # type: ignore[arg-type]
        values = np.nan_to_num(chip_values(ds, i, scale))
        out.append(torch.from_numpy(np.asarray(model.predict(values)).reshape(h, w)))
    return torch.stack(out)


class Constant:
    """The classifier of drawn pixels that hold one class: that class everywhere."""

    def __init__(self, label: int) -> None:
        self.label = label

    def predict(self, values: np.ndarray) -> np.ndarray:
        return np.full(len(values), self.label)


def baseline_rows(p: SegProtocol, chips: SegChips, say: Say) -> list[dict[str, Any]]:
    """Per-pixel logistic regression on the standardized bands (the baselines'
    :func:`~geomed_mim.evaluation.baselines.pixel_classifier`), fitted on at most
    ``--pixel_limit`` pixels of each fraction's drawn training chips, scored on the test split."""
    rows: list[dict[str, Any]] = []
    if "logistic_regression" not in p.baselines:
        return rows
    method, n = "pixel logistic regression", len(chips.datasets["train"])  # type: ignore[arg-type]
    for fraction in p.fractions:
        for seed in p.seeds:
            idx = draw_chips(n, fraction, seed)
            train = training_pixels(chips, idx, p.pixel_limit, seed, p.data.scale)
            present = np.unique(train.labels)
            if not len(present):  # the drawn chips hold no labeled pixel
                scores = {m: math.nan for m in columns(chips)}
            else:
                model = (Constant(int(present[0])) if len(present) == 1
                         else bl.pixel_classifier(train, seed))  # fmt: skip
                pred = predict_split(model, chips, "test", p.data.scale)
                scores = segmentation_scores(chips.masks["test"], pred, chips.classes)
            rows.append({"method": method, "kind": "baseline", "budget": fraction, "seed": seed,
                         "train_units": len(idx), "select_units": 0, "step": 0,
                         "pixels": len(train.labels), **scores})  # fmt: skip
            say(f"baseline {method}  fraction {fraction:g}  seed {seed}: {said(scores)}")
    return rows


# -- report -------------------------------------------------------------------------------------
def seg_notes(p: SegProtocol, chips: SegChips) -> list[str]:
    sizes = ", ".join(f"{s} {len(ds)}" for s, ds in chips.datasets.items())  # type: ignore[arg-type]
    ignored = "none" if chips.ignore_index is None else str(chips.ignore_index)
    selection = ("kept at the best validation-split mIoU (`select units`: its chips), checked "
                 f"every {p.check_every} steps" if "val" in chips.datasets
                 else "no validation split: the last step's state is scored")  # fmt: skip
    return [
        f"Dataset: {p.data.class_path} at {p.data.root} (chips {sizes}; "
        f"{chips.image_size[0]}×{chips.image_size[1]} px, bands "
        f"{', '.join(chips.bands or ['unnamed'])}; classes {', '.join(chips.classes)}). Scores "
        f"on the test split, pooled over its labeled pixels (ignore index {ignored}; pixels with "
        f"a NaN band too): `miou` (mean of the classes' IoU), `pixel_accuracy`, `iou_<class>`; "
        f"mean ± sample std over seeds {p.seeds}.",
        "budget = fraction of the training chips, a seeded uniform draw (`train units`: chips). "
        f"Baseline: per-pixel multinomial logistic regression on the standardized bands, fitted "
        f"on at most {p.pixel_limit} drawn training pixels. Probes: a linear layer per patch "
        f"token predicting its patch's pixels, on the frozen tokens (`linear`) or with the "
        f"encoder trained too (`finetune`); optimizer steps "
        f"{', '.join(f'{k} {int(p.steps[k])}' for k in p.probes)}, {selection}.",
    ]


def evaluate_segmentation(p: SegProtocol, say: Say) -> dict[str, Any]:
    """Run the whole protocol; returns the files written."""
    check_seg_protocol(p)
    chips = read_chips(p, say)
    check_encoders_read_bands(p, chips)
    for source in p.encoders:
        if source != SCRATCH:
            say(f"{encoder_label(source)}: the dataset's bands {', '.join(chips.band_labels)}")
    rows = baseline_rows(p, chips, say)
    rows += encoder_rows(p, chips, chips.band_labels, seg_scorer(chips), IGNORED, said, say)
    return write_report(p, rows, columns(chips), ["pixels"], seg_notes(p, chips))
