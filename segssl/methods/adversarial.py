"""Adversarial semi-supervised segmentation (Hung et al., BMVC 2018, "Adversarial Learning for
Semi-Supervised Semantic Segmentation"; reference code hfslyc/AdvSemiSeg, README command for
Table 5).

The segmentation network is the generator G; a fully-convolutional discriminator D
(``segssl.discriminator``) maps class-probability maps to per-pixel "is ground truth" logits.

Generator (``main`` optimizer)::

    L_G = CE(labeled) + lambda_adv_labeled * BCE(D(S(G(x_l))), 1)              # 0.01
                      + lambda_adv_unlabeled * BCE(D(S(G(x_u))), 1)            # 0.001, step >= adv_unlabeled_start (0)
                      + lambda_semi * CE(G(x_u), argmax G(x_u)) on sigmoid(D) >= T_semi   # 0.1, T 0.2, step >= semi_start

Discriminator (``disc`` optimizer, Adam lr 1e-4, betas (0.9, 0.99), no weight decay)::

    L_D = (BCE(D(S(G(x).detach())), 0) + BCE(D(one_hot(y)), 1)) / 2

with the fake side made of the labeled and (``disc_on_unlabeled``, the reference's
``D_REMAIN=True``) the unlabeled predictions; the halving is the reference code's and hardly
matters under Adam.

Normalisation: every BCE is a mean over valid pixels. The semi loss is, as in the reference
(``CrossEntropy2d`` with the untrusted pixels set to 255), a mean over *trusted* pixels
(``semi_norm: trusted``): lambda_semi = 0.1 was tuned with it, and a D that trusts few pixels
should not silently shrink the term to nothing early in training. ``semi_norm: valid`` uses the
FixMatch convention (``weighted_cross_entropy``: mean over all valid pixels) instead.
Trusted pixels are ``sigmoid(D) >= T_semi`` (``hard_weights``; the reference ignores
``< T``, the paper writes ``> T`` - equal up to ties).

Deviations, each for a reason:
* invalid pixels (padding, void labels) are zeroed in *both* real and fake maps and excluded
  from every BCE. The reference leaves all-zero one-hot vectors on void pixels of the real maps
  only, which lets D tell real from fake by the void regions alone.
* labeled and unlabeled images go through G separately (as in the reference), so BatchNorm sees
  the same kind of batch at every step.
* ``semi_start`` defaults to a fraction of ``train.max_steps`` (5000 of 20000 in the paper).
* the ``disc`` learning rate follows the trainer's schedule (poly in the paper; with another
  ``train.optim.scheduler`` D follows that shape) or stays constant (``disc_schedule: false``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..discriminator import MaskDiscriminator
from ..errors import ConfigError
from ..losses import masked_cross_entropy, weighted_cross_entropy
from ..pseudo import confidence_and_label, hard_weights, pseudo_label_stats
from .base import METHODS, Batch, Method, OptimizerSpec, StepContext, StepOutput, hidden_ground_truth


@dataclass
class AdversarialParams:
    lambda_adv_labeled: float = 0.01  # paper Sec. 4 / README: --lambda-adv-pred 0.01
    lambda_adv_unlabeled: float = 0.001  # reference LAMBDA_SEMI_ADV
    lambda_semi: float = 0.1  # reference LAMBDA_SEMI
    t_semi: float = 0.2  # reference MASK_T
    semi_start: Optional[int] = None  # absolute step; None: semi_start_fraction * max_steps
    semi_start_fraction: float = 0.25  # reference SEMI_START 5000 of NUM_STEPS 20000
    adv_unlabeled_start: int = 0  # reference SEMI_START_ADV
    semi_norm: str = "trusted"  # trusted (reference) | valid (FixMatch convention)
    disc_on_unlabeled: bool = True  # reference D_REMAIN: D also sees unlabeled predictions as fake
    disc_lr: float = 1e-4  # reference LEARNING_RATE_D
    disc_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])  # reference Adam betas
    disc_schedule: bool = True  # follow the main schedule (paper: poly for both) or constant
    disc_base_channels: int = 64  # reference ndf
    conditional: bool = False  # also feed the image to D (not in the paper)
    image_channels: Optional[int] = None  # conditional D: None infers it from G's first conv

    def __post_init__(self) -> None:
        if self.semi_norm not in ("trusted", "valid"):
            raise ConfigError(f"method.params.semi_norm must be 'trusted' or 'valid', got '{self.semi_norm}'")
        if len(self.disc_betas) != 2:
            raise ConfigError(f"method.params.disc_betas needs two values, got {self.disc_betas}")
        if not 0.0 <= self.semi_start_fraction <= 1.0:
            raise ConfigError(f"method.params.semi_start_fraction must be in [0, 1], got {self.semi_start_fraction}")


def _first_conv_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ConfigError("conditional discriminator: cannot infer image channels; set method.params.image_channels")


def _bce_sum(logits: Tensor, target: float, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of per-pixel BCE (float32) over valid pixels, and their count."""
    logits = logits.float().squeeze(1)
    per_pixel = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none")
    return torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum(), valid.sum()


def _bce_mean(*parts: tuple[Tensor, float, Tensor]) -> Tensor:
    """Mean BCE over the valid pixels of all ``(logits, target, valid)`` parts together."""
    sums, counts = zip(*(_bce_sum(*p) for p in parts))
    return torch.stack(sums).sum() / torch.stack(counts).sum().clamp_min(1).float()


@METHODS.register("adversarial")
class Adversarial(Method):
    Params = AdversarialParams
    uses_unlabeled = True
    unlabeled_views = ()  # the weak view "image" only: the paper has no strong view
    manual_optimization = True

    def __init__(self, build_model: Callable[[], nn.Module], num_classes: int, params: AdversarialParams) -> None:
        super().__init__(build_model, num_classes, params)
        image_channels = 0
        if params.conditional:
            image_channels = params.image_channels or _first_conv_channels(self.model)
        self.discriminator = MaskDiscriminator(num_classes, image_channels, params.disc_base_channels)

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        p = self.params
        return {
            "main": OptimizerSpec(self.model.parameters()),
            "disc": OptimizerSpec(self.discriminator.parameters(), name="adam", lr=p.disc_lr,
                                  betas=(p.disc_betas[0], p.disc_betas[1]), weight_decay=0.0, schedule=p.disc_schedule),
        }

    def semi_start(self, max_steps: int) -> int:
        p = self.params
        return p.semi_start if p.semi_start is not None else int(round(p.semi_start_fraction * max_steps))

    def _discriminate(self, class_maps: Tensor, valid: Tensor, image: Tensor) -> Tensor:
        """D logits [B, H, W]; invalid pixels are zeroed so neither side can be told apart by them."""
        maps = class_maps * valid.unsqueeze(1).to(class_maps.dtype)
        return self.discriminator(maps, image if self.discriminator.conditional else None).squeeze(1)

    def _set_disc_grad(self, flag: bool) -> None:
        for param in self.discriminator.parameters():
            param.requires_grad_(flag)

    def training_step(self, labeled: Batch, unlabeled: Optional[Batch], ctx: StepContext) -> StepOutput:
        p = self.params
        x_l, y_l, v_l = labeled["image"], labeled["mask"], labeled["valid"]
        semi_on = p.lambda_semi > 0 and ctx.step >= self.semi_start(ctx.max_steps)
        adv_u_on = p.lambda_adv_unlabeled > 0 and ctx.step >= p.adv_unlabeled_start
        out: StepOutput = {}

        # ---- generator: D frozen so G's backward leaves no gradient in D
        self._set_disc_grad(False)
        try:
            logits_l = self.model(x_l)
            ce = masked_cross_entropy(logits_l, y_l, v_l)
            adv_l = _bce_mean((self._discriminate(F.softmax(logits_l.float(), 1), v_l, x_l), 1.0, v_l))
            g_loss = ce + p.lambda_adv_labeled * adv_l
            zero = ce.new_zeros(())
            adv_u, semi, logits_u = zero, zero, None
            if unlabeled is not None:
                x_u, v_u = unlabeled["image"], unlabeled["valid"]
                logits_u = self.model(x_u)
                d_u = self._discriminate(F.softmax(logits_u.float(), 1), v_u, x_u)
                adv_u = _bce_mean((d_u, 1.0, v_u))
                d_conf = torch.sigmoid(d_u.detach().float())  # D's per-pixel confidence map
                trusted = hard_weights(d_conf, p.t_semi) * v_u.float()
                conf, label = confidence_and_label(logits_u)
                if p.semi_norm == "trusted":
                    semi = masked_cross_entropy(logits_u, label, trusted.bool())
                else:
                    semi = weighted_cross_entropy(logits_u, label, trusted, v_u)
                if adv_u_on:
                    g_loss = g_loss + p.lambda_adv_unlabeled * adv_u
                if semi_on:
                    g_loss = g_loss + p.lambda_semi * semi
                hidden, hidden_valid = hidden_ground_truth(unlabeled)
                out.update(pseudo_label_stats(label, trusted, v_u, self.num_classes, hidden_mask=hidden,
                                              hidden_valid=hidden_valid, conf=conf))
                out["disc/conf_unlabeled"] = d_conf[v_u].mean() if v_u.any() else zero
            ctx.backward(g_loss)
            ctx.optimizer_step("main")
        finally:
            self._set_disc_grad(True)

        # ---- discriminator: G's outputs detached, so this step never touches G
        fake_l = self._discriminate(F.softmax(logits_l.detach().float(), 1), v_l, x_l)
        fakes = [(fake_l, 0.0, v_l)]
        if logits_u is not None and p.disc_on_unlabeled:
            v_u = unlabeled["valid"]  # type: ignore[index]
            fakes.append((self._discriminate(F.softmax(logits_u.detach().float(), 1), v_u, unlabeled["image"]), 0.0, v_u))  # type: ignore[index]
        one_hot = F.one_hot(torch.where(v_l, y_l.long(), torch.zeros_like(y_l.long())), self.num_classes)
        real = self._discriminate(one_hot.permute(0, 3, 1, 2).float(), v_l, x_l)
        loss_fake, loss_real = _bce_mean(*fakes), _bce_mean((real, 1.0, v_l))
        d_loss = 0.5 * (loss_fake + loss_real)
        ctx.backward(d_loss)
        ctx.optimizer_step("disc")

        with torch.no_grad():
            p_real = torch.sigmoid(real.float())[v_l]
            p_fake = torch.cat([torch.sigmoid(f.float())[v] for f, _, v in fakes])
            correct = (p_real > 0.5).sum() + (p_fake <= 0.5).sum()
            out["disc/real"] = p_real.mean() if p_real.numel() else zero
            out["disc/fake"] = p_fake.mean() if p_fake.numel() else zero
            out["disc/acc"] = correct.float() / max(p_real.numel() + p_fake.numel(), 1)
        out.update({"loss/ce": ce.detach(), "loss/adv": adv_l.detach(), "loss/adv_unlabeled": adv_u.detach(),
                    "loss/semi": semi.detach() if semi_on else zero, "loss/disc": d_loss.detach(),
                    "semi_active": float(semi_on)})
        out["loss"] = (g_loss + d_loss).detach()  # both are stepped above; logged and checked for NaN
        return out
