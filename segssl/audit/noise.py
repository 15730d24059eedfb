"""Synthetic label noise with a known answer, and how well a ranking or pixel map recovers it.

Corruptions act on *objects*: 8-connected components of one class whose area lies between
``min_area`` and ``max_frac`` of the image (road and sky are too large to be objects). Each keeps
the annotation's "don't care" pixels untouched:

* ``erase``: the object takes its surrounding class (the most frequent label in a 3 px ring),
  as when an annotator skipped it -> the audit should call it ``missing``;
* ``relabel``: the object takes another class, neither its own nor the surrounding one
  -> ``wrong_class``;
* ``dilate`` / ``erode``: its contour moves out (over its neighbours) or in (the rim takes the
  surrounding class) by ``radius`` px -> ``boundary``.

Objects are drawn so that no two corruptions of one image touch. Pure numpy + OpenCV, seeded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

EXPECTED = {"erase": "missing", "relabel": "wrong_class", "dilate": "boundary", "erode": "boundary"}
KINDS = ("erase", "relabel", "boundary")  # boundary: dilate or erode, half each


@dataclass
class Corruption:
    id: str  # image id
    index: int  # 1-based: the value of its pixels in the image's corruption map
    kind: str  # erase | relabel | dilate | erode
    expected: str  # the audit's region type that should find it
    cls_from: int
    cls_to: int  # relabel / erase: the new class; dilate / erode: the surrounding class
    pixels: int  # pixels whose label changed
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of the changed pixels

    def to_dict(self) -> dict:
        return asdict(self)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def objects(mask: np.ndarray, valid: np.ndarray, min_area: int, max_frac: float) -> list[tuple[int, np.ndarray]]:
    """(class, H x W bool) of every object-sized component."""
    limit = max_frac * mask.size
    out = []
    for cls in np.unique(mask[valid]):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(((mask == cls) & valid).astype(np.uint8), connectivity=8)
        for index in range(1, count):
            if min_area <= stats[index, cv2.CC_STAT_AREA] <= limit:
                out.append((int(cls), labels == index))
    return out


def surrounding(mask: np.ndarray, valid: np.ndarray, region: np.ndarray, width: int = 3) -> int:
    ring = cv2.dilate(region.astype(np.uint8), _disk(width)).astype(bool) & ~region & valid
    return int(np.bincount(mask[ring]).argmax()) if ring.any() else -1


def corrupt(mask: np.ndarray, valid: np.ndarray, kinds: Sequence[str], num_classes: int, rng: np.random.Generator,
            item_id: str = "", min_area: int = 200, max_frac: float = 0.05, radius: int = 3,
            relabel_classes: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray, list[Corruption]]:
    """Apply ``kinds`` (from KINDS) to distinct objects of ``mask``.

    Returns (corrupted mask, corruption map: 0 = unchanged, i = pixels changed by corruption i,
    corruptions). A kind with no object left to act on is skipped.
    """
    out = mask.copy()
    changed_map = np.zeros(mask.shape, np.uint8)
    candidates = objects(mask, valid, min_area, max_frac)
    order = list(rng.permutation(len(candidates)))
    done: list[Corruption] = []
    busy = np.zeros(mask.shape, bool)  # pixels near earlier corruptions
    targets = list(relabel_classes) if relabel_classes is not None else list(range(num_classes))
    for kind in kinds:
        while order:
            cls, obj = candidates[order.pop()]
            grown = cv2.dilate(obj.astype(np.uint8), _disk(radius + 3)).astype(bool)
            if (grown & busy).any():
                continue
            around = surrounding(mask, valid, obj)
            if around < 0:
                continue
            if kind == "erase":
                name, change, to = "erase", obj, around
            elif kind == "relabel":
                choices = [c for c in targets if c not in (cls, around)]
                if not choices:
                    continue
                name, change, to = "relabel", obj, int(rng.choice(choices))
            elif rng.random() < 0.5:
                name, to = "dilate", cls
                change = cv2.dilate(obj.astype(np.uint8), _disk(radius)).astype(bool) & ~obj
            else:
                name, to = "erode", around
                change = obj & ~cv2.erode(obj.astype(np.uint8), _disk(radius)).astype(bool)
            change = change & valid & (out != to)
            if not change.any():
                continue
            out[change] = to
            index = len(done) + 1
            changed_map[change] = index
            ys, xs = np.nonzero(change)
            done.append(Corruption(item_id, index, name, EXPECTED[name], cls, to, int(change.sum()),
                                   (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)))
            busy |= grown
            break
    return out, changed_map, done


# ------------------------------------------------------------------ detection metrics


def precision_recall_at_k(order: Sequence[str], positives: set[str], k: Optional[int] = None) -> tuple[float, float]:
    """Of the first ``k`` ranked ids (default: as many as there are positives)."""
    k = len(positives) if k is None else k
    if not positives or k == 0:
        return 0.0, 0.0
    hits = sum(1 for i in order[:k] if i in positives)
    return hits / k, hits / len(positives)


def average_precision(order: Sequence[str], positives: set[str]) -> float:
    """Area under the precision-recall curve of a ranking (mean precision at each positive)."""
    if not positives:
        return 0.0
    hits, total = 0, 0.0
    for rank, item in enumerate(order, 1):
        if item in positives:
            hits += 1
            total += hits / rank
    return total / len(positives)


@dataclass
class PixelCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, flagged: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> None:
        self.tp += int((flagged & truth & valid).sum())
        self.fp += int((flagged & ~truth & valid).sum())
        self.fn += int((~flagged & truth & valid).sum())

    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0


def coverage(changed_map: np.ndarray, index: int, flagged: np.ndarray) -> float:
    """Share of corruption ``index``'s pixels that ``flagged`` marks."""
    pixels = changed_map == index
    return float((pixels & flagged).sum() / max(pixels.sum(), 1))
