"""Evaluation helpers with hand-built class maps."""

import numpy as np

from napari_wbc.core.evaluate import annotated_only
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


def test_annotated_only_with_no_overlap_is_empty():
    classes = np.ones((4, 4), np.uint8)
    cells = np.ones((4, 4), np.uint32)
    assert not annotated_only(classes, cells, np.zeros((4, 4), np.uint8)).any()
