"""Online pseudo-labelling with per-pixel confidence weights (self-training).

Lee, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for Deep Neural
Networks" (ICML-W 2013): the network's own arg-max on unlabeled images is a training target,
with a weight ramped up from zero so that early, near-random predictions are not imitated.
This is self-training, not consistency: the student is trained on the SAME weak view the
teacher labelled (FixMatch/UniMatch add a strong view, see ``fixmatch.py``).

* Teacher (``teacher``): ``self`` - the model itself in eval mode under ``no_grad`` (running
  BatchNorm statistics, no dropout, no statistic update); ``ema`` - an EMA copy of the student
  (Tarvainen & Valpola 2017, decay 0.99 with warm-up ``min(d, 1 - 1/(t+1))``) with its own
  BatchNorm statistics (``EmaTeacher``), which is then the evaluated/checkpointed model and damps
  confirmation bias at low label fractions.
* Per-pixel weights (``weighting``): ``hard`` - ``conf >= threshold`` (0.95, FixMatch);
  ``soft`` - SoftMatch's truncated Gaussian (Chen et al., ICLR 2023: EMA mean/variance of the
  confidence, initialised at 1/C and 1, momentum 0.999, n_sigma 2); ``classwise`` - FreeMatch's
  self-adaptive class thresholds (Wang et al., ICLR 2023: initialised at 1/C, momentum 0.999);
  ``class_mean`` - each class's threshold is the EMA of the mean confidence of the pixels
  pseudo-labelled as that class, capped at ``threshold`` and floored at ``threshold_floor``
  (starting at the cap). FreeMatch scales by the mean probability mass of each class, which in
  segmentation follows pixel frequency: on CamVid it put the thresholds of poles and bicyclists
  (0.3-1% of the pixels) near 0.01 and let their every prediction through; ``class_mean`` judges
  a class by how sure the model is of it, not by how much of the image it covers.
  Their statistics are registered buffers, so they are checkpointed and resumed. With ``hard``
  and ``classwise``, pixels below threshold get weight 0: they are never trained towards any
  class (least of all class 0); ``soft`` gives them a small weight towards their own arg-max.
* Loss: ``CE_l + lambda_u * rampup(t) * wCE_u`` with ``wCE_u = sum(w * ce) / #valid pixels``:
  the denominator counts ALL valid unlabeled pixels, not only confident ones (FixMatch/UniMatch
  convention), so when few pixels are trusted the term shrinks instead of amplifying a handful of
  possibly wrong pixels. Sigmoid ramp-up ``exp(-5(1-t)^2)`` over ``rampup_steps`` (default 10% of
  ``train.max_steps``; Lee's deterministic annealing also starts the unlabeled weight at 0): the
  soft and class-wise weightings trust most pixels at the start, when their statistics are still
  at their uniform initial values, and the ramp-up keeps that from teaching the model noise.

The helpers below (deterministic teacher pass, EMA teacher, confidence weighting, joint
forward, diagnostics) are shared with FixMatch/UniMatch and Mean Teacher.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import masked_cross_entropy, weighted_cross_entropy
from ..pseudo import (
    align_logits, class_mean_thresholds, class_pixel_counts, classwise_thresholds, classwise_weights,
    confidence_and_label, ema_decay, ema_update_, hard_weights, pseudo_label_stats, rampup, soft_gaussian_weights,
    update_class_confidence, update_classwise_state, update_confidence_stats, update_prediction_mean,
)
from .base import METHODS, Batch, Method, StepContext, StepOutput, hidden_ground_truth

TEACHERS = ("self", "ema")
WEIGHTINGS = ("hard", "soft", "classwise", "class_mean")


def check_choice(value: str, choices: Sequence[str], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"method.params.{key} is '{value}'; choose one of: {', '.join(choices)}")


def check_unit_interval(value: float, key: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"method.params.{key} must be in [0, 1], got {value}")


# ---------------------------------------------------------------------------- teachers
@torch.no_grad()
def deterministic_logits(net: nn.Module, image: Tensor) -> Tensor:
    """Teacher pass of ``net`` itself: eval mode (running BatchNorm statistics, which it does not
    update, and no dropout) and no gradient; every submodule's mode is restored afterwards."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        return net(image).detach()
    finally:
        for module, training in modes:
            module.training = training


class EmaTeacher(nn.Module):
    """A frozen copy of the student whose weights follow it by exponential moving average; no
    dropout ever, and the student's own modules are never touched.

    Its BatchNorm layers keep their *own* statistics: the teacher pass normalises with the batch's
    statistics and adds them to the teacher's running averages (as in Tarvainen & Valpola's code,
    whose EMA model runs in train mode), and evaluation uses those running averages. Copying the
    student's statistics instead pairs averaged weights with statistics of other weights: for a
    network trained from scratch at a high learning rate the average of ~1/(1-decay) steps of
    weights gives smaller activations, which the student's statistics over-normalise layer after
    layer (measured on CamVid, mean_teacher at step 900: student val mIoU 0.475; teacher with the
    student's statistics 0.08 and near-uniform outputs; the same weights with their own 0.319).
    UniMatch V2 can copy/average statistics because its encoder uses LayerNorm.
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(student)
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> "EmaTeacher":
        return super().train(False)  # Method.train() must not switch on dropout

    @torch.no_grad()
    def forward(self, image: Tensor) -> Tensor:
        """The pseudo-labelling pass: BatchNorm on this batch (updating the teacher's running
        statistics), everything else (dropout) in eval mode."""
        norms = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.train(True)
        try:
            return self.net(image).detach()
        finally:
            for m in norms:
                m.train(False)

    def update(self, student: nn.Module, step: int, decay: float) -> None:
        ema_update_(self.net, student, ema_decay(step, decay), copy_buffers=False)


class TeacherMixin:
    """Pseudo-labels from the model itself (eval mode) or from an optional EMA teacher, which is
    then also the evaluated network. Used by PseudoLabel and FixMatch/UniMatch."""

    model: nn.Module
    teacher: Optional[EmaTeacher]
    params: Any

    def teacher_logits(self, image: Tensor) -> Tensor:
        return self.teacher(image) if self.teacher is not None else deterministic_logits(self.model, image)

    def on_after_step(self, ctx: StepContext) -> None:
        if self.teacher is not None:
            self.teacher.update(self.model, ctx.step, self.params.ema_decay)

    def eval_model(self) -> nn.Module:
        return self.teacher.net if self.teacher is not None else self.model


# ---------------------------------------------------------------------------- weighting
class ConfidenceWeighting(nn.Module):
    """Pseudo-labels and per-pixel weights from teacher logits; running statistics as buffers."""

    def __init__(self, mode: str, num_classes: int, threshold: float = 0.95, momentum: float = 0.999,
                 n_sigma: float = 2.0, floor: float = 0.5) -> None:
        super().__init__()
        check_choice(mode, WEIGHTINGS, "weighting")
        self.mode, self.threshold, self.momentum, self.n_sigma, self.floor = mode, threshold, momentum, n_sigma, floor
        if mode == "soft":  # SoftMatch initial values
            self.register_buffer("conf_mean", torch.tensor(1.0 / num_classes))
            self.register_buffer("conf_var", torch.tensor(1.0))
        elif mode == "classwise":  # FreeMatch initial values
            self.register_buffer("global_tau", torch.tensor(1.0 / num_classes))
            self.register_buffer("class_prob", torch.full((num_classes,), 1.0 / num_classes))
        elif mode == "class_mean":  # starts as the hard threshold: no flood of early pseudo-labels
            self.register_buffer("class_conf", torch.full((num_classes,), float(threshold)))

    @torch.no_grad()
    def forward(self, logits: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(conf, label, weight)``; in training mode the statistics first absorb this batch
        (as SoftMatch/FreeMatch do), then weight it."""
        conf, label = confidence_and_label(logits)
        if self.mode == "hard":
            return conf, label, hard_weights(conf, self.threshold)
        if self.mode == "soft":
            if self.training:
                mean, var = update_confidence_stats(self.conf_mean, self.conf_var, conf, valid, self.momentum)
                self.conf_mean.copy_(mean)
                self.conf_var.copy_(var)
            # USB's SoftMatch divides the variance by n_sigma^2: weight 1/e^2 at n_sigma std below
            return conf, label, soft_gaussian_weights(conf, self.conf_mean, self.conf_var / self.n_sigma**2)
        if self.training and self.mode == "class_mean":
            self.class_conf.copy_(update_class_confidence(self.class_conf, conf, label, valid, self.momentum))
        elif self.training:
            probs = F.softmax(logits.detach().float(), dim=1)
            tau, prob = update_classwise_state(self.global_tau, self.class_prob, probs, valid, self.momentum)
            self.global_tau.copy_(tau)
            self.class_prob.copy_(prob)
        return conf, label, classwise_weights(conf, label, self.thresholds())

    def thresholds(self) -> Tensor:
        if self.mode == "class_mean":
            return class_mean_thresholds(self.class_conf, self.threshold, self.floor)
        return classwise_thresholds(self.global_tau, self.class_prob)

    def state_stats(self) -> dict[str, Any]:
        if self.mode == "soft":
            return {"soft/mean": self.conf_mean.detach(), "soft/var": self.conf_var.detach()}
        if self.mode == "classwise":
            return {"tau/global": self.global_tau.detach(), "tau/min": self.thresholds().min().detach()}
        if self.mode == "class_mean":  # per class, beside mask_ratio/<c>: which classes the floor holds
            return {"tau/min": self.thresholds().min().detach(),
                    **{f"tau/{c}": t for c, t in enumerate(self.thresholds().detach())}}
        return {}


class DistributionAlignment(nn.Module):
    """ReMixMatch's distribution alignment (Berthelot et al., ICLR 2020) for dense teachers:
    the teacher's class probabilities are scaled by (class share of the labeled masks) / (running
    mean of the teacher's own probabilities on unlabeled pixels) before pseudo-labels and
    confidences are taken from them.

    Why: a self-taught model drifts towards the classes it already predicts. On CamVid at 23
    labels, FixMatch (even under the global 0.95) fed its own road/sky/building/car calls back until
    val predictions of sky covered 20% of the pixels against 9% in the masks, pavement went to road and
    pedestrians to car (benchmarks/results/camvid_cpu/findings.md). Alignment pulls the pseudo-label
    marginals back to the labeled ones. The labeled share is every labeled pixel seen so far
    (exact, not a moving average); the teacher's mean is an EMA (``momentum``) whose first batch
    replaces the uniform start. All three are buffers: checkpointed and resumed."""

    def __init__(self, num_classes: int, momentum: float = 0.99) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("labeled_counts", torch.zeros(num_classes))
        self.register_buffer("teacher_mean", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def target(self) -> Tensor:
        """Class shares of the labeled pixels seen so far (uniform before the first)."""
        total = self.labeled_counts.sum()
        uniform = torch.full_like(self.labeled_counts, 1.0 / self.labeled_counts.numel())
        return torch.where(total > 0, self.labeled_counts / total.clamp_min(1.0), uniform)

    @torch.no_grad()
    def forward(self, logits: Tensor, valid: Tensor, labeled_mask: Tensor, labeled_valid: Tensor) -> Tensor:
        """Aligned (detached, float32) teacher logits; in training mode the statistics first take in
        this batch's labeled masks and the teacher's unaligned probabilities."""
        if self.training:
            self.labeled_counts.add_(class_pixel_counts(labeled_mask, labeled_valid, self.labeled_counts.numel()))
            probs = F.softmax(logits.detach().float(), dim=1)
            self.teacher_mean.copy_(update_prediction_mean(self.teacher_mean, self.updates, probs, valid, self.momentum))
            self.updates.add_(valid.any().long())  # batches with data: the first replaces the start
        return align_logits(logits, self.target(), self.teacher_mean)

    def state_stats(self) -> dict[str, Any]:
        """``da/scale/<c>``: the factor each class's probability gets (>1 lifted, <1 damped)."""
        scale = self.target().clamp_min(1e-6) / self.teacher_mean.clamp_min(1e-6)
        return {f"da/scale/{c}": v for c, v in enumerate(scale.detach())}


# ---------------------------------------------------------------------------- small shared steps
def joint_forward(net: nn.Module, images: Sequence[Tensor]) -> list[Tensor]:
    """One pass over several batches when their shapes agree, so BatchNorm normalises labeled
    and unlabeled images with the same batch statistics (FixMatch's interleaving); else one each."""
    if all(x.shape[1:] == images[0].shape[1:] for x in images):
        return list(net(torch.cat(list(images))).split([x.shape[0] for x in images]))
    return [net(x) for x in images]


def unlabeled_diagnostics(label: Tensor, weight: Tensor, conf: Tensor, batch: Batch, num_classes: int) -> dict[str, Any]:
    """``pseudo_label_stats`` on an unlabeled batch; ground truth (benchmark mode only, where
    ``has_mask``) is used for ``pl_acc`` and nowhere else."""
    hidden_mask, hidden_valid = hidden_ground_truth(batch)
    return pseudo_label_stats(label, weight, batch["valid"], num_classes, hidden_mask=hidden_mask,
                              hidden_valid=hidden_valid, conf=conf)


def ramp(step: int, max_steps: int, rampup_steps: Optional[int], default_fraction: float) -> float:
    """Sigmoid ramp-up factor; ``rampup_steps=None`` means ``default_fraction`` of the run."""
    length = round(default_fraction * max_steps) if rampup_steps is None else rampup_steps
    return rampup(step, length)


def require_unlabeled(unlabeled: Optional[Batch], name: str) -> Batch:
    if unlabeled is None:
        raise ValueError(f"method '{name}' needs an unlabeled batch")
    return unlabeled


# ---------------------------------------------------------------------------- the method
@dataclass
class PseudoLabelParams:
    teacher: str = "self"  # self: the model in eval mode | ema: EMA copy (then the evaluated model)
    ema_decay: float = 0.99  # Mean Teacher (Tarvainen & Valpola 2017), with warm-up
    weighting: str = "hard"  # hard | soft (SoftMatch) | classwise (FreeMatch) | class_mean (see ConfidenceWeighting)
    threshold: float = 0.95  # hard weighting (FixMatch); the cap of class_mean
    threshold_floor: float = 0.5  # class_mean: no class threshold below this
    ema_momentum: float = 0.999  # SoftMatch / FreeMatch statistics (chosen for ~1M steps: thresholds start at 1/C and warm up over ~1/(1-m) steps)
    soft_n_sigma: float = 2.0  # SoftMatch (USB implementation)
    lambda_u: float = 1.0
    rampup_steps: Optional[int] = None  # None: 10% of train.max_steps; 0: no ramp-up

    def __post_init__(self) -> None:
        check_choice(self.teacher, TEACHERS, "teacher")
        check_choice(self.weighting, WEIGHTINGS, "weighting")
        check_unit_interval(self.threshold_floor, "threshold_floor")


@METHODS.register("pseudo_label")
class PseudoLabel(TeacherMixin, Method):
    """Self-training on confidence-weighted online pseudo-labels of the weak view."""

    Params = PseudoLabelParams
    uses_unlabeled = True
    unlabeled_views = ()  # the weak view ("image") only

    def __init__(self, build_model: Any, num_classes: int, params: PseudoLabelParams) -> None:
        super().__init__(build_model, num_classes, params)
        self.weighting = ConfidenceWeighting(params.weighting, num_classes, params.threshold,
                                             params.ema_momentum, params.soft_n_sigma, params.threshold_floor)
        self.teacher = EmaTeacher(self.model) if params.teacher == "ema" else None


    def training_step(self, labeled: Batch, unlabeled: Optional[Batch], ctx: StepContext) -> StepOutput:
        p = self.params
        unlabeled = require_unlabeled(unlabeled, "pseudo_label")
        weak, valid_u = unlabeled["image"], unlabeled["valid"]
        conf, label, weight = self.weighting(self.teacher_logits(weak), valid_u)
        pred_x, pred_u = joint_forward(self.model, [labeled["image"], weak])
        loss_x = masked_cross_entropy(pred_x, labeled["mask"], labeled["valid"])
        loss_u = weighted_cross_entropy(pred_u, label, weight, valid_u)
        lam = p.lambda_u * ramp(ctx.step, ctx.max_steps, p.rampup_steps, 0.1)
        out: StepOutput = {"loss": loss_x + lam * loss_u, "loss/ce": loss_x, "loss/u": loss_u, "lambda_u": lam}
        out.update(unlabeled_diagnostics(label, weight, conf, unlabeled, self.num_classes))
        out.update(self.weighting.state_stats())
        return out
