"""Hand-computed checks for segssl.pseudo (expected values derived in comments)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from segssl.losses import weighted_cross_entropy
from segssl.pseudo import (
    align_logits,
    apply_cutmix,
    class_mean_thresholds,
    class_pixel_counts,
    classwise_thresholds,
    classwise_weights,
    confidence_and_label,
    cutmix_boxes,
    ema_decay,
    ema_update_,
    hard_weights,
    pseudo_label_stats,
    rampup,
    soft_gaussian_weights,
    update_class_confidence,
    update_classwise_state,
    update_confidence_stats,
    update_prediction_mean,
)

LN3 = math.log(3.0)


def flat(*values: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).view(1, 1, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_confidence_and_label(dtype: torch.dtype) -> None:
    logits = torch.tensor([[0.0, LN3], [LN3, 0.0]]).t().reshape(1, 2, 1, 2).to(dtype)
    conf, label = confidence_and_label(logits.requires_grad_())
    assert conf.dtype == torch.float32 and label.dtype == torch.long
    assert not conf.requires_grad
    assert torch.allclose(conf, flat(0.75, 0.75), atol=1e-2 if dtype == torch.bfloat16 else 1e-6)
    assert torch.equal(label, torch.tensor([[[1, 0]]]))


def test_low_confidence_pixel_gets_weight_0_and_no_class_0_loss() -> None:
    # Pixel 0: confident class 1 (p = 0.96). Pixel 1: uncertain (p = 0.5) -> arg-max class 0.
    teacher = torch.tensor([[0.0, math.log(24.0)], [0.0, 0.0]]).t().reshape(1, 2, 1, 2)
    conf, label = confidence_and_label(teacher)
    weight = hard_weights(conf, 0.95)
    assert torch.equal(label, torch.tensor([[[1, 0]]]))
    assert torch.equal(weight, flat(1.0, 0.0)) and weight.dtype == torch.float32
    # Student strongly predicts class 1 at pixel 1: a class-0 loss there would be ~50.
    student = torch.tensor([[0.0, LN3], [-25.0, 25.0]]).t().reshape(1, 2, 1, 2)
    valid = torch.ones(1, 1, 2, dtype=torch.bool)
    loss = weighted_cross_entropy(student, label, weight, valid)
    assert loss.item() == pytest.approx(-math.log(0.75) / 2, rel=1e-6)


def test_hard_weights_threshold_inclusive() -> None:
    assert torch.equal(hard_weights(flat(0.95, 0.9499, 1.0), 0.95), flat(1.0, 0.0, 1.0))


def test_soft_gaussian_weights() -> None:
    conf = flat(0.9, 0.7, 0.5, 0.6)
    w = soft_gaussian_weights(conf, 0.7, 0.01)
    # Below the mean: exp(-(0.5-0.7)^2 / 0.02) = exp(-2), exp(-(0.1)^2 / 0.02) = exp(-0.5).
    expected = flat(1.0, 1.0, math.exp(-2.0), math.exp(-0.5))
    assert torch.allclose(w, expected, atol=1e-6)
    w_t = soft_gaussian_weights(conf, torch.tensor(0.7), torch.tensor(0.01))
    assert torch.allclose(w_t, expected, atol=1e-6)
    # Zero variance is clamped to eps: effectively a hard threshold, no NaN.
    w0 = soft_gaussian_weights(conf, 0.7, 0.0)
    assert torch.equal(w0, flat(1.0, 1.0, 0.0, 0.0))


def test_update_confidence_stats() -> None:
    conf = flat(0.9, 0.7, 0.2)
    valid = torch.tensor([[[True, True, False]]])
    mean, var = update_confidence_stats(0.5, 0.1, conf, valid, momentum=0.9)
    # Batch over valid: mean 0.8, population var 0.01 -> 0.9*0.5 + 0.1*0.8, 0.9*0.1 + 0.1*0.01.
    assert mean.item() == pytest.approx(0.53, abs=1e-6)
    assert var.item() == pytest.approx(0.091, abs=1e-6)
    same = update_confidence_stats(mean, var, conf, torch.zeros_like(valid), momentum=0.9)
    assert same[0].item() == pytest.approx(0.53, abs=1e-6)
    assert same[1].item() == pytest.approx(0.091, abs=1e-6)


def test_update_classwise_state_and_thresholds() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.0, 1.0]]).t().reshape(1, 2, 1, 3)
    valid = torch.tensor([[[True, True, False]]])
    tau0, cp0 = torch.tensor(0.5), torch.tensor([0.5, 0.5])
    tau, cp = update_classwise_state(tau0, cp0, probs, valid, momentum=0.5)
    # mean max-prob = (0.9 + 0.6)/2 = 0.75; mean prob = [0.75, 0.25].
    assert tau.item() == pytest.approx(0.625, abs=1e-6)
    assert torch.allclose(cp, torch.tensor([0.625, 0.375]), atol=1e-6)
    assert torch.equal(tau0, torch.tensor(0.5))  # pure: inputs untouched
    thr = classwise_thresholds(tau, cp)
    assert torch.allclose(thr, torch.tensor([0.625, 0.375]), atol=1e-6)
    empty = update_classwise_state(tau, cp, probs, torch.zeros_like(valid), momentum=0.5)
    assert torch.equal(empty[0], tau) and torch.equal(empty[1], cp)


def test_classwise_thresholds_let_rare_class_pass() -> None:
    thr = classwise_thresholds(torch.tensor(0.95), torch.tensor([0.9, 0.1]))
    assert torch.allclose(thr, torch.tensor([0.95, 0.95 / 9]), atol=1e-6)
    conf = flat(0.6, 0.6, 0.97)
    label = torch.tensor([[[1, 0, 0]]])
    assert torch.equal(classwise_weights(conf, label, thr), flat(1.0, 0.0, 1.0))
    assert torch.equal(hard_weights(conf, 0.95), flat(0.0, 0.0, 1.0))


def test_update_class_confidence_by_hand() -> None:
    # 5 pixels: class 0 predicted at 0.9 and 0.7, class 1 at 0.6, class 0 at 0.2 but invalid,
    # class 2 never predicted
    conf = torch.tensor([[[0.9, 0.7, 0.6, 0.2, 0.99]]])
    label = torch.tensor([[[0, 0, 1, 0, 1]]])
    valid = torch.tensor([[[True, True, True, False, False]]])
    old = torch.tensor([0.95, 0.95, 0.95])
    new = update_class_confidence(old, conf, label, valid, momentum=0.5)
    # class 0: 0.5*0.95 + 0.5*(0.9+0.7)/2 = 0.875; class 1: 0.5*0.95 + 0.5*0.6 = 0.775; class 2 kept
    assert torch.allclose(new, torch.tensor([0.875, 0.775, 0.95]), atol=1e-6)
    assert torch.equal(old, torch.tensor([0.95, 0.95, 0.95]))  # pure
    # pixel frequency does not enter: one confident pixel of a class weighs like a thousand
    many = update_class_confidence(old, torch.full((1, 10, 100), 0.9), torch.zeros(1, 10, 100, dtype=torch.long),
                                   torch.ones(1, 10, 100, dtype=torch.bool), momentum=0.5)
    assert many[0].item() == pytest.approx(0.925, abs=1e-5)  # float32 sum of 1000 values


def test_class_mean_thresholds_cap_floor_and_weights() -> None:
    thr = class_mean_thresholds(torch.tensor([0.98, 0.7, 0.3]), cap=0.95, floor=0.5)
    assert torch.allclose(thr, torch.tensor([0.95, 0.7, 0.5]))
    conf = flat(0.96, 0.94, 0.75, 0.65, 0.55, 0.45)
    label = torch.tensor([[[0, 0, 1, 1, 2, 2]]])
    # class 0 keeps the global 0.95; class 1 passes above its mean 0.7; class 2 only above the floor
    assert torch.equal(classwise_weights(conf, label, thr), flat(1.0, 0.0, 1.0, 0.0, 1.0, 0.0))
    assert torch.allclose(class_mean_thresholds(torch.tensor([0.2]), cap=0.3, floor=0.6), torch.tensor([0.3]))  # floor above cap: cap


def test_class_pixel_counts_skip_invalid_pixels() -> None:
    mask = torch.tensor([[[0, 2, 2, 11], [1, 2, 0, 0]]])  # 11: an ignore value, never valid
    valid = torch.tensor([[[True, True, True, False], [True, True, False, False]]])
    assert torch.equal(class_pixel_counts(mask, valid, 3), torch.tensor([1.0, 1.0, 3.0]))


def test_update_prediction_mean_first_batch_replaces_then_ema() -> None:
    # two valid pixels with probabilities (0.8, 0.2) and (0.4, 0.6); a third, invalid, is ignored
    probs = torch.tensor([[0.8, 0.4, 0.0], [0.2, 0.6, 1.0]]).view(1, 2, 1, 3)
    valid = torch.tensor([[[True, True, False]]])
    uniform = torch.tensor([0.5, 0.5])
    first = update_prediction_mean(uniform, torch.tensor(0), probs, valid, momentum=0.9)
    assert torch.allclose(first, torch.tensor([0.6, 0.4]))  # the batch mean, not 0.9*0.5 + 0.1*0.6
    # later: 0.9 * (0.6, 0.4) + 0.1 * (0.6, 0.4) stays; with other data it moves by 10%
    later = update_prediction_mean(first, torch.tensor(1), torch.tensor([1.0, 0.0]).view(1, 2, 1, 1),
                                   torch.ones(1, 1, 1, dtype=torch.bool), momentum=0.9)
    assert torch.allclose(later, torch.tensor([0.64, 0.36]))
    empty = update_prediction_mean(first, torch.tensor(1), probs, torch.zeros_like(valid), momentum=0.9)
    assert torch.equal(empty, first)  # no valid pixel: unchanged


def test_align_logits_by_hand() -> None:
    # ReMixMatch: p * target / predicted, renormalised. The teacher says (0.8, 0.2) on average while the
    # labeled masks hold (0.5, 0.5): a pixel at (0.8, 0.2) becomes (0.4, 0.1) / 0.5 = (0.5, 0.5)
    logits = torch.tensor([math.log(0.8), math.log(0.2)]).view(1, 2, 1, 1)
    aligned = align_logits(logits, torch.tensor([0.5, 0.5]), torch.tensor([0.8, 0.2]))
    assert torch.allclose(aligned.softmax(1).flatten(), torch.tensor([0.5, 0.5]))
    # a pixel at (0.9, 0.1): (0.5625, 0.25) / 0.8125 -> (0.6923, 0.3077); its arg-max stays, its confidence drops
    aligned = align_logits(torch.tensor([math.log(0.9), math.log(0.1)]).view(1, 2, 1, 1),
                           torch.tensor([0.5, 0.5]), torch.tensor([0.8, 0.2]))
    assert torch.allclose(aligned.softmax(1).flatten(), torch.tensor([0.5625, 0.25]) / 0.8125)
    same = torch.randn(2, 3, 4, 5)
    assert torch.allclose(align_logits(same, torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.2, 0.3, 0.5])), same)
    # a class absent from the labeled masks stays finite (eps), far down
    out = align_logits(torch.zeros(1, 2, 1, 1), torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]))
    assert torch.isfinite(out).all() and out.softmax(1)[0, 1].item() < 1e-5


def test_cutmix_p0_no_box_p1_always_box_in_range() -> None:
    g = torch.Generator().manual_seed(0)
    assert not cutmix_boxes(8, 40, 50, p=0.0, generator=g).any()
    h, w = 64, 80
    boxes = cutmix_boxes(200, h, w, p=1.0, generator=g)
    assert boxes.shape == (200, h, w) and boxes.dtype == torch.bool
    for box in boxes:
        rows, cols = box.any(dim=1), box.any(dim=0)
        n_r, n_c = int(rows.sum()), int(cols.sum())
        assert n_r > 0 and n_c > 0
        assert int(box.sum()) == n_r * n_c  # one solid rectangle
        # Rounding each side moves the area by at most about half a pixel per side.
        slack = (n_r + n_c) / 2 + 1
        assert 0.02 * h * w - slack <= n_r * n_c <= 0.4 * h * w + slack
        assert 0.3 * n_c - 2 <= n_r <= n_c / 0.3 + 2 or n_r == h or n_c == w


def test_cutmix_boxes_reproducible_and_mixed_probability() -> None:
    a = cutmix_boxes(64, 16, 16, p=0.5, generator=torch.Generator().manual_seed(3))
    b = cutmix_boxes(64, 16, 16, p=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with_box = int(a.flatten(1).any(dim=1).sum())
    assert 10 < with_box < 54


def test_apply_cutmix_same_box_for_image_label_conf_valid() -> None:
    g = torch.Generator().manual_seed(1)
    b, h, w = 4, 12, 10
    box = cutmix_boxes(b, h, w, p=1.0, generator=g)
    box[0] = False  # also cover an image without a box
    img = apply_cutmix(box, torch.zeros(b, 3, h, w), torch.ones(b, 3, h, w))
    label = apply_cutmix(box, torch.zeros(b, h, w, dtype=torch.long), torch.full((b, h, w), 7))
    conf = apply_cutmix(box, torch.full((b, h, w), 0.1), torch.full((b, h, w), 0.9))
    valid = apply_cutmix(box, torch.ones(b, h, w, dtype=torch.bool), torch.zeros(b, h, w).bool())
    assert label.dtype == torch.long and valid.dtype == torch.bool
    for c in range(3):
        assert torch.equal(img[:, c] == 1, box)
    assert torch.equal(label == 7, box)
    assert torch.equal(label == 0, ~box)
    assert torch.equal(conf > 0.5, box)
    assert torch.equal(valid, ~box)
    assert not img[0].any()


def test_apply_cutmix_shape_errors() -> None:
    box = torch.zeros(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError):
        apply_cutmix(box, torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
    with pytest.raises(ValueError):
        apply_cutmix(box, torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4, 5))


def test_rampup_endpoints() -> None:
    assert rampup(0, 10) == pytest.approx(math.exp(-5.0))
    assert rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert rampup(10, 10) == 1.0
    assert rampup(25, 10) == 1.0
    assert rampup(-3, 10) == pytest.approx(math.exp(-5.0))
    assert rampup(0, 0) == 1.0 and rampup(5, -1) == 1.0
    assert isinstance(rampup(3, 10), float)


def test_ema_decay_warmup() -> None:
    assert ema_decay(0, 0.99) == 0.0
    assert ema_decay(1, 0.99) == pytest.approx(0.5)
    assert ema_decay(9, 0.99) == pytest.approx(0.9)
    assert ema_decay(99, 0.99) == pytest.approx(0.99)
    assert ema_decay(10_000, 0.99) == 0.99


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))


def test_ema_update_linear_and_batchnorm() -> None:
    teacher, student = _net(), _net()
    with torch.no_grad():
        teacher[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        teacher[0].bias.fill_(0.0)
        student[0].weight.copy_(torch.tensor([[3.0, 4.0]]))
        student[0].bias.fill_(1.0)
        teacher[1].weight.fill_(1.0)
        student[1].weight.fill_(2.0)
        student[1].running_mean.fill_(0.7)
        student[1].running_var.fill_(3.0)
        student[1].num_batches_tracked.fill_(5)
    ema_update_(teacher, student, decay=0.75)
    # t = 0.75 t + 0.25 s
    assert torch.allclose(teacher[0].weight, torch.tensor([[1.5, 2.5]]))
    assert torch.allclose(teacher[0].bias, torch.tensor([0.25]))
    assert torch.allclose(teacher[1].weight, torch.tensor([1.25]))
    # Buffers copied, not averaged.
    assert torch.equal(teacher[1].running_mean, torch.tensor([0.7]))
    assert torch.equal(teacher[1].running_var, torch.tensor([3.0]))
    assert teacher[1].num_batches_tracked.item() == 5
    assert torch.equal(student[0].weight, torch.tensor([[3.0, 4.0]]))  # student untouched
    assert teacher[0].weight.grad_fn is None and teacher[0].weight.grad is None
    ema_update_(teacher, student, decay=0.0)  # decay 0 = copy
    assert torch.equal(teacher[0].weight, student[0].weight)


def test_ema_update_can_keep_the_teachers_own_buffers() -> None:
    teacher, student = _net(), _net()
    with torch.no_grad():
        teacher[1].running_var.fill_(0.5)
        student[1].running_var.fill_(3.0)
        student[1].num_batches_tracked.fill_(5)
        student[0].weight.fill_(2.0)
        teacher[0].weight.fill_(0.0)
    ema_update_(teacher, student, decay=0.5, copy_buffers=False)
    assert torch.allclose(teacher[0].weight, torch.tensor([[1.0, 1.0]]))  # parameters still averaged
    assert torch.equal(teacher[1].running_var, torch.tensor([0.5]))
    assert teacher[1].num_batches_tracked.item() == 0


def test_pseudo_label_stats_2x2() -> None:
    label = torch.tensor([[[0, 1], [1, 1]]])
    weight = torch.tensor([[[1.0, 0.0], [1.0, 0.5]]])
    valid = torch.tensor([[[True, True], [True, False]]])
    conf = torch.tensor([[[0.9, 0.4], [0.8, 0.99]]])
    hidden = torch.tensor([[[0, 0], [1, 255]]])
    s = pseudo_label_stats(label, weight, valid, 3, hidden_mask=hidden, conf=conf)
    # 3 valid pixels, weight mass 2; class 0: one pixel w=1; class 1: w 0 and 1; class 2 absent.
    assert s["mask_ratio"] == pytest.approx(2 / 3)
    assert s["mask_ratio/0"] == pytest.approx(1.0)
    assert s["mask_ratio/1"] == pytest.approx(0.5)
    assert "mask_ratio/2" not in s
    assert s["mean_conf"] == pytest.approx(0.7)
    # Used pixels (0,0) and (1,0) are both right; pixel (0,1) is wrong but has weight 0.
    assert s["pl_acc"] == pytest.approx(1.0)
    assert s["pl_acc_all"] == pytest.approx(2 / 3)
    assert all(type(v) is float for v in s.values())
    hv = torch.tensor([[[True, False], [False, True]]])
    s2 = pseudo_label_stats(label, weight, valid, 3, hidden_mask=hidden, hidden_valid=hv)
    assert s2["pl_acc_all"] == pytest.approx(1.0) and s2["pl_acc"] == pytest.approx(1.0)
    assert "mean_conf" not in s2


def test_pseudo_label_stats_empty_is_nan_free() -> None:
    label = torch.zeros(1, 2, 2, dtype=torch.long)
    none = torch.zeros(1, 2, 2, dtype=torch.bool)
    ones = torch.ones(1, 2, 2)
    s = pseudo_label_stats(label, ones, none, 2, hidden_mask=label, conf=none.float())
    assert s == {"mask_ratio": 0.0}
