"""Cross Pseudo Supervision: symmetry, detached targets, gradients, different initialisations."""
from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segssl.methods.cps  # noqa: F401  (registers "cps")
from segssl.methods.base import METHODS, StepContext
from segssl.methods.cps import CPS, CPSParams

torch.set_num_threads(1)
C, H, W = 3, 8, 8


def tiny_net() -> nn.Module:  # no dropout: a train-mode forward is a function of the input
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, C, 1))


def make_method(**params: object) -> CPS:
    torch.manual_seed(0)  # one seed, as the trainer: the two factory calls still differ
    return CPS(tiny_net, C, CPSParams(**params))  # type: ignore[arg-type]


def batches() -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(1)
    valid = torch.ones(2, H, W, dtype=torch.bool)
    valid[1, -3:] = False
    labeled = {"image": torch.randn(2, 3, H, W, generator=g), "mask": torch.randint(0, C, (2, H, W), generator=g),
               "valid": valid, "has_mask": torch.tensor([True, True])}
    unlabeled = {"image": torch.randn(2, 3, H, W, generator=g), "mask": torch.randint(0, C, (2, H, W), generator=g),
                 "valid": valid.clone(), "has_mask": torch.tensor([True, False])}
    return labeled, unlabeled


def ctx() -> StepContext:
    def no_manual(*_: object) -> None:
        raise AssertionError("CPS uses automatic optimization")

    return StepContext(step=0, max_steps=10, device=torch.device("cpu"), num_classes=C, autocast=nullcontext,
                       backward=no_manual, optimizer_step=no_manual)


VARIANTS = [{}, {"cutmix": True}, {"threshold": 0.5, "separate_teacher_pass": True}, {"cps_on_labeled": False}]


def test_registered_and_networks_start_different() -> None:
    assert METHODS.get("cps") is CPS and CPS.uses_unlabeled and not CPS.manual_optimization
    method = make_method()
    pairs = list(zip(method.model.parameters(), method.model2.parameters()))
    assert all(a.shape == b.shape for a, b in pairs)
    assert any(a.dim() > 1 and not torch.equal(a, b) for a, b in pairs)
    assert method.eval_model() is method.model
    main = {id(p) for p in method.optimizer_specs()["main"].params}
    assert main == {id(p) for p in method.parameters()}  # both networks in one optimizer


@pytest.mark.parametrize("params", VARIANTS)
def test_loss_is_symmetric(params: dict) -> None:
    method = make_method(**params)
    swapped = copy.deepcopy(method)
    swapped.model, swapped.model2 = swapped.model2, swapped.model
    labeled, unlabeled = batches()
    torch.manual_seed(2)  # same CutMix box in both runs
    out = method.training_step(labeled, unlabeled, ctx())
    torch.manual_seed(2)
    out_swapped = swapped.training_step(labeled, unlabeled, ctx())
    assert torch.allclose(out["loss"], out_swapped["loss"], rtol=0, atol=1e-6)
    assert torch.allclose(out["loss/cps_1"], out_swapped["loss/cps_2"], rtol=0, atol=1e-6)
    assert out["loss/cps_1"] > 0 and out["loss/cps_2"] > 0


@pytest.mark.parametrize("params", VARIANTS)
def test_pseudo_labels_are_detached(params: dict) -> None:
    method = make_method(**params)
    labeled, unlabeled = batches()
    out = method.training_step(labeled, unlabeled, ctx())
    out["loss/cps_1"].backward()  # net 1 learning from net 2's labels
    assert all(p.grad is None or not p.grad.any() for p in method.model2.parameters())
    assert any(p.grad is not None and p.grad.any() for p in method.model.parameters())


@pytest.mark.parametrize("params", VARIANTS)
def test_gradients_reach_both_networks(params: dict) -> None:
    method = make_method(**params)
    labeled, unlabeled = batches()
    out = method.training_step(labeled, unlabeled, ctx())
    out["loss"].backward()
    for net in (method.model, method.model2):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        assert all(p.grad.any() for p in net.parameters() if p.dim() > 1)


def test_cps_term_by_hand() -> None:
    method = make_method(cps_weight=1.5, threshold=0.0)
    labeled, unlabeled = batches()
    out = method.training_step(labeled, unlabeled, ctx())
    with torch.no_grad():  # train-mode forwards again: BatchNorm uses batch statistics, so same logits
        l1, l2 = method.model(labeled["image"]), method.model2(labeled["image"])
        u1, u2 = method.model(unlabeled["image"]), method.model2(unlabeled["image"])
    v = torch.cat([labeled["valid"], unlabeled["valid"]])
    s1, s2 = torch.cat([l1, u1]), torch.cat([l2, u2])
    cps1 = F.cross_entropy(s1, s2.argmax(1), reduction="none")[v].mean()
    cps2 = F.cross_entropy(s2, s1.argmax(1), reduction="none")[v].mean()
    vl = labeled["valid"]
    sup1 = F.cross_entropy(l1, labeled["mask"], reduction="none")[vl].mean()
    sup2 = F.cross_entropy(l2, labeled["mask"], reduction="none")[vl].mean()
    assert torch.allclose(out["loss/cps_1"], cps1, atol=1e-6) and torch.allclose(out["loss/cps_2"], cps2, atol=1e-6)
    assert torch.allclose(out["loss"], sup1 + sup2 + 1.5 * (cps1 + cps2), atol=1e-5)
    vu = unlabeled["valid"]
    agree = (u1.argmax(1) == u2.argmax(1))[vu].float().mean()
    assert float(out["agreement"]) == pytest.approx(float(agree))
    assert out["mask_ratio"] == pytest.approx(1.0)  # threshold 0: every valid pixel is used
    known = vu[0]
    assert out["pl_acc"] == pytest.approx(float((u2[0].argmax(0) == unlabeled["mask"][0])[known].float().mean()))


def test_threshold_drops_unconfident_pixels_but_keeps_denominator() -> None:
    method = make_method(threshold=0.6, cps_on_labeled=False)
    labeled, unlabeled = batches()
    out = method.training_step(labeled, unlabeled, ctx())
    with torch.no_grad():
        u1, u2 = method.model(unlabeled["image"]), method.model2(unlabeled["image"])
    v = unlabeled["valid"]
    conf2 = F.softmax(u2, 1).max(1).values
    used = (conf2 >= 0.6) & v
    assert 0 < used.sum() < v.sum()
    ce = F.cross_entropy(u1, u2.argmax(1), reduction="none")
    assert torch.allclose(out["loss/cps_1"], ce[used].sum() / v.sum(), atol=1e-6)


def test_teacher_pass_is_deterministic_and_restores_train_mode() -> None:
    method = make_method(cutmix=True)
    method.train()
    labeled, unlabeled = batches()
    bn = method.model2[1]
    before = bn.running_mean.clone()
    method.training_step(labeled, unlabeled, ctx())
    assert method.model.training and method.model2.training
    # two train-mode forwards per network (labeled, mixed) update BatchNorm; the eval-mode teacher pass does not
    assert int(bn.num_batches_tracked) == 2 and not torch.equal(before, bn.running_mean)
