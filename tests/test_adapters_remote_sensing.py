"""Raster and Dubai adapters on small generated GeoTIFFs and colour masks; the real Dubai set
when present."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from segssl.data.adapters import build_adapter
from segssl.data.adapters.remote_sensing import DUBAI_PALETTE, tile_starts
from segssl.errors import ConfigError, DataError

rasterio = pytest.importorskip("rasterio", reason="rasterio reads the GeoTIFF rasters")
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # inside rasterio's from_origin

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parents[1] / "../shared/data"
ISPRS = [(255, 255, 255), (0, 0, 255), (0, 255, 255)]


def geotiff(path: Path, array: np.ndarray) -> None:
    """C x H x W array -> georeferenced GeoTIFF."""
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0],
                       dtype=array.dtype, crs="EPSG:32640", transform=from_origin(500000, 2800000, 0.5, 0.5)) as dst:
        dst.write(array)


@pytest.fixture()
def scenes(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n, level in (("train", 2, 1000), ("val", 1, 30000)):
        for i in range(n):
            geotiff(tmp_path / split / "img" / f"s{i}_RGB.tif", rng.integers(level, level + 400, (5, 40, 50)).astype(np.uint16))
            labels = rng.integers(0, 4, (1, 40, 50)).astype(np.uint8)  # LoveDA style: 0 = no-data
            geotiff(tmp_path / split / "lbl" / f"s{i}_label.tif", labels)
    return tmp_path


def params(**extra: object) -> dict:
    base = {"num_classes": 3, "value_map": {1: 0, 2: 1, 3: 2}, "ignore_values": [0], "mask_replace": ["RGB", "label"],
            "splits": {s: {"images": f"{s}/img", "masks": f"{s}/lbl"} for s in ("train", "val")}}
    return {**base, **extra}


def test_multiband_index_masks_and_band_selection(scenes: Path) -> None:
    adapter = build_adapter("raster", str(scenes), params())
    assert adapter.in_channels == 5 and adapter.items("train")[0]["id"] == "s0_RGB"
    sample = adapter.load(adapter.items("train")[0])
    assert sample["image"].shape == (40, 50, 5) and sample["image"].dtype == np.uint16
    raw = rasterio.open(scenes / "train" / "lbl" / "s0_label.tif").read(1)
    np.testing.assert_array_equal(sample["valid"], raw != 0)
    np.testing.assert_array_equal(sample["mask"][raw != 0], raw[raw != 0] - 1.0)
    (scenes / "keep.txt").write_text("# one scene\ns1_RGB\n")
    listed = params()
    listed["splits"]["train"]["list"] = "keep.txt"
    assert [it["id"] for it in build_adapter("raster", str(scenes), listed).items("train")] == ["s1_RGB"]
    picked = build_adapter("raster", str(scenes), params(bands=[3, 1]))
    image = picked.load(picked.items("train")[0])["image"]
    np.testing.assert_array_equal(image, sample["image"][:, :, [2, 0]])


def test_tiles_overlap_groups_and_exact_eval_partition(scenes: Path) -> None:
    adapter = build_adapter("raster", str(scenes), params(tile=[16, 16], overlap=4))
    assert tile_starts(50, 16, 12, exact=False) == [0, 12, 24, 34] and tile_starts(50, 16, 12, exact=True) == [0, 16, 32, 48]
    train = adapter.items("train")
    assert len(train) == 2 * 3 * 4 and {it["group"] for it in train} == {"s0_RGB", "s1_RGB"}
    whole = build_adapter("raster", str(scenes), params()).load(adapter.scenes("train")[0])
    for it in train[:12]:
        y, x, h, w = it["window"]
        assert (h, w) == (16, 16)
        tile = adapter.load(it)
        np.testing.assert_array_equal(tile["image"], whole["image"][y : y + h, x : x + w])
        np.testing.assert_array_equal(tile["mask"], whole["mask"][y : y + h, x : x + w])
    val = adapter.items("val")  # not in overlap_splits: each pixel in exactly one tile
    assert sum(it["window"][2] * it["window"][3] for it in val) == 40 * 50
    scaled = build_adapter("raster", str(scenes), params(tile=[16, 16], scale=0.5, bands=[1]))
    assert [it["window"] for it in scaled.items("val")][-1] == [16, 16, 4, 9]  # 20 x 25 scene
    assert scaled.load(scaled.items("val")[-1])["mask"].shape == (4, 9)


def test_band_stats_auto_cached_and_given(scenes: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    adapter = build_adapter("raster", str(scenes), params(band_stats="auto", stats_cache=str(cache)))
    files = list(cache.glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["files"] == 2  # train scenes only
    train = np.concatenate([adapter.load(it)["image"].reshape(-1, 5) for it in adapter.items("train")])
    assert train.dtype == np.float32 and np.abs(train.mean(0)).max() < 1e-3 and np.abs(train.std(0) - 1).max() < 1e-2
    assert adapter.load(adapter.items("val")[0])["image"].mean() > 100  # val was not part of the statistics
    again = build_adapter("raster", str(scenes), params(band_stats="auto", stats_cache=str(cache)))
    np.testing.assert_array_equal(again.band_stats[0], adapter.band_stats[0])
    assert adapter.describe()["preprocess"]["band_stats"]["mean"][0] == pytest.approx(1200, abs=5)
    given = build_adapter("raster", str(scenes), params(band_stats={"mean": [1000] * 5, "std": [10] * 5}))
    assert given.load(given.items("train")[0])["image"].min() >= 0
    with pytest.raises(ConfigError, match="band_stats"):
        build_adapter("raster", str(scenes), params(band_stats={"mean": [0], "std": [1]}))


def test_colour_masks_unknown_colours_ignored_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:] = ISPRS[0]
    rgb[0, :3] = ISPRS[1]
    rgb[5, 5] = (12, 34, 56)  # not in the palette
    rgb[4, 4] = (255, 0, 0)  # clutter: listed as ignore
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.png"), np.full((6, 8, 3), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "gt" / "a.png"), rgb[:, :, ::-1])
    adapter = build_adapter("raster", str(tmp_path), {"num_classes": 3, "palette": ISPRS, "ignore_colours": [[255, 0, 0]],
                                                       "splits": {"train": {"images": "img", "masks": "gt"}}})
    with caplog.at_level(logging.WARNING):
        sample = adapter.load(adapter.items("train")[0])
    assert (sample["mask"][0, :3] == 1).all() and sample["valid"].sum() == 6 * 8 - 2
    assert not sample["valid"][5, 5] and not sample["valid"][4, 4]
    assert "1 pixels of unknown colours [[12, 34, 56]]" in caplog.text


def dubai_tree(root: Path, tiles: range) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = np.array(DUBAI_PALETTE + [(155, 155, 155), (0, 0, 0)], np.uint8)
    for t in tiles:
        for i in (1, 2):
            folder = root / f"Tile {t}"
            (folder / "images").mkdir(parents=True, exist_ok=True)
            (folder / "masks").mkdir(exist_ok=True)
            cv2.imwrite(str(folder / "images" / f"image_part_00{i}.jpg"), rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
            index = rng.integers(0, len(colours), (30, 40)).astype(np.uint8)
            mask = Image.fromarray(index, mode="P")  # palette-mode PNG, as some of the real masks
            mask.putpalette(colours.ravel().tolist())
            mask.save(folder / "masks" / f"image_part_00{i}.png")
            np.save(folder / f"truth_{i}.npy", index)
    return root


def test_dubai_adapter_split_by_tile(tmp_path: Path) -> None:
    root = dubai_tree(tmp_path, range(1, 4))
    adapter = build_adapter("dubai", str(root), {"train_tiles": [1, 2], "val_tiles": [3], "test_tiles": []})
    assert adapter.splits() == ["train", "val"] and adapter.num_classes == 5
    train = adapter.items("train")
    assert [it["id"] for it in train] == ["tile1_image_part_001", "tile1_image_part_002", "tile2_image_part_001", "tile2_image_part_002"]
    assert [it["group"] for it in train] == ["tile1", "tile1", "tile2", "tile2"]
    sample = adapter.load(adapter.items("val")[1])
    truth = np.load(root / "Tile 3" / "truth_2.npy")
    np.testing.assert_array_equal(sample["valid"], truth < 5)  # Unlabeled and black are ignored
    np.testing.assert_array_equal(sample["mask"][truth < 5], truth[truth < 5])
    tiled = build_adapter("dubai", str(root), {"train_tiles": [1], "val_tiles": [2], "test_tiles": [3], "tile": [16, 16], "overlap": 4})
    assert {it["group"] for it in tiled.items("test")} == {"tile3"} and len(tiled.items("train")) == 2 * 3 * 3
    with pytest.raises(ConfigError, match="tile 2"):
        build_adapter("dubai", str(root), {"train_tiles": [1, 2], "val_tiles": [2]})
    with pytest.raises(DataError, match="not found"):
        build_adapter("dubai", str(root), {"test_tiles": [8]}).items("test")


def test_dubai_held_out_parts(tmp_path: Path) -> None:
    root = dubai_tree(tmp_path, range(1, 4))
    adapter = build_adapter("dubai", str(root), {"train_tiles": [1, 2], "val_tiles": [3], "test_tiles": [], "val_parts": [2]})
    ids = {split: sorted(it["id"] for it in adapter.items(split)) for split in adapter.splits()}
    assert ids == {
        "train": ["tile1_image_part_001", "tile2_image_part_001"],
        "val": ["tile1_image_part_002", "tile2_image_part_002", "tile3_image_part_001", "tile3_image_part_002"],
    }
    only_test = build_adapter("dubai", str(root), {"train_tiles": [1, 2], "val_tiles": [], "test_tiles": [], "test_parts": [1]})
    assert only_test.splits() == ["train", "test"]
    assert [it["id"] for it in only_test.items("test")] == ["tile1_image_part_001", "tile2_image_part_001"]
    assert only_test.load(only_test.items("test")[0])["mask"].shape == (30, 40)
    with pytest.raises(ConfigError, match="image part 2 is in both val_parts and test_parts"):
        build_adapter("dubai", str(root), {"val_parts": [2], "test_parts": [2]})


@pytest.mark.skipif(not (DATA / "dubai-aerial").is_dir(), reason="shared Dubai aerial data not present")
def test_dubai_real_data() -> None:
    adapter = build_adapter("dubai", str(DATA / "dubai-aerial"), {})
    counts = {s: len(adapter.items(s)) for s in adapter.splits()}
    assert counts == {"train": 54, "val": 9, "test": 9}
    sample = adapter.load(adapter.items("train")[10])  # Tile 2: a palette-mode mask with Unlabeled pixels
    assert sample["image"].shape[2] == 3 and sample["mask"].shape == sample["image"].shape[:2]
    assert sample["mask"].max() < 5 and 0 < (~sample["valid"]).sum() < sample["valid"].size  # Unlabeled ignored
    tiled = build_adapter("dubai", str(DATA / "dubai-aerial"), {"tile": [256, 256], "scale": 0.5})
    tile = tiled.load(tiled.items("val")[0])
    assert tile["image"].shape == (256, 256, 3) and len({it["group"] for it in tiled.items("val")}) == 1
