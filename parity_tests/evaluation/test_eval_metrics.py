"""The metric on cases worked by hand: confusion matrix, ignored pixels, absent classes, mIoU."""

from __future__ import annotations

import math

import numpy as np
import pytest

from escnet_client.evaluation import IGNORE_INDEX, confusion_matrix, ignored_pixels, scores

# Ground truth and prediction [2, 4]; 255 is ignored, 7 is outside [0, K) for K = 3 and 4.
GT = np.array([[0, 0, 1, IGNORE_INDEX], [1, 2, 2, 7]])
PRED = np.array([[0, 1, 1, 0], [1, 2, 0, 2]])
# Counted pixels (gt -> pred): 0->0, 0->1, 1->1, 1->1, 2->2, 2->0. Rows = ground truth:
#        pred 0  1  2
# gt 0      [1, 1, 0]    row sum 2
# gt 1      [0, 2, 0]    row sum 2
# gt 2      [1, 0, 1]    row sum 2
#  col sum   2  3  1
# IoU_0 = 1 / (2 + 2 - 1) = 1/3;  IoU_1 = 2 / (2 + 3 - 2) = 2/3;  IoU_2 = 1 / (2 + 1 - 1) = 1/2
# mIoU = (1/3 + 2/3 + 1/2) / 3 = 1/2;  pixel accuracy = (1 + 2 + 1) / 6 = 2/3
HAND_CONFUSION = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])


def test_confusion_matrix_by_hand() -> None:
    confusion = confusion_matrix(PRED, GT, 3)
    assert confusion.dtype == np.int64 and confusion.shape == (3, 3)
    np.testing.assert_array_equal(confusion, HAND_CONFUSION)
    assert ignored_pixels(GT, 3) == 2  # the 255 and the 7


def test_scores_by_hand() -> None:
    result = scores(HAND_CONFUSION)
    np.testing.assert_allclose(result.iou, [1 / 3, 2 / 3, 1 / 2])
    assert result.miou == pytest.approx(0.5)
    assert result.pixel_accuracy == pytest.approx(4 / 6)
    np.testing.assert_array_equal(result.gt_pixels, [2, 2, 2])
    np.testing.assert_array_equal(result.pred_pixels, [2, 3, 1])
    assert result.scored_classes == 3


def test_class_absent_from_both_is_left_out() -> None:
    # K = 4: class 3 is in neither ground truth nor prediction -> IoU NaN, mean over 3 classes.
    confusion = confusion_matrix(PRED, GT, 4)
    np.testing.assert_array_equal(confusion[:3, :3], HAND_CONFUSION)
    assert confusion[3].sum() == 0 and confusion[:, 3].sum() == 0
    result = scores(confusion)
    assert math.isnan(result.iou[3]) and result.scored_classes == 3
    assert result.miou == pytest.approx(0.5)


def test_class_only_predicted_counts_as_zero() -> None:
    # K = 4 and the pixel (1, 2), ground truth 2, predicted 3 instead of 0:
    #        pred 0  1  2  3
    # gt 0      [1, 1, 0, 0]
    # gt 1      [0, 2, 0, 0]
    # gt 2      [0, 0, 1, 1]
    # IoU_0 = 1 / (2 + 1 - 1) = 1/2, IoU_1 = 2/3, IoU_2 = 1 / (2 + 1 - 1) = 1/2, IoU_3 = 0 / (0 + 1) = 0
    # mIoU = (1/2 + 2/3 + 1/2 + 0) / 4 = 5/12
    prediction = PRED.copy()
    prediction[1, 2] = 3
    result = scores(confusion_matrix(prediction, GT, 4))
    np.testing.assert_allclose(result.iou, [1 / 2, 2 / 3, 1 / 2, 0.0])
    assert result.miou == pytest.approx(5 / 12)


def test_all_ignored_gives_nan() -> None:
    confusion = confusion_matrix(np.zeros((2, 2), np.int32), np.full((2, 2), IGNORE_INDEX), 3)
    assert confusion.sum() == 0
    result = scores(confusion)
    assert math.isnan(result.miou) and math.isnan(result.pixel_accuracy) and result.scored_classes == 0


def test_matrices_add_up_over_images() -> None:
    # The dataset's matrix is the sum of the images' matrices: IoU of the total, not a mean of IoUs.
    first = confusion_matrix(PRED[:1], GT[:1], 3)
    second = confusion_matrix(PRED[1:], GT[1:], 3)
    np.testing.assert_array_equal(first + second, HAND_CONFUSION)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(PRED[:, :3], GT, 3)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(PRED + 1, GT, 3)  # a prediction 3 with K = 3
    with pytest.raises(ValueError, match=r"\[K, K\]"):
        scores(np.zeros((2, 3), np.int64))
