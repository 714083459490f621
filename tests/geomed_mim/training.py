"""Helpers of the tests that train, checkpoint and export: a CLI module in a subprocess, the
metrics a run logged, checkpoints as the pretraining task writes them, timm models from exports,
tiny pretraining tasks and a short fit."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from geomed_mim.data.datamodules import CTDataModule
from geomed_mim.models import create_model
from geomed_mim.tasks.pretraining import MIMPretrainTask

# a one-block decoder: what the tests' tiny models use unless they need more
TINY_DECODER = {"decoder_depth": 1, "decoder_embed_dim": 32, "decoder_num_heads": 2}


def run_module(
    args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600
) -> subprocess.CompletedProcess:
    """``python -m ...`` (args start with ``-m``); asserts it succeeded."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """The rows of the run's CSV log (one ``logs/version_*`` expected)."""
    (metrics,) = run_dir.glob("logs/version_*/metrics.csv")
    return list(csv.DictReader(metrics.open()))


def epoch_losses(run_dir: Path) -> list[float]:
    return [
        float(r["train/loss_epoch"]) for r in read_metrics(run_dir) if r.get("train/loss_epoch")
    ]


def task_checkpoint(
    tmp_path: Path, bands: list[str] | None = None, **task_kwargs: Any
) -> tuple[Path, MIMPretrainTask]:
    """A checkpoint as the pretraining task writes it (state_dict + metadata), with weights moved
    off the init so that a wrong key mapping cannot pass by accident."""
    torch.manual_seed(0)
    task = MIMPretrainTask(**task_kwargs)
    with torch.no_grad():
        for name, p in task.model.named_parameters():
            if "pos_embed" not in name:
                p.add_(torch.randn_like(p) * 0.02)
    bands = bands or [f"b{i}" for i in range(task.model.encoder.in_chans)]
    task.data_metadata = {
        "bands": bands,
        "mean": [float(i) for i in range(len(bands))],
        "std": [1.0] * len(bands),
        "modality": "rs",
    }
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": task.state_dict(), "geomed_mim": task.checkpoint_metadata()}, path)
    return path, task


def model_checkpoint(
    path: Path, model: str, model_kwargs: dict[str, Any], bands: list[str], blocks: list[int]
) -> Path:
    """A pretraining checkpoint of a freshly built registry model, with the metadata fine-tuning
    reads (model name and arguments, bands, recorded intermediate blocks)."""
    torch.manual_seed(0)
    built = create_model(model, **model_kwargs)
    meta = {
        "model_name": model,
        "model_kwargs": model_kwargs,
        "bands": bands,
        "intermediate_blocks": blocks,
        "encoder_arch": dict(built.encoder_arch),
    }
    state = {f"model.{k}": v for k, v in built.state_dict().items()}
    torch.save({"state_dict": state, "geomed_mim": meta}, path)
    return path


def timm_from_export(export_dir: Path) -> torch.nn.Module:
    """The timm model a 2-D export's ``config.json`` names, its weights loaded strictly."""
    cfg = json.loads((export_dir / "config.json").read_text())
    return timm.create_model(
        cfg["architecture"],
        in_chans=cfg["in_chans"],
        img_size=cfg["img_size"][0],
        num_classes=0,
        checkpoint_path=str(export_dir / "model.safetensors"),
        **cfg["timm_kwargs"],
    ).eval()


def tiny_pretrain_task(
    task_cls: type[MIMPretrainTask], model: str, **model_kwargs: Any
) -> MIMPretrainTask:
    """``task_cls`` for 32-px 3-band images around a tiny ``model``: ``model_kwargs`` and the
    one-block decoder."""
    return task_cls(
        model=model, in_chans=3, img_size=32, model_kwargs={**model_kwargs, **TINY_DECODER}
    )


def fit_on_ct_crops(
    store: Path, root: Path, model: str, model_kwargs: dict[str, Any]
) -> tuple[MIMPretrainTask, Trainer]:
    """Two steps of a 3-D pretraining task on 32³ crops of a CT store (two volumes × two crops a
    batch), previews every step."""
    dm = CTDataModule([str(store)], batch_size=2, crops_per_volume=2, crop_size=32, num_workers=0)
    task = MIMPretrainTask(
        model=model,
        in_chans=dm.in_chans,
        img_size=dm.img_size,
        spatial_dims=dm.spatial_dims,
        model_kwargs=model_kwargs,
        preview_every_n_steps=1,
    )
    return task, fit_steps(task, dm, root)


def fit_steps(
    task: LightningModule, datamodule: LightningDataModule, root: Path, steps: int = 2
) -> Trainer:
    """A few optimizer steps on the CPU, no logger or checkpoints, one validation batch."""
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
    )
    trainer.fit(task, datamodule=datamodule)
    return trainer
