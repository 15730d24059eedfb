"""mean_teacher: frozen eval-mode EMA teacher, EMA math, softmax-MSE consistency, ramp-up."""
from __future__ import annotations

import math

import pytest
import torch

import segssl.methods.mean_teacher  # noqa: F401  (registration)
from segssl.losses import masked_cross_entropy, softmax_mse

from .test_method_pseudo_label import (
    LinearNet, TinyNet, assert_student_grads, build, make_batch, make_ctx, one_channel, record_modes, roundtrip,
)


def test_teacher_is_a_frozen_eval_mode_copy() -> None:
    torch.manual_seed(0)
    method = build("mean_teacher", TinyNet)
    method.train()
    teacher = method.teacher.net
    assert method.eval_model() is teacher and teacher is not method.model
    assert not any(m.training for m in teacher.modules()) and method.model.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(t, s) for t, s in zip(teacher.state_dict().values(), method.model.state_dict().values()))
    assert any(k.startswith("teacher.net.") for k in method.state_dict())


def test_teacher_pass_has_no_dropout_and_updates_only_the_teachers_statistics() -> None:
    torch.manual_seed(0)
    method = build("mean_teacher", TinyNet)
    teacher_calls = record_modes(method.teacher.net)
    student_calls = record_modes(method.model)
    t_bn, s_bn = method.teacher.net.encoder.bn, method.model.encoder.bn
    unlabeled = make_batch(b=3, seed=1, views=("strong",))
    weak = unlabeled["image"].clone()
    method.training_step(make_batch(b=2), unlabeled, make_ctx())
    # teacher: BatchNorm on the 3 weak images' statistics, no dropout, no graph
    assert teacher_calls == [("BatchNorm2d", True, False, 3), ("Dropout2d", False, False, 3)]
    assert student_calls == [("BatchNorm2d", True, True, 5), ("Dropout2d", True, True, 5)]
    assert int(t_bn.num_batches_tracked) == 1 and int(s_bn.num_batches_tracked) == 1
    expected = 0.1 * method.teacher.net.encoder.conv(weak).mean((0, 2, 3))  # momentum 0.1 from zeros
    assert torch.allclose(t_bn.running_mean, expected, atol=1e-5)
    assert not torch.allclose(t_bn.running_mean, s_bn.running_mean)  # the student saw 5 other images
    assert torch.equal(method.teacher(weak), method.teacher(weak))  # deterministic for a batch


def test_ema_update_math_after_step() -> None:
    torch.manual_seed(0)
    method = build("mean_teacher", TinyNet, ema_decay=0.99)
    before = {k: v.clone() for k, v in method.teacher.net.named_parameters()}
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(torch.randn_like(p))
    method.model(torch.randn(4, 3, 8, 8))  # new BatchNorm statistics in the student
    student = dict(method.model.named_parameters())
    method.on_after_step(make_ctx(step=3))  # warm-up: min(0.99, 1 - 1/4) = 0.75
    for name, p in method.teacher.net.named_parameters():
        assert torch.allclose(p, 0.75 * before[name] + 0.25 * student[name], atol=1e-6), name
    before = {k: v.clone() for k, v in method.teacher.net.named_parameters()}
    method.on_after_step(make_ctx(step=500))  # after warm-up: 0.99
    for name, p in method.teacher.net.named_parameters():
        assert torch.allclose(p, 0.99 * before[name] + 0.01 * student[name], atol=1e-6), name
    t_bn, s_bn = method.teacher.net.encoder.bn, method.model.encoder.bn
    assert not torch.equal(t_bn.running_mean, s_bn.running_mean)  # its own statistics, not the student's
    assert int(t_bn.num_batches_tracked) == 0 and int(s_bn.num_batches_tracked) == 1


def test_consistency_compares_student_strong_with_teacher_weak() -> None:
    method = build("mean_teacher", lambda: LinearNet((0.0, 2.0, -1.0)), rampup_steps=0)
    labeled = make_batch(ch=1)
    same = make_batch(ch=1, seed=1)
    same["strong"] = same["image"].clone()
    out = method.training_step(labeled, same, make_ctx())
    assert out["loss/consistency"].item() == 0.0  # identical views, identical weights
    differ = make_batch(ch=1, seed=1, views=("strong",))
    out = method.training_step(labeled, differ, make_ctx())
    with torch.no_grad():
        head = method.model.head
        expected_c = softmax_mse(head(differ["strong"]), head(differ["image"]), differ["valid"])
        expected_x = masked_cross_entropy(head(labeled["image"]), labeled["mask"], labeled["valid"])
    assert out["loss/consistency"].item() == pytest.approx(expected_c.item(), rel=1e-5)
    assert out["loss/consistency"].item() > 1e-3
    assert out["loss"].item() == pytest.approx((expected_x + expected_c).item(), rel=1e-5)


def test_consistency_weight_ramps_up_over_a_quarter_of_the_run() -> None:
    method = build("mean_teacher", LinearNet, num_classes=2, lambda_c=4.0)
    batch = make_batch(ch=1, classes=2, views=("strong",))
    outs = [method.training_step(batch, batch, make_ctx(step=s, max_steps=100, num_classes=2)) for s in (0, 5, 25)]
    assert [o["lambda_c"] for o in outs] == pytest.approx([4 * math.exp(-5), 4 * math.exp(-5 * 0.8**2), 4.0])
    o = outs[0]
    assert o["loss"].item() == pytest.approx((o["loss/ce"] + 4 * math.exp(-5) * o["loss/consistency"]).item(), rel=1e-6)


def test_gradients_reach_the_student_only() -> None:
    torch.manual_seed(0)
    method = build("mean_teacher", TinyNet, rampup_steps=0)
    out = method.training_step(make_batch(), make_batch(seed=1, views=("strong",)), make_ctx())
    out["loss"].backward()
    assert_student_grads(method)


def test_checkpoint_round_trip_reproduces_the_next_step() -> None:
    method = build("mean_teacher", lambda: LinearNet((0.0, 2.0, -1.0)), rampup_steps=0)
    labeled = make_batch(ch=1)
    with torch.no_grad():
        method.model.head.weight.add_(0.5)
    method.on_after_step(make_ctx(step=10))  # teacher now differs from both the student and init
    fresh = roundtrip(method, build("mean_teacher", lambda: LinearNet((0.0, 0.0, 0.0)), rampup_steps=0))
    nxt = make_batch(ch=1, seed=2, views=("strong",))
    a = method.training_step(labeled, nxt, make_ctx(step=11))
    b = fresh.training_step(labeled, nxt, make_ctx(step=11))
    assert torch.equal(a["loss"], b["loss"]) and a["loss/consistency"].item() > 0


def test_diagnostics_of_the_teacher_labels() -> None:
    method = build("mean_teacher", LinearNet, num_classes=2)  # logits [0, 10x]
    weak = one_channel([[1.0, 1.0, -1.0, -1e-3], [1.0, 1.0, 1.0, 1.0]])
    unlabeled = {"image": weak, "strong": weak, "mask": torch.tensor([[[1, 0, 0, 1]], [[0, 0, 0, 0]]]),
                 "valid": torch.ones(2, 1, 4, dtype=torch.bool), "has_mask": torch.tensor([True, False])}
    out = method.training_step(unlabeled, unlabeled, make_ctx(num_classes=2))
    # every valid pixel is used (no threshold): accuracy 2/4 on the image with ground truth
    assert out["mask_ratio"] == 1.0 and out["pl_acc"] == pytest.approx(1 / 2)
    assert {"loss", "loss/ce", "loss/consistency", "lambda_c", "mean_conf"} <= out.keys()
