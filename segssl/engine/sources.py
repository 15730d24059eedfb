"""Input files for inference: plain images, GeoTIFF rasters and NIfTI volumes.

Every reader raises a ``DataError`` naming the file, so a batch job can report it and go on.
Rasters are opened, not read: the caller asks for row ranges, so a 10000 x 10000 scene is never
held whole. Volumes are read whole (they fit in memory) and cut into 2-D slices along an axis.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..data.preprocess import band_indexes, read_nifti, volume_slice
from ..errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
RASTER_SUFFIXES = (".tif", ".tiff")
VOLUME_SUFFIXES = (".nii.gz", ".nii")
INPUT_SUFFIXES = IMAGE_SUFFIXES + RASTER_SUFFIXES + VOLUME_SUFFIXES


def split_suffix(name: str) -> tuple[str, str]:
    """("scan", ".nii.gz") for "scan.nii.gz": double suffixes stay whole."""
    lower = name.lower()
    for suffix in INPUT_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if dot else (name, "")


def input_kind(path: Path) -> Optional[str]:
    """"image", "raster" or "volume" by file name; None for files we do not read."""
    suffix = split_suffix(path.name)[1].lower()
    if suffix in VOLUME_SUFFIXES:
        return "volume"
    if suffix in RASTER_SUFFIXES:
        return "raster"
    return "image" if suffix in IMAGE_SUFFIXES else None


class Raster:
    """An open GeoTIFF (or any GDAL raster) read by row ranges as H x W x bands arrays
    (``bands``: only these 1-based bands, as the run's adapter read them)."""

    def __init__(self, path: Path, bands: Optional[Sequence[int]] = None) -> None:
        rasterio = _require("rasterio", f"TIFF raster {path}")
        from rasterio.enums import MaskFlags

        self.path = path
        if not path.is_file():
            raise DataError(f"raster file not found: {path}")
        # GDAL's block cache defaults to 5% of RAM and fills up with a large scene's blocks;
        # strips are read whole, so a small cache costs nothing (effective before GDAL's first read)
        os.environ.setdefault("GDAL_CACHEMAX", "128")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NotGeoreferencedWarning for plain TIFFs
                self.ds = rasterio.open(path)
        except Exception as exc:  # noqa: BLE001 - any GDAL failure means an unreadable file
            raise DataError(f"cannot open raster file {path}: {exc}") from None
        self.height, self.width, self.count = self.ds.height, self.ds.width, self.ds.count
        try:
            self.indexes = band_indexes(bands, self.count, path)
        except DataError:
            self.ds.close()
            raise
        # a nodata value, an internal mask or an alpha band: pixels outside it get no class
        self.masked = any(MaskFlags.all_valid not in flags for flags in self.ds.mask_flag_enums)

    def read(self, row0: int, row1: int, col0: int = 0, col1: Optional[int] = None) -> np.ndarray:
        from rasterio.windows import Window

        col1 = self.width if col1 is None else col1
        try:
            data = self.ds.read(self.indexes, window=Window(col0, row0, col1 - col0, row1 - row0))
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"cannot read rows {row0}-{row1} of raster {self.path}: {exc}") from None
        return np.moveaxis(data, 0, -1)

    def valid(self, row0: int, row1: int) -> Optional[np.ndarray]:
        """H x W bool of pixels with data, or None when every pixel has data."""
        if not self.masked:
            return None
        from rasterio.windows import Window

        return self.ds.dataset_mask(window=Window(0, row0, self.width, row1 - row0)) > 0

    def overview(self, max_side: int = 1024) -> np.ndarray:
        """A decimated copy for display statistics (never the full scene)."""
        scale = max(1, int(np.ceil(max(self.height, self.width) / max_side)))
        shape = (len(self.indexes), max(1, self.height // scale), max(1, self.width // scale))
        try:
            return np.moveaxis(self.ds.read(self.indexes, out_shape=shape), 0, -1)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"cannot read raster {self.path}: {exc}") from None

    def georef(self) -> dict[str, Any]:
        """Profile keys that place an output on the input's grid (CRS, transform or GCPs)."""
        from affine import Affine

        out: dict[str, Any] = {}
        if self.ds.crs is not None:
            out["crs"] = self.ds.crs
        if self.ds.transform != Affine.identity():
            out["transform"] = self.ds.transform
        gcps, gcp_crs = self.ds.gcps
        if gcps:
            out["gcps"] = (gcps, gcp_crs)
        return out

    def close(self) -> None:
        self.ds.close()

    def __enter__(self) -> "Raster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_volume(path: Path) -> tuple[np.ndarray, Any]:
    """(data as stored, nibabel image): the NIfTI reader of the training adapter. 3-D data, or
    4-D with channels (modalities) last."""
    _require("nibabel", f"NIfTI volume {path}")
    if not path.is_file():
        raise DataError(f"volume file not found: {path}")
    data, image = read_nifti(path)
    if data.ndim not in (3, 4):
        raise DataError(f"NIfTI file {path} has {data.ndim} dimensions; expected 3 (or 4 with channels last)")
    return data, image


def volume_slices(data: np.ndarray, axis: int) -> list[np.ndarray]:
    """2-D H x W x C slices along ``axis`` (0-2); ``np.stack(masks, axis)`` reassembles them."""
    if not 0 <= axis <= 2:
        raise DataError(f"slice axis must be 0, 1 or 2, got {axis}")
    return [volume_slice(data, i, axis) for i in range(data.shape[axis])]


def _require(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"reading the {what} needs the '{module}' package: pip install {module}") from None
