"""Load a trained run and predict masks for image arrays.

The model is rebuilt from the run's resolved ``config.yaml`` and the checkpoint's ``meta``
(classes, channels, normalisation, the adapter's preprocessing), so inference never needs the
training data. Inputs go through the preprocessing the run's adapter applied in training, with
the adapter's own code (``segssl.data.preprocess``): NIfTI reorientation and intensity, raster
band selection, scale and band statistics.

Batches of same-size images go through the model at once; the class map, the confidence (max
softmax probability) and the per-class pixel counts are computed on the model's device, so only
the small index mask (and the confidence map when asked for) travels back to the host.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, from_dict, saved_run_config
from ..data.io import adapt_channels, read_image
from ..data.preprocess import RasterPreprocess, VolumePreprocess, from_meta as preprocess_from_meta, select_bands
from ..data.views import ViewMaker, to_unit_float
from ..errors import DataError, SegsslError
from ..models import build_model
from .checkpoint import load_checkpoint
from .predictor import Predictor
from .sources import volume_slices


@dataclass
class LoadedRun:
    cfg: Config
    meta: dict[str, Any]
    model: nn.Module
    step: int
    checkpoint: Optional[Path] = None


@dataclass
class VolumeInput:
    """A NIfTI volume ready for the model, slice by slice."""

    slices: list[np.ndarray]  # model inputs along the slice axis, in the model's orientation
    nifti: Any  # the input's nibabel image: the outputs take its affine and header
    to_input: Callable[[np.ndarray], np.ndarray]  # a volume stacked from the slices -> the input's voxel grid


def load_run(run_dir: str | Path | None, checkpoint: str = "best", device: str | torch.device = "cpu",
             adapter_inputs: bool = False) -> LoadedRun:
    """``checkpoint`` is ``best``, ``last`` or a path to a ``.pt`` file. ``adapter_inputs``: images
    will come from the run's own adapter (already preprocessed), so preprocessing is no reason to refuse."""
    if checkpoint in ("best", "last"):
        if run_dir is None:
            raise SegsslError("give --run RUN_DIR or --checkpoint PATH")
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise SegsslError(f"run directory not found: {run_dir}")
        path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    else:
        path = Path(checkpoint)
    state = load_checkpoint(path, "cpu")
    for key in ("config", "meta", "model"):
        if key not in state:
            raise SegsslError(f"{path} is not a segssl checkpoint (no '{key}')")
    cfg = from_dict(Config, saved_run_config(state["config"]))
    meta = dict(state["meta"])
    if not adapter_inputs:  # steps no inference code reproduces: refused before anything is read
        try:
            preprocess_from_meta(meta, cfg.data.params)
        except SegsslError as exc:
            raise SegsslError(f"{path}: {exc}") from None
    if not meta.get("palette") and run_dir is not None and (Path(run_dir) / "meta.json").is_file():
        meta["palette"] = json.loads((Path(run_dir) / "meta.json").read_text()).get("palette")
    model = build_model(_offline(cfg).model, meta["in_channels"], meta["num_classes"])
    model.load_state_dict(state["model"])
    model.to(device).eval()
    if cfg.train.channels_last:  # the run's layout (a forward of 8x3x128x160 on 2 CPU threads: 0.17 s -> 0.13 s)
        model.to(memory_format=torch.channels_last)
    return LoadedRun(cfg=cfg, meta=meta, model=model, step=int(state.get("step", 0)), checkpoint=path)


def _offline(cfg: Config) -> Config:
    """The trained weights replace the encoder's initial weights: never download them again."""
    cfg.model.encoder_weights = None
    return cfg


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SegsslError(f"--device {name}: CUDA is not available on this machine")
    return device


def resolve_amp(name: str, device: torch.device) -> Optional[torch.dtype]:
    """auto: bf16 where the GPU supports it, else fp16; always off on CPU (no speed-up there)."""
    choices = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name != "auto" and name not in choices:
        raise SegsslError(f"--amp must be auto, bf16, fp16 or off, got {name!r}")
    if device.type != "cuda":
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return choices[name]


def index_mask_dtype(num_classes: int) -> type:
    """uint8 up to 255 classes: the largest value stays free to mark raster nodata."""
    return np.uint8 if num_classes < 256 else np.uint16


@dataclass
class ClassStats:
    """Per-class pixel counts and summed confidence over the pixels that carry data."""

    num_classes: int
    counts: np.ndarray = field(init=False)
    confidence_sum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = np.zeros(self.num_classes, np.int64)

    def add(self, mask: torch.Tensor | np.ndarray, confidence: torch.Tensor | np.ndarray,
            valid: Optional[torch.Tensor | np.ndarray] = None) -> None:
        mask_t, conf_t = torch.as_tensor(mask), torch.as_tensor(confidence)
        if valid is not None:
            keep = torch.as_tensor(valid).to(mask_t.device, torch.bool)
            mask_t, conf_t = mask_t[keep], conf_t[keep]
        counts = torch.bincount(mask_t.reshape(-1).long(), minlength=self.num_classes)
        self.counts += counts.cpu().numpy()[: self.num_classes]
        self.confidence_sum += float(conf_t.double().sum())

    def merge(self, other: "ClassStats") -> None:
        self.counts += other.counts
        self.confidence_sum += other.confidence_sum

    @property
    def pixels(self) -> int:
        return int(self.counts.sum())

    def fractions(self) -> list[float]:
        total = max(self.pixels, 1)
        return [float(c) / total for c in self.counts]

    def mean_confidence(self) -> Optional[float]:
        return self.confidence_sum / self.pixels if self.pixels else None


@dataclass
class Prediction:
    mask: np.ndarray  # H x W class indices (uint8, or uint16 beyond 256 classes)
    confidence: Optional[np.ndarray]  # H x W float32 max softmax probability, when asked for
    stats: ClassStats


def decide(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class index, max softmax probability) per pixel for B x C x H x W logits: the same as
    ``logits.softmax(1).max(1)`` (ties go to the lowest index), without its two slow parts on a
    CPU: ``max`` with indices over the channel axis, and softmax's division of every channel.
    The index mask is uint8 below 256 classes, int32 beyond."""
    num = logits.shape[1]
    top = logits.amax(1, keepdim=True)
    dtype = torch.uint8 if num < 256 else torch.int32
    # ranks C..1: of the channels equal to the maximum, the lowest index ranks highest
    rank = torch.arange(num, 0, -1, dtype=dtype, device=logits.device).view(1, num, 1, 1)
    mask = (num - ((logits == top).to(dtype) * rank).amax(1)).clamp_(max=num - 1)  # NaN logits: last class
    # max softmax probability = exp(l_max) / sum(exp(l)) = 1 / sum(exp(l - l_max))
    confidence = (logits - top).exp_().sum(1).reciprocal_()
    return mask, confidence


class ImagePredictor:
    """Turns H x W x C image arrays into class masks at each array's own resolution."""

    def __init__(self, run: LoadedRun, device: torch.device, tta: bool = False,
                 window: Optional[tuple[int, int]] = None, overlap: float = 0.25,
                 amp_dtype: Optional[torch.dtype] = None) -> None:
        self.run = run
        self.device = torch.device(device)
        self.num_classes = int(run.meta["num_classes"])
        self.in_channels = int(run.meta["in_channels"])
        self.mask_dtype = index_mask_dtype(self.num_classes)
        self.views = ViewMaker(run.cfg.data, self.in_channels, train=False)
        prep = preprocess_from_meta(run.meta, run.cfg.data.params)
        self.volume_prep = prep if isinstance(prep, VolumePreprocess) else None
        self.raster_prep = prep if isinstance(prep, RasterPreprocess) and prep.active else None
        self.bands = self.raster_prep.bands if self.raster_prep is not None else None  # read from files
        self.slice_axis = self.volume_prep.axis if self.volume_prep is not None else 2  # training's
        stride = int(run.meta.get("stride", 32))
        self.predictor = Predictor(run.model, stride=stride, tta_flips=tta, window=window,
                                   overlap=overlap, amp_dtype=amp_dtype)
        # windows of the streamed large-raster path are whole images to the model
        self.tile_predictor = Predictor(run.model, stride=stride, tta_flips=tta, amp_dtype=amp_dtype)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # batches repeat the same sizes

    def load(self, path: Path) -> np.ndarray:
        """An image file as the model input array (see ``prepare``)."""
        return self.prepare(self.select(read_image(path), path), path)

    def check_channels(self, image: np.ndarray, path: Path | str) -> np.ndarray:
        return adapt_channels(image, self.in_channels, path)

    def select(self, image: np.ndarray, path: Path | str) -> np.ndarray:
        """The bands the run's adapter read, of an image already in memory (GeoTIFFs are read
        with ``Raster(path, self.bands)`` instead)."""
        return select_bands(image, self.bands, path)

    def prepare(self, image: np.ndarray, path: Path | str) -> np.ndarray:
        """A 2-D image as read (the run's bands, native dtype) -> the array the run's adapter gave
        the views in training: rescaled, channel-matched, band-standardised. Pixel-wise except
        for ``scale``, so a window of a scene prepared alone equals that window of the whole."""
        if self.volume_prep is not None:
            raise DataError(f"{path}: the run was trained on NIfTI volumes with {self.volume_prep.option()} "
                            "(per-volume intensity and orientation), which a 2-D image cannot reproduce; "
                            "give .nii/.nii.gz volumes")
        if self.raster_prep is not None:
            return self.raster_prep.apply(image, self.in_channels, path)
        return self.check_channels(image, path)

    def prepare_volume(self, data: np.ndarray, nifti: Any, axis: int, path: Path | str) -> VolumeInput:
        """A NIfTI volume as read -> model inputs along ``axis``, as the run's adapter sliced it."""
        prep = self.volume_prep
        if prep is None and self.raster_prep is not None:
            raise DataError(f"{path}: the run's adapter read 2-D rasters with {self.raster_prep.option()}, "
                            "which NIfTI volumes cannot reproduce; give the kind of files it was trained on")
        if prep is None:  # no recorded steps: the file's own voxel grid, values scaled as images
            data = data.astype(np.float32) if data.dtype.kind == "f" else data
            return VolumeInput([self.check_channels(s, path) for s in volume_slices(data, axis)], nifti, lambda a: a)
        affine = nifti.affine
        volume = prep.to_model(data, affine)
        del data
        stats = prep.stats(volume)
        slices = [prep.normalise(s, stats) for s in volume_slices(volume, axis)]
        return VolumeInput([self.check_channels(s, path) for s in slices], nifti, lambda a: prep.to_input(a, affine))

    def check_windowed(self, path: Path | str, height: int, width: int) -> None:
        """The windowed path reads a scene in pieces: refuse steps that need the whole scene."""
        if self.raster_prep is not None and self.raster_prep.scale != 1.0:
            raise DataError(f"{path} ({height} x {width}) is over --max-pixels and would be predicted window by "
                            f"window, but the run's data.params.scale={self.raster_prep.scale} resizes whole "
                            f"scenes, which windows cannot reproduce; give --max-pixels {height * width} or more")

    def tensor(self, image: np.ndarray) -> torch.Tensor:
        """C x H x W normalised input of a prepared array, resized as in training when
        ``data.resize`` is set."""
        if self.run.cfg.data.resize is None:  # no geometry: skip the dummy mask/valid maps of a sample
            return self.tile_tensor(image)
        return self.views({"id": "", "image": image})["image"]

    def tile_tensor(self, tile: np.ndarray) -> torch.Tensor:
        """A window of a large raster: normalised at native resolution (never resized)."""
        return self.views.normalise(to_unit_float(tile))

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def tile_logits(self, tiles: Sequence[np.ndarray]) -> torch.Tensor:
        """B x C x h x w float32 logits (on the device) for same-size raw windows."""
        batch = self._to_device(torch.stack([self.tile_tensor(t) for t in tiles]))
        return self.tile_predictor.logits(batch)

    def predict(self, images: Sequence[np.ndarray], confidence: bool = False,
                valid: Optional[Sequence[Optional[np.ndarray]]] = None,
                prepared: Optional[Sequence[torch.Tensor]] = None) -> list[Prediction]:
        """One forward pass for a batch of same-size H x W x C images as read; masks come out
        at their size (``prepared``: their ``tensor(prepare())``, computed ahead by reader threads)."""
        height, width = images[0].shape[:2]
        tensors = prepared if prepared is not None else [self.tensor(self.prepare(i, "<array>")) for i in images]
        batch = self._to_device(torch.stack(list(tensors)))
        logits = self.predictor.logits(batch)
        if logits.shape[-2:] != (height, width):  # trained at data.resize: back to the file's size
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        masks, confs = decide(logits)
        stats = [ClassStats(self.num_classes) for _ in images]
        for i, item in enumerate(stats):  # on the device: no full-size copies to the host
            item.add(masks[i], confs[i], None if valid is None else valid[i])
        small = masks.to(torch.uint8 if self.mask_dtype is np.uint8 else torch.int32).cpu().numpy()
        host_masks = small if self.mask_dtype is np.uint8 else small.astype(self.mask_dtype)
        host_confs = confs.float().cpu().numpy() if confidence else None
        return [Prediction(host_masks[i], None if host_confs is None else host_confs[i], stats[i])
                for i in range(len(images))]

    def probabilities(self, image: np.ndarray, prepared: bool = False) -> torch.Tensor:
        """C x H x W float32 probabilities for an H x W x C image array as read (``prepared``: an
        array the run's own adapter produced, already preprocessed: not transformed twice)."""
        height, width = image.shape[:2]
        ready = self.check_channels(image, "<array>") if prepared else self.prepare(image, "<array>")
        logits = self.predictor.logits(self._to_device(self.tensor(ready)[None]))
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits.softmax(1)[0]
