"""The per-pixel decision of batch inference (class index and max softmax probability) and the
predictor's train/eval handling."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from segssl.engine.inference import decide
from segssl.engine.predictor import Predictor


def test_hand_computed_pixels() -> None:
    # pixel 0: logits (0, ln 3, 0) -> class 1, p = 3 / 5; pixel 1: a tie (2, 2, 0) -> class 0 (the
    # lowest index), p = e^2 / (2 e^2 + 1)
    logits = torch.tensor([[0.0, 2.0], [math.log(3.0), 2.0], [0.0, 0.0]]).view(1, 3, 1, 2)
    mask, confidence = decide(logits)
    assert mask.tolist() == [[[1, 0]]]
    assert mask.dtype == torch.uint8
    assert confidence[0, 0].tolist() == pytest.approx([0.6, math.exp(2) / (2 * math.exp(2) + 1)], rel=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("classes", [2, 11, 300])
def test_matches_softmax_max(classes: int, channels_last: bool) -> None:
    torch.manual_seed(classes)
    logits = torch.randn(2, classes, 9, 13) * 4
    logits[0, :, 0, 0] = 1.5  # all classes tied: index 0, p = 1 / C
    if channels_last:  # smp decoders hand logits back in this layout
        logits = logits.contiguous(memory_format=torch.channels_last)
    expected_conf, expected_mask = logits.softmax(1).max(1)
    mask, confidence = decide(logits)
    assert mask.dtype == (torch.uint8 if classes < 256 else torch.int32)
    assert torch.equal(mask.long(), expected_mask)
    assert torch.allclose(confidence, expected_conf, atol=1e-6)
    assert confidence[0, 0, 0].item() == pytest.approx(1 / classes)


def test_nan_logits_stay_a_valid_class() -> None:
    logits = torch.full((1, 4, 2, 2), float("nan"))
    mask, _ = decide(logits)
    assert int(mask.max()) <= 3


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def test_predictor_evaluates_in_eval_mode_and_restores_the_mode() -> None:
    net = _Net()
    net.norm.running_mean.fill_(1.0)  # eval mode subtracts 1; training mode the batch mean
    x = torch.zeros(1, 2, 4, 4)
    predictor = Predictor(net, stride=1)
    assert net.training
    assert torch.allclose(predictor.logits(x), torch.full_like(x, -1.0), atol=1e-3)
    assert net.training and net.norm.training
    net.eval()
    net.norm.train()  # a stray submodule in training mode is still switched off for prediction
    assert torch.allclose(predictor.logits(x), torch.full_like(x, -1.0), atol=1e-3)
    assert not net.norm.training  # as before: everything ends in the top module's mode
