"""Hand-computed checks for segssl.losses.

Two-class logits [0, ln 3] give p = [0.25, 0.75], so CE is -ln 0.75 for class 1 and -ln 0.25
for class 0; [ln 3, 0] gives the mirror image. Expected values below are derived from that.
"""

from __future__ import annotations

import math

import pytest
import torch

from segssl.losses import (
    dice_loss,
    masked_cross_entropy,
    soft_cross_entropy,
    softmax_mse,
    weighted_cross_entropy,
)

LN3 = math.log(3.0)
CE_75 = -math.log(0.75)  # target = likely class
CE_25 = -math.log(0.25)  # target = unlikely class


def row(*pixels: list[float]) -> torch.Tensor:
    """Logits [1, C, 1, W] from a list of per-pixel logit vectors."""
    return torch.tensor(pixels, dtype=torch.float32).t().reshape(1, len(pixels[0]), 1, len(pixels))


def lab(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long).view(1, 1, -1)


def mask(*values: bool) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool).view(1, 1, -1)


def test_masked_ce_mean_over_valid_and_invalid_ignored() -> None:
    logits = row([0.0, LN3], [0.0, LN3], [0.0, LN3])
    target = lab(1, 0, 255)  # 255 at an invalid pixel must not be gathered
    loss = masked_cross_entropy(logits, target, mask(True, True, False))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx((CE_75 + CE_25) / 2, rel=1e-6)
    only_first = masked_cross_entropy(logits, target, mask(True, False, False))
    assert only_first.item() == pytest.approx(CE_75, rel=1e-6)


def test_masked_ce_gradient_and_zero_for_invalid() -> None:
    logits = row([0.0, LN3], [0.0, LN3]).requires_grad_()
    masked_cross_entropy(logits, lab(1, 0), mask(True, False)).backward()
    # d CE / d logits = p - onehot = [0.25, 0.75] - [0, 1], divided by 1 valid pixel.
    assert torch.allclose(logits.grad[0, :, 0, 0], torch.tensor([0.25, -0.25]), atol=1e-6)
    assert torch.equal(logits.grad[0, :, 0, 1], torch.zeros(2))


def test_nan_at_invalid_pixel_does_not_poison_loss() -> None:
    logits = row([0.0, LN3], [float("nan"), 1.0])
    target, valid = lab(1, 0), mask(True, False)
    assert masked_cross_entropy(logits, target, valid).item() == pytest.approx(CE_75, rel=1e-6)
    w = torch.ones(1, 1, 2)
    assert weighted_cross_entropy(logits, target, w, valid).item() == pytest.approx(CE_75)
    half = torch.full((1, 2, 1, 2), 0.5)
    assert math.isfinite(soft_cross_entropy(logits, half, valid).item())
    assert math.isfinite(softmax_mse(logits, torch.zeros(1, 2, 1, 2), valid).item())
    assert math.isfinite(dice_loss(logits, target, valid).item())


def test_no_valid_pixel_gives_zero_connected_loss() -> None:
    logits = row([0.0, LN3], [-2.0, 1.0]).requires_grad_()
    none = mask(False, False)
    for loss in (
        masked_cross_entropy(logits, lab(1, 0), none),
        weighted_cross_entropy(logits, lab(1, 0), torch.ones(1, 1, 2), none),
        soft_cross_entropy(logits, torch.full((1, 2, 1, 2), 0.5), none),
        softmax_mse(logits, torch.zeros(1, 2, 1, 2), none),
        dice_loss(logits, lab(1, 0), none),
    ):
        assert loss.item() == 0.0 and loss.requires_grad
        logits.grad = None
        loss.backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_weighted_ce_normalised_by_all_valid_pixels() -> None:
    logits = row([0.0, LN3], [LN3, 0.0], [LN3, 0.0], [0.0, LN3])
    target = lab(1, 0, 0, 1)
    weight = torch.tensor([1.0, 0.0, 0.5, 1.0]).view(1, 1, 4)
    valid = mask(True, True, True, False)
    loss = weighted_cross_entropy(logits, target, weight, valid)
    # (1*CE_75 + 0*CE_75 + 0.5*CE_75) / 3 valid pixels -- not / 2 confident ones.
    assert loss.item() == pytest.approx(1.5 * CE_75 / 3, rel=1e-6)


def test_weighted_ce_zero_weight_pixel_labelled_0_does_not_count() -> None:
    # Pixel 1 is low-confidence; its (argmax) label 0 is wildly wrong for these logits.
    logits = row([0.0, LN3], [-50.0, 50.0])
    target, valid = lab(1, 0), mask(True, True)
    loss = weighted_cross_entropy(logits, target, torch.tensor([1.0, 0.0]).view(1, 1, 2), valid)
    assert loss.item() == pytest.approx(CE_75 / 2, rel=1e-6)


def test_weighted_ce_gradient_scaled_by_weight_and_weight_detached() -> None:
    logits = row([0.0, LN3], [0.0, LN3]).requires_grad_()
    weight = torch.tensor([0.5, 1.0]).view(1, 1, 2).requires_grad_()
    weighted_cross_entropy(logits, lab(1, 1), weight, mask(True, False)).backward()
    assert torch.allclose(logits.grad[0, :, 0, 0], torch.tensor([0.125, -0.125]), atol=1e-6)
    assert torch.equal(logits.grad[0, :, 0, 1], torch.zeros(2))
    assert weight.grad is None


def test_soft_ce_hand_value_and_onehot_matches_hard_ce() -> None:
    logits = row([0.0, LN3], [LN3, 0.0])
    half = torch.full((1, 2, 1, 2), 0.5)
    loss = soft_cross_entropy(logits, half, mask(True, False))
    assert loss.item() == pytest.approx(0.5 * CE_25 + 0.5 * CE_75, rel=1e-6)
    onehot = row([0.0, 1.0], [0.0, 1.0])  # both pixels: all mass on class 1
    soft = soft_cross_entropy(logits, onehot, mask(True, True))
    assert soft.item() == pytest.approx((CE_75 + CE_25) / 2, rel=1e-6)
    hard = masked_cross_entropy(logits, lab(1, 1), mask(True, True))
    assert soft.item() == pytest.approx(hard.item(), rel=1e-6)


def test_softmax_mse_value_and_teacher_detached() -> None:
    student = row([0.0, LN3], [0.0, 5.0]).requires_grad_()
    teacher = torch.zeros(1, 2, 1, 2, requires_grad=True)  # p = [0.5, 0.5]
    loss = softmax_mse(student, teacher, mask(True, False))
    # (0.25 - 0.5)^2 + (0.75 - 0.5)^2 = 0.125; pixel 2 invalid.
    assert loss.item() == pytest.approx(0.125, rel=1e-6)
    loss.backward()
    assert teacher.grad is None
    assert torch.equal(student.grad[0, :, 0, 1], torch.zeros(2))
    assert student.grad[0, 1, 0, 0] > 0  # pushes p1 = 0.75 down towards 0.5


def test_dice_hand_value() -> None:
    logits = row([0.0, LN3], [LN3, 0.0])  # p = [.25,.75] and [.75,.25]
    target = lab(1, 0)
    valid = mask(True, True)
    # Per class: intersection 0.75, sum p = 1, sum y = 1.
    assert dice_loss(logits, target, valid).item() == pytest.approx(1 - 2.5 / 3, rel=1e-5)
    assert dice_loss(logits, target, valid, eps=0.0).item() == pytest.approx(0.25, rel=1e-5)


def test_dice_skips_absent_classes_and_invalid_pixels() -> None:
    # Third class never present nor predicted (p ~ e^-100): must not be averaged in, which
    # would give (1 - 2.5/3) * 2/3 instead of 1 - 2.5/3.
    logits = row([0.0, LN3, -100.0], [LN3, 0.0, -100.0], [0.0, 0.0, 9.0])
    target = lab(1, 0, 1)
    loss = dice_loss(logits, target, mask(True, True, False))
    assert loss.item() == pytest.approx(1 - 2.5 / 3, rel=1e-5)


def test_dice_gradient_zero_for_invalid_pixels() -> None:
    logits = row([0.0, LN3], [LN3, 0.0], [1.0, 2.0]).requires_grad_()
    dice_loss(logits, lab(1, 0, 0), mask(True, True, False)).backward()
    assert torch.equal(logits.grad[0, :, 0, 2], torch.zeros(2))
    assert logits.grad[0, 1, 0, 0] < 0  # raising the correct class' logit lowers the loss


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_computed_in_float32(dtype: torch.dtype) -> None:
    logits32 = row([0.0, LN3], [LN3, 0.0], [0.5, -0.5])
    logits = logits32.to(dtype).requires_grad_()
    ref = logits.detach().float()
    target, valid = lab(1, 1, 0), mask(True, True, False)
    weight = torch.tensor([1.0, 0.5, 1.0]).view(1, 1, 3)
    probs = torch.full((1, 2, 1, 3), 0.5)
    pairs = [
        (masked_cross_entropy(logits, target, valid), masked_cross_entropy(ref, target, valid)),
        (
            weighted_cross_entropy(logits, target, weight, valid),
            weighted_cross_entropy(ref, target, weight, valid),
        ),
        (soft_cross_entropy(logits, probs, valid), soft_cross_entropy(ref, probs, valid)),
        (softmax_mse(logits, ref.flip(1), valid), softmax_mse(ref, ref.flip(1), valid)),
        (dice_loss(logits, target, valid), dice_loss(ref, target, valid)),
    ]
    for got, want in pairs:
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
    sum(g for g, _ in pairs).backward()
    assert logits.grad is not None and logits.grad.dtype == dtype


def test_shape_errors() -> None:
    logits = row([0.0, LN3], [LN3, 0.0])
    with pytest.raises(ValueError):
        masked_cross_entropy(logits, lab(1, 0), mask(True))
    with pytest.raises(ValueError):
        masked_cross_entropy(logits, lab(1, 0), torch.ones(1, 1, 2))
