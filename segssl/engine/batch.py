"""Batch inference over many files: read ahead, batch same-size images, write behind.

Reader threads decode the next files while the model runs (OpenCV, GDAL and zlib release the
GIL), one writer thread encodes outputs, so the device is rarely idle. A file that cannot be
read or has the wrong channel count becomes a failed summary row and the job goes on. Images
above ``max_pixels`` and all rasters above it go through the windowed path of
``large_raster`` (rasters are never read whole); NIfTI volumes are predicted slice by slice.
Every input gets the run's adapter preprocessing (``ImagePredictor.prepare``/``prepare_volume``)
in the reader threads; outputs stay on the input's grid (raster transform, NIfTI affine).
"""
from __future__ import annotations

import itertools
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from tqdm import tqdm

from ..data.io import read_image
from ..errors import SegsslError
from .inference import ClassStats, ImagePredictor, Prediction, VolumeInput
from .large_raster import predict_rows, window_starts
from .outputs import Display, ImageOutputs, OutputOptions, palette_lut, write_volume
from .sources import Raster, read_volume
from .summary import Summary

DEFAULT_TILE = 512  # window of the large-raster path when --window is not given


@dataclass
class Job:
    path: Path  # input file
    rel: Path  # its path relative to the input root, mirrored under the output folder
    kind: str  # image | raster | volume
    names: dict[str, Path]  # output role -> path relative to the output folder
    error: Optional[str] = None  # known before reading (unsupported type, name collision)


@dataclass
class Loaded:
    job: Job
    image: Optional[np.ndarray] = None  # H x W x C as read (the run's bands): size and overlays of the outputs
    tensor: Optional[torch.Tensor] = None  # the image prepared and normalised for the model, made by the reader
    valid: Optional[np.ndarray] = None  # raster pixels that carry data (None: all)
    georef: dict[str, Any] = field(default_factory=dict)
    raster: Optional[Raster] = None  # an open raster for the windowed path
    volume: Optional[VolumeInput] = None
    error: Optional[str] = None
    channels: int = 0  # channel count of the file (before matching the model's)


@dataclass
class BatchOptions:
    outputs: OutputOptions = field(default_factory=OutputOptions)
    batch_size: int = 1
    window: Optional[tuple[int, int]] = None
    overlap: float = 0.25
    max_pixels: int = 4096 * 4096
    axis: int = 2
    workers: int = 2


class BatchInference:
    def __init__(self, predictor: ImagePredictor, output: Path, options: BatchOptions, summary: Summary,
                 progress: Optional[tqdm] = None) -> None:
        self.predictor, self.output, self.opts, self.summary = predictor, output, options, summary
        self.progress = progress
        self.lut = palette_lut(predictor.run.meta.get("palette"), predictor.num_classes)
        self.class_names = list(predictor.run.meta.get("class_names") or range(predictor.num_classes))
        self.writes: deque[Future] = deque()

    # ------------------------------------------------------------------ driver
    def run(self, jobs: list[Job]) -> None:
        groups: dict[tuple[int, ...], list[Loaded]] = {}
        bs = max(1, self.opts.batch_size)
        with ThreadPoolExecutor(max(1, self.opts.workers), thread_name_prefix="infer-read") as readers, \
                ThreadPoolExecutor(1, thread_name_prefix="infer-write") as self.writer:
            for loaded in self._read_ahead(readers, jobs):
                if loaded.error is not None:
                    self._fail([loaded], loaded.error)
                elif loaded.volume is not None:
                    self._guarded([loaded], self._volume)
                elif loaded.raster is not None:
                    self._guarded([loaded], self._streamed)
                else:
                    group = groups.setdefault(loaded.image.shape, [])  # type: ignore[union-attr]
                    group.append(loaded)
                    if len(group) >= bs:
                        self._guarded(groups.pop(loaded.image.shape), self._batch)  # type: ignore[union-attr]
                    elif sum(map(len, groups.values())) > 2 * bs:  # many sizes: do not hoard images
                        self._guarded(groups.pop(next(iter(groups))), self._batch)
                self._drain(limit=2 * bs)
            for shape in list(groups):
                self._guarded(groups.pop(shape), self._batch)
            self._drain(limit=0)

    def _read_ahead(self, pool: ThreadPoolExecutor, jobs: list[Job]) -> Iterator[Loaded]:
        queue = iter(jobs)
        ahead = max(4, 2 * self.opts.batch_size)
        futures: deque[Future] = deque(pool.submit(self._load, job) for job in itertools.islice(queue, ahead))
        while futures:
            loaded = futures.popleft().result()
            job = next(queue, None)
            if job is not None:
                futures.append(pool.submit(self._load, job))
            yield loaded

    def _guarded(self, items: list[Loaded], work: Callable[[list[Loaded]], None]) -> None:
        try:
            work(items)
        except SegsslError as exc:
            self._fail(items, str(exc))
        except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
            self._fail(items, f"out of memory ({type(exc).__name__}): use a smaller --batch-size or --window")
        finally:
            for item in items:
                if item.raster is not None:
                    item.raster.close()

    # ------------------------------------------------------------------ reading (reader threads)
    def _load(self, job: Job) -> Loaded:
        if job.error is not None:
            return Loaded(job, error=job.error)
        pred = self.predictor
        try:
            if job.kind == "image":
                raw = read_image(job.path)
                image = pred.select(raw, job.path)
                if image.shape[0] * image.shape[1] > self.opts.max_pixels:  # PNG/JPEG cannot be read in windows
                    pred.check_windowed(job.path, image.shape[0], image.shape[1])
                    pred.prepare(image[:1, :1], job.path)  # fail early on a wrong band count
                    return Loaded(job, image=image, raster=_ArrayRaster(image), channels=raw.shape[2])  # type: ignore[arg-type]
                return Loaded(job, image=image, tensor=pred.tensor(pred.prepare(image, job.path)), channels=raw.shape[2])
            if job.kind == "raster":
                raster = Raster(job.path, pred.bands)
                if raster.height * raster.width > self.opts.max_pixels:
                    try:
                        pred.check_windowed(job.path, raster.height, raster.width)
                        pred.prepare(raster.read(0, 1, 0, 1), job.path)  # fail early on a wrong band count
                    except BaseException:
                        raster.close()
                        raise
                    return Loaded(job, raster=raster, georef=raster.georef(), channels=raster.count)
                with raster:
                    image = raster.read(0, raster.height)
                    return Loaded(job, image=image, tensor=pred.tensor(pred.prepare(image, job.path)), channels=raster.count,
                                  valid=raster.valid(0, raster.height), georef=raster.georef())
            data, nifti = read_volume(job.path)
            channels = data.shape[3] if data.ndim == 4 else 1
            return Loaded(job, volume=pred.prepare_volume(data, nifti, self.opts.axis, job.path), channels=channels)
        except SegsslError as exc:
            return Loaded(job, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a decoder choking on a damaged file fails that file only
            return Loaded(job, error=f"cannot read {job.path}: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ prediction (main thread)
    def _batch(self, items: list[Loaded]) -> None:
        preds = self.predictor.predict([i.image for i in items], confidence=self._wants_confidence(),  # type: ignore[misc]
                                       valid=[i.valid for i in items], prepared=[i.tensor for i in items])  # type: ignore[misc]
        for item in items:
            item.tensor = None  # the writer thread only needs the image
        for item, pred in zip(items, preds):
            self.writes.append(self.writer.submit(self._write_image, item, pred))

    def _write_image(self, item: Loaded, pred: Prediction) -> dict[str, Any]:
        image = item.image
        assert image is not None
        try:
            display = Display(image, self.opts.outputs.display_bands) if self.opts.outputs.overlay else None
            out = ImageOutputs(self.output, item.job.names, item.job.kind, image.shape[0], image.shape[1],
                               self.predictor.mask_dtype, self.lut, self.opts.outputs, item.georef, display)
            try:
                out.write(0, pred.mask, pred.confidence, image, item.valid)
            except BaseException:
                out.abort()
                raise
            out.commit()
        except SegsslError as exc:
            return self._failed_row(item.job, str(exc))
        return self._row(item.job, pred.stats, image.shape[0], image.shape[1], item.channels)

    def _streamed(self, items: list[Loaded]) -> None:
        item, job = items[0], items[0].job
        raster = item.raster
        assert raster is not None
        prepare = self.predictor.prepare
        read = (lambda a, b: prepare(raster.read(a, b), job.path))  # noqa: E731  (pixel-wise: no scale here)
        opts = self.opts.outputs
        display = Display(raster.overview(), opts.display_bands) if opts.overlay else None
        out = ImageOutputs(self.output, job.names, job.kind, raster.height, raster.width,
                           self.predictor.mask_dtype, self.lut, opts, item.georef, display)
        stats = ClassStats(self.predictor.num_classes)

        def emit(row0: int, mask: np.ndarray, confidence: np.ndarray) -> None:
            valid = raster.valid(row0, row0 + len(mask))
            stats.add(mask, confidence, valid)
            out.write(row0, mask, confidence, raster.read(row0, row0 + len(mask)) if opts.overlay else None, valid)

        window = self.opts.window or (DEFAULT_TILE, DEFAULT_TILE)
        total = len(window_starts(raster.height, window[0], self.opts.overlap)) * len(window_starts(raster.width, window[1], self.opts.overlap))
        bar = tqdm(total=total, desc=job.rel.name, unit="win", leave=False, disable=self.progress is None or self.progress.disable)
        try:
            predict_rows(self.predictor, read, raster.height, raster.width, window, self.opts.overlap, emit,
                         batch_size=max(1, self.opts.batch_size), progress=bar.update)
        except BaseException:
            out.abort()
            raise
        finally:
            bar.close()
        out.commit()
        self._record(self._row(job, stats, raster.height, raster.width, item.channels))

    def _volume(self, items: list[Loaded]) -> None:
        item, job = items[0], items[0].job
        volume = item.volume
        assert volume is not None
        slices = volume.slices
        bs, wants = max(1, self.opts.batch_size), self._wants_confidence()
        preds: list[Prediction] = []
        for i in range(0, len(slices), bs):
            chunk = slices[i:i + bs]
            preds += self.predictor.predict(chunk, confidence=wants, prepared=[self.predictor.tensor(s) for s in chunk])
        axis = self.opts.axis
        mask = np.stack([p.mask for p in preds], axis=axis)
        confidence = np.stack([p.confidence for p in preds], axis=axis) if wants else None  # type: ignore[misc]
        stats = ClassStats(self.predictor.num_classes)
        for p in preds:
            stats.merge(p.stats)
        display = None
        if self.opts.outputs.overlay:  # one stretch for the whole volume, from a few slices
            sample = np.concatenate([s.reshape(-1, 1, s.shape[2]) for s in slices[:: max(1, len(slices) // 16)]])
            display = Display(sample, self.opts.outputs.display_bands)
        write_volume(self.output, job.names, volume.nifti, mask, confidence, slices, axis, self.lut, self.opts.outputs,
                     display, volume.to_input)
        height, width = slices[0].shape[:2]
        self._record({**self._row(job, stats, height, width, item.channels), "depth": len(slices)})

    # ------------------------------------------------------------------ bookkeeping
    def _wants_confidence(self) -> bool:
        return self.opts.outputs.confidence is not None

    def _row(self, job: Job, stats: ClassStats, height: int, width: int, channels: int) -> dict[str, Any]:
        mean = stats.mean_confidence()
        return {"file": str(job.path), "output": job.names["mask"].as_posix(), "status": "ok", "kind": job.kind,
                "height": height, "width": width, "channels": channels,
                "mean_confidence": None if mean is None else round(mean, 6),
                "fractions": {str(n): round(f, 6) for n, f in zip(self.class_names, stats.fractions())}}

    def _failed_row(self, job: Job, error: str) -> dict[str, Any]:
        return {"file": str(job.path), "output": job.names.get("mask", Path("")).as_posix() or None,
                "status": "failed", "kind": job.kind, "error": error}

    def _fail(self, items: list[Loaded], error: str) -> None:
        for item in items:
            self._record(self._failed_row(item.job, error))

    def _record(self, row: dict[str, Any]) -> None:
        self.summary.add(row)
        if row["status"] == "failed":
            tqdm.write(f"skipped {row['file']}: {row['error']}", file=sys.stderr)
        if self.progress is not None:
            self.progress.update(1)

    def _drain(self, limit: int) -> None:
        """Collect finished writes; wait for the oldest while more than ``limit`` are pending."""
        while self.writes and (self.writes[0].done() or len(self.writes) > limit):
            self._record(self.writes.popleft().result())


class _ArrayRaster:
    """An image already in memory, seen through the Raster interface of the windowed path."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.height, self.width, self.count = image.shape

    def read(self, row0: int, row1: int, col0: int = 0, col1: Optional[int] = None) -> np.ndarray:
        return self.image[row0:row1, col0:col1]

    def valid(self, row0: int, row1: int) -> None:
        return None

    def overview(self, max_side: int = 1024) -> np.ndarray:
        step = max(1, max(self.height, self.width) // max_side)
        return self.image[::step, ::step]

    def close(self) -> None:
        self.image = None  # type: ignore[assignment]
