"""A dataset adapter in the user's own module: a CSV index (image, mask, split, site) of PNGs."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from segssl.data.adapters import Adapter, Item, Sample, finalize_mask
from segssl.data.io import adapt_channels, read_image, read_mask


class MyAdapter(Adapter):
    def __init__(self, root: Optional[str], index: str = "index.csv") -> None:
        self.root = Path(root or ".")
        self.num_classes, self.class_names, self.in_channels = 2, ["background", "object"], 3
        with open(self.root / index, newline="") as handle:
            self.rows = list(csv.DictReader(handle))

    def splits(self) -> list[str]:
        return sorted({row["split"] for row in self.rows})

    def items(self, split: str) -> list[Item]:
        if split not in self.splits():
            raise self._unknown_split(split)
        return [{"id": Path(r["image"]).stem, "group": r["site"], "image": str(self.root / r["image"]),
                 "mask": str(self.root / r["mask"]) if r["mask"] else None}  # empty mask: unlabeled
                for r in self.rows if r["split"] == split]

    def load(self, item: Item) -> Sample:
        image = adapt_channels(read_image(item["image"]), self.in_channels, item["image"])
        sample: Sample = {"id": item["id"], "image": image}
        if item["mask"]:  # 0 background, 255 object, 128 "unsure" -> not scored (valid=False)
            sample["mask"], sample["valid"] = finalize_mask(
                read_mask(item["mask"]), self.num_classes, item["mask"], value_map={0: 0, 255: 1},
                ignore_values=[128], image_shape=image.shape[:2])
        return sample
