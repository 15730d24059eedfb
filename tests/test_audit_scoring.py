"""segssl.audit.scoring on hand-made masks and probabilities, numbers computed by hand.

Setup: 20 x 20 images, 3 classes (0 background), probabilities 0.9 for the "true" class and
0.05 for each other one, so a confident disagreement has suspicion 0.9 - 0.05 = 0.85.
half_area = 0.09 gives a0 = 0.09 * 400 = 36 px: a 36-pixel region weighs 36 / 72 = 1/2.
"""
from __future__ import annotations

import numpy as np
import pytest

from segssl.audit.scoring import AuditParams, audit_image, image_score, pixel_scores, ranking, suggest_mask
from segssl.errors import ConfigError, DataError

H = W = 20
P = AuditParams(threshold=0.5, min_share=0.5, band=2, band_share=0.8, min_area=4, half_area=0.09)
ALL = np.ones((H, W), bool)


def probs_of(truth: np.ndarray, conf: float = 0.9, classes: int = 3) -> np.ndarray:
    probs = np.full((classes, *truth.shape), (1 - conf) / (classes - 1), np.float32)
    for c in range(classes):
        probs[c][truth == c] = conf
    return probs


def square(y0: int, y1: int, x0: int, x1: int, cls: int = 1, base: np.ndarray | None = None) -> np.ndarray:
    mask = np.zeros((H, W), np.int64) if base is None else base.copy()
    mask[y0:y1, x0:x1] = cls
    return mask


def test_pixel_scores_by_hand() -> None:
    probs = np.array([[[0.7, 0.2]], [[0.3, 0.8]]], np.float32)  # 2 classes, 1 x 2 image
    pred, p_pred, suspicion = pixel_scores(probs, np.array([[1, 1]]), np.array([[True, False]]))
    np.testing.assert_array_equal(pred, [[0, 1]])
    np.testing.assert_allclose(p_pred, [[0.7, 0.8]])
    np.testing.assert_allclose(suspicion, [[0.4, 0.0]], atol=1e-6)  # 0.7 - 0.3; the invalid pixel scores 0


def test_erased_object_is_missing() -> None:
    truth = square(5, 11, 5, 11)  # the annotator erased this 6 x 6 object
    audit = audit_image(probs_of(truth), np.zeros((H, W), np.int64), ALL, P)
    (region,) = audit.regions
    assert (region.type, region.given_class, region.pred_class, region.area) == ("missing", 0, 1, 36)
    assert region.bbox == (5, 5, 11, 11)
    assert region.score == pytest.approx(0.85 * 36 / (36 + 36))  # 0.425
    assert audit.score == pytest.approx(0.425)
    np.testing.assert_array_equal(audit.flag, truth == 1)


def test_relabelled_object_is_wrong_class() -> None:
    truth = square(5, 11, 5, 11, cls=1)
    given = square(5, 11, 5, 11, cls=2)  # drawn in the right place with the wrong class
    (region,) = audit_image(probs_of(truth), given, ALL, P).regions
    assert (region.type, region.given_class, region.pred_class, region.area, region.flagged) == ("wrong_class", 2, 1, 36, 36)
    assert region.score == pytest.approx(0.425)


def test_component_over_nothing_is_extra() -> None:
    given = square(5, 11, 5, 11, cls=2)  # the model sees the surrounding background there
    (region,) = audit_image(probs_of(np.zeros((H, W), np.int64)), given, ALL, P).regions
    assert (region.type, region.given_class, region.pred_class) == ("extra", 2, 0)


def test_shifted_contour_is_boundary() -> None:
    truth = square(6, 14, 6, 14)
    given = square(6, 14, 4, 12)  # drawn 2 px too far left: 16 px too many on the left, 16 missing on the right
    audit = audit_image(probs_of(truth), given, ALL, P)
    (region,) = audit.regions
    assert (region.type, region.given_class, region.area) == ("boundary", 1, 32)
    assert region.bbox == (4, 6, 14, 14)
    assert region.score == pytest.approx(0.85 * 32 / (32 + 36))  # 0.4
    np.testing.assert_array_equal(audit.flag, given != truth)


def test_wide_disagreement_is_not_called_boundary() -> None:
    truth = square(4, 16, 4, 16)  # 12 x 12 object drawn as its 4 x 4 core: the error is no thin band
    given = square(8, 12, 8, 12)
    types = [r.type for r in audit_image(probs_of(truth), given, ALL, P).regions]
    assert "boundary" not in types and "missing" in types


def test_clean_image_scores_below_every_error() -> None:
    truth = square(6, 14, 6, 14)
    clean = probs_of(truth, conf=0.6)  # right but unsure everywhere
    clean[:, 0, 0] = [0.4, 0.15, 0.45]  # one pixel of doubt, below the threshold
    audits = {
        "clean": audit_image(clean, truth, ALL, P),
        "missing": audit_image(probs_of(truth), np.zeros((H, W), np.int64), ALL, P),
        "wrong_class": audit_image(probs_of(truth), square(6, 14, 6, 14, cls=2), ALL, P),
        "boundary": audit_image(probs_of(truth), square(6, 14, 4, 12), ALL, P),
    }
    assert audits["clean"].regions == [] and audits["clean"].score == 0.0
    assert all(audits[k].score > 0 for k in ("missing", "wrong_class", "boundary"))
    ids = list(audits)
    order = ranking([a.score for a in audits.values()], [a.suspicion_mean for a in audits.values()], ids)
    assert ids[order[-1]] == "clean"


def test_three_errors_in_one_image_add_up() -> None:
    truth = np.zeros((H, W), np.int64)
    truth[1:5, 1:5] = 1  # erased below
    truth[1:5, 12:16] = 1  # relabelled to 2 below
    truth[11:17, 6:12] = 2  # its contour shifted below
    given = np.zeros((H, W), np.int64)
    given[1:5, 12:16] = 2
    given[11:17, 4:10] = 2
    audit = audit_image(probs_of(truth), given, ALL, P)
    by_type = {r.type: r for r in audit.regions}
    assert sorted(by_type) == ["boundary", "missing", "wrong_class"]
    assert by_type["missing"].score == pytest.approx(0.85 * 16 / 52)
    assert by_type["wrong_class"].score == pytest.approx(0.85 * 16 / 52)
    assert by_type["boundary"].area == 24 and by_type["boundary"].score == pytest.approx(0.85 * 24 / 60)
    assert audit.score == pytest.approx(2 * 0.85 * 16 / 52 + 0.85 * 24 / 60)  # 0.523 + 0.34
    assert [r.score for r in audit.regions] == sorted((r.score for r in audit.regions), reverse=True)


def test_invalid_pixels_are_never_flagged() -> None:
    truth = square(5, 11, 5, 11)
    valid = ~(truth == 1)  # the erased object lies in a "don't care" area
    audit = audit_image(probs_of(truth), np.zeros((H, W), np.int64), valid, P)
    assert audit.regions == [] and audit.suspicion[~valid].max() == 0


def test_small_regions_are_ignored() -> None:
    truth = square(5, 7, 5, 6)  # 2 px, below min_area 4
    assert audit_image(probs_of(truth), np.zeros((H, W), np.int64), ALL, P).regions == []


def test_image_score_is_the_sum_of_region_scores() -> None:
    assert image_score([]) == 0.0
    assert image_score([0.5, 0.5]) == pytest.approx(1.0)  # two likely errors outrank ...
    assert image_score([0.9]) == pytest.approx(0.9)  # ... one (a noisy-or would say 0.75 < 0.9)


def test_suggestion_changes_only_flagged_regions() -> None:
    truth = np.zeros((H, W), np.int64)
    truth[1:5, 1:5] = 1  # erased: big score
    truth[15:17, 15:17] = 2  # erased, 4 px: small score (0.85 * 4 / 40 = 0.085)
    truth[8:12, 8:12] = 1
    given = np.zeros((H, W), np.int64)
    given[8:12, 8:12] = 1
    probs = probs_of(truth)
    probs[:, 18, 0] = [0.4, 0.35, 0.25]  # a doubtful pixel, below the threshold: never touched
    given[18, 0] = 1
    audit = audit_image(probs, given, ALL, P)
    suggested, changed = suggest_mask(given, audit)
    assert changed == 20
    expected = truth.copy()
    expected[18, 0] = 1  # not flagged: left as given
    np.testing.assert_array_equal(suggested, expected)  # flagged pixels took the prediction, nothing else moved
    strict, changed = suggest_mask(given, audit, min_score=0.2)
    assert changed == 16 and strict[15:17, 15:17].max() == 0
    assert given[1:5, 1:5].max() == 0  # the input mask is not modified in place


def test_params_and_shapes_are_checked() -> None:
    with pytest.raises(ConfigError):
        AuditParams(threshold=1.5).check()
    with pytest.raises(DataError, match="do not fit"):
        audit_image(np.zeros((3, 4, 4), np.float32), np.zeros((4, 5), np.int64), np.ones((4, 5), bool))
