"""Load a trained run and predict masks for image files.

The model is rebuilt from the run's resolved ``config.yaml`` and the checkpoint's ``meta``
(classes, channels, normalisation), so inference never needs the training data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, from_dict
from ..data.io import adapt_channels, read_image
from ..data.views import ViewMaker
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


def load_run(run_dir: str | Path | None, checkpoint: str = "best", device: str | torch.device = "cpu") -> LoadedRun:
    """``checkpoint`` is ``best``, ``last`` or a path to a ``.pt`` file."""
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
    meta = state["meta"]
    model = build_model(_offline(cfg).model, meta["in_channels"], meta["num_classes"])
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return LoadedRun(cfg=cfg, meta=meta, model=model, step=int(state.get("step", 0)))


def _offline(cfg: Config) -> Config:
    """The trained weights replace the encoder's initial weights: never download them again."""
    cfg.model.encoder_weights = None
    return cfg


class ImagePredictor:
    """Reads one image file and returns its class-probability map at the file's resolution."""

    def __init__(self, run: LoadedRun, device: torch.device, tta: bool = False,
                 window: Optional[tuple[int, int]] = None, overlap: float = 0.25,
                 amp_dtype: Optional[torch.dtype] = None) -> None:
        self.run = run
        self.device = device
        self.views = ViewMaker(run.cfg.data, run.meta["in_channels"], train=False)
        self.predictor = Predictor(run.model, stride=int(run.meta.get("stride", 32)), tta_flips=tta,
                                   window=window, overlap=overlap, amp_dtype=amp_dtype)

    def load(self, path: Path) -> np.ndarray:
        return adapt_channels(read_image(path), self.run.meta["in_channels"], path)

    def probabilities(self, image: np.ndarray) -> torch.Tensor:
        """C x H x W float32 probabilities for an H x W x C image array."""
        height, width = image.shape[:2]
        tensor = self.views({"id": "", "image": image})["image"][None].to(self.device)
        logits = self.predictor.logits(tensor)
        if logits.shape[-2:] != (height, width):  # trained at data.resize: back to the file's size
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits.softmax(1)[0]


def index_mask_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 256 else np.uint16
