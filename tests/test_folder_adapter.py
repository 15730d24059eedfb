"""FolderAdapter on tiny generated PNG/TIFF files: value maps, ignore values, palettes, errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from segssl.data.adapters import build_adapter
from segssl.data.adapters.folder import FolderAdapter
from segssl.errors import ConfigError, DataError

LABELED = {"train": {"images": "img", "masks": "lbl"}}


def put(path: Path, array: np.ndarray, rgb: bool = False) -> Path:
    """Write with cv2; ``rgb`` arrays are converted to cv2's BGR order first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if rgb:
        array = np.ascontiguousarray(array[:, :, ::-1])
    assert cv2.imwrite(str(path), array)
    return path


def gray(h: int = 4, w: int = 6, value: int = 100) -> np.ndarray:
    return np.full((h, w), value, np.uint8)


def adapter(root: Path, splits: dict[str, Any] | None = None, **kw: Any) -> FolderAdapter:
    return FolderAdapter(str(root), splits=splits or LABELED, **kw)


def test_value_map_maps_raw_values(tmp_path: Path) -> None:
    raw = np.array([[0, 255, 255], [0, 0, 255]], np.uint8)
    put(tmp_path / "img/a.png", gray(2, 3))
    put(tmp_path / "lbl/a.png", raw)
    ad = adapter(tmp_path, num_classes=2, in_channels=1, value_map={0: 0, 255: 1})
    (item,) = ad.items("train")
    assert item["id"] == "a" and ad.has_mask(item)
    sample = ad.load(item)
    assert sample["id"] == "a"
    assert sample["mask"].dtype == np.int64
    np.testing.assert_array_equal(sample["mask"], [[0, 1, 1], [0, 0, 1]])
    assert sample["valid"].dtype == bool and sample["valid"].all()


def test_value_map_with_ignore_value(tmp_path: Path) -> None:
    put(tmp_path / "img/a.png", gray(2, 2))
    put(tmp_path / "lbl/a.png", np.array([[0, 128], [255, 128]], np.uint8))
    ad = adapter(tmp_path, num_classes=2, in_channels=1, value_map={0: 0, 255: 1}, ignore_values=[128])
    sample = ad.load(ad.items("train")[0])
    np.testing.assert_array_equal(sample["valid"], [[True, False], [True, False]])
    np.testing.assert_array_equal(sample["mask"], [[0, 0], [1, 0]])  # 128 never leaks out


def test_ignore_value_without_value_map_becomes_legal_index(tmp_path: Path) -> None:
    put(tmp_path / "img/a.png", gray(2, 3))
    put(tmp_path / "lbl/a.png", np.array([[0, 1, 2], [255, 2, 255]], np.uint8))
    ad = adapter(tmp_path, num_classes=3, in_channels=1, ignore_values=[255])
    assert ad.ignore_index == 255
    sample = ad.load(ad.items("train")[0])
    np.testing.assert_array_equal(sample["valid"], [[True, True, True], [False, True, False]])
    np.testing.assert_array_equal(sample["mask"], [[0, 1, 2], [0, 2, 0]])
    assert sample["mask"].min() >= 0 and sample["mask"].max() < 3


def test_palette_masks_to_indices_unknown_colour_invalid(tmp_path: Path) -> None:
    red, green, black, odd, grey = (255, 0, 0), (0, 255, 0), (0, 0, 0), (12, 34, 56), (128, 128, 128)
    rgb = np.array([[black, red, green], [odd, grey, red]], np.uint8)
    put(tmp_path / "img/a.png", np.zeros((2, 3, 3), np.uint8))
    put(tmp_path / "lbl/a.png", rgb, rgb=True)
    ad = adapter(tmp_path, num_classes=3, palette=[black, red, green], ignore_colours=[grey])
    sample = ad.load(ad.items("train")[0])
    np.testing.assert_array_equal(sample["mask"], [[0, 1, 2], [0, 0, 1]])  # red is class 1, not blue
    np.testing.assert_array_equal(sample["valid"], [[True, True, True], [False, False, True]])
    assert ad.describe()["palette"] == [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


@pytest.mark.parametrize("palette", [None, [(0, 0, 0), (255, 255, 255)]])
def test_mask_size_mismatch_names_mask_file(tmp_path: Path, palette: Any) -> None:
    put(tmp_path / "img/a.png", gray(4, 6))
    mask = put(tmp_path / "lbl/a.png", np.zeros((4, 5), np.uint8))
    ad = adapter(tmp_path, num_classes=2, in_channels=1, palette=palette)
    with pytest.raises(DataError) as info:
        ad.load(ad.items("train")[0])
    assert str(mask) in str(info.value)


def test_label_outside_classes_names_file(tmp_path: Path) -> None:
    put(tmp_path / "img/a.png", gray(2, 2))
    mask = put(tmp_path / "lbl/a.png", np.array([[0, 1], [5, 2]], np.uint8))
    ad = adapter(tmp_path, num_classes=3, in_channels=1)
    with pytest.raises(DataError, match=r"\[5\]") as info:
        ad.load(ad.items("train")[0])
    assert str(mask) in str(info.value)


def test_value_not_in_value_map_names_file(tmp_path: Path) -> None:
    put(tmp_path / "img/a.png", gray(2, 2))
    mask = put(tmp_path / "lbl/a.png", np.array([[0, 7], [255, 0]], np.uint8))
    ad = adapter(tmp_path, num_classes=2, in_channels=1, value_map={0: 0, 255: 1})
    with pytest.raises(DataError, match=r"\[7\]") as info:
        ad.load(ad.items("train")[0])
    assert str(mask) in str(info.value)


def test_unlabeled_split_has_no_mask_key(tmp_path: Path) -> None:
    put(tmp_path / "unl/u1.png", gray())
    put(tmp_path / "unl/u2.png", gray())
    ad = adapter(tmp_path, {"unlabeled": {"images": "unl"}}, num_classes=2, in_channels=1)
    assert ad.splits() == ["unlabeled"]
    items = ad.items("unlabeled")
    assert [it["id"] for it in items] == ["u1", "u2"]
    assert not any(ad.has_mask(it) for it in items)
    sample = ad.load(items[0])
    assert "mask" not in sample and "valid" not in sample
    assert sample["image"].shape == (4, 6, 1)


def test_image_without_mask_in_labeled_split(tmp_path: Path) -> None:
    put(tmp_path / "img/a.png", gray())
    put(tmp_path / "img/b.png", gray())
    put(tmp_path / "lbl/a.png", gray(value=0))
    with pytest.raises(DataError, match="b.png"):
        adapter(tmp_path, num_classes=2).items("train")


def test_missing_and_empty_folders_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="root folder not found"):
        adapter(tmp_path / "absent", num_classes=2)
    with pytest.raises(DataError) as info:
        adapter(tmp_path, {"train": {"images": "nope"}}, num_classes=2).items("train")
    assert str(tmp_path / "nope") in str(info.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/readme.txt").write_text("not an image")
    with pytest.raises(DataError, match="no images") as info:
        adapter(tmp_path, {"train": {"images": "empty"}}, num_classes=2).items("train")
    assert str(tmp_path / "empty") in str(info.value)
    put(tmp_path / "img/a.png", gray())
    with pytest.raises(DataError) as info:
        adapter(tmp_path, {"train": {"images": "img", "masks": "lbl_absent"}}, num_classes=2).items("train")
    assert str(tmp_path / "lbl_absent") in str(info.value)


def test_unknown_split_lists_available(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="available: train"):
        adapter(tmp_path, num_classes=2).items("val")


def test_list_file_restricts_and_orders_split(tmp_path: Path) -> None:
    for stem in "abcd":
        put(tmp_path / f"img/{stem}.png", gray())
        put(tmp_path / f"lbl/{stem}.png", gray(value=1))
    (tmp_path / "val.txt").write_text("# held out\nd\n\nb.png b_mask.png\n")
    ad = adapter(tmp_path, {"train": {"images": "img", "masks": "lbl"},
                            "val": {"images": "img", "masks": "lbl", "list": "val.txt"}}, num_classes=2)
    assert [it["id"] for it in ad.items("train")] == ["a", "b", "c", "d"]
    assert [it["id"] for it in ad.items("val")] == ["d", "b"]
    (tmp_path / "bad.txt").write_text("a\nzz\n")
    bad = adapter(tmp_path, {"train": {"images": "img", "list": "bad.txt"}}, num_classes=2)
    with pytest.raises(DataError, match="zz"):
        bad.items("train")


def test_grayscale_in_channels_one(tmp_path: Path) -> None:
    put(tmp_path / "unl/g.png", np.arange(24, dtype=np.uint8).reshape(4, 6))
    put(tmp_path / "unl/c.png", np.full((4, 6, 3), 90, np.uint8), rgb=True)
    ad = adapter(tmp_path, {"unlabeled": {"images": "unl"}}, num_classes=2, in_channels=1)
    images = {it["id"]: ad.load(it)["image"] for it in ad.items("unlabeled")}
    assert images["g"].shape == (4, 6, 1) and images["g"].dtype == np.uint8
    np.testing.assert_array_equal(images["g"][:, :, 0], np.arange(24).reshape(4, 6))
    assert images["c"].shape == (4, 6, 1) and int(images["c"][0, 0, 0]) == 90  # RGB -> gray


def test_16bit_tiff_keeps_uint16_and_rgb_order(tmp_path: Path) -> None:
    one = np.array([[0, 1000], [40000, 65535]], np.uint16)
    three = np.zeros((2, 2, 3), np.uint16)
    three[..., 0], three[..., 1], three[..., 2] = 1000, 2000, 30000  # R, G, B
    put(tmp_path / "one/a.tif", one)
    put(tmp_path / "three/a.tiff", three, rgb=True)
    ad1 = adapter(tmp_path, {"u": {"images": "one"}}, num_classes=2, in_channels=1)
    image = ad1.load(ad1.items("u")[0])["image"]
    assert image.dtype == np.uint16 and image.shape == (2, 2, 1)
    np.testing.assert_array_equal(image[:, :, 0], one)
    ad3 = adapter(tmp_path, {"u": {"images": "three"}}, num_classes=2, in_channels=3)
    image = ad3.load(ad3.items("u")[0])["image"]
    assert image.dtype == np.uint16 and image.shape == (2, 2, 3)
    assert image[0, 0].tolist() == [1000, 2000, 30000]


def test_build_adapter_rejects_unknown_param(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_adapter("folder", str(tmp_path), {"splits": LABELED, "num_classes": 2, "bogus": 1})
    assert "data.params.bogus" in str(info.value)
    with pytest.raises(ConfigError, match="num_classes"):
        build_adapter("folder", str(tmp_path), {"splits": LABELED})
    ad = build_adapter("folder", str(tmp_path), {"splits": LABELED, "num_classes": 2, "class_names": ["bg", "fg"]})
    assert isinstance(ad, FolderAdapter) and ad.describe()["class_names"] == ["bg", "fg"]


def test_undecodable_image_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "unl/bad.png"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not a png")
    ad = adapter(tmp_path, {"u": {"images": "unl"}}, num_classes=2)
    with pytest.raises(DataError, match="cannot decode") as info:
        ad.load(ad.items("u")[0])
    assert str(bad) in str(info.value)


def test_bad_split_spec_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="split 'train'"):
        adapter(tmp_path, {"train": {"imgs": "img"}}, num_classes=2)


def test_ignore_value_outside_mask_dtype_matches_nothing(tmp_path: Path) -> None:
    put(tmp_path / "img/a.png", gray(1, 2))
    put(tmp_path / "lbl/a.png", np.array([[0, 1]], np.uint8))
    ad = adapter(tmp_path, num_classes=2, in_channels=1, ignore_values=[65535])
    sample = ad.load(ad.items("train")[0])
    np.testing.assert_array_equal(sample["mask"], [[0, 1]])
    assert sample["valid"].all()
