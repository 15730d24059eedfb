"""Built-in synthetic dataset: generated on the fly, so the demo and tests need no download.

Each image shows a textured background with a few shapes: discs (class 1), rectangles
(class 2) and thin bars (class 3, the "pole"-like rare class). Colours overlap between classes
and noise is added, so shape matters and a model needs a few hundred steps to learn it.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from .base import ADAPTERS, Adapter, Item, Sample

_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2, "unlabeled": 3}


@ADAPTERS.register("demo")
class DemoAdapter(Adapter):
    def __init__(
        self,
        root: Optional[str] = None,
        size: int = 64,
        train: int = 160,
        val: int = 32,
        test: int = 32,
        unlabeled: int = 0,
        in_channels: int = 3,
        seed: int = 0,
    ) -> None:
        self.num_classes = 4
        self.class_names = ["background", "disc", "rectangle", "bar"]
        self.in_channels = in_channels
        self.palette = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25)]
        self.size = size
        self.seed = seed
        self._counts = {"train": train, "val": val, "test": test, "unlabeled": unlabeled}

    def splits(self) -> list[str]:
        return [s for s, n in self._counts.items() if n > 0]

    def items(self, split: str) -> list[Item]:
        if split not in self.splits():
            raise self._unknown_split(split)
        labeled = split != "unlabeled"
        return [
            {"id": f"{split}_{i:04d}", "split": split, "index": i, "mask": "synthetic" if labeled else None}
            for i in range(self._counts[split])
        ]

    def load(self, item: Item) -> Sample:
        rng = np.random.default_rng([self.seed, _SPLIT_SEEDS[item["split"]], item["index"]])
        image, mask = render(rng, self.size, self.in_channels)
        sample: Sample = {"id": item["id"], "image": image}
        if item.get("mask") is not None:
            sample["mask"] = mask
            sample["valid"] = np.ones(mask.shape, bool)
        return sample


def render(rng: np.random.Generator, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image (uint8 H x W x C) and its index mask."""
    base = rng.uniform(60, 160, channels)
    noise = rng.normal(0, 25, (size // 8, size // 8, channels))
    texture = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC).reshape(size, size, channels)
    image = base + texture
    mask = np.zeros((size, size), np.int64)
    for _ in range(rng.integers(2, 5)):
        cls = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
        shape = np.zeros((size, size), np.uint8)
        cx, cy = rng.integers(0, size, 2)
        if cls == 1:
            cv2.circle(shape, (int(cx), int(cy)), int(rng.integers(size // 10, size // 4)), 1, -1)
        elif cls == 2:
            w, h = rng.integers(size // 8, size // 3, 2)
            cv2.rectangle(shape, (int(cx), int(cy)), (int(cx + w), int(cy + h)), 1, -1)
        else:
            length, angle = rng.integers(size // 3, size), rng.uniform(0, np.pi)
            dx, dy = int(length * np.cos(angle) / 2), int(length * np.sin(angle) / 2)
            cv2.line(shape, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1, max(2, size // 32))
        colour = rng.uniform(0, 255, channels) * 0.5 + base * 0.5 + 40 * (cls - 2)
        hit = shape.astype(bool)
        image[hit] = colour + rng.normal(0, 12, (int(hit.sum()), channels))
        mask[hit] = cls
    image = cv2.GaussianBlur(image.astype(np.float32), (3, 3), 0).reshape(size, size, channels)
    return np.clip(image, 0, 255).astype(np.uint8), mask
