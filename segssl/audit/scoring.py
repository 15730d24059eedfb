"""Label-audit scores from out-of-fold (OOF) class probabilities: pixel, region and image level.

Pure numpy plus OpenCV connected components and morphology: no torch, no cleanlab. With ``p``
the OOF probabilities of an image (C x H x W), ``y`` the given mask, ``valid`` its scored pixels
and ``ŷ = argmax p``:

Pixel level
  suspicion ``s = p[ŷ] - p[y]`` on valid pixels (0 where the model agrees with the mask, towards 1
  where it is sure of another class); confidently wrong ``D = valid & ŷ != y & p[ŷ] >= threshold``.

Region level: every ``D`` pixel is explained at most once, in this order.
  1. ``extra`` / ``wrong_class``: a given component (8-connected pixels of one class, at least
     ``min_area``) of which ``min_share`` or more lies in ``D``. ``wrong_class`` when one other
     class alone covers ``min_share`` of it and that class is not the one surrounding the component
     (the most frequent given label in a ring ``band`` pixels wide around it); ``extra`` otherwise:
     the model sees the surroundings there, i.e. the component looks drawn where nothing is.
  2. ``boundary``: for each other given component, smallest first (the object, not the road
     around it, owns a shared contour), the ``D`` pixels in its band (within ``band`` px of its
     contour) that move the contour: outside it and predicted as its class, or inside it and
     predicted as a class whose given pixels lie within ``band`` px. They form a boundary region
     when at least ``min_area`` and at least ``band_share`` of the unexplained ``D`` pixels that
     involve the component within ``3 * band`` px: the disagreement is confined to the band.
  3. ``missing``: the ``D`` pixels left, 8-connected per predicted class, at least ``min_area``:
     the model sees an object (or a part of one) where the mask says another class and no given
     component of the predicted class overlaps it.

Region score ``r = mean(s over the region) * a / (a + a0)``, ``a`` the region's area (the whole
component for extra / wrong_class), ``a0 = half_area * H * W``: a confident disagreement over a
large region scores close to its margin, a few pixels are damped.

Image score ``S = sum_i r_i``: the expected number of mislabeled regions if each ``r_i`` were the
chance that its region is wrong, i.e. what re-checking the image should fix. A noisy-or
``1 - prod_i (1 - r_i)`` (the chance of at least one) was tried first: it saturates near 1 on
images with a few strong regions, and on simulated out-of-fold predictions with typical model
errors (missed and invented objects, soft boundaries) the sum ranked corrupted images better.
``S`` is 0 for an image without regions; ranking breaks ties by the mean pixel suspicion.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

from ..errors import ConfigError, DataError

REGION_TYPES = ("missing", "extra", "wrong_class", "boundary")


@dataclass(frozen=True)
class AuditParams:
    threshold: float = 0.5  # p[ŷ] at least this: a confident prediction
    min_share: float = 0.5  # share of a given component confidently wrong (extra / wrong_class)
    band: int = 3  # boundary band half-width, pixels
    band_share: float = 0.8  # share of a component's nearby disagreement inside its band
    min_area: int = 16  # smaller components and regions are ignored, pixels
    half_area: float = 0.001  # regions of this fraction of the image get half weight

    def check(self) -> None:
        if not 0 <= self.threshold <= 1 or not 0 < self.min_share <= 1 or not 0 < self.band_share <= 1:
            raise ConfigError("audit threshold must be in [0, 1], min_share and band_share in (0, 1]")
        if self.band < 1 or self.min_area < 1 or self.half_area < 0:
            raise ConfigError("audit band and min_area must be >= 1, half_area >= 0")


@dataclass
class Region:
    type: str  # one of REGION_TYPES
    given_class: int  # the component's class (missing: the most frequent given class under it)
    pred_class: int  # the most frequent predicted class on its flagged pixels
    area: int  # pixels of the region (the whole component for extra / wrong_class)
    flagged: int  # confidently wrong pixels in it: what a suggestion replaces
    score: float
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    flag: np.ndarray = field(repr=False)  # H x W bool, the flagged pixels

    def summary(self) -> dict[str, Any]:
        return {"type": self.type, "given_class": self.given_class, "pred_class": self.pred_class,
                "area": self.area, "flagged": self.flagged, "score": round(self.score, 6), "bbox": list(self.bbox)}


@dataclass
class ImageAudit:
    score: float
    suspicion_mean: float  # over valid pixels; the tie-break of the ranking
    regions: list[Region]  # highest score first
    suspicion: np.ndarray = field(repr=False)  # H x W float32
    pred: np.ndarray = field(repr=False)  # H x W int64, arg-max class
    flag: np.ndarray = field(repr=False)  # H x W bool, union of the regions' flagged pixels


def check_inputs(probs: np.ndarray, given: np.ndarray, valid: np.ndarray, name: str = "image") -> None:
    if probs.ndim != 3 or given.shape != probs.shape[1:] or valid.shape != given.shape:
        raise DataError(f"{name}: probabilities {probs.shape} do not fit the mask {given.shape} / valid {valid.shape}")


def pixel_scores(probs: np.ndarray, given: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(arg-max class, its probability, suspicion ``p[ŷ] - p[y]`` (0 off the valid pixels))."""
    probs = probs.astype(np.float32, copy=False)
    pred = probs.argmax(0)
    p_pred = np.take_along_axis(probs, pred[None], 0)[0]
    index = np.clip(given, 0, probs.shape[0] - 1)[None]
    p_given = np.take_along_axis(probs, index, 0)[0]
    suspicion = np.where(valid, np.clip(p_pred - p_given, 0.0, 1.0), 0.0).astype(np.float32)
    return pred, p_pred, suspicion


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), _disk(radius)).astype(bool)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), _disk(radius)).astype(bool)


def _mode(values: np.ndarray, default: int = -1) -> int:
    return int(np.bincount(values.ravel()).argmax()) if values.size else default


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, 0, 0)


@dataclass
class _Component:
    cls: int
    labels: np.ndarray  # the class's label image
    index: int
    area: int
    window: tuple[slice, slice]  # bounding box grown by the widest neighbourhood used

    def local(self) -> np.ndarray:
        return self.labels[self.window] == self.index


def _components(given: np.ndarray, valid: np.ndarray, min_area: int, margin: int) -> list[_Component]:
    height, width = given.shape
    out = []
    for cls in np.unique(given[valid]):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(((given == cls) & valid).astype(np.uint8), connectivity=8)
        for index in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[index])
            if area < min_area:
                continue
            window = (slice(max(y - margin, 0), min(y + h + margin, height)), slice(max(x - margin, 0), min(x + w + margin, width)))
            out.append(_Component(int(cls), labels, index, area, window))
    return out


def audit_image(probs: np.ndarray, given: np.ndarray, valid: np.ndarray, params: AuditParams = AuditParams()) -> ImageAudit:
    """Pixel suspicion, typed regions and the image score of one image (see the module docstring)."""
    check_inputs(probs, given, valid)
    given = given.astype(np.int64, copy=False)
    valid = valid.astype(bool, copy=False)
    pred, p_pred, suspicion = pixel_scores(probs, given, valid)
    wrong = valid & (pred != given) & (p_pred >= params.threshold)  # D
    height, width = given.shape
    a0 = params.half_area * height * width
    claimed = np.zeros_like(wrong)
    regions: list[Region] = []

    def add(kind: str, extent: np.ndarray, flag: np.ndarray, given_class: int, window: tuple[slice, slice]) -> None:
        area = int(extent.sum())
        full = np.zeros_like(wrong)
        full[window] = flag
        score = float(suspicion[window][extent].mean()) * area / (area + a0)
        regions.append(Region(kind, given_class, _mode(pred[window][flag]), area, int(flag.sum()), score, _bbox(full), full))
        claimed[window] |= extent

    components = _components(given, valid, params.min_area, 3 * params.band + 1)
    rest = []
    for comp in components:  # 1. whole components the model does not confirm
        window, inside = comp.window, comp.local()
        bad = inside & wrong[window]
        if bad.sum() < params.min_share * comp.area:
            rest.append(comp)
            continue
        counts = np.bincount(pred[window][bad], minlength=probs.shape[0])
        other = int(counts.argmax())
        ring = _dilate(inside, params.band) & ~inside & valid[window]
        surround = _mode(given[window][ring])
        kind = "wrong_class" if counts[other] >= params.min_share * comp.area and other != surround else "extra"
        add(kind, inside, bad, comp.cls, window)

    near = {cls: _dilate((given == cls) & valid, params.band) for cls in np.unique(given[valid])}
    near_pred = np.zeros_like(wrong)  # pixel within `band` of a given pixel of its predicted class
    for cls, grown in near.items():
        near_pred |= grown & (pred == cls)
    for comp in sorted(rest, key=lambda c: c.area):  # 2. contours the model moves
        window, inside = comp.window, comp.local()
        free = wrong[window] & ~claimed[window]
        pred_here = pred[window]
        band = _dilate(inside, params.band) & ~_erode(inside, params.band)
        moves = (inside & near_pred[window]) | (~inside & (pred_here == comp.cls))
        boundary = free & band & moves
        involved = free & _dilate(inside, 3 * params.band) & (inside | (pred_here == comp.cls))
        if boundary.sum() >= params.min_area and boundary.sum() >= params.band_share * involved.sum():
            add("boundary", boundary, boundary, comp.cls, window)

    left = wrong & ~claimed  # 3. objects (or parts) the mask lacks
    everything = (slice(0, height), slice(0, width))
    for cls in np.unique(pred[left]):
        count, labels, stats, _ = cv2.connectedComponentsWithStats((left & (pred == cls)).astype(np.uint8), connectivity=8)
        for index in range(1, count):
            if stats[index, cv2.CC_STAT_AREA] >= params.min_area:
                piece = labels == index
                add("missing", piece, piece, _mode(given[piece]), everything)

    regions.sort(key=lambda r: -r.score)
    flag = np.zeros_like(wrong)
    for region in regions:
        flag |= region.flag
    return ImageAudit(image_score([r.score for r in regions]), float(suspicion[valid].mean()) if valid.any() else 0.0,
                      regions, suspicion, pred, flag)


def image_score(region_scores: Sequence[float]) -> float:
    """Sum of the region scores: the expected number of mislabeled regions."""
    return float(sum(region_scores))


def ranking(scores: Sequence[float], tie_break: Sequence[float], ids: Sequence[str]) -> list[int]:
    """Indices, most suspicious first: by score, then tie-break value, then id (stable output)."""
    return sorted(range(len(ids)), key=lambda i: (-scores[i], -tie_break[i], ids[i]))


def suggest_mask(given: np.ndarray, audit: ImageAudit, min_score: float = 0.0) -> tuple[np.ndarray, int]:
    """The given mask with the flagged pixels of regions scoring ``min_score`` or more replaced by
    the prediction; every other pixel is left as it was. Returns (mask, changed pixel count)."""
    out = given.copy()
    changed = np.zeros(given.shape, bool)
    for region in audit.regions:
        if region.score >= min_score:
            changed |= region.flag
    out[changed] = audit.pred[changed]
    return out, int(changed.sum())
