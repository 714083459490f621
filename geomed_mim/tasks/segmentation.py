"""Segmentation fine-tuning task (2-D RS tiles, 3-D CT crops) on a pretrained encoder: this
project's ViT (UNETR-style decoder or linear probe), Swin V2 (FPN head) or MONAI's 3-D Swin
(SwinUNETR), the family chosen by ``init_from`` or by ``encoder.family``.

Class ids are the output channels (``num_classes = max class id + 1``), so a prediction is a
class id map directly: the argmax runs over the class channels only, so the ignore index (the
value the store records, e.g. 255 for a table's -1) is never predicted, even when it lies below
the class count (RS: 0). ``ignore_index`` pixels are left out of the loss and every metric.
Metrics come from one torchmetrics confusion matrix (ignore_index dropped): per-class IoU, mIoU
(over the table's classes that occur in target or prediction), overall accuracy, per-class Dice.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from monai.inferers import sliding_window_inference
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from geomed_mim.models.segmentation import (
    AttentivePatchHead,
    LinearPatchHead,
    ViTUNETR,
    skip_blocks_for,
)
from geomed_mim.models.swin_sources import (
    SWIN_FAMILIES,
    build_swin_network,
    check_head,
    source_family,
)
from geomed_mim.models.vit import VisionTransformerEncoder
from geomed_mim.models.weights import (
    ARCH_KEYS,
    CHECKPOINT_METADATA_KEY,
    FINETUNING_KIND,
    load_encoder,
    recorded_block_numbers,
)
from geomed_mim.tasks import seg_predict
from geomed_mim.tasks.optim import adamw_warmup_cosine, param_groups
from geomed_mim.usage import UsageError

log = logging.getLogger(__name__)

ENCODER_DEFAULTS = {"embed_dim": 192, "depth": 4, "num_heads": 3, "patch_size": 4}
# what the task takes from its data module (the CLI links these; ``for_data`` copies them)
ENCODER_FAMILIES = ("vit", *SWIN_FAMILIES)
DATA_FIELDS = ("in_chans", "img_size", "spatial_dims", "bands", "classes", "mean", "std")


def scores_from_confusion(confmat: torch.Tensor, class_ids: list[int]) -> dict[str, torch.Tensor]:
    """confmat [K, K] (rows target, cols prediction; ignored pixels already dropped) →
    ``iou``/``dice`` per class id in ``class_ids`` (NaN when the class is absent from both
    target and prediction), ``miou``/``mdice`` (NaN-mean) and ``accuracy``."""
    cm = confmat.double()
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    ids = torch.tensor(class_ids, dtype=torch.long)
    union = (tp + fp + fn)[ids]
    iou = torch.where(union > 0, tp[ids] / union.clamp(min=1), torch.nan)
    dice = torch.where(
        union > 0, 2 * tp[ids] / (2 * tp[ids] + fp[ids] + fn[ids]).clamp(min=1), torch.nan
    )
    total = cm.sum()
    return {
        "iou": iou,
        "dice": dice,
        "miou": iou.nanmean(),
        "mdice": dice.nanmean(),
        "accuracy": tp.sum() / total if total > 0 else torch.tensor(torch.nan),
    }


def masked_soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, eps: float = 1e-5
) -> torch.Tensor:
    """1 - mean soft Dice over present classes, ignored pixels excluded.

    logits [B, K, *S], target [B, *S]."""
    valid = (target != ignore_index).unsqueeze(1)  # [B, 1, *S]
    probs = logits.softmax(1) * valid
    onehot = F.one_hot(target.clamp(0, logits.shape[1] - 1), logits.shape[1])
    onehot = onehot.movedim(-1, 1).to(probs.dtype) * valid  # [B, K, *S]
    dims = (0, *range(2, logits.dim()))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0  # Dice only over classes present in the batch
    dice = (2 * inter + eps) / (denom + eps)
    return 1 - dice[present].mean() if present.any() else logits.sum() * 0


def encoder_family(init_from: str | None, arch: dict[str, Any] | None) -> str:
    """``vit``, ``swinv2`` or ``swin3d``: the ``init_from`` source's, else ``arch["family"]``
    (default ``vit``)."""
    if init_from:
        return source_family(init_from)
    family = str((arch or {}).get("family", "vit"))
    if family not in ENCODER_FAMILIES:
        raise UsageError(
            f"--model.init_args.encoder.family {family}: use one of {list(ENCODER_FAMILIES)}"
        )
    return family


class SegmentationTask(LightningModule):
    """Fine-tune (or probe) a ViT encoder with a UNETR-style decoder, or a Swin encoder with its
    head (Swin V2: FPN; 3-D Swin: SwinUNETR).

    Args:
        init_from: a pretraining checkpoint (``.ckpt``) or an export folder (a converted one
            too); None = scratch. The encoder family and architecture then come from it; input
            bands are matched by name.
        encoder: architecture for scratch runs; ignored when ``init_from`` is given. ViT:
            ``embed_dim``, ``depth``, ``num_heads``, ``patch_size``, ``mlp_ratio``. Swin:
            ``family`` (``swinv2`` 2-D, ``swin3d`` 3-D), ``embed_dim``, ``depths``,
            ``num_heads``, ``window_size``, ``patch_size``.
        skip_blocks: encoder blocks feeding the decoder, numbered from 1 (block 1 is
            ``encoder.blocks[0]``; the numbering of the export's ``intermediate_blocks``); None =
            those recorded in the checkpoint/export (see :func:`skip_blocks_for`).
        freeze_encoder: probing: the encoder is frozen (eval mode, no gradients).
        head: ViT: ``"unetr"`` (the UNETR-style decoder), ``"linear"`` (a linear layer on the
            final patch tokens, upsampled: the standard linear probe) or ``"attentive"`` (one
            light transformer block over the tokens, then that linear layer); Swin V2: ``"fpn"`` or
            ``"linear"`` (a linear layer on the last stage's features, upsampled);
            3-D Swin: ``"unetr"`` (SwinUNETR's decoder).
        layer_decay: layer-wise lr decay for full fine-tuning: ``encoder.blocks[i]`` gets
            ``lr * layer_decay ** (depth - i)``, the embeddings ``lr * layer_decay ** (depth + 1)``,
            the final norm and the decoder ``lr``; 1.0 turns it off.
        dice_weight: weight of the masked soft Dice term added to CE (DiceCE); 0 = CE only.
        sw_overlap: overlap of sliding-window inference (CT validation and all predictions).
        in_chans / img_size / spatial_dims / bands / classes / mean / std / window: linked from
            the data module by the CLI.
    """

    def __init__(
        self,
        init_from: str | None = None,
        encoder: dict[str, Any] | None = None,
        skip_blocks: list[int] | None = None,
        feature_size: int = 16,  # UNETR: full-resolution channels; Swin V2 FPN: its width
        freeze_encoder: bool = False,
        head: str = "unetr",
        lr: float = 1e-3,
        layer_decay: float = 0.75,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.1,
        dice_weight: float = 0.0,
        sw_overlap: float = 0.5,
        sw_batch_size: int = 4,
        write_probabilities: bool = False,
        in_chans: int = 3,
        img_size: int = 32,
        spatial_dims: int = 2,
        bands: list[str] | None = None,
        classes: dict[str, Any] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not classes:
            raise ValueError("classes: the data module's class table is required")
        self.class_ids = [int(i) for i in classes["ids"]]
        self.class_names = list(classes["names"])
        self.ignore_index = int(classes.get("ignore_index", 255))
        self.num_classes = max(self.class_ids) + 1
        self.bands = list(bands or [f"band{i}" for i in range(in_chans)])
        self.source_metadata: dict[str, Any] = {}  # the init_from checkpoint's or export's
        self.family = encoder_family(init_from, encoder)
        check_head(self.family, head)
        if self.family == "vit":
            self.net = self._build_vit_net(init_from, encoder, skip_blocks)
        else:
            self.net, self.source_metadata = build_swin_network(
                self.family, init_from, encoder, self.bands, img_size, spatial_dims,
                self.num_classes, feature_size, head,
            )  # fmt: skip
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.net.encoder.requires_grad_(False)
        # the ignore index may lie inside [0, K) (RS: 0) or outside (CT: 255)
        cm_ignore = self.ignore_index
        self.val_confmat = MulticlassConfusionMatrix(self.num_classes, ignore_index=cm_ignore)
        self.test_confmat = MulticlassConfusionMatrix(self.num_classes, ignore_index=cm_ignore)
        log.info("%s head; decoder reads encoder blocks %s (1-indexed)", head, self.net.skip_blocks)

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def for_data(cls, datamodule: Any, **kwargs: Any) -> SegmentationTask:
        """The task for ``datamodule``'s bands, sizes, class table and normalization, as the
        command line links them; ``kwargs`` are the task's other arguments."""
        return cls(**{f: getattr(datamodule, f) for f in DATA_FIELDS}, **kwargs)

    def _build_vit_net(
        self, init_from: str | None, arch: dict[str, Any] | None, skip_blocks: list[int] | None
    ) -> nn.Module:
        """The ViT network: the encoder (fresh or pretrained) under the chosen head."""
        hp = self.hparams
        enc, recorded = self._build_encoder(
            init_from, arch, hp.in_chans, hp.img_size, hp.spatial_dims
        )
        if hp.head in ("linear", "attentive"):
            head = LinearPatchHead if hp.head == "linear" else AttentivePatchHead
            return head(enc, self.num_classes)
        blocks = skip_blocks or skip_blocks_for(enc.depth, enc.patch_size[0], recorded)
        return ViTUNETR(enc, self.num_classes, blocks, feature_size=hp.feature_size)

    def _build_encoder(
        self,
        init_from: str | None,
        arch: dict[str, Any] | None,
        in_chans: int,
        img_size: int,
        spatial_dims: int,
    ) -> tuple[VisionTransformerEncoder, list[int]]:
        """(encoder, recorded block numbers): fresh from ``arch``, or the pretrained one of a
        checkpoint/export with the input bands matched by name."""
        if init_from is None:
            kw = {**ENCODER_DEFAULTS, **{k: v for k, v in (arch or {}).items() if k != "family"}}
            enc = VisionTransformerEncoder(
                img_size=img_size, in_chans=in_chans, spatial_dims=spatial_dims, **kw
            )
            return enc, []
        enc, report, source = load_encoder(init_from, self.bands, img_size, spatial_dims)
        log.info("encoder initialized from %s; %s", init_from, report)
        self.source_metadata = dict(source)
        return enc, recorded_block_numbers(source)

    def checkpoint_metadata(self) -> dict[str, Any]:
        """Plain-data description stored in every checkpoint: the encoder's architecture (so
        ``predict`` and ``export`` rebuild it without the ``init_from`` file), the decoder's
        blocks, the bands and their statistics, the class table."""
        source = self.source_metadata
        hp = self.hparams
        return {
            "format": 1,
            "kind": FINETUNING_KIND,
            **self.encoder_metadata(),
            "encoder_arch": dict(source.get("encoder_arch") or {}),
            "model_name": source.get("model_name") or source.get("pretraining_model"),
            "init_from": hp.init_from,
            "spatial_dims": hp.spatial_dims,
            "in_chans": hp.in_chans,
            "head": hp.head,
            "skip_blocks": list(self.net.skip_blocks),
            "intermediate_blocks": list(self.net.skip_blocks),
            "feature_size": hp.feature_size,
            "bands": list(self.bands),
            "mean": list(hp.mean or []),
            "std": list(hp.std or []),
            "classes": dict(hp.classes),
            "modality": "ct" if hp.spatial_dims == 3 else "rs",
            "profile": source.get("profile"),
            "window_hu": source.get("window_hu"),
        }

    def encoder_metadata(self) -> dict[str, Any]:
        """The encoder's architecture (``family`` and sizes for a Swin), image and patch size."""
        hp = self.hparams
        if self.family == "vit":
            enc = self.net.encoder
            arch = {**{k: getattr(enc, k) for k in ARCH_KEYS}, "patch_size": enc.patch_size[0]}
        else:
            arch = self.net.encoder_record()
        patch = int(arch["patch_size"])
        return {
            "encoder": arch,
            "img_size": [int(hp.img_size)] * int(hp.spatial_dims),
            "patch_size": [patch] * int(hp.spatial_dims),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_METADATA_KEY] = self.checkpoint_metadata()

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with layer-wise lr decay on the encoder; no weight decay on norms/biases/tokens."""
        prefix = getattr(self.net, "encoder_prefix", "encoder.")
        own = getattr(self.net.encoder, "no_weight_decay", set)()  # MONAI's Swin has none
        groups = param_groups(
            self.net,
            self.hparams.lr,
            self.hparams.weight_decay,
            no_weight_decay=[f"{prefix}{n}" for n in own],
            layer_decay=self.hparams.layer_decay,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(total * self.hparams.warmup_fraction)
        return adamw_warmup_cosine(groups, self.hparams.lr, warmup, total)

    def on_train_epoch_start(self) -> None:
        if self.freeze_encoder:
            self.net.encoder.eval()  # probing: no dropout/drop-path updates in the encoder

    # -- steps ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [B, K, *S]

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        if not torch.isfinite(ce):  # every pixel ignored
            ce = logits.sum() * 0
        if self.hparams.dice_weight > 0:
            ce = ce + self.hparams.dice_weight * masked_soft_dice_loss(
                logits, target, self.ignore_index
            )
        return ce

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        target = batch["label"].long()
        if target.dim() == batch["image"].dim():  # CT: [B, 1, D, H, W] → [B, D, H, W]
            target = target[:, 0]
        logits = self(batch["image"])
        loss = self.loss(logits, target)
        self.log("train/loss", loss, prog_bar=True, batch_size=target.shape[0])
        return loss

    def infer(self, image: torch.Tensor) -> torch.Tensor:
        """Logits for an image of the training size, or sliding-window logits for a larger one."""
        roi = self.hparams.img_size
        if all(s == roi for s in image.shape[2:]):
            return self(image)
        return sliding_window_inference(
            image,
            roi_size=(roi,) * self.hparams.spatial_dims,
            sw_batch_size=self.hparams.sw_batch_size,
            predictor=self,
            overlap=self.hparams.sw_overlap,
            mode="gaussian",
        )

    def _eval_step(self, batch: dict[str, Any], confmat: MulticlassConfusionMatrix, stage: str):
        target = batch["label"].long()
        if target.dim() == batch["image"].dim():
            target = target[:, 0]
        logits = self.infer(batch["image"])
        self.log(f"{stage}/loss", self.loss(logits, target), batch_size=target.shape[0])
        confmat.update(seg_predict.predicted_ids(logits, self.class_ids), target)

    def _eval_epoch_end(self, confmat: MulticlassConfusionMatrix, stage: str) -> None:
        scores = scores_from_confusion(confmat.compute().cpu(), self.class_ids)
        confmat.reset()
        self.log(f"{stage}/miou", scores["miou"].float())
        self.log(f"{stage}/mdice", scores["mdice"].float())
        self.log(f"{stage}/accuracy", scores["accuracy"].float())
        for name, iou, dice in zip(self.class_names, scores["iou"], scores["dice"], strict=True):
            if not torch.isnan(iou):
                self.log(f"{stage}/iou_{name}", iou.float())
                self.log(f"{stage}/dice_{name}", dice.float())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_confmat, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end(self.val_confmat, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_confmat, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end(self.test_confmat, "test")

    def on_predict_start(self) -> None:
        self.predict_written: list[dict[str, Any]] = []
        self.predict_failed: list[tuple[str, str]] = []

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """One input file → written class map + overlay (:mod:`geomed_mim.tasks.seg_predict`),
        each file printed; an input that cannot be predicted (wrong band count, unreadable) is
        reported with its name and the others go on."""
        path = batch["path"]
        try:
            written = self._predict_file(path)
        except seg_predict.INPUT_ERRORS as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            print(f"error: {path}: {reason}", file=sys.stderr, flush=True)
            self.predict_failed.append((path, reason))
            return {"path": path, "error": reason}
        keys = ("classes", "probabilities", "overlay", "color_table")
        files = [written[k] for k in keys if written.get(k)]
        print(f"{path} → {', '.join(files)}", flush=True)
        self.predict_written.append(written)
        return written

    def _predict_file(self, path: str) -> dict[str, Any]:
        dm = self.trainer.datamodule
        hp = self.hparams
        classes = dict(hp.classes)

        def predict_fn(x: torch.Tensor) -> torch.Tensor:
            return self(x.to(self.device))

        common = {"num_classes": self.num_classes, "output_dir": dm.predict_output,
                  "overlap": hp.sw_overlap, "classes": classes}  # fmt: skip
        if hp.spatial_dims == 2:
            return seg_predict.predict_rs_scene(
                predict_fn, path, dm.attrs, hp.mean or dm.mean, hp.std or dm.std,
                tile=hp.img_size, write_probabilities=hp.write_probabilities, **common,
            )  # fmt: skip
        return seg_predict.predict_ct_volume(
            predict_fn, path, spacing=dm.spacing, window=dm.window, roi=hp.img_size,
            sw_batch_size=hp.sw_batch_size, **common,
        )  # fmt: skip
