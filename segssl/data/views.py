"""Albumentations pipelines that turn a sample into the views a method asks for.

Geometry (resize, rescale, crop, flips, 90-degree turns) is applied once per image and shared
by all its views, so a pseudo-label predicted on the weak view lines up pixel for pixel with
the strong views. Photometric changes are drawn independently per view. Images are scaled to
[0, 1] by their bit depth before any change, so uint8, uint16 and float rasters with any
number of bands go through the same path; normalisation uses the configured per-channel
mean/std (broadcast when one value is given) - nothing assumes RGB or ImageNet statistics.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from ..config import AugmentConfig, DataConfig

WEAK = "image"  # the weak view (geometry only) is the sample's "image"
STRONG_VIEWS = ("strong", "strong2")


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """Scale an image to float32 in [0, 1] according to its dtype."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    return image.astype(np.float32)


def geometry_pipeline(cfg: DataConfig, train: bool) -> A.Compose:
    ops: list[Any] = []
    # albumentations switches to INTER_AREA only when a side shrinks, for the image only
    resampling = dict(interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST_EXACT,
                      area_for_downscale="image" if cfg.resize_interpolation == "area" else None)
    if cfg.resize is not None:
        ops.append(A.Resize(cfg.resize[0], cfg.resize[1], **resampling))
    if train:
        aug = cfg.augment
        low, high = aug.scale
        if (low, high) != (1.0, 1.0):
            ops.append(A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0, **resampling))
        if cfg.crop is not None:
            h, w = cfg.crop
            # padding carries valid=0, never a sentinel label
            ops.append(A.PadIfNeeded(h, w, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0))
            ops.append(A.RandomCrop(h, w))
        if aug.hflip:
            ops.append(A.HorizontalFlip(p=0.5))
        if aug.vflip:
            ops.append(A.VerticalFlip(p=0.5))
        if aug.rotate90:
            ops.append(A.RandomRotate90(p=0.5))
    return A.Compose(ops)


def strong_pipeline(aug: AugmentConfig, channels: int) -> A.Compose:
    """FixMatch/UniMatch-style strong photometric view; colour ops only where they make sense."""
    b, c, s, h = aug.color_jitter
    ops: list[Any] = []
    if channels == 3:
        ops.append(A.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h, p=aug.color_jitter_p))
        ops.append(A.ToGray(p=aug.grayscale_p))
    else:  # grayscale / multi-band: brightness and contrast only
        ops.append(A.RandomBrightnessContrast(brightness_limit=b * 0.4, contrast_limit=c, p=aug.color_jitter_p))
    ops.append(A.GaussianBlur(blur_limit=0, sigma_limit=tuple(aug.blur_sigma), p=aug.blur_p))
    return A.Compose(ops)


class ViewMaker:
    """Callable: sample dict (from an adapter) -> dict of tensors with the requested views."""

    def __init__(self, cfg: DataConfig, channels: int, train: bool, views: Sequence[str] = (), hide_labels: bool = False) -> None:
        unknown = [v for v in views if v not in STRONG_VIEWS]
        if unknown:
            raise ValueError(f"unknown views {unknown}; available: {STRONG_VIEWS}")
        self.views = tuple(views)
        # unlabeled streams: "valid" marks padding only, so a mask the data happens to have
        # (benchmark mode) cannot steer the loss through its "don't care" regions; the mask and
        # its own validity travel as "mask" / "mask_valid" for diagnostics alone
        self.hide_labels = hide_labels
        self.geometry = geometry_pipeline(cfg, train)
        self.strong = strong_pipeline(cfg.augment, channels) if self.views else None
        mean = np.asarray(cfg.mean, np.float32)
        std = np.asarray(cfg.std, np.float32)
        if mean.size not in (1, channels):
            raise ValueError(f"data.mean has {mean.size} values for {channels} image channels")
        self.mean = np.broadcast_to(mean, (channels,)).copy()
        self.std = np.broadcast_to(std, (channels,)).copy()

    def reseed(self, seed: int) -> None:
        """Give each DataLoader worker its own augmentation stream."""
        self.geometry.set_random_seed(seed)
        if self.strong is not None:
            self.strong.set_random_seed(seed + 1)

    def normalise(self, image: np.ndarray) -> torch.Tensor:
        image = (image - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        bounded = sample["image"].dtype.kind in "ui"  # integer images live in [0, 1] after scaling
        image = to_unit_float(sample["image"])
        has_mask = "mask" in sample
        h, w = image.shape[:2]
        mask = sample["mask"].astype(np.int32) if has_mask else np.zeros((h, w), np.int32)
        valid = sample.get("valid", np.ones((h, w), bool)).astype(np.uint8)
        inside = np.ones((h, w), np.uint8)  # becomes 0 where geometry pads
        out = self.geometry(image=image, masks=[mask, valid, inside])
        image = out["image"]
        mask, valid, inside = (torch.from_numpy(np.ascontiguousarray(m)) for m in out["masks"])
        result: dict[str, Any] = {
            "id": sample["id"],
            WEAK: self.normalise(image),
            "mask": mask.long(),
            "valid": (inside if self.hide_labels else valid).bool(),
            "has_mask": has_mask,
        }
        if self.hide_labels:
            result["mask_valid"] = valid.bool()
        for view in self.views:
            result[view] = self.normalise(self._strong(image, bounded))
        return result

    def _strong(self, image: np.ndarray, bounded: bool) -> np.ndarray:
        if bounded:
            return np.clip(self.strong(image=image)["image"], 0.0, 1.0)  # type: ignore[misc]
        # float rasters in physical units: albumentations' colour ops clip to [0, 1], so work in
        # the image's own min-max range and map back
        low, high = float(image.min()), float(image.max())
        scale = max(high - low, 1e-12)
        unit = (image - low) / scale
        return self.strong(image=unit)["image"] * scale + low  # type: ignore[misc]


def pad_collate(samples: list[dict[str, Any]], multiple: int = 1) -> dict[str, Any]:
    """Stack samples, padding to the largest size (rounded up to ``multiple``).

    Padded pixels get ``valid=False``, so metrics and losses never see them.
    """
    height = max(s[WEAK].shape[-2] for s in samples)
    width = max(s[WEAK].shape[-1] for s in samples)
    height = -(-height // multiple) * multiple
    width = -(-width // multiple) * multiple
    batch: dict[str, Any] = {"id": [s["id"] for s in samples], "has_mask": torch.tensor([s["has_mask"] for s in samples])}
    for key in samples[0]:
        if key in ("id", "has_mask"):
            continue
        tensors = [s[key] for s in samples]
        padded = [_pad_to(t, height, width) for t in tensors]
        batch[key] = torch.stack(padded)
    batch["size"] = torch.tensor([list(s[WEAK].shape[-2:]) for s in samples])
    return batch


def _pad_to(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    dh, dw = height - tensor.shape[-2], width - tensor.shape[-1]
    if dh == 0 and dw == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, dw, 0, dh))  # zeros: valid=False, mask=0


def optional_size(value: Optional[Sequence[int]]) -> Optional[tuple[int, int]]:
    return (int(value[0]), int(value[1])) if value is not None else None
