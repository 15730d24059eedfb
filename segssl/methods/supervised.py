"""Supervised baseline: cross-entropy (optionally + Dice) on labeled pixels only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..losses import dice_loss, masked_cross_entropy
from .base import METHODS, Batch, Method, StepContext, StepOutput


@dataclass
class SupervisedParams:
    dice_weight: float = 0.0  # add soft Dice: helps thin/rare classes (EM membranes)


@METHODS.register("supervised")
class Supervised(Method):
    """Lower bound (labeled subset) and upper bound (all labels) of every benchmark."""

    Params = SupervisedParams

    def training_step(self, labeled: Batch, unlabeled: Optional[Batch], ctx: StepContext) -> StepOutput:
        logits = self.model(labeled["image"])
        ce = masked_cross_entropy(logits, labeled["mask"], labeled["valid"])
        out: StepOutput = {"loss/ce": ce}
        loss = ce
        if self.params.dice_weight > 0:
            dice = dice_loss(logits, labeled["mask"], labeled["valid"])
            out["loss/dice"] = dice
            loss = loss + self.params.dice_weight * dice
        out["loss"] = loss
        return out
