"""Writers for inference outputs: index masks, colour masks, overlays and confidence maps.

Each output file mirrors its input's relative path under the output folder and keeps the
input's container where it carries meaning: PNG for plain images, GeoTIFF (same CRS,
transform or GCPs) for TIFF rasters, NIfTI (same affine and header) for volumes. Outputs are
written row block by row block, so the large-raster path never holds a whole scene; every
file goes to a hidden temporary name first and is renamed when complete, so a killed job
never leaves a half-written mask that ``--skip-existing`` would take as done.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import cv2
import numpy as np

from ..errors import DataError, SegsslError
from .sources import split_suffix

BLOCK = 256  # GeoTIFF tile size; row blocks are buffered to it so tiles are written once


@dataclass
class OutputOptions:
    color: bool = False
    overlay: bool = False
    confidence: Optional[str] = None  # None, "png" (8-bit) or "npy" (float32)
    alpha: float = 0.5
    display_bands: Optional[tuple[int, ...]] = None  # 1-based bands shown in overlays


def output_names(rel: Path, kind: str, opts: OutputOptions, keep_suffix: bool = False) -> dict[str, Path]:
    """Relative output paths by role. ``keep_suffix`` disambiguates a.png from a.jpg."""
    stem, ext = split_suffix(rel.name)
    stem = rel.name if keep_suffix else stem
    image_ext = {"image": ".png", "raster": ".tif", "volume": ext}[kind]
    names = {"mask": rel.with_name(stem + image_ext)}
    for role in ("color", "overlay"):
        if getattr(opts, role):  # volumes: one PNG per slice in a folder
            names[role] = rel.with_name(f"{stem}_{role}" + ("" if kind == "volume" else image_ext))
    if opts.confidence:
        names["confidence"] = rel.with_name(f"{stem}_conf" + (".npy" if opts.confidence == "npy" else image_ext))
    return names


def safe_target(root: Path, rel: Path) -> Path:
    """``root / rel``, refused when it would land outside ``root`` (``..``, symlinks)."""
    if rel.is_absolute() or ".." in rel.parts:
        raise SegsslError(f"refusing output path {rel}: not inside the output folder")
    target = root / rel
    if not target.parent.resolve().is_relative_to(root.resolve()):
        raise SegsslError(f"refusing to write {target}: a symlink leads outside the output folder {root}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _tmp(target: Path) -> Path:
    return target.with_name(".tmp-" + target.name)  # keeps the extension writers look at


def palette_lut(palette: Optional[Sequence[Sequence[int]]], num_classes: int) -> np.ndarray:
    """RGB per index value; values past the palette (e.g. nodata) are black."""
    size = 256 if num_classes < 256 else 65536
    lut = np.zeros((size, 3), np.uint8)
    if palette:
        lut[: min(len(palette), size)] = np.asarray(palette, np.int64)[:size].clip(0, 255)
    else:  # the same fixed colours as Adapter.default_palette
        rng = np.random.default_rng(12345)
        lut[:num_classes] = [rng.integers(0, 256, 3) for _ in range(num_classes)]
    return lut


class Display:
    """Image rows -> RGB uint8 for overlays, whatever the band count or bit depth.

    One band (or two) is shown as grey; three or more show bands 1-3 unless ``bands`` picks
    others (e.g. 4 3 2 for false colour). 8-bit images are shown as they are; deeper or float
    images are stretched per band between the 2nd and 98th percentiles of ``sample``.
    """

    def __init__(self, sample: np.ndarray, bands: Optional[Sequence[int]] = None) -> None:
        channels = sample.shape[2]
        if bands:
            if len(bands) not in (1, 3) or not all(1 <= b <= channels for b in bands):
                raise SegsslError(f"--display-bands {list(bands)}: give 1 or 3 band numbers in 1..{channels}")
            self.bands = [b - 1 for b in bands]
        else:
            self.bands = [0, 1, 2] if channels >= 3 else [0]
        if sample.dtype == np.uint8:
            self.low, self.high = np.zeros(len(self.bands)), np.full(len(self.bands), 255.0)
        else:
            values = sample[..., self.bands].reshape(-1, len(self.bands)).astype(np.float64)
            values = values[:: max(1, len(values) // 1_000_000)]
            values = values[np.isfinite(values).all(1)]
            self.low = np.percentile(values, 2, axis=0) if len(values) else np.zeros(len(self.bands))
            self.high = np.percentile(values, 98, axis=0) if len(values) else np.ones(len(self.bands))
        self.high = np.maximum(self.high, self.low + 1e-6)

    def rgb(self, rows: np.ndarray) -> np.ndarray:
        picked = rows[..., self.bands].astype(np.float32)
        scaled = np.nan_to_num((picked - self.low) / (self.high - self.low) * 255.0)
        out = scaled.clip(0, 255).astype(np.uint8)
        return np.repeat(out, 3, axis=2) if out.shape[2] == 1 else out


def blend(rgb: np.ndarray, mask: np.ndarray, lut: np.ndarray, alpha: float) -> np.ndarray:
    """Class colours over the image; black palette entries (usually background) stay clear."""
    colours = lut[mask]
    tinted = colours.any(-1, keepdims=True)
    mixed = (rgb * (1 - alpha) + colours * alpha).astype(np.uint8)
    return np.where(tinted, mixed, rgb)


# ------------------------------------------------------------------ sinks (one output file each)


class _ArraySink:
    """PNG (or NumPy) output held in memory until complete: these formats cannot be streamed."""

    def __init__(self, target: Path, shape: tuple[int, ...], dtype: Any) -> None:
        self.target, self.data = target, np.zeros(shape, dtype)

    def write(self, row0: int, rows: np.ndarray) -> None:
        self.data[row0:row0 + len(rows)] = rows

    def commit(self) -> None:
        tmp = _tmp(self.target)
        if self.target.suffix == ".npy":
            np.save(tmp, self.data)
        else:
            data = self.data[..., ::-1] if self.data.ndim == 3 else self.data  # cv2 wants BGR
            if not cv2.imwrite(str(tmp), np.ascontiguousarray(data)):
                raise SegsslError(f"cannot write {self.target}")
        os.replace(tmp, self.target)

    def abort(self) -> None:
        _tmp(self.target).unlink(missing_ok=True)


class _NpySink(_ArraySink):
    """float32 .npy written through a memory map: rows go to disk as they come."""

    def __init__(self, target: Path, shape: tuple[int, ...], dtype: Any) -> None:
        self.target = target
        self.data = np.lib.format.open_memmap(_tmp(target), mode="w+", dtype=dtype, shape=shape)

    def commit(self) -> None:
        self.data.flush()
        del self.data
        os.replace(_tmp(self.target), self.target)


class _TiffSink:
    """GeoTIFF on the input's grid, written in whole tile rows as they complete."""

    def __init__(self, target: Path, shape: tuple[int, ...], dtype: Any, georef: dict[str, Any],
                 nodata: Optional[int] = None, colormap: Optional[np.ndarray] = None) -> None:
        import rasterio

        height, width = shape[:2]
        bands = shape[2] if len(shape) == 3 else 1
        profile: dict[str, Any] = {"driver": "GTiff", "height": height, "width": width, "count": bands,
                                   "dtype": np.dtype(dtype).name, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
        if width >= BLOCK and height >= BLOCK:
            profile.update(tiled=True, blockxsize=BLOCK, blockysize=BLOCK)
        profile.update({k: v for k, v in georef.items() if k != "gcps"})
        if nodata is not None:
            profile["nodata"] = nodata
        if bands == 3:
            profile["photometric"] = "RGB"
        self.target, self.width = target, width
        self.ds = rasterio.open(_tmp(target), "w", **profile)
        if "gcps" in georef:
            self.ds.gcps = georef["gcps"]
        if colormap is not None and bands == 1:  # GIS viewers show the classes in colour
            self.ds.write_colormap(1, {i: (*map(int, c), 255) for i, c in enumerate(colormap)})
        self.pending: list[np.ndarray] = []
        self.row = 0  # first row not yet written

    def write(self, row0: int, rows: np.ndarray) -> None:
        self.pending.append(rows)
        if sum(len(p) for p in self.pending) >= BLOCK:
            self._flush()

    def _flush(self) -> None:
        from rasterio.windows import Window

        if not self.pending:
            return
        block = np.concatenate(self.pending)
        data = block[None] if block.ndim == 2 else np.moveaxis(block, -1, 0)
        self.ds.write(data, window=Window(0, self.row, self.width, len(block)))
        self.row += len(block)
        self.pending = []

    def commit(self) -> None:
        self._flush()
        self.ds.close()
        os.replace(_tmp(self.target), self.target)

    def abort(self) -> None:
        self.ds.close()
        _tmp(self.target).unlink(missing_ok=True)


class ImageOutputs:
    """All outputs of one 2-D image or raster, fed with consecutive row blocks."""

    def __init__(self, root: Path, names: dict[str, Path], kind: str, height: int, width: int,
                 mask_dtype: Any, lut: np.ndarray, opts: OutputOptions,
                 georef: Optional[dict[str, Any]] = None, display: Optional[Display] = None) -> None:
        self.opts, self.lut, self.display, self.mask_dtype = opts, lut, display, mask_dtype
        self.nodata = int(np.iinfo(mask_dtype).max)  # masked raster pixels; never a class index here
        self.sinks: dict[str, Any] = {}
        try:
            for role, rel in names.items():
                target = safe_target(root, rel)
                shape = (height, width, 3) if role in ("color", "overlay") else (height, width)
                dtype = mask_dtype if role == "mask" else (np.float32 if target.suffix == ".npy" else np.uint8)
                if target.suffix == ".npy":
                    self.sinks[role] = _NpySink(target, shape, dtype)
                elif kind == "raster":
                    is_mask = role == "mask"
                    self.sinks[role] = _TiffSink(target, shape, dtype, georef or {},
                                                 nodata=self.nodata if is_mask else None,
                                                 colormap=lut if is_mask and mask_dtype == np.uint8 else None)
                else:
                    self.sinks[role] = _ArraySink(target, shape, dtype)
        except Exception:
            self.abort()
            raise

    def write(self, row0: int, mask: np.ndarray, confidence: Optional[np.ndarray],
              image_rows: Optional[np.ndarray] = None, valid: Optional[np.ndarray] = None) -> None:
        mask = mask.astype(self.mask_dtype, copy=False)
        if valid is not None:
            mask = np.where(valid, mask, self.nodata).astype(self.mask_dtype)
            confidence = None if confidence is None else np.where(valid, confidence, 0)
        self.sinks["mask"].write(row0, mask)
        if "color" in self.sinks:
            self.sinks["color"].write(row0, self.lut[mask])
        if "overlay" in self.sinks:
            if image_rows is None or self.display is None:
                raise SegsslError("overlay output needs the image rows")
            self.sinks["overlay"].write(row0, blend(self.display.rgb(image_rows), mask, self.lut, self.opts.alpha))
        if "confidence" in self.sinks:
            sink = self.sinks["confidence"]
            scaled = confidence if isinstance(sink, _NpySink) else np.rint(confidence * 255).astype(np.uint8)
            sink.write(row0, scaled)

    def commit(self) -> None:
        try:
            for sink in self.sinks.values():
                sink.commit()
        except Exception:
            self.abort()
            raise

    def abort(self) -> None:
        for sink in self.sinks.values():
            try:
                sink.abort()
            except Exception:  # noqa: BLE001 - cleanup must not hide the original error
                pass


def write_volume(root: Path, names: dict[str, Path], image: Any, mask: np.ndarray,
                 confidence: Optional[np.ndarray], slices: Sequence[np.ndarray], axis: int,
                 lut: np.ndarray, opts: OutputOptions, display: Optional[Display],
                 to_input: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> None:
    """NIfTI mask (and confidence) on the input's affine and header; colour/overlay per slice.

    ``mask``/``confidence`` are stacked from the model's ``slices`` along ``axis``; ``to_input``
    puts them back on the input's voxel grid (e.g. from RAS+) for the NIfTI files, while the
    colour/overlay PNGs show the model's slices as they are."""
    for role, rel in names.items():
        target = safe_target(root, rel)
        if role == "mask" or (role == "confidence" and target.suffix != ".npy"):
            data = mask if role == "mask" else np.rint(confidence * 255).astype(np.uint8)  # type: ignore[operator]
            _save_nifti(image, to_input(data), target, label=role == "mask")
        elif role == "confidence":
            np.save(_tmp(target), to_input(confidence))  # type: ignore[arg-type]
            os.replace(_tmp(target), target)
        else:  # a folder of slices, renamed into place when complete
            tmp = _tmp(target)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for i, piece in enumerate(slices):
                labels = np.take(mask, i, axis=axis)
                rgb = lut[labels] if role == "color" or display is None else blend(display.rgb(piece), labels, lut, opts.alpha)
                if not cv2.imwrite(str(tmp / f"{i:04d}.png"), np.ascontiguousarray(rgb[..., ::-1])):
                    raise SegsslError(f"cannot write {target / f'{i:04d}.png'}")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)


def _save_nifti(image: Any, data: np.ndarray, target: Path, label: bool) -> None:
    header = image.header.copy()
    out = type(image)(data, image.affine, header=header)
    out.set_data_dtype(data.dtype)
    out.header.set_slope_inter(1, 0)  # the input's intensity scaling must not touch labels
    out.header.set_intent("label" if label else "none")
    try:
        out.to_filename(str(_tmp(target)))
    except Exception as exc:  # noqa: BLE001
        _tmp(target).unlink(missing_ok=True)
        raise DataError(f"cannot write NIfTI file {target}: {exc}") from None
    os.replace(_tmp(target), target)
