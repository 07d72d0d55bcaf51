"""Class maps <-> per-cell targets, and scored masks -> label images."""

import numpy as np

from napari_wbc.core.instances import labels_from_detections, paint_detections, targets_from_classes


def test_targets_have_exclusive_box_ends_and_nuclei_inside_their_cell():
    classes = np.zeros((10, 12), np.uint8)
    classes[1:5, 2:6] = 1
    classes[2:4, 3:5] = 2
    classes[6:9, 7:11] = 1
    classes[0, 11] = 1  # a 1-px speck: dropped by min_area
    t = targets_from_classes(classes, min_area=2)
    assert t["boxes"].tolist() == [[2, 1, 6, 5], [7, 6, 11, 9]]
    assert t["cells"].sum((1, 2)).tolist() == [16, 12]
    assert t["nuclei"].sum((1, 2)).tolist() == [4, 0]
    assert not (t["nuclei"] & ~t["cells"]).any()
    empty = targets_from_classes(np.zeros((5, 5), np.uint8))
    assert empty["boxes"].shape == (0, 4) and empty["cells"].shape == (0, 5, 5)


def test_detections_are_painted_best_first_and_below_threshold_dropped():
    cells = np.zeros((3, 4, 4), np.float32)
    cells[0, :, :3] = 0.9  # overlaps the better detection 1 on columns 1-2
    cells[1, :, 1:] = 0.8
    cells[2] = 0.7
    nuclei = np.zeros_like(cells)
    nuclei[0, :, 0] = 0.9
    nuclei[1, :, 1] = 0.9  # column 1 is detection 1's
    scores = np.array([0.6, 0.95, 0.3])
    cell_labels, nucleus_labels, kept = paint_detections(scores, cells, nuclei, score_threshold=0.5)
    assert cell_labels.tolist() == [[2, 1, 1, 1]] * 4  # detection 1 first: id 1
    assert nucleus_labels.tolist() == [[2, 1, 0, 0]] * 4
    assert kept.tolist() == [np.float32(0.95), np.float32(0.6)]
    same = labels_from_detections(scores, cells, nuclei, score_threshold=0.5)
    assert np.array_equal(same[0], cell_labels) and np.array_equal(same[1], nucleus_labels)
