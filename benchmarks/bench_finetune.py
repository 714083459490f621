"""Segmentation fine-tuning benchmark: pretrained vs scratch at an equal CPU budget,
plus whole-scene / whole-volume inference speed.

RS: the labeled Sentinel-2 demo store (configs/data/demo_lulc.yaml). The pretrained encoder comes
from the demo MAE pretraining run (configs/pretrain/demo_cpu.yaml on the same scenes' store),
run here first unless ``--pretrain-ckpt`` is given. Both arms use the same decoder, data subset,
epochs, lr schedule and seeds; only the encoder's starting weights differ. Scores are on the
store's held-out ``val`` scene (mIoU over the classes present, overall accuracy).

Inference: ``predict_rs_scene`` over a whole demo scene (tiles of 32, overlap 0.5, Gaussian
blending) and ``predict_ct_volume`` over the whole abdominal demo NIfTI (MONAI sliding window,
roi 32³, Gaussian) with the CT demo model (untrained: speed only).

    PYTHONPATH=. python benchmarks/bench_finetune.py --seeds 3 --epochs 15
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from geomed_mim.data.segmentation import RSSegDataModule  # noqa: E402
from geomed_mim.tasks import seg_predict  # noqa: E402
from geomed_mim.tasks.segmentation import SegmentationTask  # noqa: E402

DEMO_SCENE = REPO / "geomed_mim/demo_data/sentinel2_l1c/scenes/s2_l1c_reference_scene_0.tif"
DEMO_CT = REPO / "geomed_mim/demo_data/ct/abdomen_3mm.nii.gz"


def sh(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, *args], cwd=cwd, check=True, env=env, capture_output=True)


def ensure_store(work: Path) -> Path:
    store = work / "lulc"
    if not (store / "manifest.parquet").is_file():
        sh(["-m", "geomed_mim.build_dataset", "--config", "configs/data/demo_lulc.yaml",
            "--output", str(store), "--workers", "1"], REPO)  # fmt: skip
    return store


def ensure_pretrained(work: Path, store: Path, epochs: int) -> tuple[Path, float]:
    """The demo MAE pretraining run on the labeled store's tiles (labels unused)."""
    ckpt = work / "runs/demo_cpu/checkpoints/last.ckpt"
    t0 = time.perf_counter()
    if not ckpt.is_file():
        config = str(REPO / "configs/pretrain/demo_cpu.yaml")
        sh(["-m", "geomed_mim.pretrain", "fit", "--config", config,
            "--data.init_args.store", str(store), "--trainer.max_epochs", str(epochs),
            ], work)  # fmt: skip
    return ckpt, time.perf_counter() - t0


def quiet_cpu_trainer(**kwargs: Any) -> Trainer:
    """A CPU trainer with no logger, checkpoints, progress bar or sanity validation."""
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def finetune_once(
    store: Path, init_from: str | None, seed: int, epochs: int, train_fraction: float
) -> dict[str, float]:
    seed_everything(seed, verbose=False)
    dm = RSSegDataModule(str(store), batch_size=16, train_fraction=train_fraction, subset_seed=0)
    task = SegmentationTask.for_data(
        dm,
        init_from=init_from,
        encoder={"embed_dim": 192, "depth": 4, "num_heads": 3, "patch_size": 4},
        lr=1e-3,
        layer_decay=0.75,
    )
    trainer = quiet_cpu_trainer(max_epochs=epochs, check_val_every_n_epoch=epochs)
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    fit_s = time.perf_counter() - t0
    res = trainer.validate(task, datamodule=dm, verbose=False)[0]
    return {"miou": res["val/miou"], "accuracy": res["val/accuracy"], "fit_s": fit_s, "task": task}


def ensure_ct(work: Path, pretrain_epochs: int) -> tuple[Path, Path]:
    """The CT organ demo store and a tiny 3-D MAE pretrained on its volume (32³ crops, patch 8)."""
    store = work / "ct_organs"
    if not (store / "manifest.parquet").is_file():
        sh(["-m", "geomed_mim.build_dataset", "--config", "configs/data/demo_ct_organs.yaml",
            "--output", str(store), "--workers", "1"], REPO)  # fmt: skip
    run_dir = work / "ct_mae"  # demo_cpu.yaml writes runs/demo_cpu/ under the working dir
    run_dir.mkdir(exist_ok=True)
    ckpt = run_dir / "runs/demo_cpu/checkpoints/last.ckpt"
    if not ckpt.is_file():
        config = str(REPO / "configs/pretrain/demo_cpu.yaml")
        sh(["-m", "geomed_mim.pretrain", "fit", "--config", config,
            "--trainer.max_epochs", str(pretrain_epochs),
            "--trainer.check_val_every_n_epoch", "1000",
            "--model.init_args.model_kwargs.patch_size", "8",
            "--model.init_args.preview_every_n_steps", "100000",
            "--data", "geomed_mim.data.datamodules.CTDataModule",
            "--data.stores", f"[{store}]", "--data.crop_size", "32", "--data.batch_size", "1",
            "--data.crops_per_volume", "8", "--data.num_workers", "0", "--data.val_split", "null",
            ], run_dir)  # fmt: skip
    return store, ckpt


def ct_finetune_once(store: Path, init_from: str | None, seed: int, epochs: int) -> dict:
    from geomed_mim.data.segmentation import CTSegDataModule

    seed_everything(seed, verbose=False)
    dm = CTSegDataModule([str(store)], crop_size=32, batch_size=1, crops_per_volume=4,
                         samples_per_epoch=4, val_split="train", seed=seed)  # fmt: skip
    task = SegmentationTask.for_data(
        dm,
        init_from=init_from,
        encoder={"embed_dim": 192, "depth": 4, "num_heads": 3, "patch_size": 8},
        feature_size=8, lr=1e-3, layer_decay=0.75, dice_weight=1.0, sw_overlap=0.25,
    )  # fmt: skip
    trainer = quiet_cpu_trainer(max_epochs=epochs, check_val_every_n_epoch=10**6)
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    fit_s = time.perf_counter() - t0
    res = trainer.validate(task, datamodule=dm, verbose=False)[0]
    out = {"mdice": res["val/mdice"], "fit_s": fit_s}
    for name in ("liver", "spleen", "kidney"):
        out[name] = res.get(f"val/dice_{name}", float("nan"))
    return out


def run_ct(work: Path, seeds: int, epochs: int, pretrain_epochs: int) -> None:
    store, ckpt = ensure_ct(work, pretrain_epochs)
    rows: dict[str, list[dict]] = {"scratch": [], "pretrained (3-D MAE demo)": []}
    for seed in range(seeds):
        for arm, init in (("scratch", None), ("pretrained (3-D MAE demo)", str(ckpt))):
            r = ct_finetune_once(store, init, seed, epochs)
            rows[arm].append(r)
            print(f"  seed {seed} {arm:26s} mDice {r['mdice']:.3f} liver {r['liver']:.3f} "
                  f"spleen {r['spleen']:.3f} kidney {r['kidney']:.3f} fit {r['fit_s']:.0f} s",
                  flush=True)  # fmt: skip
    print(f"\nCT organs, {epochs} epochs x 4 crops of 32³, {seeds} seeds, Dice on the (only, "
          "training) labeled volume:")  # fmt: skip
    print("| start | mDice (incl. background) | liver | spleen | kidney | fit time / run |")
    print("|---|---|---|---|---|---|")
    for arm, rs in rows.items():
        cells = [mean_std([r[k] for r in rs]) for k in ("mdice", "liver", "spleen", "kidney")]
        print(f"| {arm} | {' | '.join(cells)} | {statistics.mean(r['fit_s'] for r in rs):.0f} s |")


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs (both arms)")
    ap.add_argument("--train-fraction", type=float, default=1.0)
    ap.add_argument("--pretrain-epochs", type=int, default=40)
    ap.add_argument("--pretrain-ckpt", type=str, default=None)
    ap.add_argument("--work", type=str, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--part", choices=("rs", "ct", "all"), default="all")
    ap.add_argument("--ct-epochs", type=int, default=20)
    ap.add_argument("--ct-overlaps", type=float, nargs="+", default=[0.25])
    ap.add_argument("--ct-pretrain-epochs", type=int, default=100)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    work = Path(args.work or tempfile.mkdtemp(prefix="finetune_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.part in ("ct", "all"):
        run_ct(work, args.seeds, args.ct_epochs, args.ct_pretrain_epochs)
        if args.part == "ct":
            return
    store = ensure_store(work)
    if args.pretrain_ckpt:
        ckpt, pre_s = Path(args.pretrain_ckpt), 0.0
    else:
        ckpt, pre_s = ensure_pretrained(work, store, args.pretrain_epochs)
    print(f"store {store}; pretrained checkpoint {ckpt} ({pre_s:.0f} s)")

    rows: dict[str, list[dict]] = {"scratch": [], "pretrained (MAE demo)": []}
    for seed in range(args.seeds):
        for arm, init in (("scratch", None), ("pretrained (MAE demo)", str(ckpt))):
            r = finetune_once(store, init, seed, args.epochs, args.train_fraction)
            rows[arm].append(r)
            print(f"  seed {seed} {arm:22s} mIoU {r['miou']:.3f}  OA {r['accuracy']:.3f}  "
                  f"fit {r['fit_s']:.0f} s", flush=True)  # fmt: skip
    print(f"\nRS land cover, {args.epochs} epochs, train fraction {args.train_fraction}, "
          f"{args.seeds} seeds (val scene):")  # fmt: skip
    print("| start | val mIoU | val overall acc. | fit time / run |")
    print("|---|---|---|---|")
    for arm, rs in rows.items():
        print(f"| {arm} | {mean_std([r['miou'] for r in rs])} | "
              f"{mean_std([r['accuracy'] for r in rs])} | "
              f"{statistics.mean(r['fit_s'] for r in rs):.0f} s |")  # fmt: skip

    # -- inference speed ------------------------------------------------------------------------
    task = rows["pretrained (MAE demo)"][-1]["task"].eval()
    dm = RSSegDataModule(str(store))
    out = work / "pred"
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        res = seg_predict.predict_rs_scene(
            task, str(DEMO_SCENE), dm.attrs, dm.mean, dm.std, 32, task.num_classes, out,
            overlap=0.5, classes=dm.classes,
        )  # fmt: skip
        times.append(time.perf_counter() - t0)
    h, w = res["shape"]
    t = min(times)
    print(f"\nRS whole scene {h}x{w} px, 13 bands, tiles 32 overlap 0.5 (GeoTIFF + PNG written): "
          f"{t:.2f} s = {h * w / t / 1e3:.1f} kpx/s")  # fmt: skip

    from geomed_mim.models.segmentation import ViTUNETR
    from geomed_mim.models.vit import VisionTransformerEncoder

    enc = VisionTransformerEncoder(32, 8, 1, 96, 4, 3, spatial_dims=3)
    net = ViTUNETR(enc, 4, [2, 3], feature_size=8).eval()
    for overlap in args.ct_overlaps:
        t0 = time.perf_counter()
        res = seg_predict.predict_ct_volume(
            net, str(DEMO_CT), (1.5, 1.5, 1.5), (-175, 250), 32, 4, out, overlap=overlap
        )
        t = time.perf_counter() - t0
        print(f"CT whole volume {DEMO_CT.name} (input grid {res['shape']}, 243x201x59 at 1.5 mm), "
              f"roi 32³ overlap {overlap}, demo UNETR (ViT 96x4, patch 8): {t:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
