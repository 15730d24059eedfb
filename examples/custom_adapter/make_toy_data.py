"""Write a toy dataset in MyAdapter's layout: python examples/custom_adapter/make_toy_data.py OUT."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np


def write(root: Path, size: int = 48, counts: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Bright discs (object) on noise; a thin 'unsure' ring (128) around each disc."""
    counts = counts or {"train": 12, "val": 4, "unlabeled": 8}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rows = ["image,mask,split,site"]
    for split, n in counts.items():
        for i in range(n):
            name = f"{split}_{i:03d}"
            mask = np.zeros((size, size), np.uint8)
            centre, radius = tuple(int(v) for v in rng.integers(8, size - 8, 2)), int(rng.integers(5, size // 4))
            cv2.circle(mask, centre, radius + 1, 128, -1)
            cv2.circle(mask, centre, radius, 255, -1)
            image = rng.normal(90, 20, (size, size, 3)) + (mask == 255)[:, :, None] * 80
            cv2.imwrite(str(root / "images" / f"{name}.png"), np.clip(image, 0, 255).astype(np.uint8))
            labeled = split != "unlabeled"
            if labeled:
                cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
            rows.append(f"images/{name}.png,{f'masks/{name}.png' if labeled else ''},{split},site{i % 3}")
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    return root


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else "data/my_dataset")))
