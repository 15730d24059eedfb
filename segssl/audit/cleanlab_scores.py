"""cleanlab's segmentation scores on the same out-of-fold probabilities (optional extra).

* ``softmin_scores``: ``cleanlab.segmentation.rank.get_label_quality_scores(method="softmin")``,
  one score per image, *lower* = more likely mislabeled. Softmin is computed per image, so
  images are passed one at a time (any size, bounded memory).
* ``pixel_issues``: ``cleanlab.segmentation.filter.find_label_issues``: confident learning with
  per-class thresholds estimated over the whole set, so all same-size images go in together,
  as a float32 memory map in the work folder (removed afterwards) instead of one large array.

cleanlab knows no "don't care" pixels: there the label is set to the model's arg-max, which
cleanlab never flags and which barely moves a softmin score.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import SegsslError

INSTALL = "pip install 'segssl[audit]'"


def require_cleanlab() -> None:
    try:
        import cleanlab.segmentation.filter  # noqa: F401
        import cleanlab.segmentation.rank  # noqa: F401
    except ImportError:
        raise SegsslError(f"cleanlab is not installed; the cleanlab scores are an optional extra: {INSTALL} "
                          "(or pip install cleanlab)") from None


def cleanlab_labels(probs: np.ndarray, given: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid, given, probs.argmax(0)).astype(np.int64)


def softmin_scores(load: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]], count: int,
                   temperature: float = 0.1) -> list[float]:
    """``load(i)`` gives (probs C x H x W, given mask, valid) of image i."""
    require_cleanlab()
    from cleanlab.segmentation.rank import get_label_quality_scores

    scores = []
    for i in range(count):
        probs, given, valid = load(i)
        image_scores, _ = get_label_quality_scores(cleanlab_labels(probs, given, valid)[None], probs[None].astype(np.float32),
                                                   method="softmin", verbose=False, temperature=temperature)
        scores.append(float(image_scores[0]))
    return scores


def pixel_issues(load: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]], shapes: Sequence[tuple[int, ...]],
                 scratch: Path) -> list[np.ndarray]:
    """Per image an H x W bool map of cleanlab's label issues; ``shapes[i]`` is image i's C x H x W."""
    require_cleanlab()
    from cleanlab.segmentation.filter import find_label_issues

    out: list[np.ndarray] = [np.zeros(0, bool)] * len(shapes)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    scratch.mkdir(parents=True, exist_ok=True)
    for shape, members in groups.items():
        path = scratch / f".cleanlab-probs-{'x'.join(map(str, shape))}.npy"
        stack = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(members), *shape))
        try:
            labels = np.zeros((len(members), *shape[1:]), np.int64)
            for row, i in enumerate(members):
                probs, given, valid = load(i)
                stack[row] = probs
                labels[row] = cleanlab_labels(probs, given, valid)
            stack.flush()
            issues = find_label_issues(labels, stack, n_jobs=1, verbose=False)
        finally:
            del stack
            path.unlink(missing_ok=True)
        for row, i in enumerate(members):
            out[i] = np.asarray(issues[row], bool)
    return out
