"""Pixel-wise segmentation losses with explicit validity masks.

Every function takes a boolean ``valid`` map ``[B, H, W]`` instead of an ignore index: padding,
"void" labels and pixels that fall outside an augmented crop are all expressed the same way, and
pseudo-label losses can combine several masks without sentinel values leaking into a gather.
Logits may be fp16/bf16 (autocast); the maths runs in float32 because log-softmax and squared
probability differences lose too much precision in half types. Every loss returns a 0-dim
float32 tensor that stays attached to the graph even when no pixel is valid, so a batch without
labelled pixels yields a zero loss whose ``.backward()`` still works (and gives zero gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "masked_cross_entropy",
    "weighted_cross_entropy",
    "soft_cross_entropy",
    "softmax_mse",
    "dice_loss",
]


def _check(logits: Tensor, valid: Tensor) -> None:
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B, C, H, W], got shape {tuple(logits.shape)}")
    b, _, h, w = logits.shape
    if tuple(valid.shape) != (b, h, w):
        raise ValueError(f"valid must be [B, H, W] = {(b, h, w)}, got {tuple(valid.shape)}")
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")


def _pixel_ce(logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Per-pixel CE in float32; targets at invalid pixels (e.g. 255) are replaced by 0 so the
    gather never goes out of range -- their loss is discarded by the caller anyway."""
    _check(logits, valid)
    safe = torch.where(valid, target.long(), torch.zeros_like(target, dtype=torch.long))
    return F.cross_entropy(logits.float(), safe, reduction="none")


def _masked_mean(per_pixel: Tensor, valid: Tensor) -> Tensor:
    """Mean over valid pixels; ``torch.where`` (not multiplication) so a NaN/inf at an invalid
    pixel cannot poison the sum, and ``clamp_min(1)`` keeps the empty case at 0 and in-graph."""
    total = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
    return total / valid.sum().clamp_min(1).to(total.dtype)


def masked_cross_entropy(logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean cross-entropy over valid pixels (supervised loss on labelled images)."""
    return _masked_mean(_pixel_ce(logits, target, valid), valid)


def weighted_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor, valid: Tensor) -> Tensor:
    """``sum(ce * weight * valid) / max(valid.sum(), 1)`` -- the pseudo-label loss.

    The denominator counts ALL valid pixels, not only those whose weight is non-zero
    (FixMatch/UniMatch convention): when few pixels pass the confidence threshold the loss
    shrinks, so unreliable batches have a small effective weight instead of a few pixels being
    amplified. ``weight`` (hard 0/1 or soft) is treated as a constant and detached.
    """
    ce = _pixel_ce(logits, target, valid)
    if tuple(weight.shape) != tuple(ce.shape):
        raise ValueError(f"weight must be [B, H, W] = {tuple(ce.shape)}, got {tuple(weight.shape)}")
    return _masked_mean(ce * weight.detach().float(), valid)


def soft_cross_entropy(logits: Tensor, target_probs: Tensor, valid: Tensor) -> Tensor:
    """Mean over valid pixels of ``-sum_c q_c log p_c`` for soft targets ``q`` [B, C, H, W].

    Used for distillation / sharpened teacher targets; ``target_probs`` is detached because it
    is a target, never something to optimise through.
    """
    _check(logits, valid)
    if tuple(target_probs.shape) != tuple(logits.shape):
        raise ValueError(
            f"target_probs must match logits {tuple(logits.shape)}, got {tuple(target_probs.shape)}"
        )
    log_p = F.log_softmax(logits.float(), dim=1)
    per_pixel = -(target_probs.detach().float() * log_p).sum(dim=1)
    return _masked_mean(per_pixel, valid)


def softmax_mse(student_logits: Tensor, teacher_logits: Tensor, valid: Tensor) -> Tensor:
    """Mean-Teacher consistency: mean over valid pixels of ``sum_c (p_s - p_t)^2``.

    MSE between probabilities (not logits) is bounded, so early noisy teachers cannot produce
    huge gradients; the teacher is detached because it is updated by EMA, not by backprop.
    """
    _check(student_logits, valid)
    if tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise ValueError(
            f"teacher_logits must match student_logits {tuple(student_logits.shape)}, "
            f"got {tuple(teacher_logits.shape)}"
        )
    p_s = F.softmax(student_logits.float(), dim=1)
    p_t = F.softmax(teacher_logits.detach().float(), dim=1)
    return _masked_mean(((p_s - p_t) ** 2).sum(dim=1), valid)


def dice_loss(logits: Tensor, target: Tensor, valid: Tensor, eps: float = 1.0) -> Tensor:
    """Soft multi-class Dice: ``1 - mean_c (2 |P_c Y_c| + eps) / (|P_c| + |Y_c| + eps)``.

    Sums run over all valid pixels of the batch. Only classes present in the target or
    predicted (arg-max) on some valid pixel are averaged: absent classes would otherwise score
    a near-perfect Dice and dilute the loss on the classes that matter. Dice counteracts class
    imbalance, which plain CE does not. Returns 0 (in-graph) when no class qualifies.
    """
    _check(logits, valid)
    num_classes = logits.shape[1]
    probs = F.softmax(logits.float(), dim=1)
    v = valid.unsqueeze(1)  # [B, 1, H, W]
    safe = torch.where(valid, target.long(), torch.zeros_like(target, dtype=torch.long))
    onehot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float() * v
    probs_v = torch.where(v, probs, torch.zeros_like(probs))  # where: NaN-safe forward
    inter = (probs_v * onehot).sum(dim=(0, 2, 3))
    denom = probs_v.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    predicted = F.one_hot(probs.detach().argmax(dim=1), num_classes).permute(0, 3, 1, 2)
    present = (onehot.sum(dim=(0, 2, 3)) > 0) | ((predicted * v).sum(dim=(0, 2, 3)) > 0)
    # Absent classes get denominator 1 so eps=0 cannot create 0/0 (NaN gradients via where).
    dice = (2.0 * inter + eps) / torch.where(present, denom + eps, torch.ones_like(denom))
    n = present.sum().clamp_min(1).to(dice.dtype)
    return (torch.where(present, 1.0 - dice, torch.zeros_like(dice))).sum() / n
