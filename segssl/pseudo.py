"""Pseudo-labelling, confidence weighting, CutMix and teacher-EMA helpers.

All functions are pure (state such as EMA statistics is passed in and returned) so each
semi-supervised method owns its state explicitly and can checkpoint it. Pseudo-labels are always
computed without gradient: they are targets, and letting the loss push the teacher's confidence
up would be confirmation bias by construction. Randomness (CutMix) only comes from an explicit
``torch.Generator`` so runs are reproducible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "confidence_and_label",
    "hard_weights",
    "soft_gaussian_weights",
    "update_confidence_stats",
    "update_classwise_state",
    "classwise_thresholds",
    "classwise_weights",
    "update_class_confidence",
    "class_mean_thresholds",
    "class_pixel_counts",
    "update_prediction_mean",
    "align_logits",
    "cutmix_boxes",
    "apply_cutmix",
    "rampup",
    "ema_decay",
    "ema_update_",
    "pseudo_label_stats",
]


def confidence_and_label(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Max softmax probability (float32) and arg-max label of ``[B, C, H, W]`` logits, detached."""
    probs = F.softmax(logits.detach().float(), dim=1)
    conf, label = probs.max(dim=1)
    return conf, label


def hard_weights(conf: Tensor, threshold: float) -> Tensor:
    """FixMatch mask ``conf >= threshold`` as float32, ready to multiply a per-pixel loss."""
    return (conf >= threshold).float()


def soft_gaussian_weights(
    conf: Tensor, mean: float | Tensor, var: float | Tensor, eps: float = 1e-6
) -> Tensor:
    """SoftMatch truncated Gaussian: 1 where ``conf >= mean``, else ``exp(-(conf-mean)^2/(2 var))``.

    Unlike a hard threshold, low-confidence pixels still contribute a little, trading a few noisy
    labels for much higher pseudo-label quantity; ``var`` is clamped to ``eps`` so a collapsed
    variance degrades to a hard threshold instead of dividing by zero.
    """
    conf = conf.float()
    mean_t = torch.as_tensor(mean, dtype=conf.dtype, device=conf.device)
    var_t = torch.as_tensor(var, dtype=conf.dtype, device=conf.device).clamp_min(eps)
    gauss = torch.exp(-((conf - mean_t) ** 2) / (2.0 * var_t))
    return torch.where(conf >= mean_t, torch.ones_like(conf), gauss)


def _ema(old: Tensor, new: Tensor, momentum: float, has_data: Tensor) -> Tensor:
    """``m*old + (1-m)*new``, but keep ``old`` when the batch had no valid pixel (no host sync)."""
    return torch.where(has_data, momentum * old + (1.0 - momentum) * new, old)


def update_confidence_stats(
    mean: float | Tensor, var: float | Tensor, conf: Tensor, valid: Tensor, momentum: float
) -> tuple[Tensor, Tensor]:
    """EMA of the mean and (population) variance of confidence over valid pixels (SoftMatch).

    Returns new 0-dim float32 tensors; the inputs are unchanged. A batch with no valid pixel
    leaves the statistics as they were rather than pulling them towards 0.
    """
    conf = conf.detach().float()
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=conf.device)
    var_t = torch.as_tensor(var, dtype=torch.float32, device=conf.device)
    n = valid.sum()
    denom = n.clamp_min(1).float()
    zero = torch.zeros_like(conf)
    batch_mean = torch.where(valid, conf, zero).sum() / denom
    batch_var = torch.where(valid, (conf - batch_mean) ** 2, zero).sum() / denom
    has = n > 0
    return _ema(mean_t, batch_mean, momentum, has), _ema(var_t, batch_var, momentum, has)


def mean_probability(probs: Tensor, valid: Tensor) -> Tensor:
    """Mean probability vector [C] of ``probs`` [B, C, H, W] over the valid pixels (zeros if none)."""
    return (probs * valid.unsqueeze(1).float()).sum(dim=(0, 2, 3)) / valid.sum().clamp_min(1).float()


def update_classwise_state(
    global_tau: Tensor, class_prob: Tensor, probs: Tensor, valid: Tensor, momentum: float
) -> tuple[Tensor, Tensor]:
    """FreeMatch self-adaptive state from softmax ``probs`` [B, C, H, W] (valid pixels only).

    ``global_tau`` tracks the EMA of the mean max-probability (how confident the model is overall),
    ``class_prob`` the EMA of the mean probability vector (how much mass each class gets).
    FreeMatch initialises both at ``1/C``. An empty batch leaves the state unchanged.
    """
    probs = probs.detach().float()
    n = valid.sum()
    denom = n.clamp_min(1).float()
    mean_max = (probs.max(dim=1).values * valid.float()).sum() / denom
    mean_vec = mean_probability(probs, valid)
    has = n > 0
    tau = torch.as_tensor(global_tau, dtype=torch.float32, device=probs.device)
    cp = torch.as_tensor(class_prob, dtype=torch.float32, device=probs.device)
    return _ema(tau, mean_max, momentum, has), _ema(cp, mean_vec, momentum, has)


def classwise_thresholds(global_tau: Tensor, class_prob: Tensor) -> Tensor:
    """Per-class thresholds ``class_prob / max(class_prob) * global_tau`` [C].

    Classes the model rarely predicts get proportionally lower thresholds, so rare classes can
    still produce pseudo-labels where a fixed global threshold (e.g. 0.95) would starve them.
    """
    return class_prob / class_prob.max().clamp_min(1e-12) * global_tau


def update_class_confidence(class_conf: Tensor, conf: Tensor, label: Tensor, valid: Tensor, momentum: float) -> Tensor:
    """EMA per class of the mean confidence of the valid pixels pseudo-labelled as that class [C].

    Unlike FreeMatch's mean probability vector, this statistic does not follow how many pixels a
    class covers: a pole's pixels are judged by how sure the model is of poles, not by how rare
    poles are. A class absent from the batch keeps its value."""
    c = class_conf.numel()
    counts = class_pixel_counts(label, valid, c)
    sums = torch.bincount(label[valid].long().reshape(-1), weights=conf.detach()[valid].float().reshape(-1), minlength=c)
    old = torch.as_tensor(class_conf, dtype=torch.float32, device=conf.device)
    return _ema(old, sums / counts.clamp_min(1), momentum, counts > 0)


def class_mean_thresholds(class_conf: Tensor, cap: float, floor: float) -> Tensor:
    """Per-class thresholds ``clamp(class_conf, floor, cap)`` [C]: a class the model predicts with
    high confidence keeps the global threshold ``cap``; a class it is less sure of accepts its
    pixels above its own mean confidence, but never below ``floor``."""
    return class_conf.clamp(min=min(floor, cap), max=cap)


def class_pixel_counts(mask: Tensor, valid: Tensor, num_classes: int) -> Tensor:
    """How many valid pixels of each class ``mask`` holds [C] (float32; padding and ignore excluded)."""
    return torch.bincount(mask[valid].long().reshape(-1), minlength=num_classes)[:num_classes].float()


def update_prediction_mean(mean: Tensor, updates: Tensor, probs: Tensor, valid: Tensor, momentum: float) -> Tensor:
    """EMA of the mean softmax vector over valid pixels [C]; the first batch with data (``updates``,
    the number of earlier batches with data, is 0) replaces the initial value outright, so the estimate is the batch's own from step one
    rather than mostly the uniform start (an EMA at 0.99 needs ~100 steps to forget it)."""
    batch_mean = mean_probability(probs.detach().float(), valid)
    old = torch.as_tensor(mean, dtype=torch.float32, device=probs.device)
    blended = torch.where(updates > 0, momentum * old + (1.0 - momentum) * batch_mean, batch_mean)
    return torch.where(valid.any(), blended, old)


def align_logits(logits: Tensor, target: Tensor, predicted: Tensor, eps: float = 1e-6) -> Tensor:
    """ReMixMatch's distribution alignment ``normalize(p * target / predicted)`` in logit form:
    ``logits + log(target) - log(predicted)`` (softmax does the normalising). A class the teacher
    predicts more often than the labeled masks hold it is damped, a neglected one lifted; with
    ``target == predicted`` the logits are unchanged. ``eps`` keeps an unseen class finite."""
    shift = target.float().clamp_min(eps).log() - predicted.float().clamp_min(eps).log()
    return logits.detach().float() + shift.to(logits.device).view(1, -1, *([1] * (logits.dim() - 2)))


def classwise_weights(conf: Tensor, label: Tensor, thresholds: Tensor) -> Tensor:
    """Float mask ``conf >= thresholds[label]``: each pixel is judged by its class' threshold."""
    return (conf >= thresholds.to(conf.device)[label.long()]).float()


def cutmix_boxes(
    batch: int,
    height: int,
    width: int,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Per-image CutMix rectangles as a bool map [B, H, W] (UniMatch's box sampler).

    With probability ``p`` an image gets one box whose area fraction is uniform in ``area`` and
    whose aspect ratio (h/w) is uniform in ``ratio``; its sides are rounded and clipped to the
    image, and its position is uniform among positions that keep it inside. Otherwise the row is
    all False. Random numbers are drawn on the CPU from ``generator`` only (reproducible), then
    the mask is moved to ``device``.
    """
    r = torch.rand(batch, 5, generator=generator)
    use = r[:, 0] < p
    frac = area[0] + (area[1] - area[0]) * r[:, 1]
    aspect = ratio[0] + (ratio[1] - ratio[0]) * r[:, 2]
    pixels = frac * (height * width)
    bh = torch.sqrt(pixels * aspect).round().clamp(1, height).long()
    bw = torch.sqrt(pixels / aspect).round().clamp(1, width).long()
    top = (r[:, 3] * (height - bh + 1).float()).floor().long().clamp_max(height - bh)
    left = (r[:, 4] * (width - bw + 1).float()).floor().long().clamp_max(width - bw)
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    in_rows = (rows >= top.view(-1, 1, 1)) & (rows < (top + bh).view(-1, 1, 1))
    in_cols = (cols >= left.view(-1, 1, 1)) & (cols < (left + bw).view(-1, 1, 1))
    box = in_rows & in_cols & use.view(-1, 1, 1)
    return box if device is None else box.to(device)


def apply_cutmix(box: Tensor, base: Tensor, other: Tensor) -> Tensor:
    """Take ``other`` inside ``box`` and ``base`` elsewhere.

    Works for images [B, C, H, W] (box broadcast over channels) and per-pixel maps [B, H, W] of
    any dtype. Use the SAME box for the image, its pseudo-label, confidence/weight and valid map,
    otherwise labels no longer describe the pixels they supervise.
    """
    if base.shape != other.shape:
        raise ValueError(f"base {tuple(base.shape)} and other {tuple(other.shape)} differ")
    if box.dim() != 3 or box.dtype != torch.bool:
        raise ValueError(f"box must be a bool [B, H, W] tensor, got {box.dtype} {tuple(box.shape)}")
    if base.dim() == 4:
        mask = box.unsqueeze(1)
    elif base.dim() == 3:
        mask = box
    else:
        raise ValueError(f"expected [B, C, H, W] or [B, H, W], got {tuple(base.shape)}")
    b, h, w = box.shape
    if (base.shape[0], base.shape[-2], base.shape[-1]) != (b, h, w):
        raise ValueError(f"box {tuple(box.shape)} does not match tensor {tuple(base.shape)}")
    return torch.where(mask.to(base.device), other, base)


def rampup(step: int, length: int) -> float:
    """Sigmoid ramp-up ``exp(-5 (1 - t)^2)``, ``t = clip(step/length, 0, 1)``: delays the
    unsupervised loss until the model's predictions are worth imitating. 1.0 if ``length <= 0``."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def ema_decay(step: int, decay: float) -> float:
    """``min(decay, 1 - 1/(step + 1))``: early on the teacher follows the student closely
    (step 0 copies it) because a randomly initialised teacher average is useless."""
    return min(decay, 1.0 - 1.0 / (step + 1))


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float, copy_buffers: bool = True) -> None:
    """In place: float parameters ``t = decay*t + (1-decay)*s``; buffers copied from the student
    (``copy_buffers``) or left as they are.

    Copied buffers (BatchNorm running statistics, ``num_batches_tracked``) are not averaged: they
    already are running averages. They describe the *student's* activations, though; an EMA
    teacher of a network trained from scratch keeps its own instead (see ``EmaTeacher``).
    Modules must have identical parameter/buffer names and shapes.
    """
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        raise ValueError("teacher and student have different parameters")
    for name, t in t_params.items():
        s = s_params[name].detach()
        if t.dtype.is_floating_point:
            t.mul_(decay).add_(s.to(t.dtype), alpha=1.0 - decay)
        else:
            t.copy_(s)
    if not copy_buffers:
        return
    t_bufs = dict(teacher.named_buffers())
    s_bufs = dict(student.named_buffers())
    if t_bufs.keys() != s_bufs.keys():
        raise ValueError("teacher and student have different buffers")
    for name, t in t_bufs.items():
        t.copy_(s_bufs[name])


@torch.no_grad()
def pseudo_label_stats(
    label: Tensor,
    weight: Tensor,
    valid: Tensor,
    num_classes: int,
    hidden_mask: Tensor | None = None,
    hidden_valid: Tensor | None = None,
    conf: Tensor | None = None,
) -> dict[str, float]:
    """Diagnostics of a pseudo-label batch, as python floats (for logging only).

    ``mask_ratio``: weight mass over valid pixels / number of valid pixels; ``mask_ratio/<c>``:
    the same restricted to pixels pseudo-labelled ``c`` (classes with no such pixel are omitted,
    so no NaN); ``mean_conf`` when ``conf`` is given. ``hidden_mask`` is ground truth known only
    in benchmark mode and is never used for training: ``pl_acc`` is pseudo-label accuracy on
    used pixels (weight > 0), ``pl_acc_all`` on every valid pixel; both restricted to
    ``hidden_valid`` (default: ``0 <= hidden_mask < num_classes``) and omitted if empty.
    """
    valid = valid.bool()
    label = label.long()
    w = weight.float() * valid.float()
    n_valid = int(valid.sum())
    out: dict[str, float] = {"mask_ratio": float(w.sum()) / n_valid if n_valid else 0.0}
    lab = label[valid].clamp(0, num_classes - 1)
    counts = torch.bincount(lab, minlength=num_classes)[:num_classes].tolist()
    mass = torch.bincount(lab, weights=w[valid], minlength=num_classes)[:num_classes].tolist()
    for c in range(num_classes):
        if counts[c] > 0:
            out[f"mask_ratio/{c}"] = float(mass[c]) / counts[c]
    if conf is not None and n_valid:
        out["mean_conf"] = float(conf.float()[valid].mean())
    if hidden_mask is not None:
        hidden_mask = hidden_mask.long()
        if hidden_valid is None:
            hidden_valid = (hidden_mask >= 0) & (hidden_mask < num_classes)
        both = valid & hidden_valid.bool()
        correct = (label == hidden_mask) & both
        used = both & (weight > 0)
        n_used, n_both = int(used.sum()), int(both.sum())
        if n_used:
            out["pl_acc"] = int((correct & used).sum()) / n_used
        if n_both:
            out["pl_acc_all"] = int(correct.sum()) / n_both
    return out
