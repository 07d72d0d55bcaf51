import math

import numpy as np
import pytest

from napari_wbc.core.ap import average_precision, mask_ious


def _image(*boxes, shape=(20, 20)):
    """A label image with instance k + 1 filling boxes[k] = (y0, y1, x0, x1)."""
    out = np.zeros(shape, np.int32)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        out[y0:y1, x0:x1] = k + 1
    return out


def test_mask_ious():
    ref = _image((0, 1, 0, 5), shape=(1, 10))
    pred = _image((0, 1, 0, 3), (0, 1, 7, 9), shape=(1, 10))
    pids, gids, ious = mask_ious(pred, ref)
    assert list(pids) == [1, 2] and list(gids) == [1]
    assert ious[0, 0] == 0.6 and ious[1, 0] == 0.0


def test_perfect_prediction_is_100():
    ref = _image((0, 5, 0, 5), (10, 15, 10, 18))
    ap = average_precision([(ref.copy(), {1: 0.9, 2: 0.8})], [ref])
    assert ap == {"AP": 100.0, "AP50": 100.0, "AP75": 100.0}


def test_one_of_two_found():
    # recall 0.5 at precision 1: the recall points 0, 0.01, ..., 0.50 score 1, the rest 0
    ref = _image((0, 5, 0, 5), (10, 15, 10, 18))
    pred = _image((0, 5, 0, 5))
    ap = average_precision([(pred, {1: 0.7})], [ref])
    for key in ("AP", "AP50", "AP75"):
        assert ap[key] == pytest.approx(100 * 51 / 101, abs=1e-9)


def test_false_positive_above_or_below_the_true_positive():
    ref = _image((0, 5, 0, 5))
    pred = _image((0, 5, 0, 5), (10, 15, 10, 15))  # 1 matches, 2 is a false positive
    below = average_precision([(pred, {1: 0.9, 2: 0.5})], [ref])
    assert below["AP"] == 100.0  # precision 1 at recall 1 before the FP comes
    above = average_precision([(pred, {1: 0.5, 2: 0.9})], [ref])
    assert above["AP"] == pytest.approx(50.0, abs=1e-9)  # monotone precision 0.5 everywhere


def test_iou_06_counts_at_three_thresholds_only():
    ref = _image((0, 1, 0, 5), shape=(1, 10))
    pred = _image((0, 1, 0, 3), shape=(1, 10))  # IoU 3/5: TP at 0.50, 0.55, 0.60
    ap = average_precision([(pred, {1: 1.0})], [ref])
    assert ap["AP"] == pytest.approx(100 * 3 / 10, abs=1e-9)
    assert ap["AP50"] == 100.0 and ap["AP75"] == 0.0


def test_images_are_pooled_by_score():
    # image 1: a false positive at 0.8; image 2: a true positive at 0.9 and one at 0.6
    ref1 = _image((0, 5, 0, 5))
    pred1 = _image((10, 15, 10, 15))
    ref2 = _image((0, 5, 0, 5), (10, 15, 10, 15))
    # ranked TP(0.9), FP(0.8), TP(0.6): precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3
    # monotone: 1 up to recall 1/3 (34 points: 0..0.33), 2/3 up to 2/3 (33 points: 0.34..0.66)
    ap = average_precision([(pred1, {1: 0.8}), (ref2.copy(), {1: 0.9, 2: 0.6})], [ref1, ref2])
    expected = 100 * (34 * 1 + 33 * 2 / 3) / 101
    assert ap["AP"] == pytest.approx(expected, abs=1e-9)


def test_a_reference_is_matched_once():
    # two predictions, each half of cell 1 (IoU 0.5 each); cell 2 is missed
    ref = _image((0, 2, 0, 5), (10, 15, 10, 15))
    pred = _image((0, 1, 0, 5), (1, 2, 0, 5))
    _, _, ious = mask_ious(pred, ref)
    assert ious[0, 0] == 0.5 and ious[1, 0] == 0.5
    ap = average_precision([(pred, {1: 0.9, 2: 0.8})], [ref])
    # at 0.50: TP then FP (cell 1 is taken), recall 1/2 -> 51/101; 0 at the other thresholds
    assert ap["AP50"] == pytest.approx(100 * 51 / 101, abs=1e-9)
    assert ap["AP"] == pytest.approx(100 * 51 / 101 / 10, abs=1e-9)


def test_empty_predictions_score_zero_and_no_references_are_nan():
    ref = _image((0, 5, 0, 5))
    empty = np.zeros_like(ref)
    assert average_precision([(empty, {})], [ref]) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    ap = average_precision([(empty, {})], [empty])
    assert all(math.isnan(v) for v in ap.values())
