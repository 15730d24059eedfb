"""FixMatch for segmentation: weak-to-strong consistency with confident pseudo-labels.

Sohn et al., "FixMatch" (NeurIPS 2020), in the segmentation form of UniMatch's ``fixmatch.py``
(Yang et al., "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic
Segmentation", CVPR 2023). Reference defaults: threshold 0.95 (``>=``), labeled:unlabeled batch
1:1, loss ``(L_x + L_u) / 2``; the strong view comes from the data pipeline (colour jitter,
grayscale, blur: same geometry as the weak view) and CutMix (p=0.5, box area 0.02-0.4, aspect
0.3-3.3) pastes a box of ANOTHER unlabeled image of the batch (image ``i-1``). The same box
mixes the strong image, the pseudo-label, the confidence weight and the valid map, so every
label still describes the pixel it supervises. Boxes come from the global torch RNG, which the
trainer seeds per rank and checkpoints (reproducible, resumable).

Pseudo-labels come from the weak view through a deterministic teacher: the model itself in eval
mode under ``no_grad`` (``teacher: self``) or an EMA copy (``teacher: ema``, decay 0.996 with
warm-up as in UniMatch V2; it is then the evaluated model). ``weighting: classwise`` replaces the
global threshold by FreeMatch's self-adaptive class thresholds, ``class_mean`` (the default) by
thresholds from each class's own mean confidence (``pseudo_label.py``): at low label fractions
thin or rare classes rarely reach 0.95 and drop out of the pseudo-labels (a DESIGN.md pitfall).
``weighting: hard`` gives UniMatch's/FixMatch's global threshold. ``distribution_alignment``
(off by default) rescales the teacher's class probabilities to the labeled masks' class shares
before any of that (ReMixMatch; ``DistributionAlignment``).

UniMatch's extensions are options here and on by default in ``unimatch``: ``feature_perturbation``
(Dropout2d(0.5) on the encoder features of the weak view, decoded into a prediction trained on
the same pseudo-labels) and ``two_strong_views`` (a second strong view with its own box). The
unlabeled terms are combined as UniMatch does: the feature-perturbation stream gets 0.5 and the
strong views share the rest equally, e.g. ``(L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2``.

Normalisation: every unlabeled term is ``sum(w * ce) / #valid pixels`` (``weighted_cross_entropy``)
- all non-padding pixels, not only confident ones, as in UniMatch - so a batch with few trusted
pixels contributes little instead of amplifying a few possibly wrong labels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..losses import masked_cross_entropy, weighted_cross_entropy
from ..pseudo import apply_cutmix, cutmix_boxes, rampup
from .base import METHODS, Batch, Method, StepContext, StepOutput
from .pseudo_label import (
    TEACHERS, ConfidenceWeighting, DistributionAlignment, EmaTeacher, TeacherMixin, check_choice, check_unit_interval,
    joint_forward, require_unlabeled, unlabeled_diagnostics,
)

FP_SHARE = 0.5  # UniMatch: the feature-perturbation stream gets half of the unlabeled weight


@dataclass
class FixMatchParams:
    threshold: float = 0.95  # UniMatch (0 for Cityscapes)
    lambda_u: float = 1.0  # UniMatch: (L_x + L_u) / 2
    # class_mean (see pseudo_label.py) rather than FixMatch's global threshold: on CamVid at 46 labels
    # the global 0.95 gave poles, signs and pedestrians ~0 pseudo-labels, and class_mean lifted best
    # val mIoU from 0.448 (hard, one seed) to 0.489 / 0.498 (two seeds): benchmarks/results/camvid_cpu.
    # At 23 labels it fell below the labeled-only model (val 0.280 vs 0.351), and so did hard (0.244) and
    # a 300-step ramp-up (0.301): the model drifts to the dominant classes; see distribution_alignment
    weighting: str = "class_mean"  # hard | classwise (FreeMatch thresholds) | class_mean
    threshold_floor: float = 0.5  # class_mean: no class threshold below this
    # classwise/class_mean state momentum; FreeMatch's 0.999 assumes ~1M steps (its thresholds start at
    # 1/C and warm up over ~1/(1-m) steps: every pixel passed for the first 400 of 3000 CamVid steps)
    ema_momentum: float = 0.99
    teacher: str = "self"  # self: the model in eval mode | ema: EMA copy (UniMatch V2)
    ema_decay: float = 0.996  # UniMatch V2
    cutmix_p: float = 0.5  # UniMatch
    cutmix_area: list[float] = field(default_factory=lambda: [0.02, 0.4])  # UniMatch
    feature_perturbation: bool = False  # UniMatch's FP stream
    fp_dropout: float = 0.5  # UniMatch: Dropout2d(0.5)
    two_strong_views: bool = False  # needs the "strong2" view: use method 'unimatch'
    rampup_steps: int = 0  # UniMatch has none: the threshold already starts the term near 0
    # ReMixMatch's distribution alignment of the teacher's probabilities to the labeled class shares
    # (DistributionAlignment): against the drift to already-dominant classes at very few labels
    distribution_alignment: bool = False
    alignment_momentum: float = 0.99  # EMA of the teacher's mean probabilities (~100 steps)

    def __post_init__(self) -> None:
        check_choice(self.teacher, TEACHERS, "teacher")
        check_choice(self.weighting, ("hard", "classwise", "class_mean"), "weighting")
        check_unit_interval(self.threshold_floor, "threshold_floor")
        if not 0.0 <= self.alignment_momentum < 1.0:
            raise ConfigError(f"method.params.alignment_momentum must be in [0, 1), got {self.alignment_momentum}")
        area = list(self.cutmix_area)
        if len(area) != 2 or not 0.0 < area[0] <= area[1] <= 1.0:
            raise ConfigError(f"method.params.cutmix_area must be [low, high] with 0 < low <= high <= 1, got {self.cutmix_area}")
        if not 0.0 <= self.fp_dropout < 1.0:
            raise ConfigError(f"method.params.fp_dropout must be in [0, 1), got {self.fp_dropout}")


def mix_with_neighbour(box: Tensor, *tensors: Tensor) -> list[Tensor]:
    """Inside ``box`` take image ``i-1`` of the batch (``roll(1)``), the SAME box for every tensor."""
    return [apply_cutmix(box, t, t.roll(1, dims=0)) for t in tensors]


@METHODS.register("fixmatch")
class FixMatch(TeacherMixin, Method):
    """Weak-view pseudo-labels supervise the (CutMix-ed) strong view."""

    Params = FixMatchParams
    uses_unlabeled = True
    unlabeled_views = ("strong",)

    def __init__(self, build_model: Any, num_classes: int, params: FixMatchParams) -> None:
        super().__init__(build_model, num_classes, params)
        if params.two_strong_views and "strong2" not in self.unlabeled_views:
            raise ConfigError("method.params.two_strong_views: 'fixmatch' renders one strong view; "
                              "use method 'unimatch' for two")
        if params.feature_perturbation and not all(hasattr(self.model, a) for a in ("encoder", "decoder", "segmentation_head")):
            raise ConfigError("method.params.feature_perturbation needs an encoder-decoder model "
                              "(segmentation_models_pytorch: encoder, decoder, segmentation_head)")
        self.weighting = ConfidenceWeighting(params.weighting, num_classes, params.threshold, params.ema_momentum,
                                             floor=params.threshold_floor)
        self.teacher = EmaTeacher(self.model) if params.teacher == "ema" else None
        self.alignment = DistributionAlignment(num_classes, params.alignment_momentum) if params.distribution_alignment else None


    def forward_fp(self, labeled: Tensor, weak: Tensor) -> tuple[Tensor, Tensor]:
        """UniMatch's FP pass: one encoder pass over labeled + weak images; the decoder sees the
        labeled features clean and the weak features through Dropout2d. Feature 0 of an smp
        encoder is the input image itself, not a learned feature, so it is left untouched."""
        n = labeled.shape[0]
        feats = self.model.encoder(torch.cat([labeled, weak]))
        mixed = [feats[0]] + [torch.cat([f[:n], F.dropout2d(f[n:], self.params.fp_dropout, training=True)])
                              for f in feats[1:]]
        out = self.model.segmentation_head(self.model.decoder(mixed))  # smp >= 0.5: decoder(list)
        return out[:n], out[n:]

    def training_step(self, labeled: Batch, unlabeled: Optional[Batch], ctx: StepContext) -> StepOutput:
        p = self.params
        unlabeled = require_unlabeled(unlabeled, type(self).__name__.lower())
        weak, valid = unlabeled["image"], unlabeled["valid"]
        teacher_logits = self.teacher_logits(weak)
        if self.alignment is not None:
            teacher_logits = self.alignment(teacher_logits, valid, labeled["mask"], labeled["valid"])
        conf, label, weight = self.weighting(teacher_logits, valid)

        views = ["strong", "strong2"] if p.two_strong_views else ["strong"]
        b, h, w = valid.shape
        inputs, targets = [], []
        for view in views:  # one box per strong view, as UniMatch draws box1/box2
            box = cutmix_boxes(b, h, w, p.cutmix_p, (p.cutmix_area[0], p.cutmix_area[1]), device=weak.device)
            image, lab, wt, val = mix_with_neighbour(box, unlabeled[view], label, weight, valid)
            inputs.append(image)
            targets.append((lab, wt, val))

        if p.feature_perturbation:
            pred_x, pred_fp = self.forward_fp(labeled["image"], weak)
            preds = joint_forward(self.model, inputs)
        else:
            pred_x, *preds = joint_forward(self.model, [labeled["image"], *inputs])

        loss_x = masked_cross_entropy(pred_x, labeled["mask"], labeled["valid"])
        out: StepOutput = {"loss/ce": loss_x}
        share = (1.0 - FP_SHARE) if p.feature_perturbation else 1.0
        loss_u = loss_x.new_zeros(())
        for i, (pred, (lab, wt, val)) in enumerate(zip(preds, targets)):
            term = weighted_cross_entropy(pred, lab, wt, val)
            out["loss/u_s" if i == 0 else f"loss/u_s{i + 1}"] = term
            loss_u = loss_u + share / len(preds) * term
        if p.feature_perturbation:
            term = weighted_cross_entropy(pred_fp, label, weight, valid)  # unmixed weak view
            out["loss/u_fp"] = term
            loss_u = loss_u + FP_SHARE * term
        lam = p.lambda_u * rampup(ctx.step, p.rampup_steps)
        out["loss"] = (loss_x + lam * loss_u) / 2.0
        out["loss/u"] = loss_u
        out.update(unlabeled_diagnostics(label, weight, conf, unlabeled, self.num_classes))
        out.update(self.weighting.state_stats())
        if self.alignment is not None:
            out.update(self.alignment.state_stats())
        return out
