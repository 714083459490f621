"""The pretraining LightningModule: a registered MIM model, AdamW + warmup/cosine, throughput logs.

Hyperparameters are plain values (strings, numbers, lists, dicts), so checkpoints hold no pickled
config objects and load with ``torch.load(weights_only=True)``. Each checkpoint also carries a
``"geomed_mim"`` entry: the registry name and arguments that rebuild the model, and the data's band
names and per-band mean/std (what :mod:`geomed_mim.export` writes into ``config.json``;
:mod:`geomed_mim.models.weights` reads it back).

Block numbers (``intermediate_blocks``, Hi-End-MAE's ``encoder_levels``) count from 1: block 1 is
``encoder.blocks[0]``, the output before the final norm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from geomed_mim.data.seeds import band_shift_seed, mask_noise_seed
from geomed_mim.models import create_model
from geomed_mim.models.base import normalized_patch_targets
from geomed_mim.models.patches import patchify
from geomed_mim.models.weights import (
    CHECKPOINT_METADATA_KEY,
    InitFromMismatchError,
    init_mim_model,
)
from geomed_mim.tasks.optim import adamw_warmup_cosine, param_groups
from geomed_mim.tasks.preview import render_preview, save_png
from geomed_mim.usage import UsageError

log = logging.getLogger(__name__)


def default_intermediate_blocks(depth: int) -> list[int]:
    """1-indexed blocks a UNETR-style decoder reads: 4, 7, 10 of 12 (hidden_states_out[3, 6, 9])."""
    step = max(depth // 4, 1)
    return [min(1 + k * step, depth) for k in (1, 2, 3)]


def trivial_baseline_loss(
    images: torch.Tensor,
    out: Any,
    patch_size: Sequence[int],
    norm_pix_loss: bool,
    norm_pix_eps: float = 1e-6,
    per_patch: bool = False,
) -> torch.Tensor:
    """The masked loss of a prediction without spatial structure: the baseline a model must beat
    to have learned anything.

    For per-patch normalized targets that is predicting zeros (about 1.0: each patch's own
    mean). For raw targets it is each sample's best constant, the mean of its loss patches'
    values: a model that predicts the mean intensity scores it, and one that has learned where
    tissue, air and bone lie beats it. ``per_patch=True`` gives the stricter raw-target figure
    of predicting each loss patch's own mean, which only a model that also predicts structure
    inside a patch beats.

    The loss patches are the output's ``target_mask`` (SelectiveMAE) or ``mask`` (MAE,
    Hi-End-MAE); every one counts equally, as in the model's loss."""
    target = patchify(images.float(), patch_size)  # [B, L, P]
    loss_mask = getattr(out, "target_mask", None)
    loss_mask = (out.mask if loss_mask is None else loss_mask).float()  # [B, L]
    if norm_pix_loss:
        target = normalized_patch_targets(target, norm_pix_eps)
    elif per_patch:
        target = target - target.mean(dim=-1, keepdim=True)
    else:  # [B, 1, 1]: the mean over each sample's loss patches
        weights = loss_mask[..., None] / loss_mask.sum(dim=1).clamp_min(1)[:, None, None]
        target = target - (target.mean(dim=-1, keepdim=True) * weights).sum(1, keepdim=True)
    per_patch_loss = (target**2).mean(dim=-1)  # [B, L]
    return (per_patch_loss * loss_mask).sum() / loss_mask.sum().clamp_min(1)


def baseline_name(norm_pix_loss: bool) -> str:
    """How progress lines name :func:`trivial_baseline_loss`."""
    return "predict-zeros" if norm_pix_loss else "crop-mean"


@dataclass
class PreviewSamples:
    """A few samples as a preview shows them (:func:`~geomed_mim.tasks.preview.render_preview`)."""

    images: torch.Tensor  # [k, C, *spatial] as the model saw them
    pred: torch.Tensor  # [k, L, P]
    mask: torch.Tensor  # [k, L] not encoded
    predicted: torch.Tensor  # [k, L] predicted (SelectiveMAE: its targets)


def preview_samples(images: torch.Tensor, out: Any, k: int) -> PreviewSamples:
    """The first ``k`` samples of a step, with the patches the model predicted."""
    target_mask = getattr(out, "target_mask", None)
    predicted = out.mask if target_mask is None else target_mask
    return PreviewSamples(
        images[:k].detach(), out.pred[:k].detach(), out.mask[:k].detach(), predicted[:k].detach()
    )


def mask_seeds_for(indices: torch.Tensor, base_seed: int, epoch: int) -> torch.Tensor:
    """One 63-bit seed per sample from (base seed, epoch, sample index): the same whatever the
    batch composition or world size, different each epoch."""
    seeds = [mask_noise_seed(base_seed, epoch, i) for i in indices.tolist()]
    return torch.tensor(seeds, dtype=torch.long)


class MIMPretrainTask(LightningModule):
    """Pretrain a registered MIM model (``geomed_mim.models.list_models()``).

    Args:
        model: registry name, e.g. ``mae_vit_base_patch16``.
        model_kwargs: overrides for the registry builder (``mask_ratio``, ``norm_pix_loss``,
            ``patch_size``, decoder sizes, ...). ``in_chans``, ``img_size`` and ``spatial_dims``
            come from the data module (linked by the CLI).
        base_lr: lr for an effective batch of 256; ``lr = base_lr × eff_batch / 256`` (times the
            model's ``lr_scale`` if it has one) unless ``lr`` is given.
        warmup_fraction: share of the optimizer steps spent in linear warmup (or ``warmup_steps``).
        mask_seed: masks are drawn from per-sample seeds derived from (mask_seed, epoch, sample
            index); None uses the global RNG (as the MAE reference).
        intermediate_blocks: 1-indexed encoder blocks recorded in exports for downstream decoders
            (default: the model's ``encoder_levels`` when it has them, else 4, 7, 10 of 12).
        band_shift_std: augmentation: each training sample gets one random offset per band
            (normal, this std, in the standardized units the loader delivers), the same for all
            its pixels, as a change of illumination or atmosphere would shift it; the targets
            come from the shifted image. The model then has to read a scene's band levels from
            its visible patches instead of recalling the training scenes' (0 = off). Drawn from
            per-sample seeds like the masks.
        preview_every_n_steps: write a PNG of inputs/masks/reconstructions every N optimizer steps,
            and one of the first validation batch at every validation (0 = never).
        compile: ``torch.compile`` the encoder and decoder in place (parameter names and
            checkpoints unchanged); token choice stays eager (its counts depend on the data).
        compile_backend: the ``torch.compile`` backend (``inductor``; tests use ``aot_eager``).
        init_from: an export folder (``geomed_mim.export``, or a published model converted by
            ``geomed_mim.convert``) or a pretraining checkpoint to start from: the encoder's
            weights, and the decoder's when the folder holds ``decoder.safetensors`` (converted
            MAE and SimMIM models). Sizes and band count must be the source's.
    """

    def __init__(
        self,
        model: str = "mae_vit_base_patch16",
        model_kwargs: dict[str, Any] | None = None,
        in_chans: int = 3,
        img_size: int = 224,
        spatial_dims: int = 2,
        base_lr: float = 1.5e-4,
        lr: float | None = None,
        min_lr: float = 0.0,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_fraction: float = 0.05,
        warmup_steps: int | None = None,
        mask_seed: int | None = 0,
        intermediate_blocks: list[int] | None = None,
        preview_every_n_steps: int = 500,
        preview_samples: int = 4,
        band_shift_std: float = 0.0,
        compile: bool = False,
        compile_backend: str = "inductor",
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_name = model
        self.model_kwargs = {
            **(model_kwargs or {}),
            "in_chans": in_chans,
            "img_size": img_size,
            "spatial_dims": spatial_dims,
        }
        self.model = create_model(model, **self.model_kwargs)
        if init_from:  # an export (python -m geomed_mim.export / .convert): continue pretraining
            try:
                log.info(init_mim_model(self.model, init_from))
            except InitFromMismatchError as e:
                raise UsageError(
                    f"--model.init_args.init_from {init_from}: {e}; convert or export it for "
                    "this model and band list (python -m geomed_mim.convert --profile ...)"
                ) from None
        if compile:  # where the compute is
            self.model.encoder.compile(backend=compile_backend)
            self.model.decoder.compile(backend=compile_backend)
        depth = self.model.encoder.depth
        # a model whose decoder reads encoder levels (Hi-End-MAE) records those blocks by default,
        # so the segmentation decoder reads the depths that were trained to reconstruct
        levels = getattr(self.model, "encoder_levels", None)
        default_blocks = sorted(levels) if levels else default_intermediate_blocks(depth)
        self.intermediate_blocks = list(intermediate_blocks or default_blocks)
        if levels and sorted(self.intermediate_blocks) != sorted(levels):
            log.warning(
                "intermediate_blocks %s differ from the decoder's encoder_levels %s",
                self.intermediate_blocks,
                list(levels),
            )
        self.data_metadata: dict[str, Any] = {}
        self._step_started = 0.0
        self._last_batch_end: float | None = None
        self._preview: PreviewSamples | None = None
        self._last_preview_step = -1
        self._total_steps: int | None = None
        self._preview_dir: Path | None = None
        self._val_preview: PreviewSamples | None = None

    # -- metadata ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "metadata"):
            self.data_metadata = datamodule.metadata()
            bands = self.data_metadata.get("bands") or []
            if bands and len(bands) != self.model.encoder.in_chans:
                raise ValueError(
                    f"the data has {len(bands)} bands {bands} but the model takes "
                    f"in_chans={self.model.encoder.in_chans}"
                )
            if rank_zero_only.rank == 0:  # a log line, once per run rather than per rank
                stats = self.data_metadata.get("stats_source")
                log.info("training on bands %s (%s)", bands, stats)

    def checkpoint_metadata(self) -> dict[str, Any]:
        """Plain-data description of the model and its inputs (stored in every checkpoint)."""
        enc = self.model.encoder
        return {
            "format": 1,
            "model_name": self.model_name,
            "model_kwargs": dict(self.model_kwargs),
            "encoder_arch": dict(getattr(self.model, "encoder_arch", {})),
            "spatial_dims": enc.spatial_dims,
            "in_chans": enc.in_chans,
            "img_size": list(enc.img_size),
            "patch_size": list(enc.patch_size),
            "intermediate_blocks": list(self.intermediate_blocks),
            "encoder_levels": list(getattr(self.model, "encoder_levels", None) or []) or None,
            **{k: v for k, v in self.data_metadata.items() if k != "store"},
            "data_store": self.data_metadata.get("store"),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_METADATA_KEY] = self.checkpoint_metadata()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CHECKPOINT_METADATA_KEY) or {}
        if meta and not self.data_metadata:
            keys = ("modality", "bands", "mean", "std", "stats_source", "profile", "preview_bands")
            self.data_metadata = {k: meta[k] for k in keys if k in meta}

    # -- steps ---------------------------------------------------------------------------------
    def _seeds(self, batch: dict[str, Any], epoch: int) -> torch.Tensor | None:
        if self.hparams.mask_seed is None or "index" not in batch:
            return None
        return mask_seeds_for(batch["index"], self.hparams.mask_seed, epoch)

    @property
    def baseline_name(self) -> str:
        """What ``val/baseline_loss`` is (progress lines print it beside the loss)."""
        own = getattr(self.model, "baseline_name", None)  # a model with a loss of its own
        return own or baseline_name(self.model.norm_pix_loss)

    def training_progress(self) -> float:
        """Fraction of the optimizer steps done, in [0, 1] (schedules of token choice read it)."""
        if self._total_steps is None:  # Lightning recomputes this property on every access
            self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        return min(self.global_step / self._total_steps, 1.0)

    def training_images(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's images with the training augmentation the task owns (``band_shift_std``)."""
        images = batch["image"]
        std = self.hparams.band_shift_std
        if not std:
            return images
        shape = (images.shape[0], images.shape[1], *([1] * (images.dim() - 2)))  # [B, C, 1, ..]
        seeds = self._seeds(batch, self.current_epoch)
        if seeds is None:
            shift = torch.randn(shape, device=images.device)
        else:  # one generator per sample: the same shift whatever batch or rank it lands in
            gens = [torch.Generator().manual_seed(band_shift_seed(s)) for s in seeds]
            shift = torch.stack([torch.randn(shape[1:], generator=g) for g in gens])
        return images + std * shift.to(images.device, images.dtype)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.model.masking.set_progress(self.training_progress())
        images = self.training_images(batch)
        out = self.model(images, sample_seeds=self._seeds(batch, self.current_epoch))
        return self.record_training_step(images, out, out.loss)

    def record_training_step(
        self, images: torch.Tensor, out: Any, loss: torch.Tensor
    ) -> torch.Tensor:
        """Log the step's loss and keep a few samples for the next preview; returns ``loss``."""
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            sync_dist=True,  # the mean over ranks (one scalar all-reduce per step)
            batch_size=len(images),
        )
        if self._preview_due():
            self._preview = preview_samples(images, out, self.hparams.preview_samples)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # fixed masks (epoch 0 seeds) so validation losses are comparable across epochs
        images = batch["image"]
        out = self.model(images, sample_seeds=self._seeds(batch, 0))
        logged = {"val/loss": out.loss}
        if hasattr(self.model, "trivial_baseline_loss"):  # its own loss (SimMIM's L1)
            logged["val/baseline_loss"] = self.model.trivial_baseline_loss(images, out)
        else:
            patch_size, norm_pix = self.model.encoder.patch_size, self.model.norm_pix_loss
            logged["val/baseline_loss"] = trivial_baseline_loss(
                images, out, patch_size, norm_pix, self.model.norm_pix_eps
            )
            if not norm_pix:  # raw targets: the stricter figure beside it
                logged["val/patch_mean_loss"] = trivial_baseline_loss(
                    images, out, patch_size, False, per_patch=True
                )
        if batch_idx == 0 and self.hparams.preview_every_n_steps:
            self._val_preview = preview_samples(images, out, self.hparams.preview_samples)
        self.log_dict(
            logged, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=images.shape[0]
        )
        return out.loss

    # -- throughput and previews ---------------------------------------------------------------
    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        now = time.perf_counter()
        images = batch["image"].shape[0]
        tokens = images * self.model.encoder.num_patches
        compute = max(now - self._step_started, 1e-9)
        if self._last_batch_end is not None:  # the wall time between batch ends includes loading
            wall = max(now - self._last_batch_end, 1e-9)
            self.log_dict(
                {
                    "perf/images_per_s": images / wall,
                    "perf/tokens_per_s": tokens / wall,
                    "perf/data_wait_fraction": max(wall - compute, 0.0) / wall,
                },
                on_step=True,
                on_epoch=False,
                batch_size=images,
            )
        self.log(
            "perf/step_images_per_s",
            images / compute,
            on_step=True,
            on_epoch=False,
            batch_size=images,
        )
        self._last_batch_end = now
        if self._preview is not None:
            self._write_preview()

    def on_train_epoch_start(self) -> None:
        self._last_batch_end = None  # do not count the epoch boundary as loader time

    def on_fit_start(self) -> None:
        # on every rank, before any rank-0-only branch: trainer.log_dir is a collective (a
        # broadcast from rank 0), so reading it on rank 0 alone would desynchronize the ranks
        self._preview_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "previews"

    @property
    def preview_dir(self) -> Path:
        """Where previews go: the logger's version folder (set on every rank at fit start)."""
        if self._preview_dir is None:
            raise RuntimeError("previews are written during fit only")
        return self._preview_dir

    def _preview_due(self) -> bool:
        n = self.hparams.preview_every_n_steps
        return bool(n) and self.global_step % n == 0 and self.global_step != self._last_preview_step

    def _write_preview(self) -> None:
        samples, self._preview = self._preview, None
        self._last_preview_step = self.global_step
        self.save_preview(samples, f"step_{self.global_step:07d}", "preview")

    def save_preview(self, samples: PreviewSamples, name: str, tag: str) -> None:
        """``<log dir>/previews/<name>.png`` (and TensorBoard image ``tag``), on rank 0."""
        if not self.trainer.is_global_zero:
            return
        enc = self.model.encoder
        grid = render_preview(
            samples.images,
            samples.pred,
            samples.mask,
            enc.patch_size,
            enc.grid_size,
            self.model.norm_pix_loss,
            self.data_metadata.get("preview_bands") or [],
            predicted=samples.predicted,
            norm_pix_eps=self.model.norm_pix_eps,
        )
        save_png(grid, self.preview_dir / f"{name}.png")
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, grid, self.global_step, dataformats="HWC")

    def on_validation_epoch_end(self) -> None:
        # the first validation batch, reconstructed: what the model makes of unseen tiles
        if self._val_preview is not None and self._preview_dir is not None:
            self.save_preview(self._val_preview, f"val_step_{self.global_step:07d}", "val_preview")
        self._val_preview = None

    # -- optimization --------------------------------------------------------------------------
    def effective_batch_size(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None)
        per_device = getattr(datamodule, "images_per_batch", None) or getattr(
            datamodule, "batch_size", 1
        )
        return int(per_device) * self.trainer.accumulate_grad_batches * self.trainer.world_size

    def parameter_groups(self, lr: float | None = None) -> list[dict[str, Any]]:
        """Weight decay on weight matrices only: not on norms, biases, tokens, positions.

        Two groups, the decay group first: the order the optimizer state of every pretraining
        checkpoint holds, so runs resume across versions.
        """
        lr = self.hparams.base_lr if lr is None else lr
        skip = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        groups = param_groups(self.model, lr, self.hparams.weight_decay, no_weight_decay=skip)
        return sorted(groups, key=lambda g: g["weight_decay"] == 0)  # decay first (stable)

    def configure_optimizers(self) -> dict[str, Any]:
        eff_batch = self.effective_batch_size()
        # a model may scale its lr (SelectiveMAE: reconstruction_ratio / mask_ratio)
        lr_scale = float(getattr(self.model, "lr_scale", 1.0))
        lr = self.hparams.lr or self.hparams.base_lr * eff_batch / 256 * lr_scale
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = self.hparams.warmup_steps
        if warmup is None:
            warmup = round(self.hparams.warmup_fraction * total)
        warmup = max(int(warmup), 1)
        if rank_zero_only.rank == 0:
            log.info(
                "effective batch %d, model lr scale %.3g → lr %.3g; %d steps, %d warmup",
                eff_batch,
                lr_scale,
                lr,
                total,
                warmup,
            )
        return adamw_warmup_cosine(
            self.parameter_groups(lr),
            lr,
            warmup,
            total,
            min_lr=self.hparams.min_lr,
            betas=tuple(self.hparams.betas),
        )
