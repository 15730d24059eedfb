"""One contract for every registered dataset adapter (DESIGN.md: tests enumerate registries):
metadata is consistent, items have unique ids, and a loaded sample has the documented shapes,
dtypes and value ranges. Each adapter gets a tiny dataset in its own on-disk format."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from segssl.data.adapters import ADAPTERS, Adapter, build_adapter

pytest.importorskip("nibabel")
pytest.importorskip("rasterio")

from .test_adapters_medical import ct_case, save  # noqa: E402
from .test_adapters_remote_sensing import dubai_tree, geotiff  # noqa: E402


def _put(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _folder(root: Path) -> Adapter:
    for i in range(2):
        _put(root / "img" / f"a{i}.png", np.full((6, 8, 3), 40 * i, np.uint8))
        _put(root / "lbl" / f"a{i}.png", np.array([[0, 255] * 4] * 6, np.uint8))
    return build_adapter("folder", str(root), {"num_classes": 2, "value_map": {0: 0, 255: 1},
                                               "splits": {"train": {"images": "img", "masks": "lbl"}}})


def _camvid(root: Path) -> Adapter:
    for name in ("0001TP_006690", "Seq05VD_f00000"):
        _put(root / "train" / f"{name}.png", np.full((4, 6, 3), 50, np.uint8))
        _put(root / "trainannot" / f"{name}.png", np.array([[0, 3, 11] * 2] * 4, np.uint8))
    return build_adapter("camvid", str(root), {"splits": ["train"]})


def _cityscapes(root: Path) -> Adapter:
    for city in ("aachen", "bremen"):
        stem = f"{city}_000000_000019"
        _put(root / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png", np.full((3, 4, 3), 9, np.uint8))
        _put(root / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png", np.array([[7, 8, 26, 0]] * 3, np.uint8))
    return build_adapter("cityscapes", str(root), {})


def _nifti(root: Path) -> Adapter:
    import json

    rng = np.random.default_rng(0)
    training = []
    for i in range(2):
        image, label = ct_case(rng)
        save(root / "imagesTr" / f"c{i}.nii.gz", image)
        save(root / "labelsTr" / f"c{i}.nii.gz", label)
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": training, "test": []}))
    return build_adapter("nifti", str(root), {"intensity": "ct", "window": [-100, 400]})


def _raster(root: Path) -> Adapter:
    geotiff(root / "img" / "s0_RGB.tif", np.random.default_rng(0).integers(0, 999, (4, 20, 24)).astype(np.uint16))
    geotiff(root / "lbl" / "s0_label.tif", np.ones((1, 20, 24), np.uint8))
    return build_adapter("raster", str(root), {"num_classes": 2, "mask_replace": ["RGB", "label"],
                                               "splits": {"train": {"images": "img", "masks": "lbl"}}})


def _dubai(root: Path) -> Adapter:
    return build_adapter("dubai", str(dubai_tree(root, range(1, 2))), {"train_tiles": [1], "val_tiles": [], "test_tiles": []})


BUILDERS: dict[str, Callable[[Path], Adapter]] = {
    "demo": lambda root: build_adapter("demo", None, {"size": 16, "train": 2, "val": 1, "test": 1}),
    "folder": _folder, "camvid": _camvid, "cityscapes": _cityscapes, "nifti": _nifti, "raster": _raster, "dubai": _dubai,
}


def test_every_registered_adapter_has_a_contract_case() -> None:
    assert sorted(BUILDERS) == ADAPTERS.names()


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_adapter_contract(name: str, tmp_path: Path) -> None:
    adapter = BUILDERS[name](tmp_path)
    assert adapter.num_classes >= 1 and len(adapter.class_names) == adapter.num_classes
    assert adapter.in_channels >= 1 and len(adapter.default_palette()) == adapter.num_classes
    items = adapter.items("train")
    assert items and len({it["id"] for it in items}) == len(items)
    sample = adapter.load(items[0])
    image = sample["image"]
    assert sample["id"] == items[0]["id"]
    assert image.ndim == 3 and image.shape[2] == adapter.in_channels
    assert image.dtype in (np.uint8, np.uint16, np.float32)
    mask, valid = sample["mask"], sample["valid"]
    assert mask.shape == valid.shape == image.shape[:2]
    assert mask.dtype == np.int64 and valid.dtype == bool
    assert mask.min() >= 0 and mask.max() < adapter.num_classes  # no sentinel values, even where invalid
    assert set(adapter.describe()) >= {"num_classes", "class_names", "in_channels", "palette"}
