"""Validation / test evaluation over a loader, reduced across processes."""
from __future__ import annotations

from typing import Any, Iterable

import torch

from .metrics import ConfusionMatrix
from .predictor import Predictor


def evaluate(predictor: Predictor, loader: Iterable[dict[str, Any]], num_classes: int, device: torch.device) -> dict[str, object]:
    confusion = ConfusionMatrix(num_classes, device)
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        pred = predictor.logits(images).argmax(1)
        confusion.update(pred, batch["mask"].to(device), batch["valid"].to(device))
    confusion.reduce()
    return confusion.compute()
