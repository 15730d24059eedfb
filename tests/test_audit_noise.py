"""Synthetic label noise (segssl.audit.noise) and the detection metrics of the benchmark; on
ideal predictions the audit finds each injected corruption with its expected region type."""
from __future__ import annotations

import numpy as np
import pytest

from segssl.audit import noise
from segssl.audit.scoring import AuditParams, audit_image

from .test_audit_scoring import probs_of


def scene() -> tuple[np.ndarray, np.ndarray]:
    """64 x 64: background 0, four 10 x 10 objects (classes 1, 2, 1, 2), sky-like class 3 strip
    too large to be an object, and a "don't care" corner."""
    mask = np.zeros((64, 64), np.int64)
    mask[:8] = 3
    for i, (y, x) in enumerate([(14, 6), (14, 40), (44, 6), (44, 40)]):
        mask[y:y + 10, x:x + 10] = 1 + i % 2
    valid = np.ones(mask.shape, bool)
    valid[56:, 56:] = False
    return mask, valid


def test_objects_skip_stuff_and_tiny_components() -> None:
    mask, valid = scene()
    found = noise.objects(mask, valid, min_area=50, max_frac=0.05)
    assert sorted(int(obj.sum()) for _, obj in found) == [100] * 4  # the 512-px strip is "stuff"


@pytest.mark.parametrize("kind, expected_kinds", [("erase", {"erase"}), ("relabel", {"relabel"}), ("boundary", {"dilate", "erode"})])
def test_each_kind_changes_one_object_as_recorded(kind: str, expected_kinds: set[str]) -> None:
    mask, valid = scene()
    out, changed, (c,) = noise.corrupt(mask, valid, [kind], 4, np.random.default_rng(3), "img", min_area=50, radius=2)
    assert c.kind in expected_kinds and c.expected == noise.EXPECTED[c.kind] and c.index == 1
    diff = out != mask
    np.testing.assert_array_equal(diff, changed == 1)
    assert c.pixels == int(diff.sum()) and (out[~valid] == mask[~valid]).all()
    ys, xs = np.nonzero(diff)
    assert c.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    if c.kind == "erase":
        assert c.pixels == 100 and (out[diff] == 0).all() and c.cls_to == 0  # the surrounding class
    elif c.kind == "relabel":
        assert c.pixels == 100 and c.cls_to not in (c.cls_from, 0) and (out[diff] == c.cls_to).all()
    elif c.kind == "dilate":
        assert (out[diff] == c.cls_from).all() and (mask[diff] == 0).all()
    else:
        assert (out[diff] == 0).all() and (mask[diff] == c.cls_from).all() and c.pixels == 100 - 36


def test_noise_is_seeded_and_corruptions_do_not_touch() -> None:
    mask, valid = scene()
    first = noise.corrupt(mask, valid, ["erase", "relabel", "boundary"], 4, np.random.default_rng(7), min_area=50)
    again = noise.corrupt(mask, valid, ["erase", "relabel", "boundary"], 4, np.random.default_rng(7), min_area=50)
    np.testing.assert_array_equal(first[0], again[0])
    assert [c.to_dict() for c in first[2]] == [c.to_dict() for c in again[2]]
    assert [c.index for c in first[2]] == [1, 2, 3] and set(np.unique(first[1])) == {0, 1, 2, 3}


@pytest.mark.parametrize("kind", ["erase", "relabel", "boundary"])
def test_audit_finds_injected_noise_with_the_expected_type(kind: str) -> None:
    mask, valid = scene()
    for seed in range(3):
        out, changed, (c,) = noise.corrupt(mask, valid, [kind], 4, np.random.default_rng(seed), min_area=50, radius=2)
        audit = audit_image(probs_of(mask, classes=4), out, valid, AuditParams(min_area=8))
        of_type = np.zeros(mask.shape, bool)
        for region in audit.regions:
            of_type |= region.flag if region.type == c.expected else False
        assert noise.coverage(changed, 1, of_type) == 1.0, (seed, c, [r.summary() for r in audit.regions])
        assert not (audit.flag & (changed == 0)).any()  # nothing else flagged


def test_ranking_metrics_by_hand() -> None:
    order = ["a", "b", "c", "d", "e"]
    assert noise.precision_recall_at_k(order, {"a", "c"}) == (0.5, 0.5)  # k = 2: a hit, b miss
    assert noise.precision_recall_at_k(order, {"a", "c"}, k=4) == (0.5, 1.0)
    assert noise.average_precision(order, {"a", "c"}) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert noise.average_precision(order, {"e"}) == pytest.approx(1 / 5)
    assert noise.average_precision(order, set()) == 0.0


def test_pixel_counts_and_coverage_by_hand() -> None:
    truth = np.array([[1, 1, 0, 0]], bool)
    flagged = np.array([[1, 0, 1, 0]], bool)
    valid = np.array([[1, 1, 1, 0]], bool)
    counts = noise.PixelCounts()
    counts.add(flagged, truth, valid)
    assert (counts.tp, counts.fp, counts.fn) == (1, 1, 1) and counts.precision() == 0.5 and counts.recall() == 0.5
    assert noise.coverage(np.array([[1, 1, 2, 0]], np.uint8), 1, flagged) == 0.5
