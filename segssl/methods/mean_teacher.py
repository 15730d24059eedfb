"""Mean Teacher: consistency with an exponential-moving-average teacher.

Tarvainen & Valpola, "Mean teachers are better role models" (NeurIPS 2017). The teacher is a
deep copy of the student whose weights follow ``t = d t + (1 - d) s`` after every optimizer step
(``on_after_step``), with ``d = min(0.99, 1 - 1/(step + 1))``: the paper's 0.99 during ramp-up,
with a warm-up so the early average is not dominated by the random initialisation. It never
receives gradients or uses dropout; its BatchNorm layers normalise each teacher pass with the
batch's statistics and keep their own running averages of them, as in the paper's code (why:
``EmaTeacher``). It is the evaluated and checkpointed model, as in the paper, where the teacher
is the more accurate of the two.

Consistency: ``softmax_mse`` (``sum_c (p_s - p_t)^2``, mean over valid unlabeled pixels) between
the student on the strong view and the teacher on the weak view; the views share geometry, so
the pixels correspond. Squared error between probabilities is bounded, so a poor early teacher
cannot produce large gradients. Weight ``lambda_c`` with the paper's sigmoid ramp-up
``exp(-5(1-t)^2)`` over ``rampup_steps`` (default 25% of ``train.max_steps``: 40k of 150k steps in
the paper's CIFAR-10 runs). ``lambda_c`` defaults to 1.0: French et al. (BMVC 2020, mean-teacher
segmentation) use 1.0 on this per-pixel class-summed squared error; the paper's classification
weights (10-100 on a class-averaged MSE of one prediction per image) do not transfer to
per-pixel losses. Unlike pseudo-labels, every valid pixel contributes (no threshold), so the
normaliser is simply the number of valid pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..losses import masked_cross_entropy, softmax_mse
from ..pseudo import confidence_and_label
from .base import METHODS, Batch, Method, StepContext, StepOutput
from .pseudo_label import EmaTeacher, joint_forward, ramp, require_unlabeled, unlabeled_diagnostics


@dataclass
class MeanTeacherParams:
    lambda_c: float = 1.0  # consistency weight (French et al. 2020 for segmentation)
    rampup_steps: Optional[int] = None  # None: 25% of train.max_steps (Tarvainen & Valpola); 0: none
    ema_decay: float = 0.99  # Tarvainen & Valpola, with warm-up min(d, 1 - 1/(t+1))


@METHODS.register("mean_teacher")
class MeanTeacher(Method):
    """Student on the strong view imitates the EMA teacher's probabilities on the weak view."""

    Params = MeanTeacherParams
    uses_unlabeled = True
    unlabeled_views = ("strong",)

    def __init__(self, build_model: Any, num_classes: int, params: MeanTeacherParams) -> None:
        super().__init__(build_model, num_classes, params)
        self.teacher = EmaTeacher(self.model)

    def training_step(self, labeled: Batch, unlabeled: Optional[Batch], ctx: StepContext) -> StepOutput:
        p = self.params
        unlabeled = require_unlabeled(unlabeled, "mean_teacher")
        valid_u = unlabeled["valid"]
        teacher = self.teacher(unlabeled["image"])
        pred_x, pred_s = joint_forward(self.model, [labeled["image"], unlabeled["strong"]])
        loss_x = masked_cross_entropy(pred_x, labeled["mask"], labeled["valid"])
        loss_c = softmax_mse(pred_s, teacher, valid_u)
        lam = p.lambda_c * ramp(ctx.step, ctx.max_steps, p.rampup_steps, 0.25)
        out: StepOutput = {"loss": loss_x + lam * loss_c, "loss/ce": loss_x, "loss/consistency": loss_c, "lambda_c": lam}
        conf, label = confidence_and_label(teacher)  # the teacher's arg-max, for diagnostics only
        out.update(unlabeled_diagnostics(label, torch.ones_like(conf), conf, unlabeled, self.num_classes))
        return out

    def on_after_step(self, ctx: StepContext) -> None:
        self.teacher.update(self.model, ctx.step, self.params.ema_decay)

    def eval_model(self) -> nn.Module:
        return self.teacher.net
