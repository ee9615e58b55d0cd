"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU and pixel accuracy (numpy only).

The confusion matrix ``C`` is [K, K] int64 with rows = ground truth, columns = prediction:
``C[g, p]`` counts the pixels of ground-truth class g predicted as class p. It is summed over the
whole dataset (IoU is computed once from the total, not averaged per image).

* Ground-truth pixels equal to ``IGNORE_INDEX`` (255), or outside ``[0, K)``, are not counted
  (they are reported as ignored).
* ``IoU_k = C[k, k] / (sum_g C[g, k] + sum_p C[k, p] - C[k, k])`` (intersection over union).
* A class absent from both the ground truth and the prediction (union 0) has no IoU (NaN) and is
  left out of the mean; a class only predicted has IoU 0 and counts. mIoU is the mean over the
  classes present in the ground truth or the prediction: the same number as detectron2's
  ``SemSegEvaluator``, which CAT-Seg's published figures use.
* Pixel accuracy = trace(C) / sum(C), over the counted pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255  # ground-truth value of pixels that are not scored


def confusion_matrix(
    prediction: np.ndarray, ground_truth: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """prediction [H, W] and ground truth [H, W] integer labels -> [K, K] int64 (rows = ground truth).

    Ground-truth pixels equal to ``ignore_index`` or outside [0, K) are skipped. Raises ValueError for
    arrays of different shapes or a prediction outside [0, K) (a model answers only class indices).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if prediction.shape != ground_truth.shape:
        raise ValueError(
            f"prediction {list(prediction.shape)} and ground truth {list(ground_truth.shape)} differ in shape"
        )
    predicted = prediction.astype(np.int64, copy=False).ravel()
    truth = ground_truth.astype(np.int64, copy=False).ravel()
    if predicted.size and (predicted.min() < 0 or predicted.max() >= num_classes):
        raise ValueError(
            f"prediction has labels in [{predicted.min()}, {predicted.max()}], outside [0, {num_classes})"
        )
    counted = (truth >= 0) & (truth < num_classes) & (truth != ignore_index)
    flat = truth[counted] * num_classes + predicted[counted]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def ignored_pixels(ground_truth: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> int:
    """How many ground-truth pixels [H, W] are not scored (``ignore_index``, or outside [0, K))."""
    truth = ground_truth.astype(np.int64, copy=False)
    return int(((truth < 0) | (truth >= num_classes) | (truth == ignore_index)).sum())


@dataclass(frozen=True)
class Scores:
    """What a [K, K] confusion matrix says.

    iou:            [K] float64 per-class IoU; NaN for a class absent from ground truth and prediction
    miou:           mean of the non-NaN entries of ``iou`` (NaN when there is none)
    pixel_accuracy: correctly labelled / counted pixels (NaN when no pixel was counted)
    gt_pixels:      [K] int64 ground-truth pixels per class (row sums)
    pred_pixels:    [K] int64 predicted pixels per class (column sums, counted pixels only)
    """

    iou: np.ndarray
    miou: float
    pixel_accuracy: float
    gt_pixels: np.ndarray
    pred_pixels: np.ndarray

    @property
    def scored_classes(self) -> int:
        """How many classes enter the mean (present in ground truth or prediction)."""
        return int(np.count_nonzero(~np.isnan(self.iou)))


def scores(confusion: np.ndarray) -> Scores:
    """[K, K] confusion matrix (rows = ground truth) -> :class:`Scores`."""
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"a confusion matrix is [K, K], got {list(confusion.shape)}")
    matrix = confusion.astype(np.int64, copy=False)
    hits = np.diag(matrix)  # [K]
    gt_pixels = matrix.sum(axis=1)  # [K]
    pred_pixels = matrix.sum(axis=0)  # [K]
    union = gt_pixels + pred_pixels - hits  # [K]
    iou = np.full(matrix.shape[0], np.nan)
    present = union > 0
    iou[present] = hits[present] / union[present]
    total = int(matrix.sum())
    return Scores(
        iou=iou,
        miou=float(np.mean(iou[present])) if present.any() else float("nan"),
        pixel_accuracy=float(hits.sum() / total) if total else float("nan"),
        gt_pixels=gt_pixels,
        pred_pixels=pred_pixels,
    )
