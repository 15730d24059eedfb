"""Confusion-matrix metrics against a hand-computed 3-class example.

target: [0 0 0 0 1 1 1 2 2 2]
pred:   [0 0 1 2 1 1 0 2 2 1]

matrix[true, pred]     pred0 pred1 pred2 | gt
    true0                2     1     1   |  4
    true1                1     2     0   |  3
    true2                0     1     2   |  3
    pred sums            3     4     3   | 10

tp = [2, 2, 2]; union = gt + pred - tp = [5, 5, 4]
IoU  = [2/5, 2/5, 2/4] = [0.4, 0.4, 0.5]          mIoU  = 1.3 / 3 = 0.43333...
Dice = 2tp/(gt+pred) = [4/7, 4/7, 4/6]             mDice = (8/7 + 2/3) / 3 = 38/63
pixel accuracy = 6 / 10 = 0.6
"""
from __future__ import annotations

import math

import pytest
import torch

from segssl.engine.metrics import ConfusionMatrix, format_table, metrics_from_confusion

TARGET = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PRED = torch.tensor([0, 0, 1, 2, 1, 1, 0, 2, 2, 1])
EXPECTED_MATRIX = [[2, 1, 1], [1, 2, 0], [0, 1, 2]]


def test_confusion_matrix_counts() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    assert cm.matrix.tolist() == EXPECTED_MATRIX
    assert cm.matrix.dtype == torch.int64


def test_hand_computed_metrics() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    m = cm.compute()
    assert m["iou"] == pytest.approx([0.4, 0.4, 0.5])
    assert m["dice"] == pytest.approx([4 / 7, 4 / 7, 2 / 3])
    assert m["miou"] == pytest.approx(1.3 / 3)
    assert m["mdice"] == pytest.approx(38 / 63)
    assert m["pixel_acc"] == pytest.approx(0.6)
    assert m["support"] == [4, 3, 3]


def test_batched_updates_accumulate_and_shapes_do_not_matter() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED[:5].view(1, 1, 5), TARGET[:5].view(1, 1, 5))
    cm.update(PRED[5:].view(1, 5, 1), TARGET[5:].view(1, 5, 1))
    assert cm.matrix.tolist() == EXPECTED_MATRIX
    cm2 = ConfusionMatrix(3)
    cm2.update(PRED.view(2, 5), TARGET.view(2, 5))
    assert torch.equal(cm2.matrix, cm.matrix)


def test_valid_mask_excludes_pixels() -> None:
    # dropping pixels 2 and 3 (true 0 predicted as 1 and 2):
    # matrix [[2,0,0],[1,2,0],[0,1,2]]; gt [2,3,3]; pred [3,3,2]; union [3,4,3]
    # IoU [2/3, 1/2, 2/3]; pixel acc 6/8
    valid = torch.ones(10, dtype=torch.bool)
    valid[2:4] = False
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET, valid)
    assert cm.matrix.tolist() == [[2, 0, 0], [1, 2, 0], [0, 1, 2]]
    m = cm.compute()
    assert m["iou"] == pytest.approx([2 / 3, 0.5, 2 / 3])
    assert m["pixel_acc"] == pytest.approx(0.75)
    assert m["support"] == [2, 3, 3]


def test_valid_as_uint8_and_out_of_range_targets_are_ignored() -> None:
    target = torch.cat([TARGET, torch.tensor([255, -1])])
    pred = torch.cat([PRED, torch.tensor([0, 1])])
    cm = ConfusionMatrix(3)
    cm.update(pred, target, torch.ones(12, dtype=torch.uint8))
    assert cm.matrix.tolist() == EXPECTED_MATRIX


def test_absent_class_is_nan_and_left_out_of_means() -> None:
    cm = ConfusionMatrix(4)  # class 3 never occurs in target or prediction
    cm.update(PRED, TARGET)
    m = cm.compute()
    assert math.isnan(m["iou"][3]) and math.isnan(m["dice"][3])
    assert m["iou"][:3] == pytest.approx([0.4, 0.4, 0.5])
    assert m["miou"] == pytest.approx(1.3 / 3)  # not (1.3 + 0) / 4
    assert m["mdice"] == pytest.approx(38 / 63)
    assert m["support"] == [4, 3, 3, 0]


def test_class_predicted_but_absent_from_ground_truth_counts_as_zero() -> None:
    # true [0 0 0 0], pred [0 0 0 1]: IoU0 = 3/4, IoU1 = 0/1 -> mIoU = 0.375; Dice0 = 6/7, Dice1 = 0
    m = metrics_from_confusion(torch.tensor([[3, 1], [0, 0]]))
    assert m["iou"] == pytest.approx([0.75, 0.0])
    assert m["miou"] == pytest.approx(0.375)
    assert m["mdice"] == pytest.approx(3 / 7)
    assert m["pixel_acc"] == pytest.approx(0.75)


def test_empty_matrix_gives_zeros_not_nan() -> None:
    m = metrics_from_confusion(torch.zeros(3, 3, dtype=torch.int64))
    assert m["miou"] == 0.0 and m["mdice"] == 0.0 and m["pixel_acc"] == 0.0
    assert all(math.isnan(v) for v in m["iou"])


def test_format_table_contains_class_names_and_percentages() -> None:
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    names = ["background", "membrane", "nucleus", "a_very_long_class_name"]
    table = format_table(cm.compute(), names)
    lines = table.splitlines()
    assert len(lines) == 1 + 4 + 1  # header, one row per class, mean
    for name, line in zip(names, lines[1:5]):
        assert line.startswith(name)
    assert "40.00" in lines[1] and "57.14" in lines[1] and lines[1].rstrip().endswith("4")
    assert "50.00" in lines[3] and "66.67" in lines[3]
    assert "-" in lines[4] and "nan" not in table.lower()  # absent class shown as a dash
    assert lines[5].startswith("mean") and "43.33" in lines[5] and "60.32" in lines[5] and "60.00" in lines[5]
