"""Scene-classification probes on frozen encoder features, and the training loop they share.

* :func:`knn_predict`: weighted k-NN on L2-normalised pooled features, as DINO's ``eval_knn``
  (Caron et al. 2021): cosine similarity, the ``k`` nearest training images vote with weight
  ``exp(similarity / temperature)``;
* :class:`LinearProbe`: a linear layer on pooled features standardised with the training
  features' mean and std;
* :class:`AttentiveProbe`: learnable queries cross-attend over the patch tokens, then a linear
  layer ("Attention, Please! Revisiting Attentive Probing for Masked Image Modeling"): it can
  read one region of the image, which mean pooling averages away;
* :func:`train_steps`: a fixed number of optimizer steps, the held-out split scored every
  ``check_every`` steps and the best state kept (the segmentation protocol's early stopping).

Metrics are top-1 accuracy and macro-F1 for single-label datasets
(:func:`classification_scores`), mean average precision for multi-label ones
(:func:`multilabel_scores`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import average_precision_score, f1_score
from torch import nn

KNN_K = 20
KNN_TEMPERATURE = 0.07


def classification_scores(
    target: np.ndarray, pred: np.ndarray, num_classes: int
) -> dict[str, float]:
    """``top1`` accuracy and ``macro_f1`` over all ``num_classes`` classes (a class absent from
    both target and prediction counts as F1 0, as scikit-learn's ``zero_division=0``)."""
    target, pred = np.asarray(target), np.asarray(pred)
    f1 = f1_score(target, pred, labels=list(range(num_classes)), average="macro", zero_division=0)
    return {"top1": float(np.mean(target == pred)), "macro_f1": float(f1)}


def multilabel_scores(target: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``map``: the mean over classes of their average precision (classes without a positive
    in ``target`` [N, K] left out: their AP is undefined); ``micro_map``: AP of all (image,
    class) pairs pooled. ``scores`` [N, K]: any monotone per-class score (logits, votes)."""
    target, scores = np.asarray(target), np.asarray(scores, dtype=np.float64)
    present = target.sum(axis=0) > 0
    if not present.any():
        return {"map": float("nan"), "micro_map": float("nan")}
    macro = average_precision_score(target[:, present], scores[:, present], average="macro")
    micro = average_precision_score(target, scores, average="micro")
    return {"map": float(macro), "micro_map": float(micro)}


def knn_votes(
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    test_features: torch.Tensor,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk: int = 1024,
) -> torch.Tensor:
    """Per test feature [M, D], the ``exp(similarity / temperature)``-weighted share of its
    ``k`` nearest (cosine) training features [N, D] that carry each label of ``train_targets``
    [N, K] (multi-hot): [M, K] scores in [0, 1] (DINO's vote, for multi-label data)."""
    train = nn.functional.normalize(train_features.float(), dim=1)
    targets = train_targets.float()
    k = min(k, train.shape[0])
    out = []
    for start in range(0, test_features.shape[0], chunk):
        test = nn.functional.normalize(test_features[start : start + chunk].float(), dim=1)
        sim, idx = (test @ train.T).topk(k, dim=1)  # [m, k]
        weights = (sim / temperature).exp()
        out.append((weights.unsqueeze(2) * targets[idx]).sum(1) / weights.sum(1, keepdim=True))
    return torch.cat(out)


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class of each test feature [M, D] by temperature-weighted voting of its ``k`` nearest
    (cosine) training features [N, D] (``k`` capped at N); ties go to the lower class id."""
    train = nn.functional.normalize(train_features.float(), dim=1)
    k = min(k, train.shape[0])
    preds = []
    for start in range(0, test_features.shape[0], chunk):  # [chunk, N] similarities at a time
        test = nn.functional.normalize(test_features[start : start + chunk].float(), dim=1)
        sim, idx = (test @ train.T).topk(k, dim=1)  # [m, k]
        votes = torch.zeros(test.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[idx].long(), (sim / temperature).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


class LinearProbe(nn.Module):
    """A linear classifier on pooled features [B, D], standardised by fixed training statistics
    (so one learning rate suits encoders of any feature scale)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float().clamp_min(1e-6))
        self.linear = nn.Linear(mean.numel(), num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear((pooled.float() - self.mean) / self.std)


def attention_heads(dim: int, wanted: int = 8) -> int:
    """The most heads up to ``wanted`` that divide ``dim``."""
    return next(h for h in range(min(wanted, dim), 0, -1) if dim % h == 0)


class AttentiveProbe(nn.Module):
    """Learnable queries [Q, D] cross-attend over the (layer-normed) patch tokens [B, N, D]; the
    attended queries, averaged, go through a linear layer."""

    def __init__(self, dim: int, num_classes: int, num_queries: int = 1, heads: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim) * 0.02)
        self.attn = nn.MultiheadAttention(dim, attention_heads(dim, heads), batch_first=True)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(tokens.float())
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        attended, _ = self.attn(queries, tokens, tokens, need_weights=False)  # [B, Q, D]
        return self.head(attended.mean(dim=1))


@dataclass
class Trained:
    step: int  # the step of the kept state
    select_score: float  # its score on the held-out split (NaN without one)


def train_steps(
    model: nn.Module,
    batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    check_every: int,
    lr: float,
    seed: int,
    select_score: Callable[[], float] | None,
    weight_decay: float = 0.0,
    multilabel: bool = False,
) -> Trained:
    """``steps`` AdamW steps (cosine-decayed lr) on cross-entropy (``multilabel``: binary
    cross-entropy per class) over ``batch(generator)`` (inputs, labels); with ``select_score``
    (held-out score of the model as it is), score every ``check_every`` steps and at the end
    and load the best state (the first of equals)."""
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    best, best_step, state = -math.inf, steps, None
    for step in range(1, steps + 1):
        model.train()
        inputs, labels = batch(generator)
        logits = model(inputs)
        if multilabel:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
        else:
            loss = nn.functional.cross_entropy(logits, labels.long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if select_score is not None and (step % check_every == 0 or step == steps):
            model.eval()
            score = select_score()
            if score > best:  # NaN never wins
                best, best_step = score, step
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.eval()
    if state is not None:
        model.load_state_dict(state)
    return Trained(best_step, best if state is not None else math.nan)
