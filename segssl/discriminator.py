"""Fully-convolutional mask discriminator (Hung et al., BMVC 2018, "Adversarial Learning for
Semi-Supervised Semantic Segmentation"; reference: hfslyc/AdvSemiSeg ``FCDiscriminator``).

Five 4x4 convolutions of stride 2 (64, 128, 256, 512, 1 channels for ``base_channels=64``),
LeakyReLU 0.2 after the first four, no normalisation. Input: class-probability maps
``[B, C, H, W]`` (softmax of a prediction, or one-hot ground truth), optionally concatenated
with the image (``image_channels > 0``: a conditional discriminator judges whether a map fits
the image, not only whether it looks like a plausible label map). Output: per-pixel logits
``[B, 1, H, W]`` (bilinear upsampling of the 1/32-resolution map, ``align_corners=True`` as in
the reference), i.e. the confidence map whose sigmoid selects trusted pixels.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MaskDiscriminator"]

NUM_LAYERS = 5
MIN_SIZE = 2**NUM_LAYERS  # smallest side that survives five stride-2 4x4 convs (padding 1)


class MaskDiscriminator(nn.Module):
    def __init__(self, num_classes: int, image_channels: int = 0, base_channels: int = 64) -> None:
        super().__init__()
        if num_classes < 1 or image_channels < 0 or base_channels < 1:
            raise ValueError(f"bad discriminator sizes: classes {num_classes}, image {image_channels}, base {base_channels}")
        self.num_classes = num_classes
        self.image_channels = image_channels
        widths = [num_classes + image_channels] + [base_channels * 2**i for i in range(NUM_LAYERS - 1)] + [1]
        layers: list[nn.Module] = []
        for i in range(NUM_LAYERS):
            layers.append(nn.Conv2d(widths[i], widths[i + 1], kernel_size=4, stride=2, padding=1))
            if i < NUM_LAYERS - 1:
                layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.net = nn.Sequential(*layers)

    @property
    def conditional(self) -> bool:
        return self.image_channels > 0

    def forward(self, probs: Tensor, image: Optional[Tensor] = None) -> Tensor:
        if probs.dim() != 4 or probs.shape[1] != self.num_classes:
            raise ValueError(f"expected [B, {self.num_classes}, H, W] class maps, got {tuple(probs.shape)}")
        x = probs
        if self.conditional:
            if image is None or image.shape[1] != self.image_channels or image.shape[-2:] != probs.shape[-2:]:
                got = None if image is None else tuple(image.shape)
                raise ValueError(f"conditional discriminator needs a [B, {self.image_channels}, H, W] image, got {got}")
            x = torch.cat([probs, image.to(probs.dtype)], dim=1)
        h, w = x.shape[-2:]
        # Inputs smaller than 32 px would vanish after five stride-2 convs: zero-pad them at the
        # bottom/right (what the convs' own padding does anyway) and crop the upsampled output.
        ph, pw = max(MIN_SIZE - h, 0), max(MIN_SIZE - w, 0)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        out = self.net(x)
        out = F.interpolate(out, size=(h + ph, w + pw), mode="bilinear", align_corners=True)
        return out[..., :h, :w]
