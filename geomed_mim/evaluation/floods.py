"""Flood-water segmentation on Sen1Floods11's hand-labeled chips (Bonafilia et al. 2020), read
from the folder its v1.1 release unpacks to (nothing is downloaded):

    ROOT/v1.1/data/flood_events/HandLabeled/S2Hand/<Event>_<id>_S2Hand.tif      13 bands (L1C,
                                                                          UInt16 TOA x 10000)
    ROOT/v1.1/data/flood_events/HandLabeled/LabelHand/<Event>_<id>_LabelHand.tif  1 water, 0 not
                                                                                 water, -1 no data
    ROOT/v1.1/splits/flood_handlabeled/flood_{train,valid,test}_data.csv

The split files are the release's: no header, one chip a line, ``<Event>_<id>_S1Hand.tif,
<Event>_<id>_LabelHand.tif``; the Sentinel-2 chip is the S1 name with ``S1Hand`` → ``S2Hand``.

The score is the water IoU pooled over every test pixel, no-data pixels (−1) ignored. Methods:
``NDWI > t`` (the threshold with the best water IoU on the drawn training pixels, the baselines'
:func:`~geomed_mim.evaluation.baselines.spectral_index`) and, per encoder, a linear layer per
patch token predicting its patch's pixels, on the frozen tokens (``linear``) or with the
encoder trained too (``finetune``), trained with cross-entropy (−1 ignored) and kept at its best
validation-split water IoU. A label fraction is
a seeded uniform draw of the training chips.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from geomed_mim.evaluation import baselines as bl
from geomed_mim.evaluation import scene_data as sd
from geomed_mim.evaluation.deep import SCRATCH
from geomed_mim.evaluation.pixels import subsample
from geomed_mim.evaluation.probes import train_steps
from geomed_mim.evaluation.protocol import check_vit_encoder, encoder_label
from geomed_mim.evaluation.report import write_config, write_csv, write_markdown, write_plot
from geomed_mim.evaluation.scene_protocol import build_encoder, check_run_flags, device_for
from geomed_mim.usage import UsageError

CLASS_PATH = "geomed_mim.evaluation.floods.Sen1Floods11"
HAND = Path("v1.1/data/flood_events/HandLabeled")
SPLIT_DIR = Path("v1.1/splits/flood_handlabeled")
SPLIT_FILES = {"train": "flood_train_data.csv", "val": "flood_valid_data.csv",
               "test": "flood_test_data.csv"}  # fmt: skip
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
            "B12")  # fmt: skip
NODATA, WATER = -1, 1
IGNORE = -100  # cross-entropy's ignore index (the no-data pixels)
FLOOD_PROBES = ("linear", "finetune")
FLOOD_BASELINES = ("ndwi",)
METRICS = ["iou_water"]
LAYOUT = (
    f"ROOT/{HAND}/S2Hand/<Event>_<id>_S2Hand.tif, ROOT/{HAND}/LabelHand/"
    f"<Event>_<id>_LabelHand.tif and ROOT/{SPLIT_DIR}/flood_{{train,valid,test}}_data.csv"
)
Say = Callable[[str], None]


@dataclass
class FloodData:
    """Where the chips are (the ``--data.*`` flags)."""

    class_path: str = CLASS_PATH
    root: str = ""  # the folder holding v1.1/ (the only thing a user changes)
    scale: float = 1.0e-4  # stored value × scale = reflectance (S2Hand holds L1C DN)
    batch_size: int = 8
    num_workers: int = 0


def split_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(S2 chip, label) paths of one split, from the release's split file."""
    pairs = []
    with open(root / SPLIT_DIR / SPLIT_FILES[split], newline="") as f:
        for row in csv.reader(f):
            cells = [c.strip() for c in row if c.strip()]
            if not cells:
                continue
            if len(cells) < 2 or "S1Hand" not in cells[0] or "LabelHand" not in cells[1]:
                raise UsageError(f"--data.root {root}: {SPLIT_FILES[split]} line {row} is not "
                                 "'<chip>_S1Hand.tif,<chip>_LabelHand.tif'")  # fmt: skip
            s2 = root / HAND / "S2Hand" / cells[0].replace("S1Hand", "S2Hand")
            pairs.append((s2, root / HAND / "LabelHand" / cells[1]))
    return pairs


class Sen1Floods11(Dataset):
    """One split's hand-labeled chips: ``image`` [13, H, W] float32 (stored values) and
    ``mask`` [H, W] int64 (1 water, 0 not water, −1 no data)."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.root = Path(root)
        self.split = split
        self.bands = list(S2_BANDS)
        missing = [p for p in [HAND / "S2Hand", HAND / "LabelHand"]
                   + [SPLIT_DIR / f for f in SPLIT_FILES.values()]
                   if not (self.root / p).exists()]  # fmt: skip
        if missing:
            raise UsageError(f"--data.root {root}: not Sen1Floods11's layout (no {missing[0]}); "
                             f"give the folder holding v1.1/: {LAYOUT}")  # fmt: skip
        self.pairs = split_pairs(self.root, split)
        absent = [p for pair in self.pairs for p in pair if not p.is_file()]
        if absent:
            gone = absent[0]
            raise UsageError(f"--data.root {root}: {SPLIT_FILES[split]} lists {gone.name}, "
                             f"which is not in {gone.parent}; give the whole release")  # fmt: skip

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        import rasterio

        s2, label = self.pairs[i]
        with rasterio.open(s2) as f:
            image = np.nan_to_num(f.read().astype(np.float32))
        with rasterio.open(label) as f:
            mask = f.read(1).astype(np.int64)
        if image.shape[0] != len(S2_BANDS) or image.shape[1:] != mask.shape:
            raise UsageError(f"--data.root {self.root}: {s2.name} holds {image.shape[0]} bands of "
                             f"{image.shape[1:]}, its label {mask.shape}; Sen1Floods11's S2Hand "
                             "chips have 13 bands the label's size")  # fmt: skip
        return {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask)}


@dataclass
class FloodProtocol:
    """Sen1Floods11's evaluation (the fields are the command's flags; see docs/evaluation.md)."""

    data: FloodData = field(default_factory=FloodData)
    encoders: list[str] = field(default_factory=lambda: [SCRATCH])
    probes: list[str] = field(default_factory=lambda: list(FLOOD_PROBES))
    fractions: list[float] = field(default_factory=lambda: [0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: dict[str, int] = field(default_factory=lambda: {"linear": 500, "finetune": 500})
    lr: dict[str, float] = field(default_factory=lambda: {"linear": 1e-3, "finetune": 1e-4})
    check_every: int = 50
    task: dict[str, Any] = field(default_factory=dict)  # {encoder: scratch architecture}
    baselines: list[str] = field(default_factory=lambda: list(FLOOD_BASELINES))
    pixel_limit: int = 2_000_000  # training pixels the NDWI threshold is fitted on, at most
    output: str = "runs/evaluate_sen1floods11"
    title: str = "Sen1Floods11 flood water"
    accelerator: str = "auto"


def check_flood_protocol(p: FloodProtocol) -> None:
    """Every flag, before any work: a mistake is a :class:`UsageError` naming the flag."""
    if not p.data.root:
        raise UsageError("--data.root is not set: give the folder holding Sen1Floods11's v1.1/ "
                         "(nothing is downloaded)")  # fmt: skip
    if not Path(p.data.root).is_dir():
        raise UsageError(f"--data.root {p.data.root}: no such folder; give the folder holding "
                         "Sen1Floods11's v1.1/")  # fmt: skip
    if p.pixel_limit < 1:
        raise UsageError(f"--pixel_limit {p.pixel_limit}: give a number of pixels >= 1")
    check_run_flags(p, FLOOD_PROBES, FLOOD_PROBES, FLOOD_BASELINES)
    for source in p.encoders:
        if source != SCRATCH:  # the per-patch pixel head reads a ViT's patch grid
            check_vit_encoder(source)


def draw_chips(n: int, fraction: float, seed: int) -> np.ndarray:
    """``round(fraction × n)`` chip indices (at least one), a seeded uniform draw; all at 1."""
    if fraction >= 1:
        return np.arange(n)
    k = max(1, round(fraction * n))
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


@dataclass
class Chips:
    """The three splits, read once: the NDWI bands (B03, B08; stored values), the masks, and
    the training split's per-band mean and std (reflectance); the encoders re-read the chips
    batch by batch, so the 13 bands of every chip are never held at once."""

    datasets: dict[str, Sen1Floods11]
    ndwi: dict[str, torch.Tensor]  # [N, 2, H, W] float32
    masks: dict[str, torch.Tensor]  # [N, H, W] int16
    band_mean: np.ndarray  # [13]
    band_std: np.ndarray

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.masks["train"].shape[-2:]
        return int(h), int(w)


def read_chips(p: FloodProtocol) -> Chips:
    datasets = {s: Sen1Floods11(p.data.root, s) for s in SPLIT_FILES}
    if len(datasets["train"]) == 0 or len(datasets["test"]) == 0:
        raise UsageError(f"--data.root {p.data.root}: the training or test split lists no chip")
    bands = [S2_BANDS.index(b) for b in bl.INDEX_BANDS["ndwi"]]
    ndwi, masks = {}, {}
    total, squares, count = np.zeros(len(S2_BANDS)), np.zeros(len(S2_BANDS)), 0
    for s, ds in datasets.items():
        x, y = [], []
        for i in range(len(ds)):
            item = ds[i]
            if y and item["mask"].shape != y[0].shape:
                raise UsageError(f"--data.root {p.data.root}: chips of several sizes "
                                 f"({tuple(y[0].shape)}, {tuple(item['mask'].shape)})")  # fmt: skip
            x.append(item["image"][bands])
            y.append(item["mask"].to(torch.int16))
            if s == "train":
                image = item["image"].double() * p.data.scale
                total += image.sum(dim=(1, 2)).numpy()
                squares += (image**2).sum(dim=(1, 2)).numpy()
                count += image[0].numel()
        ndwi[s] = torch.stack(x) if x else torch.empty(0, 2, 0, 0)
        masks[s] = torch.stack(y) if y else torch.empty(0, 0, 0, dtype=torch.int16)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return Chips(datasets, ndwi, masks, mean, np.where(std > 0, std, 1.0))


def water_iou(target: np.ndarray | torch.Tensor, water: np.ndarray | torch.Tensor) -> float:
    """IoU of the water class over the labeled pixels (target −1 ignored); NaN when neither
    the labels nor the prediction hold water."""
    target, water = np.asarray(target), np.asarray(water, dtype=bool)
    labeled = target != NODATA
    return bl.binary_scores(target[labeled] == WATER, water[labeled])[0]


def ndwi_pixels(chips: Chips, split: str, rows: np.ndarray, scale: float) -> bl.Pixels:
    """The labeled pixels' green (B03) and NIR (B08) reflectance, and labels."""
    x = chips.ndwi[split][torch.as_tensor(rows)].double() * scale  # [N, 2, H, W]
    y = chips.masks[split][torch.as_tensor(rows)].reshape(-1).long()
    values = x.movedim(1, -1).reshape(-1, 2)
    keep = y != NODATA
    return bl.Pixels(values[keep].numpy(), y[keep].numpy())


def baseline_rows(p: FloodProtocol, chips: Chips, say: Say) -> list[dict[str, Any]]:
    """NDWI > t, fitted on each fraction's drawn training chips, scored on the test split."""
    rows: list[dict[str, Any]] = []
    if "ndwi" not in p.baselines:
        return rows
    n = len(chips.datasets["train"])
    test = ndwi_pixels(chips, "test", np.arange(len(chips.datasets["test"])), p.data.scale)
    bands = list(bl.INDEX_BANDS["ndwi"])
    for fraction in p.fractions:
        for seed in p.seeds:
            idx = draw_chips(n, fraction, seed)
            train = subsample(ndwi_pixels(chips, "train", idx, p.data.scale), p.pixel_limit, seed)
            if len(train.labels):
                scores = bl.spectral_index(train, test, bands, "ndwi", WATER, "water")
            else:  # the drawn chips are all no data: nothing to fit a threshold on
                scores = {"iou_water": math.nan, "dice_water": math.nan, "threshold": math.nan}
            rows.append({"method": "NDWI > t (water)", "kind": "baseline", "budget": fraction,
                         "seed": seed, "train_units": len(idx), "select_units": 0, "step": 0,
                         **scores})  # fmt: skip
            iou, t = scores["iou_water"], scores["threshold"]
            say(f"baseline NDWI > t  fraction {fraction:g}  seed {seed}: "
                f"iou_water {iou:.3f}  (t = {t:.3f})")  # fmt: skip
    return rows


class PatchLinear(nn.Module):
    """A linear layer per patch token [B, L, D] → logits [B, 2, H, W] of its patch's pixels."""

    def __init__(self, dim: int, patch: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, 2 * patch * patch)
        self.patch, self.grid = patch, grid

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, (gh, gw), pp = tokens.shape[0], self.grid, self.patch
        x = self.linear(self.norm(tokens.float()))  # [B, L, 2 p p]
        x = x.view(b, gh, gw, 2, pp, pp).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, 2, gh * pp, gw * pp)


class FineTuned(nn.Module):
    """The encoder, trainable, with the patch-token linear head."""

    def __init__(self, encoder: nn.Module, head: PatchLinear) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[:, 1:])


@dataclass
class Encoded:
    """One encoder ready for the chips: model, normalisation, frozen tokens, patch grid."""

    encoder: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    tokens: dict[str, torch.Tensor]  # split → [N, L, D] float16
    patch: int
    grid: tuple[int, int]


def encode(p: FloodProtocol, source: str, chips: Chips, seed: int, device, say: Say) -> Encoded:
    stats = SimpleNamespace(band_mean=chips.band_mean, band_std=chips.band_std)
    view = SimpleNamespace(stats={"train": stats}, bands=list(S2_BANDS),
                           image_size=chips.image_size)  # fmt: skip
    enc, m, s = build_encoder(p, source, view, seed, say)  # type: ignore[arg-type]
    enc = enc.to(device)
    mean = torch.tensor(m, dtype=torch.float32, device=device)
    std = torch.tensor(s, dtype=torch.float32, device=device)
    tokens = {}
    if "linear" in p.probes:
        tokens = {sp: sd.patch_tokens(enc, ds, p.data, mean, std, device)  # type: ignore[arg-type]
                  for sp, ds in chips.datasets.items()}  # fmt: skip
    patch = int(enc.patch_size[0])
    grid = (chips.image_size[0] // patch, chips.image_size[1] // patch)
    return Encoded(enc, mean, std, tokens, patch, grid)


def encoder_rows(p: FloodProtocol, chips: Chips, say: Say) -> list[dict[str, Any]]:
    """Every encoder × seed × fraction × probe: the linear probe on its frozen patch tokens
    and the fine-tuned encoder with that head, kept at the best validation water IoU, scored
    on the test split."""
    rows: list[dict[str, Any]] = []
    if not p.encoders:
        return rows
    device = device_for(p.accelerator)
    masks = {s: m.long() for s, m in chips.masks.items()}
    for m in masks.values():
        m[m == NODATA] = IGNORE
    for source in p.encoders:
        label, cached = encoder_label(source), None
        for seed in p.seeds:
            if source == SCRATCH or cached is None:
                cached = encode(p, source, chips, seed, device, say)
            for fraction in p.fractions:
                idx = draw_chips(len(chips.datasets["train"]), fraction, seed)
                for probe in p.probes:
                    start = time.perf_counter()
                    scores, step = probe_once(p, probe, cached, masks, chips, idx, seed, device)
                    rows.append({"method": f"{label} / {probe}", "kind": probe,
                                 "budget": fraction, "seed": seed, "train_units": len(idx),
                                 "select_units": len(chips.datasets["val"]), "step": step,
                                 **scores})  # fmt: skip
                    say(f"{label} / {probe}  fraction {fraction:g}  seed {seed}: iou_water "
                        f"{scores['iou_water']:.3f}  step {step}  "
                        f"({time.perf_counter() - start:.1f} s)")  # fmt: skip
    return rows


def probe_once(p, probe, enc: Encoded, masks, chips, idx, seed, device):
    """Train ``probe`` on the drawn chips (those with a labeled pixel); (test scores, kept
    step), NaN where no drawn chip has a labeled pixel."""
    idx = idx[(masks["train"][idx] != IGNORE).flatten(1).any(1).numpy()]
    if not len(idx):  # the drawn chips are all no data: nothing to train on
        return {"iou_water": math.nan}, 0
    torch.manual_seed(seed)
    bs = p.data.batch_size
    head = PatchLinear(enc.encoder.embed_dim, enc.patch, enc.grid)
    y_train = masks["train"][idx]
    if probe == "finetune":
        model: nn.Module = FineTuned(copy.deepcopy(enc.encoder), head).to(device)

        def inputs(split: str, rows) -> torch.Tensor:
            ds = chips.datasets[split]
            x = torch.stack([ds[int(i)]["image"] for i in rows]).to(device)
            return sd.normalise(x, p.data, enc.mean, enc.std)  # type: ignore[arg-type]
    else:
        model = head.to(device)

        def inputs(split: str, rows) -> torch.Tensor:
            return enc.tokens[split][torch.as_tensor(rows)].float().to(device)

    def batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.randint(len(idx), (min(bs, len(idx)),), generator=g)
        return inputs("train", idx[pick.numpy()]), y_train[pick].to(device)

    @torch.no_grad()
    def score(split: str) -> float:
        model.eval()
        n = len(chips.datasets[split])
        water = torch.cat([model(inputs(split, range(i, min(i + bs, n)))).argmax(1).cpu()
                           for i in range(0, n, bs)])  # fmt: skip
        return water_iou(chips.masks[split].numpy(), (water == WATER).numpy())

    select = (lambda: score("val")) if len(chips.datasets["val"]) else None
    decay = 0.05 if probe == "finetune" else 0.0
    trained = train_steps(model, batch, int(p.steps[probe]), p.check_every, float(p.lr[probe]),
                          seed, select, weight_decay=decay)  # fmt: skip
    return {"iou_water": score("test")}, trained.step


def flood_notes(p: FloodProtocol, chips: Chips) -> list[str]:
    sizes = ", ".join(f"{s} {len(ds)}" for s, ds in chips.datasets.items())
    return [
        f"Dataset: Sen1Floods11 hand-labeled S2 chips at {p.data.root} (chips {sizes}; "
        f"{chips.image_size[0]}×{chips.image_size[1]} px, 13 bands). Score: water IoU pooled "
        f"over the test split's pixels, no-data (−1) ignored; mean ± sample std over seeds "
        f"{p.seeds}.",
        "budget = fraction of the training chips, a seeded uniform draw (`train units`: chips). "
        f"NDWI > t: the threshold with the best water IoU on the drawn training pixels (at most "
        f"{p.pixel_limit}). Probes: a linear layer per patch token predicting its patch's "
        f"pixels, on the frozen tokens (`linear`) or with the encoder trained too (`finetune`); "
        f"optimizer steps {', '.join(f'{k} {int(p.steps[k])}' for k in p.probes)}, kept at the "
        f"best validation-split water IoU (`select units`: its chips), checked every "
        f"{p.check_every} steps.",
    ]


def evaluate_floods(p: FloodProtocol, say: Say) -> dict[str, Path]:
    """Run the whole protocol; returns the files written."""
    check_flood_protocol(p)
    chips = read_chips(p)
    rows = baseline_rows(p, chips, say) + encoder_rows(p, chips, say)
    out = Path(p.output)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "results.csv", "markdown": out / "results.md",
             "plot": out / "score_vs_budget.png", "config": out / "config.yaml"}  # fmt: skip
    write_csv(rows, [*METRICS, "threshold"], files["csv"])
    write_markdown(rows, METRICS, p.title, flood_notes(p, chips), files["markdown"])
    write_plot(rows, METRICS, p.title, files["plot"], "label fraction (of the training chips)")
    write_config(dataclasses.asdict(p), files["config"])
    return files
