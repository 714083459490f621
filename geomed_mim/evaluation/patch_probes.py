"""Segmentation probes on a ViT's patch tokens, shared by the chip-segmentation protocols
(Sen1Floods11's flood water, :mod:`~geomed_mim.evaluation.floods`; any torchgeo segmentation
dataset, :mod:`~geomed_mim.evaluation.tgseg`).

A :class:`PatchLinear` head turns each patch token into its patch's K-class pixel logits; the
``linear`` probe trains it on the frozen tokens, ``finetune`` trains the encoder with it. Both
take optimizer steps with cross-entropy (ignored pixels left out) on a seeded draw of the
training chips and keep the state of the best validation-split score. What a score is (water
IoU, mIoU) is the protocol's :class:`Scorer`; this module knows chips, tokens and training.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from geomed_mim.evaluation import scene_data as sd
from geomed_mim.evaluation.deep import SCRATCH
from geomed_mim.evaluation.probes import train_steps
from geomed_mim.evaluation.report import write_config, write_csv, write_markdown, write_plot
from geomed_mim.evaluation.scene_protocol import build_encoder, device_for, probe_rows

IGNORE = -100  # cross-entropy's ignore index (the ignored pixels)
PATCH_PROBES = ("linear", "finetune")
Say = Callable[[str], None]


@dataclass
class PatchProtocol:
    """The flags every patch-probe protocol shares (its ``data``, ``baselines``, ``output`` and
    ``title`` are its own); see docs/evaluation.md."""

    data: Any = None
    encoders: list[str] = field(default_factory=lambda: [SCRATCH])
    probes: list[str] = field(default_factory=lambda: list(PATCH_PROBES))
    fractions: list[float] = field(default_factory=lambda: [0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: dict[str, int] = field(default_factory=lambda: {"linear": 500, "finetune": 500})
    lr: dict[str, float] = field(default_factory=lambda: {"linear": 1e-3, "finetune": 1e-4})
    check_every: int = 50
    task: dict[str, Any] = field(default_factory=dict)  # {encoder: scratch architecture}
    baselines: list[str] = field(default_factory=list)
    pixel_limit: int = 2_000_000  # training pixels a baseline is fitted on, at most
    output: str = "runs/evaluate"
    title: str = "segmentation"
    accelerator: str = "auto"


class ChipSplits(Protocol):
    """What the probes read of a protocol's chips: the splits' datasets (``image`` [C, H, W],
    stored values), their masks [N, H, W] (ignored pixels at the protocol's ignore value), the
    training split's per-band mean and std (scaled) and the chips' size."""

    datasets: dict[str, Any]
    masks: dict[str, torch.Tensor]
    band_mean: np.ndarray
    band_std: np.ndarray

    @property
    def image_size(self) -> tuple[int, int]: ...


@dataclass
class Scorer:
    """How a protocol scores a split's predicted class ids [N, H, W]: ``score(split, pred)``
    gives its columns for every split in ``scored``; ``select(pred)`` the validation number
    that keeps a probe's state (higher is better)."""

    num_classes: int
    scored: list[str]
    columns: list[str]
    score: Callable[[str, torch.Tensor], dict[str, float]]
    select: Callable[[torch.Tensor], float]

    def scores(self, predict: Callable[[str], torch.Tensor]) -> dict[str, float]:
        out: dict[str, float] = {}
        for split in self.scored:
            out.update(self.score(split, predict(split)))
        return out


def draw_chips(n: int, fraction: float, seed: int) -> np.ndarray:
    """``round(fraction × n)`` chip indices (at least one), a seeded uniform draw; all at 1."""
    if fraction >= 1:
        return np.arange(n)
    k = max(1, round(fraction * n))
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


class Filled(Dataset):
    """A split's chips with every NaN (no data) at ``fill``, the stored value an encoder's
    normalisation takes to 0."""

    def __init__(self, chips: Dataset, fill: np.ndarray) -> None:
        self.chips = chips
        self.fill = torch.as_tensor(fill, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.chips)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.chips[i]
        image = item["image"]
        return {**item, "image": torch.where(torch.isnan(image), self.fill, image)}


class PatchLinear(nn.Module):
    """A linear layer per patch token [B, L, D] → logits [B, K, H, W] of its patch's pixels."""

    def __init__(self, dim: int, patch: int, grid: tuple[int, int], num_classes: int = 2) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, num_classes * patch * patch)
        self.patch, self.grid, self.num_classes = patch, grid, num_classes

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, (gh, gw), pp, k = tokens.shape[0], self.grid, self.patch, self.num_classes
        x = self.linear(self.norm(tokens.float()))  # [B, L, K p p]
        x = x.view(b, gh, gw, k, pp, pp).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, k, gh * pp, gw * pp)


class FineTuned(nn.Module):
    """The encoder, trainable, with the patch-token linear head (on a ViT's patch tokens or a
    Swin V2's last-stage map: :class:`~geomed_mim.evaluation.scene_data.PatchTokens`)."""

    def __init__(self, encoder: nn.Module, head: PatchLinear) -> None:
        super().__init__()
        self.tokens, self.head = sd.PatchTokens(encoder), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(x))


@dataclass
class Encoded:
    """One encoder ready for the chips: model, normalisation, frozen tokens, patch grid."""

    encoder: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    tokens: dict[str, torch.Tensor]  # split → [N, L, D] float16
    patch: int
    grid: tuple[int, int]
    datasets: dict[str, Filled]  # the chips with NaN at the value normalised to 0


def encode(
    p: Any,
    source: str,
    chips: ChipSplits,
    bands: Sequence[str],
    seed: int,
    device: torch.device,
    say: Say,
) -> Encoded:
    """The encoder for ``bands`` (pretrained: matched by name, its recorded statistics;
    scratch: seeded), and, for the linear probe, every split's frozen patch tokens."""
    stats = SimpleNamespace(band_mean=chips.band_mean, band_std=chips.band_std)
    view = SimpleNamespace(stats={"train": stats}, bands=list(bands), image_size=chips.image_size)
    enc, m, s = build_encoder(p, source, view, seed, say)  # type: ignore[arg-type]
    enc = enc.to(device)
    mean = torch.tensor(m, dtype=torch.float32, device=device)
    std = torch.tensor(s, dtype=torch.float32, device=device)
    datasets = {sp: Filled(ds, np.asarray(m) / p.data.scale) for sp, ds in chips.datasets.items()}
    tokens = {}
    if "linear" in p.probes:
        tokens = {sp: sd.patch_tokens(enc, ds, p.data, mean, std, device)  # type: ignore[arg-type]
                  for sp, ds in datasets.items()}  # fmt: skip
    patch = sd.PatchTokens(enc).stride  # each token's square of pixels
    grid = (chips.image_size[0] // patch, chips.image_size[1] // patch)
    return Encoded(enc, mean, std, tokens, patch, grid, datasets)


def encoder_rows(
    p: Any,
    chips: ChipSplits,
    bands: Sequence[str],
    scorer: Scorer,
    ignore: int,
    describe: Callable[[dict[str, float]], str],
    say: Say,
) -> list[dict[str, Any]]:
    """Every encoder × seed × fraction × probe: the linear probe on its frozen patch tokens
    and the fine-tuned encoder with that head, kept at the best validation score, scored on
    ``scorer.scored``. ``ignore``: the masks' value of an ignored pixel."""
    if not p.encoders:
        return []
    device = device_for(p.accelerator)
    masks = {s: m.long() for s, m in chips.masks.items()}
    for m in masks.values():
        m[m == ignore] = IGNORE
    return probe_rows(
        p,
        encode_for=lambda source, seed: encode(p, source, chips, bands, seed, device, say),
        draw=lambda fraction, seed: draw_chips(len(chips.datasets["train"]), fraction, seed),
        train_and_score=lambda probe, enc, idx, seed: probe_once(
            p, probe, enc, masks, scorer, idx, seed, device
        ),
        select_units=lambda probe: len(chips.datasets.get("val", ())),
        describe=describe,
        say=say,
    )


def probe_once(
    p: Any,
    probe: str,
    enc: Encoded,
    masks: dict[str, torch.Tensor],
    scorer: Scorer,
    idx: np.ndarray,
    seed: int,
    device: torch.device,
) -> tuple[dict[str, float], int]:
    """Train ``probe`` on the drawn chips (those with a labeled pixel); (scores, kept step),
    NaN where no drawn chip has a labeled pixel."""
    idx = idx[(masks["train"][idx] != IGNORE).flatten(1).any(1).numpy()]
    if not len(idx):  # the drawn chips are all ignored pixels: nothing to train on
        return {m: math.nan for m in scorer.columns}, 0
    torch.manual_seed(seed)
    bs = p.data.batch_size
    head = PatchLinear(sd.PatchTokens(enc.encoder).embed_dim, enc.patch, enc.grid,
                       scorer.num_classes)  # fmt: skip
    y_train = masks["train"][idx]
    if probe == "finetune":
        model: nn.Module = FineTuned(copy.deepcopy(enc.encoder), head).to(device)

        def inputs(split: str, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
            ds = enc.datasets[split]
            x = torch.stack([ds[int(i)]["image"] for i in rows]).to(device)
            return sd.normalise(x, p.data, enc.mean, enc.std)  # type: ignore[arg-type]
    else:
        model = head.to(device)

        def inputs(split: str, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
            return enc.tokens[split][torch.as_tensor(rows)].float().to(device)

    def batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.randint(len(idx), (min(bs, len(idx)),), generator=g)
        return inputs("train", idx[pick.numpy()]), y_train[pick].to(device)

    @torch.no_grad()
    def predict(split: str) -> torch.Tensor:
        model.eval()
        n = len(enc.datasets[split])
        return torch.cat([model(inputs(split, range(i, min(i + bs, n)))).argmax(1).cpu()
                          for i in range(0, n, bs)])  # fmt: skip

    has_val = len(enc.datasets.get("val", ())) > 0
    select = (lambda: scorer.select(predict("val"))) if has_val else None
    decay = 0.05 if probe == "finetune" else 0.0
    trained = train_steps(model, batch, int(p.steps[probe]), p.check_every, float(p.lr[probe]),
                          seed, select, weight_decay=decay)  # fmt: skip
    return scorer.scores(predict), trained.step


def write_report(
    p: Any, rows: list[dict[str, Any]], metrics: list[str], extra: list[str], notes: list[str]
) -> dict[str, Path]:
    """``results.csv`` (the ``metrics`` and ``extra`` columns), ``results.md``,
    ``score_vs_budget.png`` and ``config.yaml`` (the protocol as run) in ``--output``."""
    out = Path(p.output)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "results.csv", "markdown": out / "results.md",
             "plot": out / "score_vs_budget.png", "config": out / "config.yaml"}  # fmt: skip
    write_csv(rows, [*metrics, *extra], files["csv"])
    write_markdown(rows, metrics, p.title, notes, files["markdown"])
    write_plot(rows, metrics, p.title, files["plot"], "label fraction (of the training chips)")
    write_config(dataclasses.asdict(p), files["config"])
    return files
