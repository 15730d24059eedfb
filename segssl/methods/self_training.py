"""Offline self-training rounds: ST and ST++ (Yang et al., CVPR 2022, "ST++: Make Self-training
Work Better for Semi-supervised Semantic Segmentation"), inside the trainer's single loop.

``train.max_steps`` is split into ``rounds + 1`` phases. Phase 0 is supervised only. At the first
step of phase k >= 1 the current model becomes a frozen teacher snapshot (eval mode, no grad);
it pseudo-labels the whole unlabeled pool once with flip test-time augmentation (mean of the
softmax of the image and of its mirror), the masks and confidence maps are written as PNGs under
``run_dir/pseudo_labels/round_k/`` (with ``reliability.csv``), and images are ranked by
reliability. ST++ keeps the most reliable ``select_fraction`` (0.5) in round 1 and every image in
later rounds. ST is ``select_fraction: 1.0``.

Reliability (``reliability``): ``stability`` is ST++'s measure, the mean over earlier checkpoints
(taken at 1/3 and 2/3 of phase 0, as ST++ saves them at 1/3 and 2/3 of its epochs) of the
per-image mIoU between that checkpoint's arg-max and the teacher's; ``confidence`` is the simpler
mean max-probability over the image's valid pixels. From round 2 on nothing is filtered and the
logged/saved reliability is the mean confidence (the phase-0 checkpoints say nothing then).

During phase k the pseudo-labels of each unlabeled batch are produced online by the same frozen
teacher on the batch's weak view (same geometry as the student's input, so they equal the saved
offline labels up to augmentation); this is what lets ST++'s strong augmentation apply to
pseudo-labelled images. The student sees the ``strong`` view. Loss = CE_labeled +
``lambda_u`` * CE_unlabeled. Pixels with confidence < ``threshold`` (0.0: ST/ST++ hard labels,
no threshold) get weight 0.

Normalisation: CE_unlabeled is ``weighted_cross_entropy`` over the valid pixels of the
*selected* images only. Unselected images are simply not in ST++'s round-1 training set, so they
must not dilute the mean; within selected images, thresholded pixels do count in the
denominator (FixMatch convention), so an uncertain image pulls its loss down instead of a few
pixels being amplified.

Differences from the reference, on purpose: ST++ re-initialises the network for every round and
retrains with a fresh schedule; here ``reinit`` defaults to False (continue training) because the
trainer's one learning-rate schedule and optimizer moments span all phases, so a fresh network
would be trained for 1/(rounds+1) of the steps at an already-decayed rate. With ``reinit: true``
the student is rebuilt with a fixed seed (identical on every rank; optimizer moments are kept).
ST++ labels with flips x 5 scales; we use flips only. In round 2 ST++ keeps round-1 labels for
the reliable images; here the round-2 teacher labels every image.

Multiple processes: each rank predicts its own shard of the pool and selects the top fraction of
that shard; the rank-local reliability of the last kept image is a threshold. Training batches
can hold images from other ranks' shards: those are judged online (reliability of the teacher's
prediction on the weak view vs that threshold). PNGs are written by rank 0 only (its shard).
"""
from __future__ import annotations

import copy
import csv
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import masked_cross_entropy, weighted_cross_entropy
from ..pseudo import hard_weights, pseudo_label_stats
from .base import METHODS, Batch, Method, StepContext, StepOutput, hidden_ground_truth


@dataclass
class SelfTrainingParams:
    rounds: int = 2  # ST++: two re-training stages (ST: one)
    phase_steps: Optional[list[float]] = None  # rounds+1 positive weights; None: equal phases
    select_fraction: float = 0.5  # ST++: top half of the pool by reliability in round 1
    reliability: str = "stability"  # ST++'s checkpoint agreement | "confidence"
    checkpoints: int = 2  # earlier phase-0 checkpoints for "stability" (ST++: 1/3 and 2/3)
    threshold: float = 0.0  # ST/ST++ use hard labels without a confidence threshold
    lambda_u: float = 1.0  # ST++ mixes labeled and pseudo-labeled images with equal weight
    reinit: bool = False  # ST++ re-initialises per round; see the module docstring

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError("method.params.rounds must be >= 1")
        if self.phase_steps is not None and (len(self.phase_steps) != self.rounds + 1 or min(self.phase_steps) <= 0):
            raise ConfigError(f"method.params.phase_steps needs {self.rounds + 1} positive fractions")
        if not 0.0 < self.select_fraction <= 1.0:
            raise ConfigError("method.params.select_fraction must be in (0, 1]")
        if self.reliability not in ("stability", "confidence"):
            raise ConfigError("method.params.reliability must be 'stability' or 'confidence'")
        if self.reliability == "stability" and self.checkpoints < 1:
            raise ConfigError("method.params.checkpoints must be >= 1 for reliability 'stability'")


def phase_starts(max_steps: int, rounds: int, fractions: Optional[list[float]] = None) -> list[int]:
    """First step of each phase (``starts[0] == 0``); fractions are normalised to sum to 1."""
    weights = fractions or [1.0] * (rounds + 1)
    total, acc, starts = sum(weights), 0.0, [0]
    for w in weights[:-1]:
        acc += w
        starts.append(int(round(max_steps * acc / total)))
    return starts


@torch.no_grad()
def flip_tta_probs(net: nn.Module, images: Tensor) -> Tensor:
    """Mean softmax of ``images`` and of their horizontal mirror (mirrored back), float32."""
    probs = F.softmax(net(images).float(), dim=1)
    mirrored = F.softmax(net(images.flip(-1)).float(), dim=1).flip(-1)
    return (probs + mirrored) / 2


def image_miou(pred: Tensor, ref: Tensor, valid: Tensor, num_classes: int) -> Tensor:
    """Per-image mIoU [B] of ``pred`` vs ``ref`` over valid pixels, classes in the union only
    (ST++'s meanIOU is a nanmean over classes); 0 for an image without valid pixel."""
    b = pred.shape[0]
    offset = torch.arange(b, device=pred.device).view(b, 1, 1) * num_classes
    count = lambda x, m: torch.bincount((x + offset)[m], minlength=b * num_classes).view(b, num_classes)  # noqa: E731
    inter = count(pred, valid & (pred == ref)).float()
    union = count(pred, valid).float() + count(ref, valid).float() - inter
    present = union > 0
    iou = torch.where(present, inter / union.clamp_min(1), torch.zeros_like(inter))
    return iou.sum(1) / present.sum(1).clamp_min(1)


@METHODS.register("self_training")
class SelfTraining(Method):
    Params = SelfTrainingParams
    uses_unlabeled = True
    unlabeled_views = ("strong",)

    def __init__(self, build_model: Callable[[], nn.Module], num_classes: int, params: SelfTrainingParams) -> None:
        super().__init__(build_model, num_classes, params)
        self._build = build_model
        self.teacher = self._frozen_copy()
        n_ckpt = params.checkpoints if params.reliability == "stability" else 0
        self.history = nn.ModuleList(self._frozen_copy() for _ in range(n_ckpt))
        self.register_buffer("round", torch.zeros((), dtype=torch.long))  # last round whose pool was labelled
        self.reliability: dict[str, float] = {}  # this rank's pool, last round
        self.selected: set[str] = set()
        self.select_min = -math.inf  # reliability of the last kept image (for unseen ids)

    def _frozen_copy(self) -> nn.Module:
        net = copy.deepcopy(self.model).eval()
        net.requires_grad_(False)
        return net

    def train(self, mode: bool = True) -> "SelfTraining":
        super().train(mode)
        self.teacher.eval()  # snapshots never update BatchNorm statistics nor use dropout
        self.history.eval()
        return self

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict[str, Any]:
        return {"reliability": dict(self.reliability), "selected": sorted(self.selected), "select_min": self.select_min}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.reliability = dict(state["reliability"])
        self.selected = set(state["selected"])
        self.select_min = float(state["select_min"])

    # ------------------------------------------------------------------ rounds
    def phase(self, step: int, max_steps: int) -> int:
        starts = phase_starts(max_steps, self.params.rounds, self.params.phase_steps)
        return sum(step >= s for s in starts[1:])

    def on_after_step(self, ctx: StepContext) -> None:
        """ST++ keeps checkpoints at 1/3 and 2/3 of supervised training for the stability score."""
        if int(self.round) > 0 or not len(self.history):
            return
        end = phase_starts(ctx.max_steps, self.params.rounds, self.params.phase_steps)[1]
        for j, net in enumerate(self.history):
            if ctx.step + 1 == end * (j + 1) // (len(self.history) + 1):
                net.load_state_dict(self.model.state_dict())

    def _image_reliability(self, images: Tensor, valid: Tensor, conf: Tensor, label: Tensor, k: int) -> Tensor:
        if self.params.reliability == "confidence" or k > 1:  # later rounds keep all: cheap score
            v = valid.float()
            return (conf * v).sum((1, 2)) / v.sum((1, 2)).clamp_min(1)
        scores = [image_miou(net(images).argmax(1), label, valid, self.num_classes) for net in self.history]
        return torch.stack(scores).mean(0)

    @torch.no_grad()
    def start_round(self, k: int, ctx: StepContext) -> None:
        """Snapshot the teacher, label the whole pool once, save PNGs, select reliable images."""
        self.teacher.load_state_dict(self.model.state_dict())
        if ctx.unlabeled_pool is None:
            raise RuntimeError("self_training needs ctx.unlabeled_pool to label the unlabeled pool")
        out_dir = ctx.run_dir / "pseudo_labels" / f"round_{k}" if ctx.is_main and ctx.run_dir is not None else None
        if out_dir is not None:
            for sub in ("labels", "confidence"):
                (out_dir / sub).mkdir(parents=True, exist_ok=True)
        dtype = np.uint8 if self.num_classes <= 256 else np.uint16
        reliability: dict[str, float] = {}
        for batch in ctx.unlabeled_pool():
            conf, label = flip_tta_probs(self.teacher, batch["image"]).max(1)
            scores = self._image_reliability(batch["image"], batch["valid"], conf, label, k).tolist()
            for i, image_id in enumerate(batch["id"]):
                reliability[str(image_id)] = float(scores[i])
                if out_dir is not None:
                    h, w = (int(s) for s in batch["size"][i])
                    name = str(image_id).replace("/", "_") + ".png"
                    cv2.imwrite(str(out_dir / "labels" / name), label[i, :h, :w].cpu().numpy().astype(dtype))
                    cv2.imwrite(str(out_dir / "confidence" / name), (conf[i, :h, :w] * 255).round().byte().cpu().numpy())
        ranked = sorted(reliability, key=lambda i: reliability[i], reverse=True)
        keep = len(ranked) if k > 1 else max(1, int(len(ranked) * self.params.select_fraction))
        self.reliability, self.selected = reliability, set(ranked[:keep])
        self.select_min = -math.inf if keep >= len(ranked) else reliability[ranked[keep - 1]]
        if out_dir is not None:
            with open(out_dir / "reliability.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["id", "reliability", "selected"])
                writer.writerows((i, f"{reliability[i]:.6f}", int(i in self.selected)) for i in ranked)
        self.round.fill_(k)
        if self.params.reinit:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1000 + k)  # the same fresh weights on every rank
                fresh = self._build()
            self.model.load_state_dict(fresh.state_dict())

    def _selected_mask(self, batch: Batch, conf: Tensor, label: Tensor) -> Tensor:
        """Per-image bool: in this round's selection; ids not in this rank's pool judged online."""
        ids = [str(i) for i in batch["id"]]
        if self.select_min == -math.inf:
            return torch.ones(len(ids), dtype=torch.bool, device=conf.device)
        known = [i in self.reliability for i in ids]
        chosen = torch.tensor([i in self.selected for i in ids], device=conf.device)
        if all(known):
            return chosen
        online = self._image_reliability(batch["image"], batch["valid"], conf, label, int(self.round)) >= self.select_min
        return torch.where(torch.tensor(known, device=conf.device), chosen, online)

    # ------------------------------------------------------------------ step
    def training_step(self, labeled: Batch, unlabeled: Optional[Batch], ctx: StepContext) -> StepOutput:
        k = self.phase(ctx.step, ctx.max_steps)
        if k > int(self.round):  # also right after a resume that stopped before the pool pass
            self.start_round(k, ctx)
        loss_x = masked_cross_entropy(self.model(labeled["image"]), labeled["mask"], labeled["valid"])
        out: StepOutput = {"loss/labeled": loss_x, "round": float(k)}
        if k == 0 or unlabeled is None:  # supervised phase: the unlabeled batch is ignored
            out.update({"loss/unlabeled": torch.zeros((), device=ctx.device), "mask_ratio": 0.0, "loss": loss_x})
            return out
        valid = unlabeled["valid"]
        with torch.no_grad():
            conf, label = flip_tta_probs(self.teacher, unlabeled["image"]).max(1)
            chosen = self._selected_mask(unlabeled, conf, label)[:, None, None]
        weight = hard_weights(conf, self.params.threshold)
        loss_u = weighted_cross_entropy(self.model(unlabeled["strong"]), label, weight, valid & chosen)
        out.update({"loss/unlabeled": loss_u, "loss": loss_x + self.params.lambda_u * loss_u})
        hidden_mask, hidden_valid = hidden_ground_truth(unlabeled)
        out.update(pseudo_label_stats(label, weight * chosen, valid, self.num_classes, hidden_mask=hidden_mask,
                                      hidden_valid=hidden_valid, conf=conf))
        if self.reliability:
            out["selected_fraction"] = len(self.selected) / len(self.reliability)
            out["reliability"] = sum(self.reliability.values()) / len(self.reliability)
        return out
