"""TP/FP/FN colours, the six metrics and cell matching on hand-made masks."""

import numpy as np
import pandas as pd
import pytest

from napari_wbc.core.measure import measure_cells
from napari_wbc.core.review import (
    COLORS,
    as_labels,
    classes_from_instances,
    instances_from_class_map,
    join_measurements,
    legend_text,
    match_cells,
    napari_color_dict,
    review,
    review_map,
    review_rgb,
)

YELLOW, BLUE, GREEN, RED = (255, 255, 0), (0, 0, 255), (0, 255, 0), (255, 0, 0)


def test_every_class_pair_has_its_code_and_exact_colour():
    pred = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2]], np.uint8)
    ref = np.array([[0, 1, 2], [0, 1, 2], [0, 1, 2]], np.uint8)
    codes = review_map(pred, ref)
    # rows: predicted background, cytoplasm, nucleus; columns: reference background, cytoplasm, nucleus
    assert codes.tolist() == [[0, 4, 4], [3, 1, 4], [3, 3, 2]]
    rgba = review_rgb(codes)
    assert rgba.shape == (3, 3, 4) and rgba.dtype == np.uint8
    expected = [
        [(0, 0, 0, 0), (*RED, 255), (*RED, 255)],
        [(*GREEN, 255), (*YELLOW, 255), (*RED, 255)],
        [(*GREEN, 255), (*GREEN, 255), (*BLUE, 255)],
    ]
    assert rgba.tolist() == [[list(px) for px in row] for row in expected]


def test_overlay_keeps_the_image_where_background_agrees():
    codes = np.array([[0, 1], [3, 4]], np.uint8)
    image = np.full((2, 2, 3), 77, np.uint8)
    rgb = review_rgb(codes, image)
    assert rgb.shape == (2, 2, 3)
    assert rgb.tolist() == [[[77, 77, 77], list(YELLOW)], [list(GREEN), list(RED)]]
    with pytest.raises(ValueError, match="shape"):
        review_rgb(codes, np.zeros((3, 3, 3), np.uint8))


def test_napari_colours_and_legend():
    colors = napari_color_dict()
    assert colors[None][3] == 0 and colors[0][3] == 0  # background agreement transparent
    assert {k: tuple(round(255 * v) for v in colors[k][:3]) for k in (1, 2, 3, 4)} == {
        1: YELLOW,
        2: BLUE,
        3: GREEN,
        4: RED,
    }
    assert COLORS == {1: YELLOW, 2: BLUE, 3: GREEN, 4: RED}
    text = legend_text()
    for word in (
        "yellow",
        "blue",
        "green",
        "red",
        "cytoplasm",
        "nucleus",
        "false positive",
        "false negative",
    ):
        assert word in text


def test_green_and_red_are_the_false_positives_and_negatives_of_cell_and_nucleus():
    rng = np.random.default_rng(1)
    pred, ref = rng.integers(0, 3, (2, 40, 40))
    codes = review_map(pred, ref)
    fp = ((pred > 0) & (ref == 0)) | ((pred == 2) & (ref != 2))
    fn = ((ref > 0) & (pred == 0)) | ((ref == 2) & (pred != 2))
    assert np.array_equal(codes == 3, fp)
    assert np.array_equal(codes == 4, fn)
    assert np.array_equal(codes == 1, (pred == 1) & (ref == 1))
    assert np.array_equal(codes == 2, (pred == 2) & (ref == 2))
    assert np.array_equal(codes == 0, (pred == 0) & (ref == 0))


def test_bad_class_maps_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        review_map(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="0, 1 and 2"):
        review_map(np.full((4, 4), 3), np.zeros((4, 4)))


def _shifted_cell():
    """A 6x6 reference cell with a 2x2 nucleus; the prediction one column right, nucleus 2x3."""
    ref = np.zeros((10, 10), np.uint8)
    ref[2:8, 2:8] = 1
    ref[4:6, 4:6] = 2
    pred = np.zeros((10, 10), np.uint8)
    pred[2:8, 3:9] = 1
    pred[4:6, 4:7] = 2
    return pred, ref


def test_six_metrics_and_colour_counts_on_a_hand_made_cell():
    pred, ref = _shifted_cell()
    result = review(pred, ref)
    expect = {  # (tp, fp, fn, tn) counted by hand on the 10x10 image
        "cell": (30, 6, 6, 58),
        "cytoplasm": (24, 6, 8, 62),
        "nucleus": (4, 2, 0, 94),
    }
    for region, (tp, fp, fn, tn) in expect.items():
        got = result.metrics[region]
        assert got["precision"] == pytest.approx(tp / (tp + fp))
        assert got["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert got["miou"] == pytest.approx((tp / (tp + fp + fn) + tn / (tn + fp + fn)) / 2)
        assert got["me"] == pytest.approx((fp + fn) / 100)
        assert got["fpr"] == pytest.approx(fp / (fp + tn))
        assert got["fnr"] == pytest.approx(fn / (fn + tp))
    s = result.summary()
    # yellow: cytoplasm TP; blue: nucleus TP; green: the column right of the cell (6) + the
    # predicted nucleus column over reference cytoplasm (2); red: the column left of it (6)
    assert (s["tp_cytoplasm_px"], s["tp_nucleus_px"], s["fp_px"], s["fn_px"]) == (24, 4, 8, 6)
    assert s["cell_dice"] == pytest.approx(60 / 72)
    assert (s["matched"], s["missed"], s["extra"]) == (1, 0, 0)
    assert s["mean_iou_matched"] == pytest.approx(30 / 42)
    table = result.metrics_table()
    assert list(table["region"]) == ["cell", "cytoplasm", "nucleus"]
    assert table.loc[2, "precision"] == pytest.approx(4 / 6)


def test_any_reference_form_gives_the_same_review():
    pred, ref = _shifted_cell()
    cells, nuclei = instances_from_class_map(ref)
    assert np.array_equal(classes_from_instances(cells, nuclei), ref)  # faithful round trip
    a = review(pred, ref)
    b = review(pred, (cells * 7, nuclei * 7))  # instance pair with other ids
    assert a.metrics == b.metrics
    assert np.array_equal(a.codes, b.codes)
    assert b.cells["ref_label"].tolist() == [7]


def test_class_map_instances_are_connected_regions_with_their_nuclei():
    classes = np.zeros((12, 12), np.uint8)
    classes[1:5, 1:5] = 1
    classes[2:4, 2:4] = 2
    classes[6:11, 6:11] = 1  # a cell without nucleus stays (references are taken as they are)
    labels = as_labels(classes)
    assert labels.cells.max() == 2 and labels.cells.dtype == np.uint32
    assert np.array_equal(labels.nuclei > 0, classes == 2)
    assert set(np.unique(labels.cells[labels.nuclei > 0])) == {1}
    assert np.array_equal(labels.nuclei[classes == 2], labels.cells[classes == 2])


def _two_maps():
    """Reference cells 1, 2; predicted 5 (matches 1), 7 (overlaps 2 too little), 9 (nothing)."""
    ref_c = np.zeros((20, 40), np.uint32)
    ref_n = np.zeros_like(ref_c)
    ref_c[0:10, 0:10] = 1
    ref_n[3:7, 3:7] = 1  # ncr 16 / 84
    ref_c[0:10, 20:30] = 2
    ref_n[4:6, 24:26] = 2  # ncr 4 / 96
    pred_c = np.zeros_like(ref_c)
    pred_n = np.zeros_like(ref_c)
    pred_c[0:10, 1:11] = 5  # IoU 90 / 110
    pred_n[3:7, 3:8] = 5  # ncr 20 / 80
    pred_c[0:10, 26:34] = 7  # IoU with ref 2: 40 / 140
    pred_n[4:6, 28:30] = 7
    pred_c[15:20, 0:5] = 9  # no overlap, no nucleus
    return pred_c, pred_n, ref_c, ref_n


def test_cells_are_matched_missed_or_extra_with_iou_and_ncr():
    table = match_cells(*_two_maps())
    assert table["label"].dtype == "Int64" and table["ref_label"].dtype == "Int64"
    assert table["label"].tolist()[:3] == [5, 7, 9] and pd.isna(table["label"].iloc[3])
    assert [None if pd.isna(v) else int(v) for v in table["ref_label"]] == [1, None, None, 2]
    assert table["status"].tolist() == ["matched", "extra", "extra", "missed"]
    assert table["iou"].tolist() == pytest.approx([90 / 110, 40 / 140, 0.0, 40 / 140])
    assert table["ncr_pred"].iloc[:3].tolist() == pytest.approx([0.25, 4 / 76, 0.0])
    assert np.isnan(table["ncr_pred"].iloc[3])
    assert table["ncr_ref"].iloc[[0, 3]].tolist() == pytest.approx([16 / 84, 4 / 96])
    assert table[["ref_centroid_y", "ref_centroid_x"]].iloc[3].tolist() == pytest.approx([4.5, 24.5])
    assert table["ncr_ref"].iloc[1:3].isna().all()
    # a lower threshold lets 7 match 2
    loose = match_cells(*_two_maps(), min_iou=0.25)
    assert loose["status"].tolist() == ["matched", "matched", "extra"]


def test_the_match_table_joins_the_measurements_on_label():
    pred_c, pred_n, ref_c, ref_n = _two_maps()
    measurements = measure_cells(pred_c, pred_n)
    joined = join_measurements(measurements, match_cells(pred_c, pred_n, ref_c, ref_n))
    assert len(joined) == 3 and joined["label"].dtype == np.int64
    assert joined["label"].tolist() == measurements["label"].tolist()
    assert joined.sort_values("iou")["label"].tolist() == [9, 7, 5]  # worst first
    again = join_measurements(joined, match_cells(pred_c, pred_n, pred_c, pred_n))  # replaces, no _x/_y
    assert not [
        c
        for c in again
        if c.endswith(("_x", "_y")) and not c.startswith("centroid") and not c.startswith("ref_centroid")
    ]
    assert again["status"].eq("matched").all() and again["iou"].eq(1.0).all()


def test_optimal_matching_pairs_each_cell_once():
    # two predicted cells each overlapping the same reference cell by exactly half its area
    ref = np.zeros((4, 8), np.uint32)
    ref[:, 0:4] = 1
    pred = np.zeros_like(ref)
    pred[:, 0:2] = 1
    pred[:, 2:4] = 2  # IoU 8 / 16 = 0.5 each
    table = match_cells(pred, np.zeros_like(pred), ref, np.zeros_like(ref))
    assert table["status"].tolist().count("matched") == 1
    assert table["status"].tolist().count("extra") == 1
    assert "missed" not in table["status"].tolist()


def test_an_empty_prediction_misses_every_reference_cell():
    _, ref = _shifted_cell()
    result = review(np.zeros_like(ref), ref)
    assert result.cells["status"].tolist() == ["missed"]
    assert result.cells["iou"].dtype == np.float64 and result.cells["iou"].tolist() == [0.0]
    assert result.metrics["cell"]["fnr"] == 1.0 and result.metrics["cell"]["dice"] == 0.0
    assert result.counts() == {"pred_cells": 0, "ref_cells": 1, "matched": 0, "missed": 1, "extra": 0}
    assert np.count_nonzero(result.codes == 4) == 36 and np.count_nonzero(result.codes) == 36
