"""Non-deep baselines, scored exactly like the segmenters: what a user would try first.

* ``logistic_regression``: a per-pixel classifier on the raw (calibrated) bands — standardized
  on the training pixels, then multinomial logistic regression (scikit-learn);
* ``spectral_index``: a normalized difference ``(a - b) / (a + b)`` of two named bands (NDWI for
  water: green and NIR; NDVI for vegetation: NIR and red) against one class, with the threshold
  that maximizes that class's IoU on the training pixels;
* ``hu_window`` (CT): per organ, the HU interval holding the central 96 % of the organ's training
  voxels; a voxel inside it is called that organ (each organ scored on its own, one-vs-rest).

Pixels come as :class:`Pixels`: ``values`` [N, C] in physical units (reflectance, HU) and
``labels`` [N] class ids, ignored pixels already dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from geomed_mim.tasks.segmentation import scores_from_confusion

INDEX_BANDS = {  # (a, b) of (a - b) / (a + b); high values mean the class
    "ndwi": ("B03", "B08"),  # McFeeters 1996: green vs NIR, water is high
    "ndvi": ("B08", "B04"),  # NIR vs red, vegetation is high
}
BASELINE_KINDS = ("logistic_regression", "spectral_index", "hu_window")
THRESHOLD_CANDIDATES = 256  # quantiles of the training index values tried as thresholds


@dataclass
class Pixels:
    values: np.ndarray  # [N, C] float, physical units
    labels: np.ndarray  # [N] int, class ids (ignored pixels dropped)


def confusion(target: np.ndarray, pred: np.ndarray, num_classes: int) -> torch.Tensor:
    """[K, K] counts, rows target, columns prediction."""
    flat = target.astype(np.int64) * num_classes + pred.astype(np.int64)
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return torch.from_numpy(counts.reshape(num_classes, num_classes))


def multiclass_scores(
    target: np.ndarray, pred: np.ndarray, class_ids: list[int], names: list[str]
) -> dict[str, float]:
    """``miou``, ``mdice`` and ``iou_<name>``/``dice_<name>`` from the segmenters' formula."""
    s = scores_from_confusion(confusion(target, pred, max(class_ids) + 1), class_ids)
    out = {"miou": float(s["miou"]), "mdice": float(s["mdice"])}
    for name, iou, dice in zip(names, s["iou"].tolist(), s["dice"].tolist(), strict=True):
        out[f"iou_{name}"], out[f"dice_{name}"] = iou, dice
    return out


def binary_scores(target: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(IoU, Dice) of boolean masks; NaN when both are empty."""
    tp = float(np.sum(target & pred))
    union = float(np.sum(target | pred))
    if union == 0:
        return float("nan"), float("nan")
    return tp / union, 2 * tp / (union + tp)


def logistic_regression(
    train: Pixels, test: Pixels, class_ids: list[int], names: list[str], seed: int
) -> dict[str, float]:
    """Standardize on the training pixels, multinomial logistic regression, score ``test``."""
    model = pixel_classifier(train, seed)
    return multiclass_scores(test.labels, model.predict(test.values), class_ids, names)


def pixel_classifier(train: Pixels, seed: int) -> Any:
    """Standardization on the training pixels, then multinomial logistic regression, fitted
    (scikit-learn's pipeline: ``predict`` takes pixels [N, C] in the same units)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=seed))
    return model.fit(train.values, train.labels)


def normalized_difference(values: np.ndarray, bands: list[str], index: str) -> np.ndarray:
    """``(a - b) / (a + b)`` per pixel (0 where ``a + b`` is 0)."""
    a, b = (values[:, bands.index(name)] for name in INDEX_BANDS[index])
    total = a + b
    return np.where(total != 0, (a - b) / np.where(total != 0, total, 1), 0.0)


def fit_threshold(score: np.ndarray, positive: np.ndarray) -> float:
    """The threshold ``t`` (``score > t`` means the class) with the best training IoU; the
    candidates are quantiles of the training scores (ties: the lowest)."""
    candidates = np.unique(np.quantile(score, np.linspace(0, 1, THRESHOLD_CANDIDATES)))
    ious = [binary_scores(positive, score > t)[0] for t in candidates]
    return float(candidates[int(np.nanargmax(ious))])


def spectral_index(
    train: Pixels, test: Pixels, bands: list[str], index: str, class_id: int, name: str
) -> dict[str, float]:
    """Threshold fitted on ``train``; ``iou_<name>``/``dice_<name>`` on ``test``."""
    t = fit_threshold(normalized_difference(train.values, bands, index), train.labels == class_id)
    pred = normalized_difference(test.values, bands, index) > t
    iou, dice = binary_scores(test.labels == class_id, pred)
    return {f"iou_{name}": iou, f"dice_{name}": dice, "threshold": t}


def hu_window(
    train: Pixels, test: Pixels, class_ids: list[int], names: list[str], background: int = 0
) -> dict[str, float]:
    """Per organ (every class but ``background``): HU interval of its central 96 % training
    voxels; ``dice_<name>`` one-vs-rest on ``test`` and their mean ``mdice``."""
    out: dict[str, Any] = {}
    hu_train, hu_test = train.values[:, 0], test.values[:, 0]
    for cid, name in zip(class_ids, names, strict=True):
        inside = hu_train[train.labels == cid]
        if cid == background or inside.size == 0:
            continue
        lo, hi = np.percentile(inside, [2, 98])
        iou, dice = binary_scores(test.labels == cid, (hu_test >= lo) & (hu_test <= hi))
        out[f"iou_{name}"], out[f"dice_{name}"] = iou, dice
    dices = [v for k, v in out.items() if k.startswith("dice_") and not np.isnan(v)]
    out["mdice"] = float(np.mean(dices)) if dices else float("nan")
    return out
