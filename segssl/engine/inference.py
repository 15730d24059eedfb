"""Load a trained run and predict masks for image arrays.

The model is rebuilt from the run's resolved ``config.yaml`` and the checkpoint's ``meta``
(classes, channels, normalisation), so inference never needs the training data. Batches of
same-size images go through the model at once; the class map, the confidence (max softmax
probability) and the per-class pixel counts are computed on the model's device, so only the
small index mask (and the confidence map when asked for) travels back to the host.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, from_dict
from ..data.io import adapt_channels, read_image
from ..data.views import ViewMaker, to_unit_float
from ..errors import SegsslError
from ..models import build_model
from .checkpoint import load_checkpoint
from .predictor import Predictor


@dataclass
class LoadedRun:
    cfg: Config
    meta: dict[str, Any]
    model: nn.Module
    step: int
    checkpoint: Optional[Path] = None


def check_preprocessing(meta: dict[str, Any], source: Path) -> None:
    """Refuse runs whose adapter transformed images in ways inference does not replicate yet
    (CT windowing, per-volume z-score, band statistics, band selection, rescaling): predicting on
    raw values would silently give wrong masks."""
    steps = meta.get("preprocess") or {}
    active = {k: v for k, v in steps.items() if v not in (None, 1, 1.0, [], {})}
    if active:
        raise SegsslError(
            f"{source} was trained with adapter preprocessing {active}, which tools/infer.py does not "
            "apply yet; predicting on raw pixel values would give wrong masks"
        )


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
    cfg = from_dict(Config, state["config"])
    meta = dict(state["meta"])
    if not adapter_inputs:
        check_preprocessing(meta, path)
    if not meta.get("palette") and run_dir is not None and (Path(run_dir) / "meta.json").is_file():
        meta["palette"] = json.loads((Path(run_dir) / "meta.json").read_text()).get("palette")
    model = build_model(_offline(cfg).model, meta["in_channels"], meta["num_classes"])
    model.load_state_dict(state["model"])
    model.to(device).eval()
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
    """(class index, max softmax probability) per pixel for B x C x H x W logits."""
    confidence, mask = logits.softmax(1).max(1)
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
        stride = int(run.meta.get("stride", 32))
        self.predictor = Predictor(run.model, stride=stride, tta_flips=tta, window=window,
                                   overlap=overlap, amp_dtype=amp_dtype)
        # windows of the streamed large-raster path are whole images to the model
        self.tile_predictor = Predictor(run.model, stride=stride, tta_flips=tta, amp_dtype=amp_dtype)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # batches repeat the same sizes

    def load(self, path: Path) -> np.ndarray:
        return self.check_channels(read_image(path), path)

    def check_channels(self, image: np.ndarray, path: Path | str) -> np.ndarray:
        return adapt_channels(image, self.in_channels, path)

    def tensor(self, image: np.ndarray) -> torch.Tensor:
        """C x H x W normalised input, resized as in training when ``data.resize`` is set."""
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
        """One forward pass for a batch of same-size H x W x C images (``prepared``: their
        ``tensor()``, computed ahead by reader threads)."""
        height, width = images[0].shape[:2]
        tensors = prepared if prepared is not None else [self.tensor(image) for image in images]
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

    def probabilities(self, image: np.ndarray) -> torch.Tensor:
        """C x H x W float32 probabilities for an H x W x C image array."""
        height, width = image.shape[:2]
        logits = self.predictor.logits(self._to_device(self.tensor(image)[None]))
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits.softmax(1)[0]
