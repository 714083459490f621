"""Flood-water segmentation on Sen1Floods11's hand-labeled chips (Bonafilia et al. 2020), read
from the folder its v1.1 release unpacks to (nothing is downloaded):

    ROOT/v1.1/data/flood_events/HandLabeled/S2Hand/<Event>_<id>_S2Hand.tif      13 bands (L1C,
                                                                          UInt16 TOA x 10000)
    ROOT/v1.1/data/flood_events/HandLabeled/S1Hand/<Event>_<id>_S1Hand.tif      VV, VH (Float32
                                                                          dB, NaN: no data)
    ROOT/v1.1/data/flood_events/HandLabeled/LabelHand/<Event>_<id>_LabelHand.tif  1 water, 0 not
                                                                                 water, -1 no data
    ROOT/v1.1/splits/flood_handlabeled/flood_{train,valid,test,bolivia}_data.csv

The split files are the release's: no header, one chip a line, ``<Event>_<id>_S1Hand.tif,
<Event>_<id>_LabelHand.tif``; the Sentinel-2 chip is the S1 name with ``S1Hand`` → ``S2Hand``.
``--data.sensor`` picks the chips read: ``s2`` (S2Hand) or ``s1`` (S1Hand). The Bolivia file is
the hold-out event (in none of the other three), scored when present.

The score is the water IoU pooled over every test pixel (and every Bolivia pixel), no-data
pixels (−1, and any pixel with a NaN band) ignored. Methods: a threshold baseline fitted for the
best water IoU on the drawn training pixels (:func:`~geomed_mim.evaluation.baselines.
fit_threshold`): ``NDWI > t`` on S2, ``VV < t`` on S1 (water is dark); and, per encoder, a
linear layer per patch token predicting its patch's pixels, on the frozen tokens (``linear``) or
with the encoder trained too (``finetune``), trained with cross-entropy (−1 ignored) and kept
at its best validation-split water IoU. A label fraction is a seeded uniform draw of the
training chips.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from geomed_mim.evaluation import baselines as bl
from geomed_mim.evaluation import scene_data as sd
from geomed_mim.evaluation.patch_probes import (  # noqa: F401 (Filled, PatchLinear: the probes')
    PATCH_PROBES,
    Filled,
    PatchLinear,
    PatchProtocol,
    Scorer,
    draw_chips,
    write_report,
)
from geomed_mim.evaluation.patch_probes import encoder_rows as patch_encoder_rows
from geomed_mim.evaluation.pixels import subsample
from geomed_mim.evaluation.scene_protocol import check_run_flags
from geomed_mim.usage import UsageError

CLASS_PATH = "geomed_mim.evaluation.floods.Sen1Floods11"
HAND = Path("v1.1/data/flood_events/HandLabeled")
SPLIT_DIR = Path("v1.1/splits/flood_handlabeled")
SPLIT_FILES = {"train": "flood_train_data.csv", "val": "flood_valid_data.csv",
               "test": "flood_test_data.csv"}  # fmt: skip
BOLIVIA_FILE = "flood_bolivia_data.csv"  # the hold-out event; optional
ALL_SPLIT_FILES = {**SPLIT_FILES, "bolivia": BOLIVIA_FILE}
SCORED = {"test": "iou_water", "bolivia": "bolivia_water_iou"}  # split → its metric column
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
            "B12")  # fmt: skip
S1_BANDS = ("VV", "VH")  # backscatter, dB


@dataclass(frozen=True)
class Sensor:
    """One ``--data.sensor``: its chips' folder (and file-name layer), bands, threshold
    baseline and the ``--data.scale`` its stored values take."""

    folder: str
    bands: tuple[str, ...]
    baseline: str
    scale: float


SENSORS = {
    "s2": Sensor("S2Hand", S2_BANDS, "ndwi", 1.0e-4),
    "s1": Sensor("S1Hand", S1_BANDS, "vv", 1.0),
}
BASELINE_BANDS = {"ndwi": bl.INDEX_BANDS["ndwi"], "vv": ("VV",)}
BASELINE_NAMES = {"ndwi": "NDWI > t (water)", "vv": "VV < t (water)"}
NODATA, WATER = -1, 1
FLOOD_PROBES = PATCH_PROBES
FLOOD_BASELINES = tuple(BASELINE_BANDS)
Say = Callable[[str], None]


def layout(folder: str) -> str:
    """The release's layout, for the messages."""
    return (f"ROOT/{HAND}/{folder}/<Event>_<id>_{folder}.tif, ROOT/{HAND}/LabelHand/"
            f"<Event>_<id>_LabelHand.tif and "
            f"ROOT/{SPLIT_DIR}/flood_{{train,valid,test}}_data.csv")  # fmt: skip


@dataclass
class FloodData:
    """Where the chips are (the ``--data.*`` flags)."""

    class_path: str = CLASS_PATH
    root: str = ""  # the folder holding v1.1/ (the only thing a user changes)
    sensor: str = "s2"  # s2: the S2Hand chips (13 L1C bands); s1: the S1Hand chips (VV, VH dB)
    scale: float = 1.0e-4  # stored value × scale = reflectance (S2Hand holds L1C DN); s1: 1.0
    batch_size: int = 8
    num_workers: int = 0


def split_pairs(root: Path, split: str, folder: str = "S2Hand") -> list[tuple[Path, Path]]:
    """(chip in ``folder``, label) paths of one split, from the release's split file."""
    pairs, name = [], ALL_SPLIT_FILES[split]
    with open(root / SPLIT_DIR / name, newline="") as f:
        for row in csv.reader(f):
            cells = [c.strip() for c in row if c.strip()]
            if not cells:
                continue
            if len(cells) < 2 or "S1Hand" not in cells[0] or "LabelHand" not in cells[1]:
                raise UsageError(f"--data.root {root}: {name} line {row} is not "
                                 "'<chip>_S1Hand.tif,<chip>_LabelHand.tif'")  # fmt: skip
            chip = root / HAND / folder / cells[0].replace("S1Hand", folder)
            pairs.append((chip, root / HAND / "LabelHand" / cells[1]))
    return pairs


class Sen1Floods11(Dataset):
    """One split's hand-labeled chips of one sensor: ``image`` [C, H, W] float32 (stored values;
    NaN where the chip has no data, as S1Hand marks it) and ``mask`` [H, W] int64 (1 water,
    0 not water, −1 no data: the label's, and every pixel with a NaN band)."""

    def __init__(self, root: str | Path, split: str = "train", sensor: str = "s2") -> None:
        self.root = Path(root)
        self.split = split
        self.sensor = SENSORS[sensor]
        self.bands = list(self.sensor.bands)
        folder = self.sensor.folder
        missing = [p for p in [HAND / folder, HAND / "LabelHand"]
                   + [SPLIT_DIR / f for f in SPLIT_FILES.values()]
                   if not (self.root / p).exists()]  # fmt: skip
        if missing:
            raise UsageError(f"--data.root {root}: not Sen1Floods11's layout (no {missing[0]}); "
                             f"give the folder holding v1.1/: {layout(folder)}")  # fmt: skip
        self.pairs = split_pairs(self.root, split, folder)
        absent = [p for pair in self.pairs for p in pair if not p.is_file()]
        if absent:
            gone = absent[0]
            raise UsageError(f"--data.root {root}: {ALL_SPLIT_FILES[split]} lists {gone.name}, "
                             f"which is not in {gone.parent}; give the whole release")  # fmt: skip

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        import rasterio

        chip, label = self.pairs[i]
        with rasterio.open(chip) as f:
            image = f.read().astype(np.float32)
        with rasterio.open(label) as f:
            mask = f.read(1).astype(np.int64)
        if image.shape[0] != len(self.bands) or image.shape[1:] != mask.shape:
            raise UsageError(f"--data.root {self.root}: {chip.name} holds {image.shape[0]} bands "
                             f"of {image.shape[1:]}, its label {mask.shape}; Sen1Floods11's "
                             f"{self.sensor.folder} chips have {len(self.bands)} bands the "
                             "label's size")  # fmt: skip
        mask[np.isnan(image).any(0)] = NODATA
        return {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask)}


@dataclass
class FloodProtocol(PatchProtocol):
    """Sen1Floods11's evaluation (the fields are the command's flags; see docs/evaluation.md)."""

    data: FloodData = field(default_factory=FloodData)
    baselines: list[str] = field(default_factory=lambda: ["ndwi"])  # s1: ["vv"]
    output: str = "runs/evaluate_sen1floods11"
    title: str = "Sen1Floods11 flood water"


def check_flood_protocol(p: FloodProtocol) -> None:
    """Every flag, before any work: a mistake is a :class:`UsageError` naming the flag."""
    sd.check_data_root(p.data.root, "Sen1Floods11's v1.1/")
    if p.pixel_limit < 1:
        raise UsageError(f"--pixel_limit {p.pixel_limit}: give a number of pixels >= 1")
    check_sensor_flags(p)
    check_run_flags(p, FLOOD_PROBES, FLOOD_PROBES, FLOOD_BASELINES)


def check_sensor_flags(p: FloodProtocol) -> None:
    """``--data.sensor`` and what depends on it: its baseline and its stored values' scale."""
    if p.data.sensor not in SENSORS:
        raise UsageError(f"--data.sensor {p.data.sensor}: use s2 (the S2Hand chips) or s1 (the "
                         "S1Hand chips)")  # fmt: skip
    sensor = SENSORS[p.data.sensor]
    for kind in p.baselines:
        if kind in BASELINE_BANDS and kind != sensor.baseline:
            raise UsageError(f"--baselines: {kind} reads {', '.join(BASELINE_BANDS[kind])}, not "
                             f"in the {sensor.folder} chips of --data.sensor {p.data.sensor}; "
                             f"use [{sensor.baseline}] or []")  # fmt: skip
    if p.data.sensor == "s1" and p.data.scale != sensor.scale:
        raise UsageError(f"--data.scale {p.data.scale}: S1Hand holds backscatter in dB, not "
                         "scaled reflectance; give --data.scale 1.0 with --data.sensor s1 (as "
                         "configs/evaluate/sen1floods11_s1.yaml does)")  # fmt: skip


@dataclass
class Chips:
    """The splits (train, val, test and, when its file is there, bolivia), read once: the
    sensor's baseline bands (stored values), the masks, and the training split's per-band mean
    and std (scaled, NaN left out); the encoders re-read the chips batch by batch, so the bands
    of every chip are never held at once."""

    datasets: dict[str, Sen1Floods11]
    baseline: dict[str, torch.Tensor]  # [N, bands, H, W] float32: B03, B08 (s2) or VV (s1)
    masks: dict[str, torch.Tensor]  # [N, H, W] int16
    band_mean: np.ndarray  # [C]
    band_std: np.ndarray

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.masks["train"].shape[-2:]
        return int(h), int(w)


def has_bolivia(root: str | Path) -> bool:
    return (Path(root) / SPLIT_DIR / BOLIVIA_FILE).is_file()


def read_chips(p: FloodProtocol, say: Say) -> Chips:
    sensor = SENSORS[p.data.sensor]
    splits = [*SPLIT_FILES, *(["bolivia"] if has_bolivia(p.data.root) else [])]
    if "bolivia" not in splits:
        say(f"no {SPLIT_DIR / BOLIVIA_FILE} under --data.root: the Bolivia hold-out is not scored")
    datasets = {s: Sen1Floods11(p.data.root, s, p.data.sensor) for s in splits}
    if len(datasets["train"]) == 0 or len(datasets["test"]) == 0:
        raise UsageError(f"--data.root {p.data.root}: the training or test split lists no chip")
    bands = [sensor.bands.index(b) for b in BASELINE_BANDS[sensor.baseline]]
    kept, masks = {}, {}
    total, squares, count = (np.zeros(len(sensor.bands)) for _ in range(3))
    for s, ds in datasets.items():
        x, y = [], []
        for i in range(len(ds)):
            item = ds[i]
            if y and item["mask"].shape != y[0].shape:
                raise UsageError(f"--data.root {p.data.root}: chips of several sizes "
                                 f"({tuple(y[0].shape)}, {tuple(item['mask'].shape)})")  # fmt: skip
            x.append(item["image"][bands])  # NaN pixels are no data: dropped from the pixels
            y.append(item["mask"].to(torch.int16))
            if s == "train":
                image = item["image"].double() * p.data.scale
                total += image.nansum(dim=(1, 2)).numpy()
                squares += (image**2).nansum(dim=(1, 2)).numpy()
                count += (~image.isnan()).sum(dim=(1, 2)).numpy()
        kept[s] = torch.stack(x) if x else torch.empty(0, len(bands), 0, 0)
        masks[s] = torch.stack(y) if y else torch.empty(0, 0, 0, dtype=torch.int16)
    count = np.maximum(count, 1)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return Chips(datasets, kept, masks, mean, np.where(std > 0, std, 1.0))


def water_iou(target: np.ndarray | torch.Tensor, water: np.ndarray | torch.Tensor) -> float:
    """IoU of the water class over the labeled pixels (target −1 ignored); NaN when neither
    the labels nor the prediction hold water."""
    target, water = np.asarray(target), np.asarray(water, dtype=bool)
    labeled = target != NODATA
    return bl.binary_scores(target[labeled] == WATER, water[labeled])[0]


def metrics(chips: Chips) -> list[str]:
    """The score columns: the test split's water IoU, and Bolivia's when it is there."""
    return [metric for split, metric in SCORED.items() if split in chips.datasets]


def said(scores: dict[str, float]) -> str:
    return "  ".join(f"{m} {scores[m]:.3f}" for m in SCORED.values() if m in scores)


def baseline_pixels(chips: Chips, split: str, rows: np.ndarray, scale: float) -> bl.Pixels:
    """The labeled pixels' baseline bands (B03, B08 reflectance; or VV dB), and labels."""
    x = chips.baseline[split][torch.as_tensor(rows)].double() * scale  # [N, bands, H, W]
    y = chips.masks[split][torch.as_tensor(rows)].reshape(-1).long()
    values = x.movedim(1, -1).reshape(-1, x.shape[1])
    keep = y != NODATA
    return bl.Pixels(values[keep].numpy(), y[keep].numpy())


def water_score(kind: str, values: np.ndarray) -> np.ndarray:
    """Per pixel, higher means water: NDWI, or −VV (calm water is dark in SAR)."""
    if kind == "vv":
        return -values[:, 0]
    return bl.normalized_difference(values, list(BASELINE_BANDS[kind]), kind)


def threshold_scores(kind: str, train: bl.Pixels, scored: dict[str, bl.Pixels]) -> dict:
    """The threshold with the best training water IoU (the baselines' :func:`fit_threshold`),
    each scored split's water IoU, and the threshold in the bands' units (NaN: no pixel)."""
    if not len(train.labels):  # the drawn chips are all no data: nothing to fit a threshold on
        return {**{m: math.nan for m in scored}, "threshold": math.nan}
    t = bl.fit_threshold(water_score(kind, train.values), train.labels == WATER)
    out = {m: bl.binary_scores(px.labels == WATER, water_score(kind, px.values) > t)[0]
           for m, px in scored.items()}  # fmt: skip
    return {**out, "threshold": -t if kind == "vv" else t}


def baseline_rows(p: FloodProtocol, chips: Chips, say: Say) -> list[dict[str, Any]]:
    """The sensor's threshold baseline (NDWI > t or VV < t), fitted on each fraction's drawn
    training chips, scored on the test split (and Bolivia's)."""
    rows: list[dict[str, Any]] = []
    kind = SENSORS[p.data.sensor].baseline
    if kind not in p.baselines:
        return rows
    n, name = len(chips.datasets["train"]), BASELINE_NAMES[kind]
    scored = {metric: baseline_pixels(chips, split, np.arange(len(chips.datasets[split])),
                                      p.data.scale)
              for split, metric in SCORED.items() if split in chips.datasets}  # fmt: skip
    for fraction in p.fractions:
        for seed in p.seeds:
            idx = draw_chips(n, fraction, seed)
            pixels = baseline_pixels(chips, "train", idx, p.data.scale)
            scores = threshold_scores(kind, subsample(pixels, p.pixel_limit, seed), scored)
            rows.append({"method": name, "kind": "baseline", "budget": fraction, "seed": seed,
                         "train_units": len(idx), "select_units": 0, "step": 0,
                         **scores})  # fmt: skip
            say(f"baseline {name}  fraction {fraction:g}  seed {seed}: {said(scores)}  "
                f"(t = {scores['threshold']:.3f})")  # fmt: skip
    return rows


def bolivia_note(p: FloodProtocol, chips: Chips) -> str:
    if "bolivia" not in chips.datasets:
        return (
            f"Bolivia hold-out: not scored, no {SPLIT_DIR / BOLIVIA_FILE} under "
            f"{p.data.root} (the v1.1 release ships it)."
        )
    return (
        f"Bolivia hold-out ({BOLIVIA_FILE}, {len(chips.datasets['bolivia'])} chips of an "
        "event in no other split): `bolivia_water_iou`, pooled like the test split's, by "
        "the same fitted threshold or trained probe."
    )


def flood_notes(p: FloodProtocol, chips: Chips) -> list[str]:
    sizes = ", ".join(f"{s} {len(ds)}" for s, ds in chips.datasets.items())
    sensor = SENSORS[p.data.sensor]
    return [
        f"Dataset: Sen1Floods11 hand-labeled {sensor.folder} chips at {p.data.root} (chips "
        f"{sizes}; {chips.image_size[0]}×{chips.image_size[1]} px, bands "
        f"{', '.join(sensor.bands)}). Score: water IoU (`iou_water`) pooled over the test "
        f"split's pixels, no-data (−1, or a NaN band) ignored; mean ± sample std over seeds "
        f"{p.seeds}.",
        bolivia_note(p, chips),
        "budget = fraction of the training chips, a seeded uniform draw (`train units`: chips). "
        f"{BASELINE_NAMES[sensor.baseline].removesuffix(' (water)')}: the threshold with the "
        f"best water IoU on the drawn training pixels (at most "
        f"{p.pixel_limit}). Probes: a linear layer per patch token predicting its patch's "
        f"pixels, on the frozen tokens (`linear`) or with the encoder trained too (`finetune`); "
        f"optimizer steps {', '.join(f'{k} {int(p.steps[k])}' for k in p.probes)}, kept at the "
        f"best validation-split water IoU (`select units`: its chips), checked every "
        f"{p.check_every} steps.",
    ]


def flood_scorer(chips: Chips) -> Scorer:
    """The water IoU of the test split (and Bolivia's); the validation split's selects."""

    def score(split: str, pred: torch.Tensor) -> dict[str, float]:
        return {SCORED[split]: water_iou(chips.masks[split].numpy(), (pred == WATER).numpy())}

    def select(pred: torch.Tensor) -> float:
        return water_iou(chips.masks["val"].numpy(), (pred == WATER).numpy())

    scored = [split for split in SCORED if split in chips.datasets]
    return Scorer(2, scored, metrics(chips), score, select)


def encoder_rows(p: FloodProtocol, chips: Chips, say: Say) -> list[dict[str, Any]]:
    """Every encoder × seed × fraction × probe: the linear probe on its frozen patch tokens
    and the fine-tuned encoder with that head, kept at the best validation water IoU, scored
    on the test split (and Bolivia's)."""
    bands = SENSORS[p.data.sensor].bands
    return patch_encoder_rows(p, chips, bands, flood_scorer(chips), NODATA, said, say)


def evaluate_floods(p: FloodProtocol, say: Say) -> dict[str, Path]:
    """Run the whole protocol; returns the files written."""
    check_flood_protocol(p)
    chips = read_chips(p, say)
    rows = baseline_rows(p, chips, say) + encoder_rows(p, chips, say)
    return write_report(p, rows, metrics(chips), ["threshold"], flood_notes(p, chips))
