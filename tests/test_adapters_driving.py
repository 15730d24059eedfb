"""Cityscapes and CamVid adapters on tiny generated trees; the real CamVid copy when present."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from segssl.config import load_config
from segssl.data.adapters import build_adapter
from segssl.data.adapters.driving import CITYSCAPES_TRAIN_IDS
from segssl.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parents[1] / "../shared/data"


def put(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


@pytest.fixture()
def cityscapes(tmp_path: Path) -> Path:
    ids = np.array([[7, 8, 26, 33], [0, 1, 4, 24], [7, 7, 7, 7]], np.uint8)  # 0/1/4 are not train ids
    for split, cities in (("train", ("aachen", "bremen")), ("val", ("lindau",)), ("test", ("berlin",))):
        for city in cities:
            for n in (19, 20):
                stem = f"{city}_000000_0000{n}"
                put(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", np.full((3, 4, 3), n, np.uint8))
                if split != "test":
                    put(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
                    put(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_color.png", np.zeros((3, 4, 3), np.uint8))
    return tmp_path


def test_cityscapes_train_ids_groups_and_unlabeled_test(cityscapes: Path) -> None:
    adapter = build_adapter("cityscapes", str(cityscapes), {})
    assert adapter.splits() == ["test", "train", "val"] and adapter.num_classes == 19
    train = adapter.items("train")
    assert [it["id"] for it in train][:2] == ["aachen_000000_000019", "aachen_000000_000020"]
    assert {it["group"] for it in train} == {"aachen", "bremen"}
    assert all(it["mask"] is None for it in adapter.items("test"))  # blank public test labels: unlabeled
    sample = adapter.load(train[0])
    expected = np.array([[0, 1, 13, 18], [0, 0, 0, 11], [0, 0, 0, 0]])
    valid = np.array([[1, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(sample["valid"], valid)
    np.testing.assert_array_equal(sample["mask"], expected)
    assert sorted(CITYSCAPES_TRAIN_IDS.values()) == list(range(19))


def test_cityscapes_errors(cityscapes: Path) -> None:
    bad = cityscapes / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png"
    put(bad, np.full((3, 4), 40, np.uint8))
    adapter = build_adapter("cityscapes", str(cityscapes), {})
    with pytest.raises(DataError, match="lindau_000000_000019_gtFine_labelIds.png"):
        adapter.load(adapter.items("val")[0])
    (cityscapes / "gtFine" / "val" / "lindau" / "lindau_000000_000020_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match="label file not found"):
        build_adapter("cityscapes", str(cityscapes), {}).items("val")
    with pytest.raises(DataError, match="leftImg8bit"):
        build_adapter("cityscapes", str(cityscapes / "gtFine"), {})


def test_camvid_sequences_and_ignore(tmp_path: Path) -> None:
    mask = np.array([[0, 3, 11], [10, 8, 11]], np.uint8)
    for split, names in (("train", ["0001TP_006690", "0006R0_f02910", "Seq05VD_f00000"]), ("val", ["0016E5_07959"])):
        for name in names:
            put(tmp_path / split / f"{name}.png", np.full((2, 3, 3), 50, np.uint8))
            put(tmp_path / f"{split}annot" / f"{name}.png", mask)
    adapter = build_adapter("camvid", str(tmp_path), {"splits": ["train", "val"]})
    assert [it["group"] for it in adapter.items("train")] == ["0001TP", "0006R0", "Seq05VD"]
    sample = adapter.load(adapter.items("val")[0])
    np.testing.assert_array_equal(sample["valid"], mask != 11)
    assert sample["mask"][1, 0] == 10 and adapter.ignore_index == 11
    per_image = build_adapter("camvid", str(tmp_path), {"splits": ["train"], "group": "image"})
    assert per_image.items("train")[0]["group"] == "0001TP_006690"
    put(tmp_path / "valannot" / "0016E5_07959.png", np.full((2, 3), 12, np.uint8))
    with pytest.raises(DataError, match="outside the 11 declared classes"):
        adapter.load(adapter.items("val")[0])


@pytest.mark.skipif(not (DATA / "camvid").is_dir(), reason="shared CamVid data not present")
def test_camvid_adapter_matches_the_folder_config() -> None:
    cfg = load_config(REPO / "configs" / "camvid_supervised.yaml")
    folder = build_adapter(cfg.data.adapter, str(REPO / cfg.data.root), cfg.data.params)
    camvid = build_adapter("camvid", str(REPO / cfg.data.root), {})
    assert (camvid.num_classes, camvid.class_names, camvid.in_channels) == (folder.num_classes, folder.class_names, folder.in_channels)
    for split in ("train", "val", "test"):
        assert [it["id"] for it in camvid.items(split)] == [it["id"] for it in folder.items(split)]
    assert {len(camvid.items(s)) for s in ("train", "val", "test")} == {367, 101, 233}
    assert {it["group"] for it in camvid.items("train")} == {"0001TP", "0006R0", "0016E5"}
    for item_a, item_b in zip(camvid.items("val")[:2], folder.items("val")[:2]):
        a, b = camvid.load(item_a), folder.load(item_b)
        assert a["image"].shape == (360, 480, 3)
        for key in ("image", "mask", "valid"):
            np.testing.assert_array_equal(a[key], b[key])
        assert a["mask"].max() <= 10 and (~a["valid"]).any()  # Unlabelled (11) pixels are ignored
