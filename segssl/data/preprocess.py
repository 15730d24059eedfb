"""Input preprocessing shared by the dataset adapters and ``tools/infer.py``.

An adapter that changes pixel values before the views do it through one of the classes here
and records it with ``record()`` in ``describe()["preprocess"]``, which the trainer saves in
the run's meta. Inference rebuilds the same object from that record (``from_meta``) and calls
the same methods on the same kind of arrays, so the model sees at inference what it saw in
training: there is no second implementation that could drift.

* ``VolumePreprocess`` (``nifti`` adapter): RAS+ reorientation, per-volume intensity
  (``ct`` window, ``percentile`` or ``zscore``, computed on the whole volume), 2-D slices.
* ``RasterPreprocess`` (``raster``/``dubai``): band selection, rescaling of whole scenes,
  per-band standardisation with the training split's statistics (recorded values, never
  recomputed on an inference input).

A record with steps neither class knows (a custom adapter's own) is refused by ``from_meta``
with a message naming them: predicting on raw values would silently give wrong masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np

from ..errors import ConfigError, DataError, SegsslError
from .io import adapt_channels

Stats = list[tuple[float, float]]  # per channel (offset, scale): the output is (x - offset) / scale
RAS = np.array([[0, 1], [1, 1], [2, 1]], float)  # nibabel orientation of an array already in RAS+
VOLUME_KEYS = ("intensity", "window", "percentiles", "zscore_nonzero", "canonical", "axis")
RASTER_KEYS = ("band_stats", "bands", "scale")
# keys that runs recorded before they were part of the record: the config's data.params, else
# the adapter's default of that time
LEGACY_DEFAULTS = {"zscore_nonzero": False, "canonical": True}


# ---------------------------------------------------------------------- NIfTI volumes
def open_nifti(path: Union[str, Path]) -> Any:
    """The nibabel image (header only; the voxels are read on demand)."""
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - bad header, not a NIfTI file, ...
        raise DataError(f"cannot read NIfTI file {path}: {exc}") from None


def read_nifti(path: Union[str, Path]) -> tuple[np.ndarray, Any]:
    """(voxels as stored, scl_slope/inter applied and integer dtypes kept; nibabel image)."""
    image = open_nifti(path)
    try:
        return np.asarray(image.dataobj), image
    except Exception as exc:  # noqa: BLE001 - truncated gzip, short file, ...
        raise DataError(f"cannot decode NIfTI file {path}: {exc}") from None


def volume_slice(volume: np.ndarray, index: int, axis: int) -> np.ndarray:
    """Slice ``index`` along ``axis`` as H x W x C (C = 1 for 3-D volumes)."""
    piece = np.take(volume, index, axis=axis)
    return piece[:, :, None] if piece.ndim == 2 else piece


@dataclass(frozen=True)
class VolumePreprocess:
    intensity: str  # ct | percentile | zscore
    window: Optional[tuple[float, float]]  # [lo, hi] HU of ct
    percentiles: tuple[float, float]
    zscore_nonzero: bool  # z-score statistics over the non-zero voxels only
    canonical: bool  # reorient to RAS+ before slicing
    axis: int  # slice axis of training (in RAS+ when canonical)

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2):
            raise ConfigError(f"data.params.axis must be 0, 1 or 2, got {self.axis}")
        if self.intensity not in ("ct", "zscore", "percentile"):
            raise ConfigError(f"data.params.intensity must be ct, zscore or percentile, got '{self.intensity}'")
        w = self.window
        if self.intensity == "ct" and (w is None or len(w) != 2 or w[0] >= w[1]):
            raise ConfigError("data.params.window must be [lo, hi] HU with lo < hi when intensity is ct")
        object.__setattr__(self, "window", None if w is None else (float(w[0]), float(w[1])))
        object.__setattr__(self, "percentiles", (float(self.percentiles[0]), float(self.percentiles[1])))

    def record(self) -> dict[str, Any]:
        return {"intensity": self.intensity, "window": None if self.window is None else list(self.window),
                "percentiles": list(self.percentiles), "zscore_nonzero": self.zscore_nonzero,
                "canonical": self.canonical, "axis": self.axis}

    @classmethod
    def from_record(cls, record: dict[str, Any], params: Optional[dict[str, Any]] = None) -> "VolumePreprocess":
        values = {k: record[k] if k in record else (params or {}).get(k, LEGACY_DEFAULTS.get(k)) for k in VOLUME_KEYS}
        return cls(**values)

    # orientation ------------------------------------------------------
    def model_shape(self, shape: Sequence[int], affine: np.ndarray) -> tuple[int, ...]:
        """Shape of a volume as the model's slicing sees it (RAS+ when ``canonical``)."""
        import nibabel as nib

        shape = list(shape)
        if self.canonical:
            ornt = nib.orientations.io_orientation(affine)
            shape[:3] = [shape[int(np.flatnonzero(ornt[:, 0] == a)[0])] for a in range(3)]
        return tuple(shape)

    def to_model(self, data: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Voxels as stored -> the model's orientation (contiguous, so statistics sum in one order)."""
        import nibabel as nib

        if self.canonical:
            data = nib.orientations.apply_orientation(data, nib.orientations.io_orientation(affine))
        return np.ascontiguousarray(data)

    def to_input(self, data: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """The inverse of ``to_model``: a volume predicted in RAS+ back onto the file's voxel grid."""
        import nibabel as nib

        if not self.canonical:
            return data
        back = nib.orientations.ornt_transform(RAS, nib.orientations.io_orientation(affine))
        return np.ascontiguousarray(nib.orientations.apply_orientation(data, back))

    # intensity --------------------------------------------------------
    def stats(self, volume: np.ndarray) -> Stats:
        """Per-channel (offset, scale) of one whole volume (3-D, or 4-D with channels last)."""
        channels = volume[..., None] if volume.ndim == 3 else volume
        out = []
        for c in range(channels.shape[-1]):
            v = channels[..., c]
            if self.intensity == "ct":
                lo, hi = self.window  # type: ignore[misc]
                out.append((lo, hi - lo))
            elif self.intensity == "percentile":
                lo, hi = np.percentile(v, self.percentiles)
                out.append((float(lo), max(float(hi - lo), 1e-6)))
            else:
                sel = v[v != 0] if self.zscore_nonzero and (v != 0).any() else v
                out.append((float(sel.mean()), max(float(sel.std()), 1e-6)))
        return out

    def normalise(self, image: np.ndarray, stats: Stats) -> np.ndarray:
        """An H x W x C slice -> float32 model input (clipped to [0, 1] unless z-score)."""
        image = image.astype(np.float32)
        for c, (offset, scale) in enumerate(stats):
            image[:, :, c] = (image[:, :, c] - offset) / scale
        if self.intensity != "zscore":
            np.clip(image, 0.0, 1.0, out=image)
        return image

    def option(self) -> str:
        return f"data.params.intensity={self.intensity}"


# ---------------------------------------------------------------------- rasters
def band_indexes(bands: Optional[Sequence[int]], count: int, path: Union[str, Path]) -> list[int]:
    """1-based band numbers to read from a file with ``count`` bands (all when ``bands`` is None)."""
    indexes = [int(b) for b in bands] if bands else list(range(1, count + 1))
    if min(indexes) < 1 or max(indexes) > count:
        raise DataError(f"{path} has {count} bands; asked for bands {indexes} (data.params.bands)")
    return indexes


def select_bands(image: np.ndarray, bands: Optional[Sequence[int]], path: Union[str, Path]) -> np.ndarray:
    """Band selection of an H x W x C array already in memory (PNG/JPEG)."""
    if not bands:
        return image
    return image[:, :, [b - 1 for b in band_indexes(bands, image.shape[2], path)]]


@dataclass(frozen=True, eq=False)
class RasterPreprocess:
    bands: Optional[tuple[int, ...]] = None  # 1-based bands read from each file
    scale: float = 1.0  # whole scenes are resized by this factor before anything else
    band_stats: Optional[tuple[np.ndarray, np.ndarray]] = None  # float32 per-band (mean, std), raw units

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ConfigError(f"data.params.scale must be > 0, got {self.scale}")
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "bands", tuple(int(b) for b in self.bands) if self.bands else None)

    def record(self) -> dict[str, Any]:
        stats = None if self.band_stats is None else {"mean": self.band_stats[0].tolist(), "std": self.band_stats[1].tolist()}
        return {"band_stats": stats, "bands": None if self.bands is None else list(self.bands), "scale": self.scale}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "RasterPreprocess":
        stats = record.get("band_stats")
        pair = None if stats is None else (np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32))
        return cls(bands=record.get("bands"), scale=record.get("scale", 1.0), band_stats=pair)

    @property
    def active(self) -> bool:
        return bool(self.bands) or self.scale != 1.0 or self.band_stats is not None

    def scaled_size(self, height: int, width: int) -> tuple[int, int]:
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def rescale(self, data: np.ndarray, kind: str = "image") -> np.ndarray:
        """A whole scene (image or mask) resized by ``scale``; nearest neighbour for masks."""
        if self.scale == 1.0:
            return data
        h, w = self.scaled_size(data.shape[0], data.shape[1])
        interp = cv2.INTER_NEAREST if kind == "mask" else (cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR)
        out = cv2.resize(data, (w, h), interpolation=interp)
        return out.reshape(h, w, -1) if data.ndim == 3 else out  # OpenCV drops a single channel

    def finish(self, image: np.ndarray, in_channels: int, path: Union[str, Path]) -> np.ndarray:
        """Bands as read (and rescaled) -> model input: channel matching without band
        selection, then per-band standardisation (float32) when statistics are set."""
        if not self.bands:
            image = adapt_channels(image, in_channels, path)
        if self.band_stats is not None:
            image = (image.astype(np.float32) - self.band_stats[0]) / self.band_stats[1]
        return image

    def apply(self, image: np.ndarray, in_channels: int, path: Union[str, Path]) -> np.ndarray:
        """A whole image as read (selected bands, native dtype) -> model input."""
        return self.finish(self.rescale(image), in_channels, path)

    def option(self) -> str:
        active = {k: v for k, v in self.record().items() if v not in (None, 1.0)}
        return ", ".join(f"data.params.{k}" for k in active)


Preprocess = Union[VolumePreprocess, RasterPreprocess]


def _inactive(value: Any) -> bool:
    return value is None or value is False or value in ([], {}) or (type(value) in (int, float) and value == 1)


def from_meta(meta: dict[str, Any], params: Optional[dict[str, Any]] = None) -> Optional[Preprocess]:
    """The preprocessing a run's adapter applied, from its ``meta["preprocess"]`` record
    (``params``: the run's ``data.params``, for keys that older runs did not record).

    None when the adapter recorded nothing; a ``SegsslError`` naming the steps that no class
    here reproduces."""
    record = dict(meta.get("preprocess") or {})
    if not record:
        return None
    known = VOLUME_KEYS if "intensity" in record else RASTER_KEYS
    unknown = {k: v for k, v in record.items() if k not in known and not _inactive(v)}
    if unknown:
        options = ", ".join(f"data.params.{k}={v!r}" for k, v in unknown.items())
        raise SegsslError(f"the run's adapter preprocessed its images with {options}, which inference "
                          "cannot reproduce; predicting on raw values would give wrong masks")
    if known is VOLUME_KEYS:
        return VolumePreprocess.from_record(record, params)
    return RasterPreprocess.from_record(record)
