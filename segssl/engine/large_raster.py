"""Window-by-window prediction of rasters too large for one forward pass or one probability map.

The scene is read one strip of window rows at a time (rasterio windowed reads, or slices of an
in-memory array), every window is predicted as a whole image (padded to the stride, flip TTA
included) and its logits are added into an accumulator weighted by MONAI's Gaussian importance
map, on the same window grid as MONAI's ``sliding_window_inference``. Rows that no later
window can touch are finished (class index and confidence) and handed to ``emit``, which
writes them block-wise; the accumulator is then shifted up. Memory is therefore
``classes x window height x scene width`` floats, never ``classes x scene height x width``.

The accumulator is kept in numpy on the host on purpose: a GPU would hold it just as well,
but host arrays show up in ``tracemalloc``, which is how the tests bound the peak.
"""
from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence

import numpy as np
import torch

FINISH_ROWS = 32  # rows finished at a time: bounds the softmax temporaries


class TilePredictor(Protocol):
    num_classes: int
    device: torch.device

    def tile_logits(self, tiles: Sequence[np.ndarray]) -> torch.Tensor: ...


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Window offsets along one axis: MONAI's grid (interval ``window * (1 - overlap)``, last
    window flush with the end)."""
    if window >= size:
        return [0]
    interval = max(1, int(window * (1 - overlap)))
    starts, pos = [], 0
    while True:
        starts.append(min(pos, size - window))
        if pos + window >= size:
            return starts
        pos += interval


def gaussian_weights(window: tuple[int, int], device: torch.device) -> torch.Tensor:
    from monai.data.utils import compute_importance_map

    return compute_importance_map(window, mode="gaussian", sigma_scale=0.125, device=device)


def finish(logit_sum: np.ndarray, weight_sum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class index, max softmax probability float32) of blended logits C x n x W."""
    logits = logit_sum / weight_sum
    mask = logits.argmax(0).astype(np.uint8 if len(logits) < 256 else np.uint16)
    logits -= logits.max(0, keepdims=True)
    np.exp(logits, out=logits)
    # max softmax probability = exp(l_max) / sum(exp(l)) = 1 / sum(exp(l - l_max))
    confidence = np.reciprocal(logits.sum(0)).astype(np.float32, copy=False)
    return mask, confidence


def predict_rows(
    predictor: TilePredictor,
    read: Callable[[int, int], np.ndarray],
    height: int,
    width: int,
    window: tuple[int, int],
    overlap: float,
    emit: Callable[[int, np.ndarray, np.ndarray], None],
    batch_size: int = 4,
    progress: Optional[Callable[[int], None]] = None,
) -> None:
    """Predict an ``height x width`` scene, calling ``emit(row0, mask, confidence)`` for
    consecutive row blocks from top to bottom.

    ``read(row0, row1)`` returns rows ``row0:row1`` of the scene, full width, H x W x C.
    """
    wh, ww = min(window[0], height), min(window[1], width)
    ys, xs = window_starts(height, wh, overlap), window_starts(width, ww, overlap)
    weight = gaussian_weights((wh, ww), predictor.device)
    weight_host = weight.cpu().numpy()
    logit_sum = np.zeros((predictor.num_classes, wh, width), np.float32)
    weight_sum = np.zeros((wh, width), np.float32)
    top = 0  # scene row held in row 0 of the accumulators

    def flush(rows: int) -> None:
        for r in range(0, rows, FINISH_ROWS):
            n = min(FINISH_ROWS, rows - r)
            mask, confidence = finish(logit_sum[:, r:r + n], weight_sum[r:r + n])
            emit(top + r, mask, confidence)
        keep = wh - rows  # rows still open for later windows move to the top
        for c in range(logit_sum.shape[0]):  # per class: a forward copy, no full-size temporary
            logit_sum[c, :keep] = logit_sum[c, rows:]
        logit_sum[:, keep:] = 0
        weight_sum[:keep] = weight_sum[rows:]
        weight_sum[keep:] = 0

    for y in ys:
        if y > top:  # rows above y are final: no window at or below y reaches them
            flush(y - top)
            top = y
        strip = read(y, y + wh)
        for i in range(0, len(xs), batch_size):
            chunk = xs[i:i + batch_size]
            logits = predictor.tile_logits([strip[:, x:x + ww] for x in chunk]) * weight
            logits_host = logits.float().cpu().numpy()
            for x, tile in zip(chunk, logits_host):
                logit_sum[:, :, x:x + ww] += tile
                weight_sum[:, x:x + ww] += weight_host
            if progress is not None:
                progress(len(chunk))
        del strip
    flush(height - top)
