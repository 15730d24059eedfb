"""Cross Pseudo Supervision (Chen et al., CVPR 2021, "Semi-Supervised Semantic Segmentation
with Cross Pseudo Supervision"; reference code charlesCXK/TorchSemiSeg).

Two networks of the same architecture, initialised differently (the ``build_model`` factory is
called twice after one seed, so the second call draws new weights), each supervised by the
ground truth and by the other's hard pseudo-label::

    L = CE(f1(x_l), y) + CE(f2(x_l), y) + cps_weight * (CE(f1(x), argmax f2(x)) + CE(f2(x), argmax f1(x)))

where ``x`` runs over the unlabeled and (``cps_on_labeled``, the paper's L_cps^l) labeled images.
``cps_weight`` = 1.5 is the paper's value for PASCAL VOC (6 for Cityscapes, 1 for the VOC
CutMix configuration of the reference). Pseudo-labels are arg-max indices, hence detached: a
network is never pushed towards what it teaches. Both networks share the ``main`` optimizer;
the first one is evaluated, checkpointed as ``model`` and used for inference.

Normalisation: ``weighted_cross_entropy`` with ``hard_weights(conf, threshold)`` and
``threshold: 0.0`` (every pixel weighted 1) is the reference's mean over all (valid) pixels;
a non-zero threshold keeps that denominator (FixMatch convention), so fewer confident pixels
mean a smaller loss rather than a few amplified ones. Labeled and unlabeled CPS pixels are
pooled in one mean, as the reference concatenates the two batches.

Pseudo-labels: plain CPS takes them from the training-mode forward pass that also carries the
loss (the paper; no extra pass, so no extra BatchNorm update). ``separate_teacher_pass: true``
instead predicts them in a deterministic eval-mode, no-grad pass. The CutMix variant (the
reference's ``CPS+CutMix``: teachers predict the two source images, predictions are mixed with
the same box as the images, students see the mixed image) always uses such a pass: its
teachers see images the students do not. Deviation: the reference mixes two unlabeled loaders
with 3 boxes covering 25-50%; we mix each unlabeled image with the next one in its batch using
one box of 25-50% area (``cutmix_boxes``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import masked_cross_entropy, weighted_cross_entropy
from ..pseudo import apply_cutmix, confidence_and_label, cutmix_boxes, hard_weights, pseudo_label_stats
from .base import METHODS, Batch, Method, OptimizerSpec, StepContext, StepOutput, hidden_ground_truth


@dataclass
class CPSParams:
    cps_weight: float = 1.5  # paper Sec. 4.1 / reference voc8 config: 1.5 (Cityscapes: 6)
    threshold: float = 0.0  # CPS uses every pixel; > 0 keeps only confident pseudo-labels
    cps_on_labeled: bool = True  # paper: L_cps = L_cps^l + L_cps^u
    separate_teacher_pass: bool = False  # pseudo-labels from an eval-mode pass instead of the training pass
    cutmix: bool = False  # the reference's CPS+CutMix variant (unlabeled images only)
    cutmix_p: float = 1.0  # reference mixes every unlabeled pair
    cutmix_area: list[float] = field(default_factory=lambda: [0.25, 0.5])  # reference cutmix_mask_prop_range

    def __post_init__(self) -> None:
        if len(self.cutmix_area) != 2 or not 0.0 < self.cutmix_area[0] <= self.cutmix_area[1] <= 1.0:
            raise ConfigError(f"method.params.cutmix_area must be [low, high] within (0, 1], got {self.cutmix_area}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"method.params.threshold must be in [0, 1], got {self.threshold}")


@torch.no_grad()
def _eval_logits(net: nn.Module, x: Tensor) -> Tensor:
    """Deterministic teacher pass: no BatchNorm update, no dropout; train mode restored."""
    was_training = net.training
    net.eval()
    try:
        return net(x)
    finally:
        net.train(was_training)


def _pooled_ce(parts: list[tuple[Tensor, Tensor, Tensor, Tensor]], threshold: float) -> Tensor:
    """Mean over the valid pixels of all ``(student_logits, conf, label, valid)`` parts together."""
    total, count = None, None
    for logits, conf, label, valid in parts:
        n = valid.sum()
        # weighted_cross_entropy divides by max(n, 1); multiplying back gives the part's sum
        s = weighted_cross_entropy(logits, label, hard_weights(conf, threshold), valid) * n.float()
        total, count = (s, n) if total is None else (total + s, count + n)
    assert total is not None and count is not None
    return total / count.clamp_min(1).float()


@METHODS.register("cps")
class CPS(Method):
    Params = CPSParams
    uses_unlabeled = True
    unlabeled_views = ()  # weak view only, as the paper

    def __init__(self, build_model: Callable[[], nn.Module], num_classes: int, params: CPSParams) -> None:
        super().__init__(build_model, num_classes, params)
        self.model2 = build_model()  # same architecture, different initial weights

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        return {"main": OptimizerSpec(list(self.model.parameters()) + list(self.model2.parameters()))}

    def eval_model(self) -> nn.Module:
        return self.model

    def _targets(self, net: nn.Module, x: Tensor, logits: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        if logits is None or self.params.separate_teacher_pass:
            logits = _eval_logits(net, x)
        return confidence_and_label(logits)  # detached

    def training_step(self, labeled: Batch, unlabeled: Optional[Batch], ctx: StepContext) -> StepOutput:
        p = self.params
        nets = (self.model, self.model2)
        x_l, y_l, v_l = labeled["image"], labeled["mask"], labeled["valid"]
        logits_l = [net(x_l) for net in nets]
        sup = [masked_cross_entropy(lg, y_l, v_l) for lg in logits_l]
        # parts[k]: (student input logits of net k, teacher targets from the other net, valid)
        students: list[list[Tensor]] = [[], []]
        targets: list[list[tuple[Tensor, Tensor]]] = [[], []]
        valids: list[Tensor] = []
        if p.cps_on_labeled:
            for k in range(2):
                students[k].append(logits_l[k])
                targets[1 - k].append(self._targets(nets[k], x_l, logits_l[k]))
            valids.append(v_l)
        out: StepOutput = {}
        if unlabeled is not None:
            x_u, v_u = unlabeled["image"], unlabeled["valid"]
            if p.cutmix:
                box = cutmix_boxes(x_u.shape[0], x_u.shape[-2], x_u.shape[-1], p=p.cutmix_p,
                                   area=(p.cutmix_area[0], p.cutmix_area[1]), device=x_u.device)
                mix = lambda t: apply_cutmix(box, t, t.roll(1, dims=0))  # noqa: E731
                raw = [self._targets(net, x_u, None) for net in nets]  # teachers on the unmixed images
                tgt_u = [(mix(conf), mix(label)) for conf, label in raw]
                x_s, v_s = mix(x_u), mix(v_u)
                logits_u = [net(x_s) for net in nets]
            else:
                logits_u = [net(x_u) for net in nets]
                raw = tgt_u = [self._targets(net, x_u, lg) for net, lg in zip(nets, logits_u)]
                v_s = v_u
            for k in range(2):
                students[k].append(logits_u[k])
                targets[1 - k].append(tgt_u[k])
            valids.append(v_s)
            (conf2, label2), (_, label1) = raw[1], raw[0]
            hidden, hidden_valid = hidden_ground_truth(unlabeled)
            out.update(pseudo_label_stats(  # the labels that teach the evaluated network
                label2, hard_weights(conf2, p.threshold), v_u, self.num_classes, hidden_mask=hidden,
                hidden_valid=hidden_valid, conf=conf2,
            ))
            out["agreement"] = ((label1 == label2) & v_u).sum().float() / v_u.sum().clamp_min(1).float()
        if valids:
            cps = [_pooled_ce([(s, c, lab, v) for s, (c, lab), v in zip(students[k], targets[k], valids)], p.threshold)
                   for k in range(2)]
        else:  # no unlabeled batch and cps_on_labeled off: supervised only
            cps = [sup[0].new_zeros(()), sup[1].new_zeros(())]
        loss = sup[0] + sup[1] + p.cps_weight * (cps[0] + cps[1])
        out.update({"loss": loss, "loss/sup_1": sup[0], "loss/sup_2": sup[1], "loss/cps_1": cps[0], "loss/cps_2": cps[1]})
        return out
