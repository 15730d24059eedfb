"""Confusion-matrix metrics: per-class IoU and Dice, means, pixel accuracy.

A confusion matrix is exact under sharding (sum across processes), honours the ``valid``
mask directly, and gives every metric from one pass; MONAI's one-hot ``MeanIoU``/``DiceMetric``
average per image and have no notion of an ignore mask, so they are not used here.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .distributed import all_reduce_sum


class ConfusionMatrix:
    """Accumulates ``matrix[true, pred]`` counts over valid pixels."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: Optional[torch.Tensor] = None) -> None:
        keep = torch.ones_like(target, dtype=torch.bool) if valid is None else valid.bool()
        keep &= (target >= 0) & (target < self.num_classes)
        index = target[keep].long() * self.num_classes + pred[keep].long().to(target.device)
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).view(self.num_classes, self.num_classes).to(self.matrix.device)

    def reduce(self) -> None:
        """Sum the matrices of all processes (no-op without torch.distributed)."""
        self.matrix = all_reduce_sum(self.matrix)

    def compute(self) -> dict[str, object]:
        return metrics_from_confusion(self.matrix)


def metrics_from_confusion(matrix: torch.Tensor) -> dict[str, object]:
    """Metrics from ``matrix[true, pred]``.

    Classes absent from both ground truth and prediction have undefined IoU/Dice: they are
    reported as NaN and left out of the means (so a val set without a rare class is not
    scored as if the model failed it).
    """
    m = matrix.double()
    tp = m.diag()
    gt = m.sum(1)
    pred = m.sum(0)
    union = gt + pred - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    dice = torch.where(present, 2 * tp / (gt + pred).clamp(min=1), torch.full_like(tp, float("nan")))
    total = m.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "mdice": float(dice[present].mean()) if present.any() else 0.0,
        "pixel_acc": float(tp.sum() / total) if total > 0 else 0.0,
        "iou": iou.tolist(),
        "dice": dice.tolist(),
        "support": gt.long().tolist(),
    }


def format_table(metrics: dict[str, object], class_names: Sequence[str]) -> str:
    """A per-class table for the console."""
    width = max(10, max(len(n) for n in class_names) + 1)
    lines = [f"{'class':<{width}} {'IoU':>7} {'Dice':>7} {'pixels':>10}"]
    for name, iou, dice, support in zip(class_names, metrics["iou"], metrics["dice"], metrics["support"]):  # type: ignore[call-overload]
        lines.append(f"{name:<{width}} {_pct(iou):>7} {_pct(dice):>7} {support:>10}")
    lines.append(
        f"{'mean':<{width}} {_pct(metrics['miou']):>7} {_pct(metrics['mdice']):>7}   pixel acc {_pct(metrics['pixel_acc'])}"
    )
    return "\n".join(lines)


def _pct(value: object) -> str:
    v = float(value)  # type: ignore[arg-type]
    return "  -  " if v != v else f"{100 * v:.2f}"
