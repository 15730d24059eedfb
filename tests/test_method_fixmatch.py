"""fixmatch and unimatch: deterministic teacher, CutMix consistency, loss combination, EMA option."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import segssl.methods.fixmatch  # noqa: F401  (registration)
import segssl.methods.unimatch  # noqa: F401
from segssl.config import params_from_dict
from segssl.errors import ConfigError
from segssl.losses import masked_cross_entropy, weighted_cross_entropy
from segssl.methods import METHODS
from segssl.methods.fixmatch import mix_with_neighbour

from .test_method_pseudo_label import (
    LinearNet, TinyNet, assert_student_grads, build, make_batch, make_ctx, one_channel, record_modes, roundtrip,
)


class LinearSmp(nn.Module):
    """Deterministic smp-shaped net: encoder -> [x, x], decoder -> last feature, 1x1 conv head."""

    class _Encoder(nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [x, x]

    class _Decoder(nn.Module):
        def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
            return features[-1]

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = self._Encoder(), self._Decoder()
        self.segmentation_head = LinearNet((0.0, 3.0)).head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.decoder(self.encoder(x)))


def test_registered_views() -> None:
    assert METHODS.get("fixmatch").unlabeled_views == ("strong",)
    assert METHODS.get("unimatch").unlabeled_views == ("strong", "strong2")
    params = METHODS.get("unimatch").Params()
    assert params.feature_perturbation and params.two_strong_views and params.threshold == 0.95
    # class thresholds by default in fixmatch (CamVid 46 labels: best val 0.489/0.498 vs 0.448 with one
    # global 0.95); unimatch keeps the global threshold (its class_mean run collapsed late, one seed)
    assert (METHODS.get("fixmatch").Params().weighting, METHODS.get("fixmatch").Params().ema_momentum) == ("class_mean", 0.99)
    assert params.weighting == "hard"


@pytest.mark.parametrize("name, student_batches", [("fixmatch", [5]), ("unimatch", [5, 6])])
def test_teacher_pass_is_deterministic(name: str, student_batches: list[int]) -> None:
    torch.manual_seed(0)
    method = build(name, TinyNet, threshold=0.0)
    calls = record_modes(method.model)
    bn = method.model.encoder.bn
    tracked = int(bn.num_batches_tracked)
    method.training_step(make_batch(b=2), make_batch(b=3, seed=1, views=method.unlabeled_views), make_ctx())
    # teacher on the 3 weak images: eval mode, no grad; then the student passes in train mode
    # (fixmatch: labeled + strong; unimatch: FP encoder pass on labeled + weak, then strong1 + strong2)
    expected = [("BatchNorm2d", False, False, 3), ("Dropout2d", False, False, 3)]
    for n in student_batches:
        expected += [("BatchNorm2d", True, True, n), ("Dropout2d", True, True, n)]
    assert calls == expected
    assert int(bn.num_batches_tracked) == tracked + len(student_batches)


def test_mix_with_neighbour_takes_the_previous_image_inside_the_box() -> None:
    box = torch.zeros(2, 1, 3, dtype=torch.bool)
    box[0, 0, 1] = True
    box[1, 0, 2] = True
    label = torch.tensor([[[1, 1, 1]], [[2, 2, 2]]])
    (mixed,) = mix_with_neighbour(box, label)
    assert mixed.tolist() == [[[1, 2, 1]], [[2, 2, 1]]]


def test_cutmix_mixes_image_label_weight_and_valid_with_the_same_box() -> None:
    # logits [0, 3x]. Image 0 is +1 everywhere (label 1, conf sigmoid(3) = 0.9526 >= 0.95), image 1
    # is -1e-3 (label 0, conf 0.50075 < 0.95: weight 0) and invalid in its last column.
    method = build("fixmatch", lambda: LinearNet((0.0, 3.0)), num_classes=2, cutmix_p=1.0, cutmix_area=[0.3, 0.3],
                   weighting="hard")
    inputs: list[torch.Tensor] = []
    method.model.head.register_forward_hook(lambda m, inp, out: inputs.append(inp[0]))
    weak = torch.cat([torch.ones(1, 1, 8, 8), torch.full((1, 1, 8, 8), -1e-3)])
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    valid[1, :, 7] = False
    unlabeled = {"image": weak, "strong": weak.clone(), "valid": valid, "mask": torch.zeros(2, 8, 8, dtype=torch.long),
                 "has_mask": torch.tensor([False, False])}
    labeled = {"image": torch.ones(1, 1, 8, 8), "mask": torch.ones(1, 8, 8, dtype=torch.long),
               "valid": torch.ones(1, 8, 8, dtype=torch.bool)}
    torch.manual_seed(3)
    out = method.training_step(labeled, unlabeled, make_ctx(num_classes=2))
    mixed = inputs[1][1:, 0]  # call 0: teacher on the weak view; call 1: labeled + mixed strong
    box0, box1 = mixed[0] != 1.0, mixed[1] == 1.0  # where each image took its neighbour's pixels
    assert box0.any() and box1.any() and not box0.all() and not box1.all()
    # Pixels supervised with label 1 at weight 1: image 0 outside its box, image 1 inside its box
    # (image 0's pixels); each costs -log sigmoid(3). Denominator: valid pixels AFTER mixing. Had
    # the label or weight not followed the image, box pixels would cost ~log 2 or ~3 each.
    n_used = int((~box0).sum() + box1.sum())
    n_valid = 128 - int(box0[:, 7].sum()) - int((~box1)[:, 7].sum())
    assert n_valid != 120  # valid really mixed: unmixed it would be 128 - 8
    expected = n_used * -math.log(1 / (1 + math.exp(-3))) / n_valid
    assert out["loss/u_s"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name, fp", [("fixmatch", False), ("fixmatch", True), ("unimatch", True)])
def test_loss_combination_by_hand(name: str, fp: bool) -> None:
    method = build(name, LinearSmp, num_classes=2, threshold=0.8, cutmix_p=0.0, fp_dropout=0.0,
                   feature_perturbation=fp, weighting="hard")
    g = torch.Generator().manual_seed(0)
    weak = torch.randn(2, 1, 6, 6, generator=g)
    unlabeled = {"image": weak, "strong": 2.0 * weak, "strong2": -0.5 * weak, "valid": torch.ones(2, 6, 6, dtype=torch.bool),
                 "mask": torch.zeros(2, 6, 6, dtype=torch.long), "has_mask": torch.tensor([False, False])}
    labeled = make_batch(b=2, h=6, w=6, ch=1, classes=2, seed=1)
    out = method.training_step(labeled, unlabeled, make_ctx(num_classes=2))
    head = method.model.segmentation_head
    with torch.no_grad():
        probs = torch.softmax(head(weak), 1)
        conf, label = probs.max(1)
        weight = (conf >= 0.8).float()
        assert 0 < weight.mean() < 1  # a case with both trusted and untrusted pixels
        l_x = masked_cross_entropy(head(labeled["image"]), labeled["mask"], labeled["valid"])
        terms = {v: weighted_cross_entropy(head(unlabeled[v]), label, weight, unlabeled["valid"])
                 for v in ("image", "strong", "strong2")}  # fp_dropout 0: the FP stream sees the weak view
    assert out["loss/u_s"].item() == pytest.approx(terms["strong"].item(), rel=1e-5)
    if name == "unimatch":
        assert out["loss/u_s2"].item() == pytest.approx(terms["strong2"].item(), rel=1e-5)
        l_u = 0.25 * terms["strong"] + 0.25 * terms["strong2"] + 0.5 * terms["image"]
    elif fp:
        l_u = 0.5 * terms["strong"] + 0.5 * terms["image"]
    else:
        l_u = terms["strong"]
    if fp:
        assert out["loss/u_fp"].item() == pytest.approx(terms["image"].item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(((l_x + l_u) / 2).item(), rel=1e-5)
    assert terms["strong"] != terms["image"]  # the strong view, not the weak one, is supervised


def test_unlabeled_terms_are_exactly_zero_below_threshold() -> None:
    torch.manual_seed(0)
    method = build("unimatch", TinyNet)
    nn.init.zeros_(method.model.segmentation_head.weight)
    nn.init.zeros_(method.model.segmentation_head.bias)  # conf 1/3 < 0.95 everywhere
    out = method.training_step(make_batch(), make_batch(seed=1, views=method.unlabeled_views), make_ctx())
    assert out["loss/u_s"].item() == out["loss/u_s2"].item() == out["loss/u_fp"].item() == 0.0
    assert out["loss"].item() == pytest.approx(out["loss/ce"].item() / 2)
    assert out["mask_ratio"] == 0.0


@pytest.mark.parametrize("name, teacher", [("fixmatch", "self"), ("fixmatch", "ema"), ("unimatch", "ema")])
def test_gradients_reach_every_student_parameter(name: str, teacher: str) -> None:
    torch.manual_seed(0)
    method = build(name, TinyNet, threshold=0.0, teacher=teacher, cutmix_p=1.0)
    out = method.training_step(make_batch(), make_batch(seed=1, views=method.unlabeled_views), make_ctx())
    out["loss"].backward()
    assert_student_grads(method)
    assert (method.eval_model() is method.model) == (teacher == "self")


@pytest.mark.slow  # imports segmentation_models_pytorch (several seconds on a loaded CPU)
def test_unimatch_on_a_real_smp_unet() -> None:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    method = build("unimatch", lambda: smp.Unet("resnet18", encoder_weights=None, classes=3), threshold=0.0)
    bns = [m for m in method.model.modules() if isinstance(m, nn.BatchNorm2d)]
    tracked = [int(m.num_batches_tracked) for m in bns]
    out = method.training_step(make_batch(h=32, w=32), make_batch(h=32, w=32, seed=1, views=("strong", "strong2")), make_ctx())
    out["loss"].backward()
    assert_student_grads(method)
    # two student passes (FP pass on labeled + weak; strong1 + strong2); the teacher pass none
    assert all(int(m.num_batches_tracked) == t + 2 for m, t in zip(bns, tracked))
    assert out["loss/u_fp"].item() > 0 and out["loss/u_s2"].item() > 0


def test_ema_teacher_update_after_step() -> None:
    torch.manual_seed(0)
    method = build("fixmatch", TinyNet, teacher="ema")
    before = {k: v.clone() for k, v in method.teacher.net.named_parameters()}
    with torch.no_grad():
        for p in method.model.parameters():
            p.mul_(-2.0)
    method.on_after_step(make_ctx(step=1000))  # min(0.996, 1 - 1/1001) = 0.996
    for name, p in method.teacher.net.named_parameters():
        s = dict(method.model.named_parameters())[name]
        assert torch.allclose(p, 0.996 * before[name] + 0.004 * s, atol=1e-6), name
    method.on_after_step(make_ctx(step=0))  # warm-up: decay 0, the teacher copies the student
    assert all(torch.equal(p, s) for p, s in zip(method.teacher.net.parameters(), method.model.parameters()))


@pytest.mark.parametrize("weighting", ["classwise", "class_mean"])
def test_classwise_state_updates_and_survives_a_checkpoint(weighting: str) -> None:
    kwargs = dict(weighting=weighting, cutmix_p=1.0)
    method = build("fixmatch", lambda: LinearNet((0.0, 1.0, -0.5)), **kwargs)
    labeled = make_batch(ch=1)
    method.training_step(labeled, make_batch(ch=1, seed=1, views=("strong",)), make_ctx())
    if weighting == "classwise":
        assert float(method.weighting.global_tau) != pytest.approx(1 / 3)
        assert {"weighting.global_tau", "weighting.class_prob"} <= method.state_dict().keys()
    else:  # moved off the 0.95 it starts at for the classes predicted
        assert (method.weighting.class_conf != 0.95).any() and "weighting.class_conf" in method.state_dict()
    fresh = roundtrip(method, build("fixmatch", lambda: LinearNet((0.0, 0.0, 0.0)), **kwargs))
    nxt = make_batch(ch=1, seed=2, views=("strong",))
    torch.manual_seed(5)  # same CutMix boxes for both
    a = method.training_step(labeled, nxt, make_ctx(step=1))
    torch.manual_seed(5)
    b = fresh.training_step(labeled, nxt, make_ctx(step=1))
    assert torch.equal(a["loss"], b["loss"]) and a["mask_ratio"] == b["mask_ratio"]
    assert {"tau/min", "mask_ratio", "mean_conf", "loss/ce", "loss/u_s"} <= a.keys()
    assert ("tau/global" if weighting == "classwise" else "tau/0") in a


def test_distribution_alignment_rebalances_pseudo_labels_and_survives_a_checkpoint() -> None:
    # logits (0, x): every weak pixel with x > 0 is called class 1, confidently. The labeled masks are all
    # class 0, so alignment damps class 1 by target/teacher-mean and its pseudo-labels turn into class 0
    kwargs = dict(num_classes=2, cutmix_p=0.0, weighting="hard", threshold=0.5, distribution_alignment=True)
    method = build("fixmatch", lambda: LinearNet((0.0, 1.0)), **kwargs)
    weak = one_channel([[2.0, 3.0, 4.0, -1.0]])
    unlabeled = {"image": weak, "strong": weak, "mask": torch.zeros(1, 1, 4, dtype=torch.long),
                 "valid": torch.ones(1, 1, 4, dtype=torch.bool), "has_mask": torch.tensor([True])}
    labeled = {"image": weak, "mask": torch.tensor([[[0, 0, 0, 1]]]), "valid": torch.ones(1, 1, 4, dtype=torch.bool)}
    out = method.training_step(labeled, unlabeled, make_ctx(num_classes=2))
    al = method.alignment
    assert torch.equal(al.labeled_counts, torch.tensor([3.0, 1.0])) and int(al.updates) == 1
    p1 = torch.sigmoid(torch.tensor([2.0, 3.0, 4.0, -1.0]))  # softmax of (0, x) for class 1
    teacher_mean = torch.stack([1 - p1.mean(), p1.mean()])
    assert torch.allclose(al.teacher_mean, teacher_mean)
    scale = torch.tensor([0.75, 0.25]) / teacher_mean
    assert out["da/scale/1"].item() == pytest.approx(scale[1].item(), rel=1e-5)
    aligned = torch.stack([1 - p1, p1]) * scale.view(2, 1)
    aligned = aligned / aligned.sum(0)
    conf, label = aligned.max(0)
    assert out["pl_acc"] == pytest.approx(((label == 0) & (conf >= 0.5)).sum().item() / (conf >= 0.5).sum().item())
    assert out["pl_acc_all"] > 0.25  # without alignment only the x = -1 pixel is class 0

    fresh = roundtrip(method, build("fixmatch", lambda: LinearNet((0.0, 1.0)), **kwargs))
    assert torch.equal(fresh.alignment.teacher_mean, al.teacher_mean) and int(fresh.alignment.updates) == 1
    method.eval()  # evaluation passes leave the statistics alone
    method.alignment(torch.zeros(1, 2, 1, 1), torch.ones(1, 1, 1, dtype=torch.bool), labeled["mask"], labeled["valid"])
    assert int(al.updates) == 1 and torch.equal(al.labeled_counts, torch.tensor([3.0, 1.0]))
    off = build("fixmatch", lambda: LinearNet((0.0, 1.0)), num_classes=2)
    assert off.alignment is None and not any(k.startswith("da/") for k in off.training_step(
        labeled, unlabeled, make_ctx(num_classes=2)))


def test_pl_acc_uses_ground_truth_only_where_known() -> None:
    method = build("fixmatch", LinearNet, num_classes=2, cutmix_p=0.0, weighting="hard")
    weak = one_channel([[1.0, 1.0, -1.0, -1e-3], [1.0, 1.0, 1.0, 1.0]])
    unlabeled = {"image": weak, "strong": weak, "mask": torch.tensor([[[1, 0, 0, 1]], [[0, 0, 0, 0]]]),
                 "valid": torch.ones(2, 1, 4, dtype=torch.bool), "has_mask": torch.tensor([True, False])}
    out = method.training_step(unlabeled, unlabeled, make_ctx(num_classes=2))
    assert out["pl_acc"] == pytest.approx(2 / 3) and out["pl_acc_all"] == pytest.approx(1 / 2)


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="unimatch"):
        build("fixmatch", TinyNet, two_strong_views=True)
    with pytest.raises(ConfigError, match="encoder-decoder"):
        build("fixmatch", LinearNet, feature_perturbation=True)
    cls = METHODS.get("fixmatch")
    for bad in ({"cutmix_area": [0.5, 0.1]}, {"weighting": "soft"}, {"teacher": "x"}, {"alignment_momentum": 1.0}):
        with pytest.raises(ConfigError, match="method.params"):
            params_from_dict(cls.Params, bad, "method.params")
