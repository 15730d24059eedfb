"""pseudo_label method and the teacher/weighting helpers it shares with fixmatch and mean_teacher.

Expected values are derived by hand in comments. The small networks defined here are also used
by test_method_fixmatch.py and test_method_mean_teacher.py.
"""
from __future__ import annotations

import io
import math
from contextlib import nullcontext
from typing import Any, Callable

import pytest
import torch
from torch import nn

import segssl.methods.pseudo_label  # noqa: F401  (registration)
from segssl.config import params_from_dict
from segssl.errors import ConfigError
from segssl.methods import METHODS, StepContext
from segssl.methods.pseudo_label import EmaTeacher, deterministic_logits

torch.set_num_threads(1)


# ---------------------------------------------------------------------------- shared test helpers
class TinyEncoder(nn.Module):
    def __init__(self, in_ch: int, width: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # smp: feature 0 is the input
        return [x, self.drop(torch.relu(self.bn(self.conv(x))))]


class TinyDecoder(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.relu(self.conv(features[-1]))


class TinyNet(nn.Module):
    """smp-shaped network (encoder -> features, decoder(features), segmentation_head) with a
    BatchNorm and a Dropout2d, so any non-deterministic teacher pass shows."""

    def __init__(self, in_ch: int = 3, classes: int = 3, width: int = 8, dropout: float = 0.5) -> None:
        super().__init__()
        self.encoder = TinyEncoder(in_ch, width, dropout)
        self.decoder = TinyDecoder(width)
        self.segmentation_head = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.decoder(self.encoder(x)))


class LinearNet(nn.Module):
    """Deterministic 1x1 conv ``logits[c] = w_c * x`` (no BN, no dropout): train and eval mode
    agree, so teacher/student outputs can be predicted exactly. smp-shaped for feature tests."""

    def __init__(self, weights: tuple[float, ...] = (0.0, 10.0)) -> None:
        super().__init__()
        self.encoder = nn.Identity()
        self.head = nn.Conv2d(1, len(weights), 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(weights).view(-1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def make_ctx(step: int = 0, max_steps: int = 100, num_classes: int = 3) -> StepContext:
    return StepContext(step=step, max_steps=max_steps, device=torch.device("cpu"), num_classes=num_classes,
                       autocast=nullcontext, backward=lambda loss: loss.backward(), optimizer_step=lambda name: None)


def make_batch(b: int = 2, h: int = 8, w: int = 8, ch: int = 3, classes: int = 3, views: tuple[str, ...] = (),
               seed: int = 0, has_mask: bool = False) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, ch, h, w, generator=g)
    batch: dict[str, Any] = {"image": image, "mask": torch.randint(0, classes, (b, h, w), generator=g),
                             "valid": torch.ones(b, h, w, dtype=torch.bool), "has_mask": torch.full((b,), has_mask),
                             "id": [str(i) for i in range(b)]}
    for view in views:  # photometric change only: same geometry as the weak view
        batch[view] = image * 1.5 + 0.3 * torch.randn(b, ch, h, w, generator=g)
    return batch


def build(name: str, net: Callable[[], nn.Module], num_classes: int = 3, **params: Any) -> Any:
    cls = METHODS.get(name)
    method = cls(net, num_classes, params_from_dict(cls.Params, params, "method.params"))
    return method.train()


def record_modes(net: nn.Module, kinds: tuple[type, ...] = (nn.BatchNorm2d, nn.Dropout2d)) -> list[tuple[str, bool, bool, int]]:
    """Hooks logging (module type, training flag, grad enabled, batch size) at each call."""
    calls: list[tuple[str, bool, bool, int]] = []
    for module in net.modules():
        if isinstance(module, kinds):
            module.register_forward_hook(lambda m, inp, out: calls.append(
                (type(m).__name__, m.training, torch.is_grad_enabled(), inp[0].shape[0])))
    return calls


def assert_student_grads(method: Any) -> None:
    for name, p in method.model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    teacher = getattr(method, "teacher", None)
    if teacher is not None:
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def roundtrip(method: Any, fresh: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def one_channel(values: list[list[float]]) -> torch.Tensor:
    """[B, N] pixel values -> [B, 1, 1, N] images."""
    return torch.tensor(values).view(len(values), 1, 1, -1)


# ---------------------------------------------------------------------------- helpers under test
def test_deterministic_logits_is_eval_no_grad_and_restores_modes() -> None:
    torch.manual_seed(0)
    net = TinyNet().train()
    net.decoder.eval()  # a submodule deliberately in eval mode must stay so
    x = torch.randn(4, 3, 8, 8)
    net(x)  # give BatchNorm non-trivial running statistics
    bn = net.encoder.bn
    mean, var, tracked = bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)
    a, b = deterministic_logits(net, x), deterministic_logits(net, x)
    assert torch.equal(a, b)  # no dropout
    assert not a.requires_grad
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert int(bn.num_batches_tracked) == tracked
    assert net.training and net.encoder.training and not net.decoder.training
    with torch.no_grad():
        assert torch.allclose(a, net.eval()(x))


def test_ema_teacher_is_frozen_without_dropout_and_keeps_its_own_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    student = TinyNet()
    teacher = EmaTeacher(student)
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.net.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    calls = record_modes(teacher.net)
    x = torch.randn(4, 3, 8, 8) * 3 + 2
    student_stats = student.encoder.bn.running_mean.clone()
    a, b = teacher(x), teacher(x)
    assert torch.equal(a, b)  # deterministic: no dropout, batch statistics of the same batch
    assert calls[:2] == [("BatchNorm2d", True, False, 4), ("Dropout2d", False, False, 4)]
    assert not any(m.training for m in teacher.net.modules())  # back in eval mode for evaluation
    bn = teacher.net.encoder.bn
    # two passes, momentum 0.1 from the copied zeros: 0.19 of the batch mean of the conv output
    conv_out = teacher.net.encoder.conv(x)
    assert torch.allclose(bn.running_mean, 0.19 * conv_out.mean((0, 2, 3)), atol=1e-5)
    assert int(bn.num_batches_tracked) == 2
    assert torch.equal(student.encoder.bn.running_mean, student_stats)  # the student is untouched


# ---------------------------------------------------------------------------- the method
def test_teacher_pass_is_deterministic_inside_training_step() -> None:
    torch.manual_seed(0)
    method = build("pseudo_label", TinyNet, threshold=0.0)
    calls = record_modes(method.model)
    labeled, unlabeled = make_batch(b=2), make_batch(b=3, seed=1)
    bn = method.model.encoder.bn
    tracked = int(bn.num_batches_tracked)
    method.training_step(labeled, unlabeled, make_ctx())
    # teacher: BN then Dropout on the 3 unlabeled images, eval mode, no grad; then the student
    # pass over labeled + unlabeled (2 + 3) in train mode with grad
    assert calls == [("BatchNorm2d", False, False, 3), ("Dropout2d", False, False, 3),
                     ("BatchNorm2d", True, True, 5), ("Dropout2d", True, True, 5)]
    assert int(bn.num_batches_tracked) == tracked + 1  # only the student pass updates statistics
    assert method.model.training


def test_hard_unlabeled_loss_by_hand() -> None:
    # logits [0, 10x]: label = 1 if x > 0 else 0; conf = sigmoid(10|x|)
    method = build("pseudo_label", LinearNet, num_classes=2, threshold=0.9, rampup_steps=0, lambda_u=2.0)
    x = one_channel([[0.3, -0.4, 0.05, 1.0, 2.0]])  # conf: s(3), s(4), s(0.5)=0.62 < 0.9, s(10), s(20)
    valid = torch.tensor([[[True, True, True, True, False]]])
    unlabeled = {"image": x, "valid": valid, "mask": torch.zeros(1, 1, 5, dtype=torch.long), "has_mask": torch.tensor([False])}
    labeled = {"image": one_channel([[1.0]]), "mask": torch.tensor([[[0]]]), "valid": torch.ones(1, 1, 1, dtype=torch.bool)}
    out = method.training_step(labeled, unlabeled, make_ctx(num_classes=2))
    s = lambda z: 1.0 / (1.0 + math.exp(-z))  # noqa: E731
    # the student sees the same weak view: CE = -log conf on confident, valid pixels; / 4 valid
    expected_u = -(math.log(s(3)) + math.log(s(4)) + math.log(s(10))) / 4
    expected_x = -math.log(1 - s(10))  # label 0 on a pixel with logits [0, 10]
    assert out["loss/u"].item() == pytest.approx(expected_u, rel=1e-5)
    assert out["loss/ce"].item() == pytest.approx(expected_x, rel=1e-5)
    assert out["loss"].item() == pytest.approx(expected_x + 2.0 * expected_u, rel=1e-5)
    assert out["mask_ratio"] == pytest.approx(3 / 4)


def test_unlabeled_term_is_exactly_zero_below_threshold() -> None:
    torch.manual_seed(0)
    method = build("pseudo_label", TinyNet, threshold=0.95, rampup_steps=0)
    nn.init.zeros_(method.model.segmentation_head.weight)
    nn.init.zeros_(method.model.segmentation_head.bias)  # logits 0: conf 1/3 everywhere
    out = method.training_step(make_batch(), make_batch(seed=1), make_ctx())
    assert out["loss/u"].item() == 0.0 and out["mask_ratio"] == 0.0
    assert torch.equal(out["loss"], out["loss/ce"])  # nothing is taught to be class 0


@pytest.mark.parametrize("teacher", ["self", "ema"])
def test_gradients_reach_every_student_parameter(teacher: str) -> None:
    torch.manual_seed(0)
    method = build("pseudo_label", TinyNet, threshold=0.0, teacher=teacher, rampup_steps=0)
    out = method.training_step(make_batch(), make_batch(seed=1), make_ctx())
    assert out["loss/u"].item() > 0
    out["loss"].backward()
    assert_student_grads(method)
    assert (method.eval_model() is method.model) == (teacher == "self")


def test_ema_teacher_update_after_step() -> None:
    torch.manual_seed(0)
    method = build("pseudo_label", TinyNet, teacher="ema", ema_decay=0.99)
    before = {k: v.clone() for k, v in method.teacher.net.state_dict().items()}
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(1.0)  # as if an optimizer step had moved the student
    method.model(torch.randn(2, 3, 8, 8))  # and its BatchNorm statistics
    method.on_after_step(make_ctx(step=9))  # decay min(0.99, 1 - 1/10) = 0.9
    student = method.model.state_dict()
    for name, p in method.teacher.net.named_parameters():
        assert torch.allclose(p, 0.9 * before[name] + 0.1 * student[name], atol=1e-6), name
    # its BatchNorm statistics stay its own (the student's moved with the forward above)
    assert torch.equal(method.teacher.net.encoder.bn.running_mean, before["encoder.bn.running_mean"])
    assert not torch.equal(method.model.encoder.bn.running_mean, before["encoder.bn.running_mean"])
    assert method.eval_model() is method.teacher.net


def test_rampup_default_is_ten_percent_of_the_run() -> None:
    method = build("pseudo_label", LinearNet, num_classes=2)
    batch = {"image": one_channel([[1.0]]), "mask": torch.tensor([[[1]]]), "valid": torch.ones(1, 1, 1, dtype=torch.bool),
             "has_mask": torch.tensor([False])}
    assert method.training_step(batch, batch, make_ctx(step=0, max_steps=100))["lambda_u"] == pytest.approx(math.exp(-5))
    assert method.training_step(batch, batch, make_ctx(step=5, max_steps=100))["lambda_u"] == pytest.approx(math.exp(-1.25))
    assert method.training_step(batch, batch, make_ctx(step=10, max_steps=100))["lambda_u"] == 1.0


def test_diagnostics_and_pl_acc_on_a_hand_case() -> None:
    method = build("pseudo_label", LinearNet, num_classes=2, threshold=0.95)
    # image 0 (ground truth known): labels [1, 1, 0, 0], conf [~1, ~1, ~1, 0.5025] -> used 3 pixels
    # image 1 (no ground truth): all class 1, confident; its "mask" must be ignored
    unlabeled = {"image": one_channel([[1.0, 1.0, -1.0, -1e-3], [1.0, 1.0, 1.0, 1.0]]),
                 "mask": torch.tensor([[[1, 0, 0, 1]], [[0, 0, 0, 0]]]),
                 "valid": torch.ones(2, 1, 4, dtype=torch.bool), "has_mask": torch.tensor([True, False])}
    out = method.training_step(unlabeled, unlabeled, make_ctx(num_classes=2))
    assert out["pl_acc"] == pytest.approx(2 / 3)  # pixels 0 and 2 of the 3 used pixels are right
    assert out["pl_acc_all"] == pytest.approx(2 / 4)
    assert out["mask_ratio"] == pytest.approx(7 / 8)
    assert out["mask_ratio/0"] == pytest.approx(1 / 2) and out["mask_ratio/1"] == 1.0
    assert {"loss", "loss/ce", "loss/u", "mean_conf", "lambda_u"} <= out.keys()


@pytest.mark.parametrize("weighting", ["soft", "classwise", "class_mean"])
def test_weighting_state_updates_and_survives_a_checkpoint(weighting: str) -> None:
    kwargs = dict(weighting=weighting, threshold=0.95, rampup_steps=0)
    method = build("pseudo_label", lambda: LinearNet((0.0, 1.0, -0.5)), **kwargs)
    keys = {"soft": ("weighting.conf_mean", "weighting.conf_var"),
            "classwise": ("weighting.global_tau", "weighting.class_prob"),
            "class_mean": ("weighting.class_conf",)}[weighting]
    assert set(keys) <= method.state_dict().keys()
    labeled = make_batch(ch=1, seed=0)
    unlabeled = make_batch(ch=1, seed=1)
    method.training_step(labeled, unlabeled, make_ctx())
    with torch.no_grad():
        conf = torch.softmax(method.model(unlabeled["image"]), 1).max(1).values
    if weighting == "soft":  # EMA from 1/C with momentum 0.999
        assert float(method.weighting.conf_mean) == pytest.approx(0.999 / 3 + 0.001 * float(conf.mean()), rel=1e-5)
    elif weighting == "class_mean":  # EMA from the cap 0.95, per predicted class
        with torch.no_grad():
            label = method.model(unlabeled["image"]).argmax(1)
        for c in range(3):
            seen = label == c
            expected = 0.95 if not seen.any() else 0.999 * 0.95 + 0.001 * float(conf[seen].mean())
            assert float(method.weighting.class_conf[c]) == pytest.approx(expected, rel=1e-5)
    else:
        assert float(method.weighting.global_tau) == pytest.approx(0.999 / 3 + 0.001 * float(conf.mean()), rel=1e-5)
    fresh = roundtrip(method, build("pseudo_label", lambda: LinearNet((0.0, 0.0, 0.0)), **kwargs))
    for key in keys:
        assert torch.equal(fresh.state_dict()[key], method.state_dict()[key])
    nxt = make_batch(ch=1, seed=2)
    a = method.training_step(labeled, nxt, make_ctx(step=1))
    b = fresh.training_step(labeled, nxt, make_ctx(step=1))
    assert torch.equal(a["loss"], b["loss"]) and a["mask_ratio"] == b["mask_ratio"]


def test_invalid_params_name_the_key() -> None:
    cls = METHODS.get("pseudo_label")
    with pytest.raises(ConfigError, match="method.params.weighting"):
        params_from_dict(cls.Params, {"weighting": "fuzzy"}, "method.params")
    with pytest.raises(ConfigError, match="method.params.teacher"):
        params_from_dict(cls.Params, {"teacher": "other"}, "method.params")
    with pytest.raises(ConfigError, match="method.params.threshold_floor"):
        params_from_dict(cls.Params, {"threshold_floor": 1.5}, "method.params")
