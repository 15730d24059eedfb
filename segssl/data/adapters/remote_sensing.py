"""Remote-sensing rasters with any number of bands (``raster``) and the Dubai aerial set (``dubai``).

GeoTIFF/JP2/VRT files are read with rasterio (GDAL: any band count and dtype, compressed and
tiled TIFFs, windowed reads so a tile of a large scene reads only its window); PNG/JPEG go
through OpenCV. Splits are ``{images: DIR or [DIRS], masks: DIR or [DIRS], list: FILE}`` as in
the folder adapter; masks pair with images by stem (``mask_replace: [RGB, label]`` maps
ISPRS-style names). Masks are index rasters (LoveDA: ``value_map: {1: 0, ..., 7: 6}``,
``ignore_values: [0]``) or colour-coded with ``palette`` (ISPRS Potsdam: impervious
(255,255,255), building (0,0,255), low vegetation (0,255,255), tree (0,255,0), car (255,255,0),
clutter (255,0,0)); ``ignore_colours`` and colours outside the palette become invalid, the
latter logged with their pixel count.

``tile: [H, W]`` cuts scenes into tiles on the fly (after ``scale``). Splits in
``overlap_splits`` (default train) get full-size tiles overlapping by ``overlap`` (pixels, or a
fraction of the tile), the last one shifted to the border; other splits get a non-overlapping
partition with shorter edge tiles, so every evaluated pixel is counted exactly once (the
collate pads them with valid=False). All tiles of a scene - or of a folder with
``group: folder`` - share one ``group``, so a labeled/unlabeled draw never separates
neighbouring crops.

``band_stats``: null (images keep their dtype; ``data.mean/std`` apply to values scaled by the
dtype's maximum), ``{mean: [...], std: [...]}`` in raw band units, or ``auto`` (computed over
split ``stats_split`` and cached in ``stats_cache``, default ``$SEGSSL_CACHE`` or
``~/.cache/segssl/band_stats/<hash of the files>.json``: data folders are often read-only and a
run directory is per run, while this key is reused across runs and changes with the files).
With stats, images come out float32 standardised per band: set ``data.mean: [0]``, ``std: [1]``.

Band selection, ``scale`` and ``band_stats`` are ``segssl.data.preprocess.RasterPreprocess``,
recorded (statistics included) in the run's meta: ``tools/infer.py`` applies the very same steps.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ...errors import ConfigError, DataError
from ..io import IMAGE_EXTENSIONS, list_images, read_image, read_mask
from ..preprocess import RasterPreprocess, band_indexes, select_bands
from .base import ADAPTERS, Adapter, Item, LRUCache, Sample, check_class_names, finalize_mask, palette_to_index

log = logging.getLogger(__name__)
GDAL_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
STATS_PIXELS = 1_000_000  # pixels sampled per scene for band statistics


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "", text.lower())  # ids go into list files: no spaces or dots


def tile_starts(length: int, size: int, stride: int, exact: bool) -> list[int]:
    if length <= size:
        return [0]
    if exact:
        return list(range(0, length, size))
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)  # shifted last tile: full size, reaches the border
    return starts


def _rasterio(path: str) -> Any:
    import rasterio

    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise DataError(f"cannot read raster {path}: {exc}") from None


def raster_size(path: str) -> tuple[int, int]:
    """(H, W) from the header only."""
    if path.lower().endswith(GDAL_SUFFIXES):
        with _rasterio(path) as src:
            return src.height, src.width
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.height, img.width
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def read_raster(path: str, bands: Optional[Sequence[int]] = None, window: Optional[Sequence[int]] = None) -> np.ndarray:
    """H x W x C array; ``bands`` 1-based; ``window`` (y, x, h, w) read without the rest."""
    if path.lower().endswith(GDAL_SUFFIXES):
        from rasterio.windows import Window

        with _rasterio(path) as src:
            indexes = band_indexes(bands, src.count, path)
            win = Window(window[1], window[0], window[3], window[2]) if window is not None else None
            try:
                data = src.read(indexes, window=win)
            except Exception as exc:  # rasterio raises several types for corrupt blocks
                raise DataError(f"cannot decode raster {path}: {exc}") from None
        return np.ascontiguousarray(data.transpose(1, 2, 0))
    data = select_bands(read_image(path), bands, path)
    if window is not None:
        y, x, h, w = window
        data = data[y : y + h, x : x + w]
    return data


@ADAPTERS.register("raster")
class RasterAdapter(Adapter):
    def __init__(
        self,
        root: Optional[str],
        splits: dict[str, dict[str, Any]],
        num_classes: int,
        class_names: Optional[Sequence[str]] = None,
        in_channels: Optional[int] = None,
        bands: Optional[Sequence[int]] = None,
        palette: Optional[Sequence[Sequence[int]]] = None,
        ignore_colours: Sequence[Sequence[int]] = (),
        value_map: Optional[dict[int, int]] = None,
        ignore_values: Sequence[int] = (),
        mask_replace: Optional[Sequence[str]] = None,
        tile: Optional[Sequence[int]] = None,
        overlap: Union[int, float] = 0,
        overlap_splits: Sequence[str] = ("train",),
        scale: float = 1.0,
        band_stats: Union[str, dict[str, list[float]], None] = None,
        stats_split: str = "train",
        stats_cache: Optional[str] = None,
        group: str = "scene",
        cache_scenes: int = 2,
    ) -> None:
        self.root = Path(root or ".")
        if not self.root.is_dir():
            raise DataError(f"data root folder not found: {self.root}")
        self.num_classes = int(num_classes)
        self.class_names = check_class_names(class_names, self.num_classes)
        # band selection, scale and band statistics: one object shared with tools/infer.py
        self.prep = RasterPreprocess(bands=bands, scale=scale)
        self.colour_palette = [tuple(int(v) for v in c) for c in palette] if palette else None
        self.palette = self.colour_palette
        self.ignore_colours = [tuple(int(v) for v in c) for c in ignore_colours]
        self.value_map = {int(k): int(v) for k, v in (value_map or {}).items()}
        self.ignore_values = [int(v) for v in ignore_values]
        self.ignore_index = self.ignore_values[0] if self.ignore_values else None
        if mask_replace is not None and len(mask_replace) != 2:
            raise ConfigError("data.params.mask_replace must be [old, new] (image stem -> mask stem)")
        self.mask_replace = tuple(mask_replace) if mask_replace else None
        if tile is not None and (len(tile) != 2 or min(tile) < 1):
            raise ConfigError("data.params.tile must be [height, width] with positive values")
        self.tile = (int(tile[0]), int(tile[1])) if tile is not None else None
        pixels = [round(overlap * t) if isinstance(overlap, float) and overlap < 1 else int(overlap) for t in (self.tile or (1, 1))]
        self.stride = tuple(t - o for t, o in zip(self.tile or (1, 1), pixels))
        if self.tile is not None and min(self.stride) < 1:
            raise ConfigError(f"data.params.overlap {overlap} leaves no stride for tile {list(self.tile)}")
        self.overlap_splits = list(overlap_splits)
        if group not in ("scene", "folder"):
            raise ConfigError(f"data.params.group must be scene or folder, got '{group}'")
        self.group = group
        self._scenes_cache = LRUCache(cache_scenes)
        self._split_specs = {name: self._check_spec(name, spec) for name, spec in splits.items()}
        self._scenes: dict[str, list[Item]] = {}
        self._items: dict[str, list[Item]] = {}
        self.in_channels = len(self.bands) if self.bands else int(in_channels or self._probe_channels())
        self.prep = replace(self.prep, band_stats=self._resolve_stats(band_stats, stats_split, stats_cache))

    @property
    def bands(self) -> Optional[list[int]]:
        return list(self.prep.bands) if self.prep.bands else None

    @property
    def scale(self) -> float:
        return self.prep.scale

    @property
    def band_stats(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        return self.prep.band_stats

    # ------------------------------------------------------------------ listing
    @staticmethod
    def _check_spec(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        unknown = set(spec) - {"images", "masks", "list"}
        if unknown or "images" not in spec:
            raise ConfigError(f"data.params.splits.{name} must be {{images, masks, list}}; got keys {sorted(spec)}")
        as_list = lambda v: [v] if isinstance(v, str) else list(v or [])  # noqa: E731
        images, masks = as_list(spec["images"]), as_list(spec.get("masks"))
        if masks and len(masks) != len(images):
            raise ConfigError(f"data.params.splits.{name}: {len(images)} image folders but {len(masks)} mask folders")
        return {"images": images, "masks": masks, "list": spec.get("list")}

    def folder_key(self, folder: str) -> str:
        """Id prefix and group of a folder (subclasses name their folders better)."""
        return slug(folder)

    def splits(self) -> list[str]:
        return list(self._split_specs)

    def scenes(self, split: str) -> list[Item]:
        if split not in self._split_specs:
            raise self._unknown_split(split)
        if split not in self._scenes:
            spec = self._split_specs[split]
            scenes: list[Item] = []
            for i, folder in enumerate(spec["images"]):
                mask_dir = self.root / spec["masks"][i] if spec["masks"] else None
                masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS + GDAL_SUFFIXES} if mask_dir and mask_dir.is_dir() else {}
                if mask_dir is not None and not masks:
                    raise DataError(f"mask folder of split '{split}' not found or empty: {mask_dir}")
                key = self.folder_key(folder)
                for path in list_images(self.root / folder, IMAGE_EXTENSIONS + GDAL_SUFFIXES):
                    scene_id = f"{key}_{slug(path.stem) or path.stem}" if len(spec["images"]) > 1 or self.group == "folder" else path.stem
                    item: Item = {"id": scene_id, "group": key if self.group == "folder" else scene_id, "image": str(path), "mask": None}
                    if mask_dir is not None:
                        stem = path.stem.replace(*self.mask_replace) if self.mask_replace else path.stem
                        if stem not in masks:
                            raise DataError(f"split '{split}': image {path} has no mask '{stem}.*' in {mask_dir}")
                        item["mask"] = str(masks[stem])
                    scenes.append(item)
            if spec["list"]:
                listed = self.root / spec["list"]
                if not listed.is_file():
                    raise DataError(f"split list file not found: {listed}")
                keep = {Path(ln.split()[0]).stem for ln in listed.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
                scenes = [s for s in scenes if s["id"] in keep or Path(s["image"]).stem in keep]
                missing = keep - {s["id"] for s in scenes} - {Path(s["image"]).stem for s in scenes}
                if missing:
                    raise DataError(f"split '{split}': list {listed} names scenes not found: {sorted(missing)[:5]}")
            self._scenes[split] = scenes
        return self._scenes[split]

    def items(self, split: str) -> list[Item]:
        if split not in self._items:
            scenes = self.scenes(split)
            if self.tile is None:
                self._items[split] = scenes
            else:
                exact = split not in self.overlap_splits
                self._items[split] = [t for s in scenes for t in self._tiles(s, exact)]
        return self._items[split]

    def _tiles(self, scene: Item, exact: bool) -> list[Item]:
        h, w = raster_size(scene["image"])
        h, w = self.prep.scaled_size(h, w)
        (th, tw), (sh, sw) = self.tile, self.stride  # type: ignore[misc]
        tiles = []
        for y in tile_starts(h, th, sh, exact):
            for x in tile_starts(w, tw, sw, exact):
                window = [y, x, min(th, h - y), min(tw, w - x)]
                tiles.append({**scene, "id": f"{scene['id']}_y{y}_x{x}", "window": window})
        return tiles

    # ------------------------------------------------------------------ loading
    def _read(self, path: str, kind: str, window: Optional[Sequence[int]]) -> np.ndarray:
        if self.scale == 1.0 and window is not None and path.lower().endswith(GDAL_SUFFIXES):
            return self._decode(path, kind, window)  # a windowed read: the rest of the scene is not read
        if window is None and self.tile is None and self.scale == 1.0:
            return self._decode(path, kind)  # whole-scene items: nothing to share with other items

        data = self._scenes_cache.get((path, kind), lambda: self.prep.rescale(self._decode(path, kind), kind))
        if window is not None:
            y, x, h, w = window
            data = data[y : y + h, x : x + w]
        return data

    def _decode(self, path: str, kind: str, window: Optional[Sequence[int]] = None) -> np.ndarray:
        if kind == "image":
            return read_raster(path, self.bands, window)
        if path.lower().endswith(GDAL_SUFFIXES):
            data = read_raster(path, None, window)
            return data[:, :, :3] if self.colour_palette else data[:, :, 0]
        return read_mask(path, colour=self.colour_palette is not None)

    def load(self, item: Item) -> Sample:
        window = item.get("window")
        image = self.prep.finish(self._read(item["image"], "image", window), self.in_channels, item["image"])
        sample: Sample = {"id": item["id"], "image": image}
        if item.get("mask") is None:
            return sample
        path = item["mask"]
        raw = self._read(path, "mask", window)
        if raw.shape[:2] != image.shape[:2]:
            raise DataError(f"mask {path} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image {item['image']} is {image.shape[1]}x{image.shape[0]}")
        if self.colour_palette is not None:
            mask, valid, unknown = palette_to_index(raw, self.colour_palette, path, self.ignore_colours)
            if unknown:
                listed = _codes(np.asarray(self.colour_palette + self.ignore_colours, np.int64))
                colours = np.unique(raw[~np.isin(_codes(raw), listed)].reshape(-1, 3), axis=0)[:5].tolist()
                log.warning("mask %s: %d pixels of unknown colours %s set to ignore", path, unknown, colours)
        else:
            mask, valid = finalize_mask(raw, self.num_classes, path, self.value_map, self.ignore_values)
        sample["mask"], sample["valid"] = mask, valid
        return sample

    # ------------------------------------------------------------------ statistics
    def _probe_channels(self) -> int:
        for split in self._split_specs:
            for scene in self.scenes(split)[:1]:
                path = scene["image"]
                if path.lower().endswith(GDAL_SUFFIXES):
                    with _rasterio(path) as src:
                        return int(src.count)
                return int(read_image(path).shape[2])
        raise DataError("no images in any split: cannot tell the number of bands (set data.params.in_channels)")

    def _resolve_stats(self, stats: Any, split: str, cache: Optional[str]) -> Optional[tuple[np.ndarray, np.ndarray]]:
        if stats is None:
            return None
        if isinstance(stats, dict):
            if set(stats) != {"mean", "std"} or len(stats["mean"]) != self.in_channels or len(stats["std"]) != self.in_channels:
                raise ConfigError(f"data.params.band_stats must be {{mean: [...], std: [...]}} with {self.in_channels} values each")
            mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
        elif stats == "auto":
            mean, std = self._auto_stats(split, cache)
        else:
            raise ConfigError(f"data.params.band_stats must be null, auto or {{mean, std}}, got {stats!r}")
        if not (std > 0).all():
            raise ConfigError(f"data.params.band_stats: every std must be > 0, got {std.tolist()}")
        return mean, std

    def _auto_stats(self, split: str, cache: Optional[str]) -> tuple[np.ndarray, np.ndarray]:
        scenes = self.scenes(split)  # the training split only: val/test never shape the inputs
        files = sorted(s["image"] for s in scenes)
        ident = [[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files] + [self.bands]
        key = hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:16]
        folder = Path(cache) if cache else Path(os.environ.get("SEGSSL_CACHE", Path.home() / ".cache" / "segssl")) / "band_stats"
        path = folder / f"{key}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            log.info("band statistics of split '%s' read from %s", split, path)
            return np.asarray(saved["mean"], np.float32), np.asarray(saved["std"], np.float32)
        total = np.zeros(self.in_channels)
        squares = np.zeros(self.in_channels)
        count = 0
        for f in files:
            data = read_raster(f, self.bands)
            step = max(1, int(np.sqrt(data.shape[0] * data.shape[1] / STATS_PIXELS)))
            pixels = data[::step, ::step].reshape(-1, data.shape[2]).astype(np.float64)
            if pixels.shape[1] != self.in_channels:
                raise DataError(f"raster {f} has {pixels.shape[1]} bands, the dataset declares {self.in_channels}")
            total += pixels.sum(0)
            squares += (pixels**2).sum(0)
            count += len(pixels)
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"split": split, "files": len(files), "mean": mean.tolist(), "std": std.tolist()}))
        log.info("band statistics of split '%s' (%d scenes) cached in %s", split, len(files), path)
        return mean.astype(np.float32), std.astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "preprocess": self.prep.record()}


def _codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


DUBAI_CLASSES = ["building", "land", "road", "vegetation", "water"]
DUBAI_PALETTE = [(60, 16, 152), (132, 41, 246), (110, 193, 228), (254, 221, 58), (226, 169, 41)]
DUBAI_IGNORE = [(155, 155, 155), (0, 0, 0)]  # "Unlabeled" and the few black pixels


@ADAPTERS.register("dubai")
class DubaiAdapter(RasterAdapter):
    """Dubai aerial imagery: folders "Tile 1".."Tile 8", split by tile so no scene crosses splits.

    ``group: folder`` (default) keeps a whole "Tile N" together in a labeled draw (its nine
    images are neighbouring parts of one scene); ``group: scene`` groups per image only.
    ``val_parts`` / ``test_parts`` hold images out of the training tiles by their number
    ("image_part_009" -> 9) into val / test, for an in-domain evaluation beside (or instead of)
    whole held-out tiles: neighbouring parts share a district's look, which is the point there.
    """

    def __init__(
        self,
        root: Optional[str],
        train_tiles: Sequence[int] = (1, 2, 3, 4, 5, 6),
        val_tiles: Sequence[int] = (7,),
        test_tiles: Sequence[int] = (8,),
        tile: Optional[Sequence[int]] = None,
        overlap: Union[int, float] = 0,
        overlap_splits: Sequence[str] = ("train",),
        scale: float = 1.0,
        group: str = "folder",
        cache_scenes: int = 2,
        val_parts: Sequence[int] = (),
        test_parts: Sequence[int] = (),
    ) -> None:
        chosen = {"train": list(train_tiles), "val": list(val_tiles), "test": list(test_tiles)}
        seen: dict[int, str] = {}
        for name, tiles in chosen.items():
            for t in tiles:
                if t in seen:
                    raise ConfigError(f"data.params: tile {t} is in both {seen[t]}_tiles and {name}_tiles (leakage)")
                seen[t] = name
        self._folder_split = {f"Tile {t}": name for t, name in seen.items()}
        self._part_split = {int(p): "val" for p in val_parts}
        for p in test_parts:
            if int(p) in self._part_split:
                raise ConfigError(f"data.params: image part {p} is in both val_parts and test_parts (leakage)")
            self._part_split[int(p)] = "test"
        folders = {name: list(tiles) for name, tiles in chosen.items()}
        for name in set(self._part_split.values()):  # held-out parts are read from the training tiles
            folders[name] += [t for t in chosen["train"] if t not in folders[name]]
        splits = {
            name: {"images": [f"Tile {t}/images" for t in tiles], "masks": [f"Tile {t}/masks" for t in tiles]}
            for name, tiles in folders.items()
            if tiles
        }
        super().__init__(
            root, splits, num_classes=5, class_names=DUBAI_CLASSES, in_channels=3, palette=DUBAI_PALETTE,
            ignore_colours=DUBAI_IGNORE, tile=tile, overlap=overlap, overlap_splits=overlap_splits,
            scale=scale, group=group, cache_scenes=cache_scenes,
        )

    def folder_key(self, folder: str) -> str:
        return slug(folder.split("/")[0])  # "Tile 3/images" -> "tile3"

    def scenes(self, split: str) -> list[Item]:
        scenes = super().scenes(split)
        if not self._part_split:
            return scenes
        return [s for s in scenes if self._home_split(Path(s["image"])) == split]

    def _home_split(self, image: Path) -> str:
        """The split an image belongs to: its tile's, or val/test for a held-out part of a training tile."""
        home = self._folder_split[image.parent.parent.name]  # ".../Tile 3/images/x.jpg"
        number = re.search(r"(\d+)$", image.stem)
        if home != "train" or number is None:
            return home
        return self._part_split.get(int(number.group(1)), "train")
