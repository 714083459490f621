"""Scene classification: every encoder's frozen features probed (k-NN, linear, attentive) and
the encoder fine-tuned, at every label fraction with every seed, beside a per-image feature
baseline, on a torchgeo classification dataset with its standard splits.

Stages: :func:`check_scene_protocol` (every user mistake before any work), :func:`open_splits`,
:func:`baseline_rows`, :func:`encoder_rows`, :func:`write_scene_report`. A label fraction is a
stratified, seeded draw of the training split's images; the validation split (whole) selects
each trained probe's state (held-out early stopping); the test split scores.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import Dataset

from geomed_mim.cli import check_encoder_source
from geomed_mim.evaluation import scene_data as sd
from geomed_mim.evaluation.deep import SCRATCH, family_of
from geomed_mim.evaluation.probes import (
    AttentiveProbe,
    LinearProbe,
    classification_scores,
    knn_predict,
    knn_votes,
    multilabel_scores,
    train_steps,
)
from geomed_mim.evaluation.protocol import MIN_SEEDS, encoder_label
from geomed_mim.evaluation.report import write_config, write_csv, write_markdown, write_plot
from geomed_mim.models.swin import SwinV2Encoder
from geomed_mim.models.swin_sources import load_swin_weights, read_swin_source
from geomed_mim.models.vit import VisionTransformerEncoder
from geomed_mim.models.weights import load_encoder
from geomed_mim.tasks.segmentation import ENCODER_DEFAULTS
from geomed_mim.usage import UsageError

PROBES = ("knn", "linear", "attentive", "finetune")
TRAINED = ("linear", "attentive", "finetune")  # the probes that take optimizer steps
# per-image band means and stds under a classifier: the linear one, and a random forest
SCENE_BASELINES = ("band_statistics", "band_statistics_rf")
BASELINE_METHODS = {
    "band_statistics": "band mean/std + logistic regression",
    "band_statistics_rf": "band mean/std + random forest",
}
SINGLE_LABEL_METRICS = ["top1", "macro_f1"]
SCRATCH_ARCH_KEYS = ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio")
MULTILABEL_METRICS = ["map", "micro_map"]
Say = Callable[[str], None]


@dataclass
class SceneProtocol:
    """One dataset's scene-classification evaluation (the fields are the command's flags; see
    docs/evaluation.md)."""

    data: sd.SceneData = field(default_factory=sd.SceneData)
    encoders: list[str] = field(default_factory=lambda: [SCRATCH])
    probes: list[str] = field(default_factory=lambda: list(PROBES))
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: dict[str, int] = field(
        default_factory=lambda: {"linear": 500, "attentive": 500, "finetune": 500}
    )
    lr: dict[str, float] = field(
        default_factory=lambda: {"linear": 1e-3, "attentive": 1e-3, "finetune": 1e-4}
    )
    check_every: int = 50
    knn_k: int = 20
    knn_temperature: float = 0.07
    task: dict[str, Any] = field(default_factory=dict)  # {encoder: scratch architecture}
    baselines: list[str] = field(default_factory=lambda: list(SCENE_BASELINES))
    output: str = "runs/evaluate_scenes"
    title: str = "scene classification"
    accelerator: str = "auto"


# -- checks ---------------------------------------------------------------------------------------
def check_scene_protocol(p: SceneProtocol) -> None:
    """Every flag, before any work: a mistake is a :class:`UsageError` naming the flag."""
    sd.check_data_root(p.data.root, "the dataset as torchgeo lays it out")
    sd.dataset_class(p.data)
    check_run_flags(p, PROBES, TRAINED, SCENE_BASELINES)
    if p.knn_k < 1:
        raise UsageError(f"--knn_k {p.knn_k}: give a number of neighbours >= 1, e.g. 20")
    if not p.knn_temperature > 0:
        raise UsageError(f"--knn_temperature {p.knn_temperature}: give a value > 0, e.g. 0.07")


def check_run_flags(
    p: Any, probes: Sequence[str], trained: Sequence[str], baselines: Sequence[str]
) -> None:
    """The flags every encoder-probing protocol shares (data scale and batch, seeds, label
    fractions, probes with their steps and lr, baselines, accelerator, encoders): a mistake
    is a :class:`UsageError` naming the flag. ``trained``: the probes that take optimizer
    steps."""
    if not p.data.scale > 0:
        raise UsageError(f"--data.scale {p.data.scale}: give a factor > 0, e.g. 1.0e-4")
    if p.data.batch_size < 1:
        raise UsageError(f"--data.batch_size {p.data.batch_size}: give a number >= 1")
    if len(set(p.seeds)) < MIN_SEEDS:
        raise UsageError(
            f"--seeds {p.seeds}: give at least {MIN_SEEDS} distinct seeds, e.g. [0, 1, 2]"
        )
    if not p.fractions or any(not 0 < f <= 1 for f in p.fractions):
        raise UsageError(f"--fractions {p.fractions}: give fractions in (0, 1], e.g. [0.1, 1.0]")
    if p.encoders and not p.probes:
        raise UsageError(f"--probes is empty: give any of {list(probes)}, or --encoders []")
    for probe in p.probes:
        if probe not in probes:
            raise UsageError(f"--probes: unknown probe {probe!r}; use any of {list(probes)}")
        if probe in trained and int(p.steps.get(probe, 0)) < 1:
            raise UsageError(f"--steps.{probe}: give a number of optimizer steps >= 1")
        if probe in trained and not float(p.lr.get(probe, 0)) > 0:
            raise UsageError(f"--lr.{probe}: give a learning rate > 0, e.g. 1.0e-3")
    if p.check_every < 1:
        raise UsageError(f"--check_every {p.check_every}: give a number of steps >= 1")
    for kind in p.baselines:
        if kind not in baselines:
            raise UsageError(f"--baselines: unknown baseline {kind!r}; use {list(baselines)}")
    if p.accelerator not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--accelerator {p.accelerator}: use auto, cpu or cuda")
    for enc in p.encoders:
        if enc != SCRATCH:
            check_encoder_source(enc, "--encoders", "runs/<run>/checkpoints/last.ckpt")
    if not p.encoders and not p.baselines:
        raise UsageError("--encoders and --baselines are both empty: nothing to evaluate")


def device_for(accelerator: str) -> torch.device:
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise UsageError("--accelerator cuda: no CUDA device here; use auto or cpu")
    if accelerator == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


# -- data ---------------------------------------------------------------------------------------
@dataclass
class Splits:
    """The three standard splits, their bands and classes, and each image's band statistics."""

    datasets: dict[str, Dataset]
    bands: list[str]
    classes: list[str]
    stats: dict[str, sd.ImageStatistics]
    image_size: tuple[int, int]

    @property
    def multilabel(self) -> bool:
        return self.stats["train"].labels.ndim == 2

    @property
    def metrics(self) -> list[str]:
        """The table's columns; the first one selects the trained probes' states."""
        return MULTILABEL_METRICS if self.multilabel else SINGLE_LABEL_METRICS

    def scores(self, split: str, outputs: np.ndarray) -> dict[str, float]:
        """``outputs`` [N, K] (logits, votes) against ``split``'s labels."""
        target = self.stats[split].labels
        if self.multilabel:
            return multilabel_scores(target, outputs)
        return classification_scores(target, outputs.argmax(axis=1), len(self.classes))


def open_splits(p: SceneProtocol) -> Splits:
    datasets = {s: sd.open_split(p.data, s) for s in sd.SPLITS}
    train = datasets["train"]
    if len(train) == 0:
        raise UsageError(f"--data.root {p.data.root}: the training split holds no image")
    stats = {s: sd.image_statistics(ds, p.data) for s, ds in datasets.items()}
    h, w = train[0]["image"].shape[-2:]
    classes = sd.class_names(train) or [str(c) for c in np.unique(stats["train"].labels)]
    return Splits(datasets, sd.band_names(train), classes, stats, (int(h), int(w)))


# -- baselines ----------------------------------------------------------------------------------
def baseline_rows(p: SceneProtocol, splits: Splits, say: Say) -> list[dict[str, Any]]:
    """Per-image band means and standard deviations under each ``--baselines`` classifier
    (standardised multinomial logistic regression, or a random forest; multi-label: one per
    class), fitted on each fraction's drawn images, scored on the test split."""
    rows: list[dict[str, Any]] = []
    train, test = splits.stats["train"], splits.stats["test"]
    for kind in (k for k in SCENE_BASELINES if k in p.baselines):
        method = BASELINE_METHODS[kind]
        for fraction in p.fractions:
            for seed in p.seeds:
                idx = sd.draw_fraction(train.labels, fraction, seed)
                outputs = fit_band_statistics(train.per_image[idx], train.labels[idx],
                                              test.per_image, len(splits.classes), seed,
                                              forest=kind == "band_statistics_rf")  # fmt: skip
                scores = splits.scores("test", outputs)
                rows.append({"method": method, "kind": "baseline", "budget": fraction,
                             "seed": seed, "train_units": len(idx), "select_units": 0,
                             "step": 0, **scores})  # fmt: skip
                say(f"baseline {method}  fraction {fraction:g}  seed {seed}: "
                    f"{headline(splits, scores)}")  # fmt: skip
    return rows


def band_statistics_classifier(seed: int, forest: bool) -> Any:
    """The baseline's classifier: standardised logistic regression, or a random forest (200
    trees, one thread, seeded: the same fit every run)."""
    if forest:
        return RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))


def fit_band_statistics(
    x: np.ndarray,
    labels: np.ndarray,
    test: np.ndarray,
    num_classes: int,
    seed: int,
    forest: bool = False,
) -> np.ndarray:
    """Test scores [M, K] of the classifier on the features: class probabilities (single
    label), or each class's own classifier's probability (multi-label; a class all or none of
    the drawn images carry gets that constant)."""

    def fitted(y: np.ndarray) -> Any:
        return band_statistics_classifier(seed, forest).fit(x, y)

    out = np.zeros((len(test), num_classes))
    if labels.ndim == 2:
        for c in range(num_classes):
            y = labels[:, c]
            out[:, c] = fitted(y).predict_proba(test)[:, 1] if 0 < y.sum() < len(y) else y[0]
        return out
    present = np.unique(labels)
    if len(present) == 1:  # one class drawn: it is the only answer
        out[:, present[0]] = 1.0
    else:
        out[:, present] = fitted(labels).predict_proba(test)
    return out


def headline(splits: Splits, scores: dict[str, float]) -> str:
    return "  ".join(f"{k} {scores[k]:.3f}" for k in splits.metrics if k in scores)


# -- encoders -----------------------------------------------------------------------------------
@dataclass
class Encoded:
    """One encoder ready for the dataset: the model, its input normalisation, its tokens."""

    encoder: nn.Module  # a ViT or a Swin V2 (see scene_data.PatchTokens)
    mean: torch.Tensor  # [C] per dataset band
    std: torch.Tensor
    tokens: dict[str, torch.Tensor]  # split → [N, L, D] float16


def build_encoder(
    p: SceneProtocol, source: str, splits: Splits, seed: int, say: Say
) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """(encoder for the dataset's bands, normalisation mean, std): a pretrained one with its
    bands matched by name and its recorded statistics (the training split's for bands it does
    not record), or a scratch one (seeded) normalised by the training split's statistics."""
    fallback = (splits.stats["train"].band_mean, splits.stats["train"].band_std)
    if source == SCRATCH:
        torch.manual_seed(seed)
        arch = {**ENCODER_DEFAULTS, **(p.task.get("encoder") or {})}
        unknown = sorted(set(arch) - set(SCRATCH_ARCH_KEYS))
        if unknown:
            raise UsageError(f"--task.encoder.{unknown[0]}: not an encoder setting; use any of "
                             f"{list(SCRATCH_ARCH_KEYS)}")  # fmt: skip
        if any(side % int(arch["patch_size"]) for side in splits.image_size):
            size = splits.image_size
            raise UsageError(f"--task.encoder.patch_size {arch['patch_size']}: does not divide "
                             f"the images' size {size}; use a divisor of it")  # fmt: skip
        enc = VisionTransformerEncoder(img_size=splits.image_size,
                                       in_chans=len(splits.bands), **arch)  # fmt: skip
        return enc, fallback[0], fallback[1]
    from geomed_mim.models.weights import read_encoder_source

    if family_of(source) != "vit":
        return build_swin_encoder(source, splits, fallback, say)
    read = read_encoder_source(source)
    if read.spatial_dims != 2:
        raise UsageError(f"--encoders {source}: a {read.spatial_dims}-D encoder; scene "
                         "classification takes 2-D (remote sensing) encoders")  # fmt: skip
    theirs = list(read.config.get("bands") or [])
    try:
        enc, report, config = load_encoder(
            source, named_as(theirs, splits.bands), splits.image_size, spatial_dims=2
        )
    except ValueError as e:  # a patch size that does not divide the images
        raise UsageError(f"--encoders {source}: {e}; it cannot read these images") from None
    mean, std = recorded_normalisation(source, theirs, report, config, splits, fallback, say)
    return enc, mean, std


def named_as(theirs: list[str], bands: Sequence[str]) -> list[str]:
    """The dataset's bands under the encoder's spelling, so its patch embedding matches them."""
    return [next((e for e in theirs if sd.same_band(e, b)), b) for b in bands]


def recorded_normalisation(
    source: str,
    theirs: list[str],
    report: Any,
    config: dict[str, Any],
    splits: Splits,
    fallback: tuple[np.ndarray, np.ndarray],
    say: Say,
    family: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of a loaded pretrained encoder: its recorded statistics, the training
    split's for bands it does not record; an encoder sharing no band is refused in one line."""
    if not report.shared:
        raise UsageError(f"--encoders {source}: it records bands {theirs}, none of the dataset's "
                         f"({', '.join(splits.bands)}); use an encoder of this sensor")  # fmt: skip
    mean, std, missing = sd.recorded_statistics(splits.bands, config, fallback)
    say(f"{encoder_label(source)}: {family}{report}; normalised by its recorded statistics"
        + (f" (the training split's for {missing})" if missing else ""))  # fmt: skip
    return mean, std


def build_swin_encoder(
    source: str, splits: Splits, fallback: tuple[np.ndarray, np.ndarray], say: Say
) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """A Swin V2 encoder (SatVision-TOA's architecture, a SimMIM export or checkpoint) for the
    dataset's bands, matched by name, normalised by its recorded statistics."""
    src = read_swin_source(source)
    if src.family != "swinv2":
        raise UsageError(f"--encoders {source}: a 3-D {src.family} encoder; scene "
                         "classification takes 2-D (remote sensing) encoders")  # fmt: skip
    stages, patch = len(src.sizes["depths"]), int(src.sizes.get("patch_size", 4))
    stride = patch * 2 ** (stages - 1)  # the last stage's pixel spacing
    if any(side % stride for side in splits.image_size):
        raise UsageError(f"--encoders {source}: a Swin V2 encoder with patch {patch} and "
                         f"{stages} stages reads images whose sides are multiples of {stride} "
                         f"px; these are {splits.image_size}")  # fmt: skip
    named = named_as(src.bands, splits.bands)
    enc = SwinV2Encoder(img_size=splits.image_size, in_chans=len(named), **src.sizes)
    report = load_swin_weights(enc, src, named)
    mean, std = recorded_normalisation(source, src.bands, report, src.config, splits, fallback,
                                       say, family="Swin V2, ")  # fmt: skip
    return enc, mean, std


def encode(p: SceneProtocol, source: str, splits: Splits, seed: int, device, say: Say) -> Encoded:
    enc, mean, std = build_encoder(p, source, splits, seed, say)
    enc = enc.to(device)
    m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    tokens = {split: sd.patch_tokens(enc, ds, p.data, m.to(device), s.to(device), device)
              for split, ds in splits.datasets.items()}  # fmt: skip
    return Encoded(enc, m, s, tokens)


class FineTuned(nn.Module):
    """The encoder, trainable, with a linear layer on its mean-pooled patch tokens."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.tokens = sd.PatchTokens(encoder)
        self.head = nn.Linear(self.tokens.embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(x).mean(dim=1))


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, device, batch: int = 256) -> np.ndarray:
    """The model's logits [N, K] for ``inputs``, in batches."""
    model.eval()
    out = [model(inputs[i : i + batch].to(device).float()).float().cpu()
           for i in range(0, len(inputs), batch)]  # fmt: skip
    return torch.cat(out).numpy()


def probe_once(
    p: SceneProtocol, probe: str, enc: Encoded, splits: Splits, idx: np.ndarray, seed: int, device
) -> tuple[dict[str, float], int]:
    """Train ``probe`` on the drawn training images ``idx``; (test scores, kept step)."""
    k = len(splits.classes)
    labels = {s: torch.from_numpy(splits.stats[s].labels) for s in sd.SPLITS}
    y_train = labels["train"][idx]
    if probe == "knn":
        pooled = {s: enc.tokens[s].float().mean(1) for s in ("train", "test")}
        if splits.multilabel:
            votes = knn_votes(pooled["train"][idx], y_train, pooled["test"], p.knn_k,
                              p.knn_temperature).numpy()  # fmt: skip
            return splits.scores("test", votes), 0
        pred = knn_predict(pooled["train"][idx], y_train, pooled["test"], k,
                           p.knn_k, p.knn_temperature).numpy()  # fmt: skip
        return classification_scores(labels["test"].numpy(), pred, k), 0
    torch.manual_seed(seed)
    steps, lr, bs = int(p.steps[probe]), float(p.lr[probe]), p.data.batch_size
    if probe == "finetune":
        model: nn.Module = FineTuned(copy.deepcopy(enc.encoder), k).to(device)
        train_ds = splits.datasets["train"]
        m, s = enc.mean.to(device), enc.std.to(device)

        def images(ds: Dataset, rows) -> torch.Tensor:
            x = torch.stack([ds[int(i)]["image"] for i in rows]).to(device)
            return sd.normalise(x, p.data, m, s)

        def batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            pick = torch.randint(len(idx), (min(bs, len(idx)),), generator=g)
            return images(train_ds, idx[pick.numpy()]), y_train[pick].to(device)

        def score(split: str) -> np.ndarray:
            ds = splits.datasets[split]
            return np.concatenate([predict(model, images(ds, range(i, min(i + bs, len(ds)))),
                                           device) for i in range(0, len(ds), bs)])  # fmt: skip
    else:
        feats = {s: enc.tokens[s] if probe == "attentive" else enc.tokens[s].float().mean(1)
                 for s in ("train", "val", "test")}  # fmt: skip
        x_train = feats["train"][idx]
        if probe == "linear":
            model = LinearProbe(x_train.mean(0), x_train.std(0) if len(idx) > 1
                                else torch.ones(x_train.shape[1]), k)  # fmt: skip
        else:
            model = AttentiveProbe(x_train.shape[-1], k)
        model = model.to(device)

        def batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            pick = torch.randint(len(idx), (min(bs, len(idx)),), generator=g)
            return x_train[pick].float().to(device), y_train[pick].to(device)

        def score(split: str) -> np.ndarray:
            return predict(model, feats[split], device)  # float16 tokens, cast per batch

    first = splits.metrics[0]  # top-1, or mAP (multi-label)
    has_val = len(splits.datasets["val"]) > 0
    select = (lambda: splits.scores("val", score("val"))[first]) if has_val else None
    trained = train_steps(model, batch, steps, p.check_every, lr, seed, select,
                          weight_decay=0.05 if probe == "finetune" else 0.0,
                          multilabel=splits.multilabel)  # fmt: skip
    return splits.scores("test", score("test")), trained.step


def probe_rows(
    p: Any,
    encode_for: Callable[[str, int], Any],
    draw: Callable[[float, int], np.ndarray],
    train_and_score: Callable[[str, Any, np.ndarray, int], tuple[dict[str, float], int]],
    select_units: Callable[[str], int],
    describe: Callable[[dict[str, float]], str],
    say: Say,
) -> list[dict[str, Any]]:
    """Every encoder × seed × fraction × probe of a protocol with ``encoders``, ``seeds``,
    ``fractions`` and ``probes``: a pretrained encoder is encoded once (``encode_for``), a
    scratch one per seed; ``draw`` picks the training items, ``train_and_score`` gives (scores,
    kept step); one row and one progress line each."""
    rows: list[dict[str, Any]] = []
    for source in p.encoders:
        label, cached = encoder_label(source), None
        for seed in p.seeds:
            if source == SCRATCH or cached is None:
                cached = encode_for(source, seed)
            for fraction in p.fractions:
                idx = draw(fraction, seed)
                for probe in p.probes:
                    start = time.perf_counter()
                    scores, step = train_and_score(probe, cached, idx, seed)
                    rows.append({"method": f"{label} / {probe}", "kind": probe,
                                 "budget": fraction, "seed": seed, "train_units": len(idx),
                                 "select_units": select_units(probe), "step": step,
                                 **scores})  # fmt: skip
                    say(f"{label} / {probe}  fraction {fraction:g}  seed {seed}: "
                        f"{describe(scores)}  step {step}  "
                        f"({time.perf_counter() - start:.1f} s)")  # fmt: skip
    return rows


def encoder_rows(p: SceneProtocol, splits: Splits, say: Say) -> list[dict[str, Any]]:
    """Every encoder × seed × fraction × probe, trained and scored on the test split (a
    pretrained encoder's tokens are computed once; a scratch encoder is drawn per seed)."""
    device = device_for(p.accelerator)
    val_images = len(splits.datasets["val"])
    return probe_rows(
        p,
        encode_for=lambda source, seed: encode(p, source, splits, seed, device, say),
        draw=lambda fraction, seed: sd.draw_fraction(splits.stats["train"].labels, fraction, seed),
        train_and_score=lambda probe, enc, idx, seed: probe_once(
            p, probe, enc, splits, idx, seed, device
        ),
        select_units=lambda probe: 0 if probe == "knn" else val_images,
        describe=lambda scores: headline(splits, scores),
        say=say,
    )


# -- report ---------------------------------------------------------------------------------------
def scene_notes(p: SceneProtocol, splits: Splits) -> list[str]:
    """What the table's numbers mean: splits, draws, probes, selection."""
    sizes = ", ".join(f"{s} {len(ds)}" for s, ds in splits.datasets.items())
    trained = ", ".join(f"{probe} {int(p.steps[probe])}" for probe in p.probes if probe in TRAINED)
    return [
        f"Dataset: {p.data.class_path} at {p.data.root} ({len(splits.classes)} classes; images "
        f"{sizes}; bands {', '.join(splits.bands)}). Scores on the test split; mean ± sample "
        f"std over seeds {p.seeds}.",
        "budget = fraction of the training split's images, drawn with each seed "
        + (
            "uniformly (multi-label; `map`: mean over classes of the average precision, "
            "`micro_map`: pooled)"
            if splits.multilabel
            else "per class"
        )
        + " (`train units`: images drawn).",
        f"k-NN: cosine, k = {p.knn_k}, temperature {p.knn_temperature:g} (DINO's weighted "
        f"vote). Trained probes: {trained or 'none'} optimizer steps, scored with the state "
        f"of best validation-split {splits.metrics[0]} (`select units`: its images), checked every "
        f"{p.check_every} steps.",
    ]


def write_scene_report(p: SceneProtocol, rows: list[dict[str, Any]], splits: Splits):
    """``results.csv``, ``results.md``, ``score_vs_budget.png`` and ``config.yaml`` (the
    protocol as run) in ``--output``."""
    out = Path(p.output)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "results.csv", "markdown": out / "results.md",
             "plot": out / "score_vs_budget.png", "config": out / "config.yaml"}  # fmt: skip
    metrics = splits.metrics
    write_csv(rows, metrics, files["csv"])
    write_markdown(rows, metrics, p.title, scene_notes(p, splits), files["markdown"])
    write_plot(rows, metrics, p.title, files["plot"], "label fraction (of the training images)")
    write_config(dataclasses.asdict(p), files["config"])
    return files


def evaluate_scenes(p: SceneProtocol, say: Say) -> dict[str, Path]:
    """Run the whole protocol; returns the files written."""
    check_scene_protocol(p)
    splits = open_splits(p)
    rows = baseline_rows(p, splits, say) + encoder_rows(p, splits, say)
    return write_scene_report(p, rows, splits)
