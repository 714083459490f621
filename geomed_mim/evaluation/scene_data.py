"""Scene-classification data for the evaluation: a torchgeo dataset users already have on disk
(``download=False``), its bands matched to an encoder's by name, normalised by the encoder's
recorded statistics, and label fractions drawn from the training split.

The images are read through torchgeo's own class (e.g. :class:`torchgeo.datasets.EuroSAT` with
its standard ``train``/``val``/``test`` split files), so the on-disk layout is torchgeo's.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_pipelines.rs.profiles import normalize_band_token
from geomed_mim.usage import UsageError

SPLITS = ("train", "val", "test")


@dataclass
class SceneData:
    """Which dataset to read (the ``--data.*`` flags)."""

    class_path: str = "torchgeo.datasets.EuroSAT"
    root: str = ""  # the folder torchgeo's class reads (the only thing a user changes)
    bands: list[str] | None = None  # a subset of the class's band names; None: all
    scale: float = 1.0e-4  # stored value × scale = the encoders' units (Sentinel-2: DN/10000)
    batch_size: int = 64
    num_workers: int = 0
    init_args: dict[str, Any] = field(default_factory=dict)  # more arguments of the class


def check_data_root(root: str, holding: str) -> Path:
    """``--data.root`` set and a folder (``~`` expanded); a mistake is one line saying it must
    hold ``holding``. Nothing is ever downloaded."""
    if not root:
        raise UsageError(f"--data.root is not set: give the folder holding {holding} "
                         "(nothing is downloaded)")  # fmt: skip
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise UsageError(f"--data.root {root}: no such folder; give the folder holding {holding}")
    return folder


def dataset_class(
    data: Any, kind: str = "classification dataset, e.g. torchgeo.datasets.EuroSAT"
) -> type:
    """The torchgeo class ``data.class_path`` names; ``kind``: what to give instead."""
    module, _, name = data.class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise UsageError(
            f"--data.class_path {data.class_path}: no such class; give a torchgeo {kind}"
        ) from None
    return cls


def open_split(
    data: Any, split: str, layout: str = "for EuroSAT: ds/... and eurosat-train.txt"
) -> Dataset:
    """One standard split of the dataset, read from ``data.root`` (never downloaded);
    ``layout``: an example of what the folder holds, for the message."""
    from torchgeo.datasets import DatasetNotFoundError

    cls = dataset_class(data)
    args: dict[str, Any] = {"root": data.root, "split": split, "download": False}
    if data.bands is not None:
        args["bands"] = list(data.bands)
    args.update(data.init_args)
    try:
        return cls(**args)
    except DatasetNotFoundError:
        raise UsageError(
            f"--data.root {data.root}: no {cls.__name__} there; give the folder holding its "
            f"files as torchgeo lays them out ({layout})"
        ) from None
    except ValueError as e:  # torchgeo's refusal of a band name
        raise UsageError(f"--data.bands {data.bands}: {e}") from None
    except (TypeError, AssertionError) as e:  # an argument the class does not take
        flag = "--data.bands" if data.bands is not None else "--data.init_args"
        value = data.bands if data.bands is not None else data.init_args
        why = str(e) or "an invalid value"
        raise UsageError(f"{flag} {value}: {cls.__name__} refuses it ({why}); give the "
                         "arguments its torchgeo documentation lists") from None  # fmt: skip


# datasets whose ``bands`` argument names a band set, not bands: the bands each set yields, in
# the order the class stacks them (BigEarthNet sorts its band files with B8A as B08A)
BAND_SETS = {
    "BigEarthNet": {
        "s2": ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
    },
}


def band_names(dataset: Dataset) -> list[str]:
    """The bands the dataset yields, in order."""
    bands = getattr(dataset, "bands", None) or getattr(dataset, "all_band_names", None)
    if isinstance(bands, str):
        sets = BAND_SETS.get(type(dataset).__name__, {})
        if bands not in sets:
            raise UsageError(f"--data.init_args.bands {bands}: not supported for "
                             f"{type(dataset).__name__}; use one of {sorted(sets)}")  # fmt: skip
        bands = sets[bands]
    if not bands:
        raise UsageError("--data.class_path: the dataset names no bands; use one that does")
    return [str(b) for b in bands]


def class_names(dataset: Dataset) -> list[str]:
    """The class names in label order (BigEarthNet: its nomenclature of ``num_classes``)."""
    names = getattr(dataset, "classes", None)
    if names is None and hasattr(dataset, "class_sets"):
        names = dataset.class_sets[dataset.num_classes]
    return [str(c) for c in names or []]


def draw_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of ``fraction`` of the training images, drawn per class (stratified, seeded):
    ``round(fraction × n_c)`` of class c, at least one; all of them at fraction 1. Multi-label
    ``labels`` [N, K]: ``round(fraction × N)`` images (at least one) drawn uniformly, since an
    image belongs to several classes."""
    rng = np.random.default_rng(seed)
    if labels.ndim == 2:
        n = len(labels) if fraction >= 1 else max(1, round(fraction * len(labels)))
        return np.sort(rng.choice(len(labels), n, replace=False))
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = len(members) if fraction >= 1 else max(1, round(fraction * len(members)))
        picked.append(rng.choice(members, n, replace=False))
    return np.sort(np.concatenate(picked))


def same_band(a: str, b: str) -> bool:
    """``B08A``, ``B8A`` and ``b8a`` are one band (as the sensor profiles spell them)."""
    return normalize_band_token(a) == normalize_band_token(b)


def recorded_statistics(
    bands: Sequence[str], recorded: dict[str, Any], fallback: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(mean, std, bands taken from the fallback) per dataset band: the encoder's recorded
    ``mean``/``std`` of the band of that name, else ``fallback`` (the training split's)."""
    names = list(recorded.get("bands") or [])
    rec_mean, rec_std = recorded.get("mean") or [], recorded.get("std") or []
    mean, std = fallback[0].copy(), fallback[1].copy()
    missing = []
    for j, band in enumerate(bands):
        i = next((i for i, n in enumerate(names) if same_band(n, band)), None)
        if i is None or i >= len(rec_mean) or i >= len(rec_std):
            missing.append(band)
        else:
            mean[j], std[j] = float(rec_mean[i]), float(rec_std[i])
    return mean, std, missing


def loader(dataset: Dataset, data: SceneData, shuffle: bool = False, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=data.batch_size, shuffle=shuffle,
                      num_workers=data.num_workers, generator=generator)  # fmt: skip


@dataclass
class ImageStatistics:
    """Per image: band means and standard deviations (the feature baseline's input), and the
    split's per-band mean and std (the normalisation of bands no encoder records)."""

    per_image: np.ndarray  # [N, 2C]: C means, then C stds, in the encoders' units
    labels: np.ndarray  # [N] class ids, or [N, K] multi-hot (multi-label datasets)
    band_mean: np.ndarray  # [C]
    band_std: np.ndarray  # [C]


def image_statistics(dataset: Dataset, data: SceneData) -> ImageStatistics:
    """One pass over ``dataset`` (float64 sums, so large splits stay exact enough)."""
    rows, labels = [], []
    for batch in loader(dataset, data):
        x = batch["image"].double() * data.scale  # [B, C, H, W]
        rows.append(torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3), correction=0)], dim=1))
        labels.append(batch["label"].long())
    per_image = torch.cat(rows).numpy()
    c = per_image.shape[1] // 2
    means = per_image[:, :c]
    # the split's variance from per-image means and variances (equal image sizes)
    variance = (per_image[:, c:] ** 2).mean(0) + means.var(0)
    return ImageStatistics(per_image, torch.cat(labels).numpy(), means.mean(0), np.sqrt(variance))


def normalise(images: torch.Tensor, data: SceneData, mean: torch.Tensor, std: torch.Tensor):
    """Stored values [B, C, H, W] → the encoder's normalised input."""
    x = images.float() * data.scale
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1).clamp_min(1e-6)


class PatchTokens(torch.nn.Module):
    """An encoder seen as its last layer's patch tokens [B, L, D], whatever its family: a ViT's
    tokens without the class token, or a Swin V2's normed last-stage map, flattened (timm's
    ``forward_features``; pooling it is timm's classifier input)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.is_swin = hasattr(encoder, "forward_stage_maps")  # SwinV2Encoder
        self.embed_dim = int(encoder.num_features if self.is_swin else encoder.embed_dim)
        # pixels between neighbouring tokens: the patch, or the patch × the Swin merges
        self.stride = int(encoder.encoder_stride if self.is_swin else encoder.patch_size[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_swin:
            return self.encoder.forward_features(x).flatten(1, 2)  # [B, H'W', C']
        return self.encoder(x)[:, 1:]  # [B, L, D]


@torch.no_grad()
def patch_tokens(
    encoder: torch.nn.Module,
    dataset: Dataset,
    data: SceneData,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """The frozen encoder's normed patch tokens [N, L, D] (:class:`PatchTokens`) of every image,
    kept in float16 on the CPU (the attentive probe reads them; pooling is their mean)."""
    tokens_of = encoder if isinstance(encoder, PatchTokens) else PatchTokens(encoder)
    tokens_of.eval()
    out = []
    for batch in loader(dataset, data):
        x = normalise(batch["image"], data, mean, std).to(device)
        out.append(tokens_of(x).to("cpu", torch.float16))
    return torch.cat(out)
