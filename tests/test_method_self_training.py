"""Self-training (ST/ST++): phases, offline pool labelling, selection, frozen teacher, TTA, resume."""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator, Optional

import cv2
import pytest
import torch
from torch import nn

import segssl.methods.self_training  # noqa: F401  (registration)
from segssl.errors import ConfigError
from segssl.methods import METHODS, StepContext
from segssl.methods.self_training import SelfTrainingParams, flip_tta_probs, image_miou, phase_starts

torch.set_num_threads(1)
H = W = 16


class TinyNet(nn.Module):
    """conv-BN-dropout-conv: BatchNorm and dropout make a non-eval teacher pass detectable."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout2d(0.5), nn.Conv2d(4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LinearNet(nn.Module):
    """logits = [x, -x]: a constant image of value v has confidence sigmoid(2|v|) everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# pool: id -> (constant value, (h, w) before padding to 16x16)
POOL = {"a": (0.1, (12, 16)), "b": (2.0, (16, 10)), "c": (0.5, (16, 16)), "d": (1.0, (8, 8))}


def _batch(ids: list[str], values: Optional[list[float]] = None, strong: bool = False) -> dict[str, Any]:
    values = values or [POOL[i][0] for i in ids]
    sizes = [POOL[i][1] if i in POOL else (H, W) for i in ids]
    image = torch.zeros(len(ids), 1, H, W)
    valid = torch.zeros(len(ids), H, W, dtype=torch.bool)
    for n, (v, (h, w)) in enumerate(zip(values, sizes)):
        image[n, :, :h, :w] = v
        valid[n, :h, :w] = True
    batch = {"id": ids, "image": image, "valid": valid, "size": torch.tensor(sizes),
             "mask": torch.zeros(len(ids), H, W, dtype=torch.long), "has_mask": torch.ones(len(ids), dtype=torch.bool)}
    if strong:
        batch["strong"] = image * 1.1
    return batch


class Pool:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Iterator[dict[str, Any]]:
        self.calls += 1
        yield _batch(["a", "b"])
        yield _batch(["c", "d"])


def _method(net: type = LinearNet, **params: Any) -> Any:
    params.setdefault("reliability", "confidence")
    return METHODS.get("self_training")(net, 2, SelfTrainingParams(**params))


def _ctx(step: int, max_steps: int, pool: Pool, run_dir: Optional[Path] = None, is_main: bool = True) -> StepContext:
    return StepContext(step=step, max_steps=max_steps, device=torch.device("cpu"), num_classes=2, autocast=nullcontext,
                       backward=lambda loss: None, optimizer_step=lambda name: None, run_dir=run_dir, is_main=is_main,
                       unlabeled_pool=pool)


def _labeled() -> dict[str, Any]:
    image = torch.randn(2, 1, H, W)
    return {"image": image, "mask": (image[:, 0] > 0).long(), "valid": torch.ones(2, H, W, dtype=torch.bool)}


def test_phase_boundaries() -> None:
    assert phase_starts(30, 2) == [0, 10, 20]
    assert phase_starts(10, 2) == [0, 3, 7]  # rounded 3.33 / 6.67
    assert phase_starts(100, 1) == [0, 50]
    assert phase_starts(100, 2, [2, 1, 1]) == [0, 50, 75]
    method = _method(rounds=2, phase_steps=[0.5, 0.25, 0.25])
    assert [method.phase(s, 100) for s in (0, 49, 50, 74, 75, 99)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ConfigError):
        SelfTrainingParams(rounds=2, phase_steps=[0.5, 0.5])


def test_flip_tta_hand_case() -> None:
    net = nn.Conv2d(1, 2, (1, 3), padding=(0, 1), bias=False)  # class 0 logit = right neighbour, class 1 = 0
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0, 0, 0, 2] = 1.0
    x = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 1, 4)
    s = torch.sigmoid  # softmax([a, 0])[0]
    plain, mirrored = [1.0, 2.0, 3.0, 0.0], [0.0, 0.0, 1.0, 2.0]  # right and left neighbours (zero padding)
    expected = torch.tensor([(s(torch.tensor(a)) + s(torch.tensor(b))) / 2 for a, b in zip(plain, mirrored)])
    probs = flip_tta_probs(net, x)
    assert torch.allclose(probs[0, 0, 0], expected, atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(1, 1, 4))
    assert not torch.allclose(probs[0, 0, 0], torch.sigmoid(torch.tensor(plain)))  # the flip matters


def test_image_miou_hand_case() -> None:
    pred = torch.tensor([[[0, 0], [1, 1]], [[0, 1], [0, 1]]])
    ref = torch.tensor([[[0, 1], [1, 1]], [[0, 1], [0, 1]]])
    valid = torch.ones(2, 2, 2, dtype=torch.bool)
    # image 0: class 0 IoU 1/2, class 1 IoU 2/3; image 1: perfect
    assert torch.allclose(image_miou(pred, ref, valid, 3), torch.tensor([(0.5 + 2 / 3) / 2, 1.0]))
    valid[0, 0, 1] = False  # drop the disagreeing pixel -> perfect
    valid[1] = False  # no valid pixel -> 0
    assert torch.allclose(image_miou(pred, ref, valid, 3), torch.tensor([1.0, 0.0]))


def test_round_start_labels_whole_pool_once_and_selects_top_fraction(tmp_path: Path) -> None:
    method, pool = _method(rounds=2), Pool()
    for step in range(4):  # max_steps 9 -> phases start at 0, 3, 6
        method.training_step(_labeled(), _batch(["a", "c"], strong=True), _ctx(step, 9, pool, tmp_path))
    assert pool.calls == 1 and int(method.round) == 1
    out_dir = tmp_path / "pseudo_labels" / "round_1"
    for image_id, (v, (h, w)) in POOL.items():
        label = cv2.imread(str(out_dir / "labels" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        conf = cv2.imread(str(out_dir / "confidence" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert label.shape == (h, w) and conf.shape == (h, w), image_id
        assert (label == 0).all()  # v > 0 -> class 0
        assert (conf == round(255 * float(torch.sigmoid(torch.tensor(2 * v))))).all()
        assert method.reliability[image_id] == pytest.approx(float(torch.sigmoid(torch.tensor(2 * v))), abs=1e-6)
    assert method.selected == {"b", "d"}  # the two most confident of four
    assert (out_dir / "reliability.csv").read_text().splitlines()[1].startswith("b,")
    method.training_step(_labeled(), _batch(["a", "c"], strong=True), _ctx(6, 9, pool, tmp_path))
    assert pool.calls == 2 and int(method.round) == 2 and method.selected == set(POOL)  # round 2 keeps all


def test_no_files_on_other_ranks(tmp_path: Path) -> None:
    method = _method()
    method.training_step(_labeled(), _batch(["a", "b"], strong=True), _ctx(3, 9, Pool(), tmp_path, is_main=False))
    assert not (tmp_path / "pseudo_labels").exists() and method.selected == {"b", "d"}


def test_unlabeled_loss_zero_in_phase_zero_and_selection_weights() -> None:
    method, pool = _method(), Pool()
    out = method.training_step(_labeled(), _batch(["b", "d"], strong=True), _ctx(0, 9, pool))
    assert float(out["loss/unlabeled"].detach()) == 0.0 and pool.calls == 0
    out = method.training_step(_labeled(), _batch(["b", "d"], strong=True), _ctx(3, 9, pool))
    assert float(out["loss/unlabeled"].detach()) > 0 and out["mask_ratio"] == 1.0 and out["pl_acc"] == 1.0
    assert out["selected_fraction"] == 0.5 and out["round"] == 1.0
    out = method.training_step(_labeled(), _batch(["a", "c"], strong=True), _ctx(4, 9, pool))  # both unselected
    assert float(out["loss/unlabeled"].detach()) == 0.0 and out["mask_ratio"] == 0.0
    # ids outside this rank's pool shard are judged online against the last kept reliability
    out = method.training_step(_labeled(), _batch(["x", "y"], [3.0, 0.2], strong=True), _ctx(5, 9, pool))
    assert out["mask_ratio"] == pytest.approx(0.5)
    # a confidence threshold zeroes pixels: every pixel of b (conf 0.98) passes 0.9, none of d's (0.88)
    method.params.threshold = 0.9
    out = method.training_step(_labeled(), _batch(["b", "d"], strong=True), _ctx(5, 9, pool))
    assert out["mask_ratio"] == pytest.approx(160 / (160 + 64))


def test_stability_reliability_uses_phase_zero_checkpoints() -> None:
    method, pool = _method(TinyNet, reliability="stability", checkpoints=2), Pool()
    assert len(method.history) == 2
    for step in range(3):  # checkpoints after steps 1 and 2 (of a 3-step phase 0)
        method.training_step(_labeled(), _batch(["a", "b"], strong=True), _ctx(step, 9, pool))
        with torch.no_grad():
            for p in method.model.parameters():
                p.add_(0.1 * torch.randn_like(p))  # stand-in for an optimizer step
        method.on_after_step(_ctx(step, 9, pool))
        if step == 0:
            snapshot = {k: v.clone() for k, v in method.model.state_dict().items()}
    assert all(torch.equal(v, method.history[0].state_dict()[k]) for k, v in snapshot.items())
    method.training_step(_labeled(), _batch(["a", "b"], strong=True), _ctx(3, 9, pool))
    assert all(0.0 <= r <= 1.0 for r in method.reliability.values()) and len(method.selected) == 2


def test_teacher_is_frozen_and_deterministic() -> None:
    method, pool = _method(TinyNet), Pool()
    method.train()
    method.training_step(_labeled(), _batch(["b", "d"], strong=True), _ctx(3, 9, pool))
    teacher = method.teacher
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_bn = method.model.net[1].running_mean.clone()
    method.train()  # the trainer calls this every step
    assert not teacher.training and not any(m.training for m in method.history)
    out = method.training_step(_labeled(), _batch(["b", "d"], strong=True), _ctx(4, 9, pool))
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())  # BN stats unchanged
    assert not torch.equal(student_bn, method.model.net[1].running_mean)  # the student's do change
    x = torch.randn(2, 1, H, W)
    assert torch.equal(flip_tta_probs(teacher, x), flip_tta_probs(teacher, x))  # no dropout


def test_state_dict_round_trip_and_resume(tmp_path: Path) -> None:
    method, pool = _method(TinyNet), Pool()
    method.training_step(_labeled(), _batch(["b", "d"], strong=True), _ctx(3, 9, pool))
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(1.0)  # student moves on; the teacher snapshot must not follow
    state = method.state_dict()
    path = tmp_path / "m.pt"
    torch.save(state, path)
    restored, pool2 = _method(TinyNet), Pool()
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert int(restored.round) == 1 and restored.selected == method.selected
    assert restored.reliability == method.reliability and restored.select_min == method.select_min
    for k, v in method.teacher.state_dict().items():
        assert torch.equal(v, restored.teacher.state_dict()[k])
    assert not torch.equal(restored.teacher.net[0].weight, restored.model.net[0].weight)
    restored.training_step(_labeled(), _batch(["b", "d"], strong=True), _ctx(4, 9, pool2))
    assert pool2.calls == 0  # resumed inside round 1: the pool is not labelled again
    fresh, pool3 = _method(TinyNet), Pool()  # a checkpoint from before the round start
    fresh.training_step(_labeled(), _batch(["b", "d"], strong=True), _ctx(4, 9, pool3))
    assert pool3.calls == 1 and int(fresh.round) == 1


def test_reinit_gives_same_fresh_student() -> None:
    a, b = _method(TinyNet, reinit=True), _method(TinyNet, reinit=True)
    for m in (a, b):
        with torch.no_grad():
            m.model.net[0].weight.add_(torch.randn_like(m.model.net[0].weight))
        m.training_step(_labeled(), _batch(["b", "d"], strong=True), _ctx(3, 9, Pool()))
    assert torch.equal(a.model.net[0].weight, b.model.net[0].weight)  # seeded: same on every rank
    assert not torch.equal(a.model.net[0].weight, a.teacher.net[0].weight)
    assert math.isfinite(float(a.training_step(_labeled(), _batch(["b"], strong=True), _ctx(4, 9, Pool()))["loss"].detach()))
