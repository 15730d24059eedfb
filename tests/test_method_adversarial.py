"""Hung et al. 2018 adversarial method: semi-loss mask, warm-up, discriminator, manual optimization."""
from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Callable, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segssl.methods.adversarial  # noqa: F401  (registers "adversarial")
from segssl.config import OptimConfig
from segssl.discriminator import MaskDiscriminator
from segssl.engine.optim import build_optimizer
from segssl.methods.adversarial import Adversarial, AdversarialParams
from segssl.methods.base import METHODS, StepContext

torch.set_num_threads(1)
C, H, W = 3, 8, 8


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.2), nn.Conv2d(8, C, 1))


def make_method(**params: object) -> Adversarial:
    torch.manual_seed(0)
    defaults = {"disc_base_channels": 8}
    return Adversarial(tiny_net, C, AdversarialParams(**{**defaults, **params}))  # type: ignore[arg-type]


def batches(seed: int = 1) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(2, H, W, dtype=torch.bool)
    valid[0, :, :2] = False  # padding / void pixels
    labeled = {"image": torch.randn(2, 3, H, W, generator=g), "mask": torch.randint(0, C, (2, H, W), generator=g),
               "valid": valid, "has_mask": torch.tensor([True, True])}
    unlabeled = {"image": torch.randn(2, 3, H, W, generator=g), "mask": torch.randint(0, C, (2, H, W), generator=g),
                 "valid": valid.clone(), "has_mask": torch.tensor([True, False])}
    return labeled, unlabeled


def make_ctx(method: Adversarial, step: int = 0, max_steps: int = 100,
             on_step: Optional[Callable[[str], None]] = None, skip: tuple[str, ...] = ()) -> StepContext:
    optimizers = {name: build_optimizer(spec, OptimConfig()) for name, spec in method.optimizer_specs().items()}

    def optimizer_step(name: str) -> None:
        if on_step is not None:
            on_step(name)
        if name not in skip:
            optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    return StepContext(step=step, max_steps=max_steps, device=torch.device("cpu"), num_classes=C,
                       autocast=nullcontext,
                       backward=lambda loss: loss.backward(), optimizer_step=optimizer_step)


def control_discriminator(method: Adversarial, d_logits: torch.Tensor) -> None:
    """D's output becomes ``d_logits`` (kept in the graph of D's parameters by a zero term)."""
    real_forward = method.discriminator.forward

    def forward(probs: torch.Tensor, image: Optional[torch.Tensor] = None) -> torch.Tensor:
        return real_forward(probs, image) * 0.0 + d_logits.unsqueeze(1)

    method.discriminator.forward = forward  # type: ignore[method-assign]


def capture_outputs(model: nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.register_forward_hook(lambda _m, _i, o: seen.append(o.detach()))
    return seen


def test_registered() -> None:
    assert METHODS.get("adversarial") is Adversarial
    assert Adversarial.manual_optimization and Adversarial.uses_unlabeled and Adversarial.unlabeled_views == ()


@pytest.mark.parametrize("norm", ["trusted", "valid"])
def test_semi_loss_uses_exactly_the_pixels_d_trusts(norm: str) -> None:
    method = make_method(semi_norm=norm, semi_start=0)
    g = torch.Generator().manual_seed(3)
    # sigmoid(d) spans ~0.05..0.95 without touching T_semi = 0.2 (logit -1.386)
    d_logits = torch.where(torch.rand(2, H, W, generator=g) < 0.5, -3.0, 3.0) + 0.5 * torch.rand(2, H, W, generator=g)
    control_discriminator(method, d_logits)
    outputs = capture_outputs(method.model)
    labeled, unlabeled = batches()
    out = method.training_step(labeled, unlabeled, make_ctx(method))
    logits_u = outputs[1]  # second G forward: the unlabeled batch
    valid = unlabeled["valid"]
    trusted = (torch.sigmoid(d_logits) > 0.2) & valid
    assert 0 < trusted.sum() < valid.sum()
    ce = F.cross_entropy(logits_u, logits_u.argmax(1), reduction="none")
    expected = ce[trusted].sum() / (trusted.sum() if norm == "trusted" else valid.sum())
    assert torch.allclose(out["loss/semi"], expected, atol=1e-6)
    assert out["mask_ratio"] == pytest.approx(float(trusted.sum() / valid.sum()))
    # pl_acc only on the item with known ground truth, on trusted pixels
    used = trusted[0]
    acc = (logits_u[0].argmax(0) == unlabeled["mask"][0])[used].float().mean()
    assert out["pl_acc"] == pytest.approx(float(acc))


def total_without_semi(out: dict) -> torch.Tensor:
    return out["loss/ce"] + 0.01 * out["loss/adv"] + 0.001 * out["loss/adv_unlabeled"] + out["loss/disc"]


@pytest.mark.parametrize("params,step,active", [
    ({}, 24, False), ({}, 25, True),  # 0.25 * 100 steps
    ({"semi_start": 10}, 9, False), ({"semi_start": 10}, 10, True),
])
def test_semi_term_waits_for_warm_up(params: dict, step: int, active: bool) -> None:
    method = make_method(**params)
    control_discriminator(method, torch.full((2, H, W), 2.0))  # every pixel trusted
    labeled, unlabeled = batches()
    out = method.training_step(labeled, unlabeled, make_ctx(method, step=step))
    assert bool(out["semi_active"]) is active
    if active:
        assert out["loss/semi"] > 0
        assert torch.allclose(out["loss"], total_without_semi(out) + 0.1 * out["loss/semi"], atol=1e-6)
    else:
        assert out["loss/semi"] == 0
        assert torch.allclose(out["loss"], total_without_semi(out), atol=1e-6)


def test_discriminator_separates_one_hot_from_soft_maps() -> None:
    # ~1 s on an idle core (no wall-time assert: the test machines are shared)
    torch.manual_seed(0)
    disc = MaskDiscriminator(4, base_channels=16)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.9, 0.99))

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        real = F.one_hot(torch.randint(0, 4, (n, 8, 8)), 4).permute(0, 3, 1, 2).float()
        fake = F.softmax(2.0 * torch.randn(n, 4, 8, 8), dim=1)
        return real, fake

    for _ in range(100):
        real, fake = sample(8)
        logits = disc(torch.cat([real, fake]))
        target = torch.cat([torch.ones(8, 1, 8, 8), torch.zeros(8, 1, 8, 8)])
        loss = F.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        real, fake = sample(32)
        acc = torch.cat([(disc(real) > 0).float().flatten(), (disc(fake) <= 0).float().flatten()]).mean()
    assert acc > 0.9


@pytest.mark.parametrize("size", [(8, 8), (33, 47), (64, 96)])
def test_discriminator_output_has_input_size(size: tuple[int, int]) -> None:
    disc = MaskDiscriminator(5, base_channels=4)
    out = disc(torch.rand(2, 5, *size))
    assert out.shape == (2, 1, *size)
    widths = [m.out_channels for m in MaskDiscriminator(5).modules() if isinstance(m, nn.Conv2d)]
    assert widths == [64, 128, 256, 512, 1]


def test_conditional_discriminator_takes_the_image() -> None:
    disc = MaskDiscriminator(4, image_channels=3, base_channels=4)
    assert disc.net[0].in_channels == 7
    assert disc(torch.rand(2, 4, 40, 40), torch.randn(2, 3, 40, 40)).shape == (2, 1, 40, 40)
    with pytest.raises(ValueError, match="image"):
        disc(torch.rand(2, 4, 40, 40))
    method = make_method(conditional=True)  # image channels inferred from G's first conv
    assert method.discriminator.image_channels == 3
    labeled, unlabeled = batches()
    out = method.training_step(labeled, unlabeled, make_ctx(method))
    assert torch.isfinite(out["loss"])


def test_manual_step_updates_g_and_d_independently() -> None:
    method = make_method()
    twin = copy.deepcopy(method)
    g0 = [p.detach().clone() for p in method.model.parameters()]
    d0 = [p.detach().clone() for p in method.discriminator.parameters()]
    labeled, unlabeled = batches()

    def check_no_stale_grads(name: str) -> None:
        if name == "main":  # G's backward must leave nothing in D
            assert all(p.grad is None for p in method.discriminator.parameters())
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.model.parameters())
        else:  # D's backward must not reach G (G was zeroed after its step)
            assert all(p.grad is None for p in method.model.parameters())
            assert all(p.grad is not None for p in method.discriminator.parameters())

    torch.manual_seed(5)
    out = method.training_step(labeled, unlabeled, make_ctx(method, on_step=check_no_stale_grads))
    for k in ("loss/ce", "loss/adv", "loss/semi", "loss/disc", "disc/acc", "disc/real", "disc/fake", "mask_ratio"):
        assert k in out
    assert all(not torch.equal(a, b) for a, b in zip(g0, method.model.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d0, method.discriminator.parameters()))
    assert all(p.requires_grad for p in method.discriminator.parameters())
    # the same step without D's update gives the same G: G never sees D's new weights
    torch.manual_seed(5)
    twin.training_step(labeled, unlabeled, make_ctx(twin, skip=("disc",)))
    assert all(torch.equal(a, b) for a, b in zip(method.model.parameters(), twin.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(d0, twin.discriminator.parameters()))


def test_disc_optimizer_spec() -> None:
    method = make_method()
    specs = method.optimizer_specs()
    assert list(specs) == ["main", "disc"]
    disc = specs["disc"]
    assert (disc.name, disc.lr, disc.betas, disc.weight_decay) == ("adam", 1e-4, (0.9, 0.99), 0.0)
    assert {id(p) for p in disc.params} == {id(p) for p in method.discriminator.parameters()}
    assert {id(p) for p in specs["main"].params} == {id(p) for p in method.model.parameters()}
