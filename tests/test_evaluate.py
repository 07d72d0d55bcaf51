"""Evaluation helpers with hand-built class maps."""

import numpy as np

from napari_wbc.core.evaluate import annotated_only, centre_cell_only
from napari_wbc.core.metrics import class_map_metrics


def test_annotated_only_drops_cells_the_reference_does_not_have():
    classes = np.zeros((10, 20), np.uint8)
    classes[2:8, 1:7] = 1
    classes[4:6, 3:5] = 2  # cell 1, overlaps the reference
    classes[2:8, 12:18] = 1
    classes[4:6, 14:16] = 2  # cell 2, a neighbour the reference does not annotate
    cells = np.zeros_like(classes, np.uint32)
    cells[2:8, 1:7] = 1
    cells[2:8, 12:18] = 2
    label = np.zeros_like(classes)
    label[2:8, 2:8] = 1  # shifted by one column
    label[4:6, 4:6] = 2

    kept = annotated_only(classes, cells, label)
    assert kept.dtype == np.uint8
    assert (kept[:, :10] == classes[:, :10]).all() and not kept[:, 10:].any()
    # whole cell: 30 of 36 reference pixels found, 6 + 36 false ones before, 6 after
    assert class_map_metrics(classes, label)["cell"]["dice"] == 2 * 30 / (72 + 36)
    assert class_map_metrics(kept, label)["cell"]["dice"] == 2 * 30 / (36 + 36)


def test_centre_cell_only_keeps_the_crop_s_cell():
    classes = np.zeros((9, 9), np.uint8)
    classes[2:7, 2:7] = 1
    classes[4, 4] = 2
    classes[0:2, 7:9] = 2  # a neighbour's nucleus in the corner
    cells = np.zeros((9, 9), np.uint32)
    cells[2:7, 2:7] = 2
    cells[0:2, 7:9] = 1
    kept = centre_cell_only(classes, cells)
    assert kept.dtype == np.uint8
    assert (kept[2:7, 2:7] == classes[2:7, 2:7]).all() and not kept[0:2, 7:9].any()
    assert not centre_cell_only(classes, np.zeros_like(cells)).any()


def test_annotated_only_with_no_overlap_is_empty():
    classes = np.ones((4, 4), np.uint8)
    cells = np.ones((4, 4), np.uint32)
    assert not annotated_only(classes, cells, np.zeros((4, 4), np.uint8)).any()


def test_ncr_ratios_of_matches_compares_each_matched_cell():
    label = np.zeros((20, 30), np.uint8)
    label[2:12, 2:12] = 1
    label[4:8, 4:8] = 2  # reference cell A: nucleus 16, cytoplasm 84
    label[2:12, 16:26] = 1
    label[4:10, 18:24] = 2  # reference cell B: nucleus 36, cytoplasm 64
    reference = np.zeros(label.shape, np.uint32)
    reference[2:12, 2:12] = 1
    reference[2:12, 16:26] = 2
    cells = reference.copy()  # both found with the same outline
    nuclei = np.zeros_like(cells)
    nuclei[4:8, 4:9] = 1  # A: nucleus 20, cytoplasm 80
    nuclei[4:10, 18:24] = 2  # B: exact
    cells[14:18, 0:4] = 3  # a cell the reference lacks: no ratio

    from napari_wbc.core.evaluate import ncr_agreement, ncr_ratios_of_matches

    ratios = ncr_ratios_of_matches(cells, nuclei, reference, label)
    assert ratios == [(20 / 80) / (16 / 84), 1.0]
    agreement = ncr_agreement(ratios)
    assert agreement["cells"] == 2 and agreement["within_20pct"] == 0.5
    assert agreement["median_ratio"] == (ratios[0] + 1.0) / 2
    assert ncr_agreement([]) == {"cells": 0}


def test_ncr_needs_iou_of_one_half():
    label = np.zeros((10, 10), np.uint8)
    label[0:10, 0:10] = 1
    label[4:6, 4:6] = 2
    reference = (label > 0).astype(np.uint32)
    cells = np.zeros_like(reference)
    cells[0:4, 0:10] = 1  # IoU 0.4
    from napari_wbc.core.evaluate import ncr_ratios_of_matches

    assert ncr_ratios_of_matches(cells, cells, reference, label) == []


def _voc(path, boxes):
    """A Pascal VOC file with WBC boxes (x0, y0, x1, y1) and one platelet."""
    objects = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1) in [("Platelets", (0, 0, 3, 3)), *(("WBC", b) for b in boxes)]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation>{objects}</annotation>")


def test_reference_count_is_the_boxes_and_the_masked_cells_they_miss(tmp_path):
    from napari_wbc.core.dataset import Pair
    from napari_wbc.core.evaluate import reference_count

    pair = Pair("set", "f", tmp_path / "images" / "f.jpg", tmp_path / "labels" / "f.png", "test")
    label = np.zeros((60, 100), np.uint8)
    label[5:25, 5:25] = 1  # two touching cells, one mask region, two boxes
    label[5:25, 25:45] = 1
    label[40:58, 80:100] = 1  # a cell cut by the frame: masked, not boxed
    voc = tmp_path / "annotations_voc" / "f.xml"
    _voc(voc, [(5, 5, 24, 24), (25, 5, 44, 24)])
    assert reference_count(pair, label) == 3
    _voc(voc, [(5, 5, 24, 24), (25, 5, 44, 24), (80, 40, 99, 57), (60, 5, 70, 15)])  # a box without mask
    assert reference_count(pair, label) == 4
    voc.unlink()  # no boxes at all: the mask's regions
    assert reference_count(pair, label) == 2
