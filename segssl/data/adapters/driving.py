"""Driving datasets: Cityscapes (``cityscapes``) and CamVid, SegNet release (``camvid``).

Items carry ``group`` = city (Cityscapes) or recording sequence (CamVid), so a labeled draw
never puts frames of one drive on both sides: neighbouring frames are near duplicates.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ...errors import ConfigError, DataError
from ..io import adapt_channels, list_images, read_image, read_mask
from .base import ADAPTERS, Adapter, Item, Sample, finalize_mask

# Official Cityscapes labelId -> trainId (cityscapesscripts/helpers/labels.py); others ignored.
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
]
CITYSCAPES_PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]
CITYSCAPES_IGNORED_IDS = [i for i in range(34) if i not in CITYSCAPES_TRAIN_IDS]  # 0..33 minus the 19

CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"]
CAMVID_PALETTE = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]


@ADAPTERS.register("cityscapes")
class CityscapesAdapter(Adapter):
    """``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` + ``gtFine/{split}/{city}/*_gtFine_labelIds.png``.

    Splits are the folders under ``leftImg8bit`` (train, val, test, train_extra...). Those in
    ``labeled_splits`` need fine labels; the others (test, whose public labels are blank, and
    train_extra) are listed without masks and serve as unlabeled data.
    """

    def __init__(self, root: Optional[str], labeled_splits: Sequence[str] = ("train", "val"), label_folder: str = "gtFine") -> None:
        self.root = Path(root or ".")
        if not (self.root / "leftImg8bit").is_dir():
            raise DataError(f"Cityscapes folder {self.root / 'leftImg8bit'} not found (data.root must hold leftImg8bit/ and gtFine/)")
        self.num_classes, self.class_names, self.in_channels = 19, list(CITYSCAPES_CLASSES), 3
        self.palette = list(CITYSCAPES_PALETTE)
        self.ignore_index = 0  # labelId 0 'unlabeled' (all 16 non-train ids are ignored)
        self.labeled_splits, self.label_folder = list(labeled_splits), label_folder

    def splits(self) -> list[str]:
        return sorted(p.name for p in (self.root / "leftImg8bit").iterdir() if p.is_dir())

    def items(self, split: str) -> list[Item]:
        return self.cached_items(split, lambda: self._scan(split))

    def _scan(self, split: str) -> list[Item]:
        items = []
        for city in sorted(p for p in (self.root / "leftImg8bit" / split).iterdir() if p.is_dir()):
            for image in list_images(city, (".png",)):
                stem = image.name[: -len("_leftImg8bit.png")] if image.name.endswith("_leftImg8bit.png") else image.stem
                mask = None
                if split in self.labeled_splits:
                    mask_path = self.root / self.label_folder / split / city.name / f"{stem}_{self.label_folder}_labelIds.png"
                    if not mask_path.is_file():
                        raise DataError(f"Cityscapes label file not found: {mask_path}")
                    mask = str(mask_path)
                items.append({"id": stem, "group": city.name, "image": str(image), "mask": mask})
        return items

    def load(self, item: Item) -> Sample:
        image = adapt_channels(read_image(item["image"]), 3, item["image"])
        sample: Sample = {"id": item["id"], "image": image}
        if item.get("mask") is not None:
            sample["mask"], sample["valid"] = finalize_mask(
                read_mask(item["mask"]), self.num_classes, item["mask"], CITYSCAPES_TRAIN_IDS,
                CITYSCAPES_IGNORED_IDS, image.shape[:2],
            )
        return sample


@ADAPTERS.register("camvid")
class CamVidAdapter(Adapter):
    """SegNet's CamVid: ``{split}/`` images with index masks in ``{split}annot/``; 11 = Unlabelled.

    Items, ids and classes match ``configs/camvid_supervised.yaml`` (folder adapter); in addition
    each item's ``group`` is its sequence ("0001TP", "0006R0", "0016E5", "Seq05VD"). The training
    split holds only three sequences (62/101/204 frames), so a grouped labeled draw takes whole
    sequences; ``group: image`` draws single frames (near-duplicate neighbours then sit on both
    sides of labeled/unlabeled, which is harmless there but not for a val split drawn from
    train). The official SegNet split itself shares sequences between train, val and test.
    """

    def __init__(self, root: Optional[str], splits: Sequence[str] = ("train", "val", "test"), group: str = "sequence") -> None:
        self.root = Path(root or ".")
        if not self.root.is_dir():
            raise DataError(f"data root folder not found: {self.root}")
        self.num_classes, self.class_names, self.in_channels = 11, list(CAMVID_CLASSES), 3
        self.palette = list(CAMVID_PALETTE)
        self.ignore_index = 11
        if group not in ("sequence", "image"):
            raise ConfigError(f"data.params.group must be sequence or image, got '{group}'")
        self._splits, self.group = list(splits), group

    def splits(self) -> list[str]:
        return list(self._splits)

    def items(self, split: str) -> list[Item]:
        return self.cached_items(split, lambda: self._scan(split))

    def _scan(self, split: str) -> list[Item]:
        annot = self.root / f"{split}annot"
        items = []
        for image in list_images(self.root / split):
            mask = annot / f"{image.stem}.png"
            if not mask.is_file():
                raise DataError(f"CamVid mask not found for {image}: {mask}")
            group = image.stem.split("_")[0] if self.group == "sequence" else image.stem
            items.append({"id": image.stem, "group": group, "image": str(image), "mask": str(mask)})
        return items

    def load(self, item: Item) -> Sample:
        image = adapt_channels(read_image(item["image"]), 3, item["image"])
        mask, valid = finalize_mask(read_mask(item["mask"]), 11, item["mask"], ignore_values=[11], image_shape=image.shape[:2])
        return {"id": item["id"], "image": image, "mask": mask, "valid": valid}

