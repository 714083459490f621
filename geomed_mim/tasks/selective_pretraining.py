"""Pretraining task for SelectiveMAE: :class:`MIMPretrainTask` plus optional easy-sample pruning.

The SelectiveMAE reference also prunes "easy" samples (InfoBatch) without saying so in its speed
figures. Here it is an explicit switch, off by default: ``easy_sample_pruning: true`` drops, each
step, samples whose last loss was below the running mean with probability ``prune_ratio`` (the
kept easy ones are up-weighted by ``1 / (1 - prune_ratio)``), until ``prune_anneal_fraction`` of
training. Logged as ``perf/kept_fraction``. Works for any model that returns ``per_sample_loss``
(every model here does).
"""

from __future__ import annotations

from typing import Any

import torch

from geomed_mim.models.masking import EasySamplePruner
from geomed_mim.tasks.pretraining import MIMPretrainTask


class SelectivePretrainTask(MIMPretrainTask):
    """:class:`MIMPretrainTask` with an explicit InfoBatch-style pruning option.

    Args:
        easy_sample_pruning: turn pruning on (off by default, so reported speed-ups are the
            selection's own).
        prune_ratio: probability of dropping a below-mean-loss sample from a step.
        prune_anneal_fraction: from this fraction of training on, every sample is used.
        **kwargs: :class:`MIMPretrainTask`'s arguments.
    """

    def __init__(
        self,
        model: str = "selective_mae_vit_base_patch16",
        easy_sample_pruning: bool = False,
        prune_ratio: float = 0.5,
        prune_anneal_fraction: float = 0.875,
        **kwargs: Any,
    ) -> None:
        super().__init__(model=model, **kwargs)
        self.save_hyperparameters()
        self.pruner = (
            EasySamplePruner(prune_ratio, prune_anneal_fraction) if easy_sample_pruning else None
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.pruner is None:
            return super().training_step(batch, batch_idx)
        if "index" not in batch:
            raise ValueError("easy_sample_pruning needs the dataset index of each sample")
        progress = self.training_progress()
        keep, weights = self.pruner.keep(batch["index"], progress)
        keep = keep.to(batch["image"].device)
        batch = {k: v[keep] if torch.is_tensor(v) else v for k, v in batch.items()}
        batch["image"] = self.training_images(batch)
        self.model.masking.set_progress(progress)
        out = self.model(batch["image"], sample_seeds=self._seeds(batch, self.current_epoch))
        if out.per_sample_loss is None:
            raise ValueError(f"{self.model_name} returns no per-sample loss to prune by")
        self.pruner.update(batch["index"], out.per_sample_loss)
        loss = (out.per_sample_loss * weights.to(out.per_sample_loss.device)).mean()
        n = batch["image"].shape[0]
        self.log("perf/kept_fraction", keep.float().mean(), on_step=True, batch_size=n)
        return self.record_training_step(batch["image"], out, loss)
