"""Correct widget: every edit keeps the labels valid and the measurements current; save for training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_wbc._widgets.correct import CorrectWidget
from napari_wbc._widgets.review import ReviewWidget
from napari_wbc.core.dataset import read_manifest, validate_training_folder
from napari_wbc.core.edit import check_invariants
from napari_wbc.core.measure import measure_cells
from napari_wbc.core.review import FN, TP_CYTOPLASM, classes_from_instances

pytestmark = pytest.mark.gui

TIMEOUT_MS = 30_000
SCALE = (0.5, 0.5)
REVIEWER = "Dr. C. Orrect"


def _labels():
    cells = np.zeros((80, 100), np.uint32)
    cells[5:25, 5:25] = 1
    cells[5:25, 25:45] = 2  # touches cell 1
    cells[40:70, 10:60] = 3  # wide: two cells to split
    nuclei = np.zeros_like(cells)
    nuclei[10:20, 10:20] = 1
    nuclei[10:20, 30:40] = 2
    nuclei[50:60, 15:25] = 3
    nuclei[50:60, 45:55] = 3
    return cells, nuclei


@pytest.fixture
def setup(make_napari_viewer_proxy):
    return _setup(make_napari_viewer_proxy())


def _setup(viewer):
    image = np.zeros((80, 100, 3), np.uint8)
    image[..., 0] = 200
    viewer.add_image(image, name="smear", rgb=True, scale=SCALE, metadata={"source": "/data/smear.png"})
    cells, nuclei = _labels()
    meta = {"source_layer": "smear", "model": "mifnet", "source": "/data/smear.png"}
    nuclei_layer = viewer.add_labels(nuclei, name="smear nuclei", scale=SCALE, metadata=meta)
    table = measure_cells(cells, nuclei)
    cells_layer = viewer.add_labels(
        cells, name="smear cells", scale=SCALE, metadata=meta, features=table.assign(index=table["label"])
    )
    widget = CorrectWidget(viewer)
    viewer.window.add_dock_widget(widget, name="correct")
    assert widget.layer.value == cells_layer
    return viewer, cells_layer, nuclei_layer, widget


def _settle(qtbot, widget):
    """Wait for the measurements to follow the last edit."""
    qtbot.waitUntil(lambda: not widget.tracker.busy, timeout=TIMEOUT_MS)


def _state(cells_layer, nuclei_layer):
    cells, nuclei = np.asarray(cells_layer.data), np.asarray(nuclei_layer.data)
    assert check_invariants(cells, nuclei) == []
    features = cells_layer.features
    assert sorted(features["label"]) == sorted(np.unique(cells[cells > 0]))
    for row in features.itertuples():
        assert row.cell_area_px == (cells == row.label).sum()
        assert row.nucleus_area_px == (nuclei == row.label).sum()
    assert cells_layer.metadata["counts"]["white_cells"] == len(features)
    return cells, nuclei, features.set_index("label")


def test_delete_and_merge(setup, qtbot, notifications):
    _, cells_layer, nuclei_layer, widget = setup
    widget.ids.value = "2"
    widget.delete_button.clicked.emit()
    _settle(qtbot, widget)
    cells, nuclei, features = _state(cells_layer, nuclei_layer)
    assert 2 not in cells and 2 not in nuclei and list(features.index) == [1, 3]
    assert widget.edited == {2} and widget.ids.value == ""
    nuclei_layer.undo()  # napari's undo, in both layers, brings the cell back with its nucleus
    cells_layer.undo()
    _settle(qtbot, widget)
    cells, nuclei, features = _state(cells_layer, nuclei_layer)
    assert list(features.index) == [1, 2, 3] and features.loc[2, "nucleus_area_px"] == 100
    assert widget.edited == {2}  # it was edited, even if back as it was

    widget.ids.value = "1, 2"
    widget.merge_button.clicked.emit()
    _settle(qtbot, widget)
    cells, nuclei, features = _state(cells_layer, nuclei_layer)
    assert list(features.index) == [1, 3]
    assert features.loc[1, "cell_area_px"] == 800 and cells_layer.selected_label == 1
    assert widget.edited == {1, 2} and bool(features.loc[1, "edited"]) and not features.loc[3, "edited"]

    # cells that do not touch: refused, said in a notification and the status, nothing changed
    before = np.asarray(cells_layer.data).copy(), np.asarray(nuclei_layer.data).copy()
    widget.ids.value = "1, 3"  # 1 ends at row 24, 3 starts at row 40: 15 rows apart
    widget.merge_button.clicked.emit()
    _settle(qtbot, widget)
    message = "cells 1, 3 do not touch (a gap of 15 px): not merged"
    assert notifications[-1][0] == "error" and notifications[-1][1].startswith(message)
    assert widget.status.value.startswith(message)
    cells, nuclei, features = _state(cells_layer, nuclei_layer)
    assert np.array_equal(cells, before[0]) and np.array_equal(nuclei, before[1])
    assert list(features.index) == [1, 3] and widget.edited == {1, 2}
    assert widget.ids.value == "1, 3"  # kept, to correct


def test_split_with_points_and_with_a_line(setup, qtbot):
    _, cells_layer, nuclei_layer, widget = setup
    points = widget.add_drawing("points")
    assert points.name == "smear edit points" and widget.drawing.value == points
    points.data = np.array([[55, 20], [55, 50]])  # (y, x): the points layer shares the cells' scale
    widget.split_button.clicked.emit()
    _settle(qtbot, widget)
    cells, nuclei, features = _state(cells_layer, nuclei_layer)
    assert list(features.index) == [1, 2, 3, 4]
    assert cells[55, 20] == 3 and cells[55, 50] == 4
    assert len(points.data) == 0  # the drawing was used up

    shapes = widget.add_drawing("shapes")
    shapes.add(np.array([[0, 15], [30, 15]]), shape_type="line")  # across cell 1
    widget.ids.value = ""
    widget.split_button.clicked.emit()
    _settle(qtbot, widget)
    cells, _, features = _state(cells_layer, nuclei_layer)
    assert list(features.index) == [1, 2, 3, 4, 5]
    assert {int(cells[15, 8]), int(cells[15, 22])} == {1, 5}
    assert widget.edited == {1, 3, 4, 5}


def test_a_split_that_leaves_a_sliver_is_refused(setup, qtbot, notifications):
    _, cells_layer, nuclei_layer, widget = setup
    before = np.asarray(cells_layer.data).copy(), np.asarray(nuclei_layer.data).copy()
    points = widget.add_drawing("points")
    points.data = np.array([[15, 19], [15, 23]])  # both near the right edge of cell 1 (columns 5..24)
    widget.split_button.clicked.emit()
    _settle(qtbot, widget)
    errors = [m for s, m in notifications if s == "error"]
    assert len(errors) == 1 and "of cell 1, too small for a white cell" in errors[0]
    assert "draw a line across it" in errors[0] and "too small" in widget.status.value
    assert np.array_equal(cells_layer.data, before[0]) and np.array_equal(nuclei_layer.data, before[1])
    assert list(cells_layer.features["label"]) == [1, 2, 3] and widget.edited == set()
    assert len(points.data) == 2  # the points stay, to move
    points.data = np.array([[15, 8], [15, 21]])  # apart: the square is cut halfway between them
    widget.split_button.clicked.emit()
    _settle(qtbot, widget)
    cells, _, features = _state(cells_layer, nuclei_layer)
    assert list(features.index) == [1, 2, 3, 4] and min(features["cell_area_px"]) >= 0.2 * 400


def test_new_cell_from_a_polygon_or_a_mask_and_its_nucleus(setup, qtbot):
    viewer, cells_layer, nuclei_layer, widget = setup
    shapes = widget.add_drawing("shapes")
    shapes.add(np.array([[72, 70], [72, 95], [79, 95], [79, 70]]), shape_type="polygon")
    widget.new_button.clicked.emit()
    _settle(qtbot, widget)
    cells, _, features = _state(cells_layer, nuclei_layer)
    assert list(features.index) == [1, 2, 3, 4] and cells[75, 80] == 4
    assert widget.ids.value == "4" and cells_layer.selected_label == 4

    mask = widget.add_drawing("mask")
    painted = np.zeros((80, 100), np.uint8)
    painted[30:38, 70:90] = 1
    mask.data = painted
    widget.new_button.clicked.emit()
    _settle(qtbot, widget)
    cells, _, features = _state(cells_layer, nuclei_layer)
    assert features.loc[5, "cell_area_px"] == 8 * 20 and not mask.data.any()

    # a nucleus drawn over the new cell and beyond it: only its part inside the cell counts
    viewer.layers.selection.active = shapes  # the drawing follows the active drawing layer
    assert widget.drawing.value == shapes
    shapes.add(np.array([[28, 75], [28, 80], [34, 80], [34, 75]]), shape_type="rectangle")
    widget.nucleus_button.clicked.emit()
    _settle(qtbot, widget)
    _, nuclei, features = _state(cells_layer, nuclei_layer)
    assert features.loc[5, "nucleus_area_px"] == (nuclei == 5).sum() > 0
    assert not (nuclei[28:30, 75:81]).any()  # above the cell
    widget.nucleus_mode.value = "remove"
    shapes.add(np.array([[0, 0], [0, 99], [79, 99], [79, 0]]), shape_type="rectangle")
    widget.ids.value = "3"
    widget.nucleus_button.clicked.emit()
    _settle(qtbot, widget)
    _, nuclei, features = _state(cells_layer, nuclei_layer)
    assert features.loc[3, "nucleus_area_px"] == 0 and features.loc[1, "nucleus_area_px"] == 100


def test_brush_edits_keep_nuclei_inside_their_cells(setup, qtbot):
    _, cells_layer, nuclei_layer, widget = setup
    cells_layer.brush_size = 5
    cells_layer.paint((12, 12), 0)  # erase a hole in cell 1, over its nucleus
    nuclei_layer.paint((60, 80), 3)  # a nucleus on background
    _settle(qtbot, widget)
    cells, nuclei, _ = _state(cells_layer, nuclei_layer)
    assert cells[12, 12] == 0 and nuclei[12, 12] == 0 and nuclei[60, 80] == 0
    assert widget.edited == {1}  # the stray nucleus was dropped: cell 3 is as it was
    cells_layer.paint((75, 90), 9)  # a new cell, painted
    _settle(qtbot, widget)
    _, _, features = _state(cells_layer, nuclei_layer)
    assert 9 in features.index and widget.edited == {1, 9}
    cells_layer.data = _labels()[0]  # a new segmentation: nothing edited yet
    nuclei_layer.data = _labels()[1]
    _settle(qtbot, widget)
    _state(cells_layer, nuclei_layer)
    assert widget.edited == set() and cells_layer.metadata["edited"] == []


def test_type_and_reviewed_survive_edits(setup, qtbot):
    _, cells_layer, nuclei_layer, widget = setup
    cells_layer.selected_label = 3
    assert widget.ids.value == "3" and not widget.reviewed.value
    widget.reviewer.value = REVIEWER
    widget.cell_type.value = "neutrophil"
    widget.type_button.clicked.emit()
    widget.reviewed.value = True
    features = cells_layer.features.set_index("label")
    assert features.loc[3, "cell_type"] == "neutrophil" and bool(features.loc[3, "reviewed"])
    assert features.loc[1, "cell_type"] is None and not features.loc[1, "reviewed"]
    widget.ids.value = "1"
    widget.delete_button.clicked.emit()
    _settle(qtbot, widget)
    _, _, features = _state(cells_layer, nuclei_layer)
    assert features.loc[3, "cell_type"] == "neutrophil" and bool(features.loc[3, "reviewed"])
    cells_layer.selected_label = 3
    assert widget.reviewed.value  # the check box shows the selected cell's flag


def test_a_type_set_here_is_a_review_decision_that_the_gallery_follows(setup, qtbot, tmp_path, notifications):
    from napari_wbc._widgets.gallery import GalleryWidget
    from napari_wbc._widgets.gallery_view import STATUS_ROLE
    from napari_wbc.core.measure import count_summary, describe_counts
    from napari_wbc.core.verification import load_review

    viewer, cells_layer, _, widget = setup
    source = str(tmp_path / "smear.png")  # the review is kept beside the image
    viewer.layers["smear"].metadata = {"source": source}
    cells_layer.metadata = {**cells_layer.metadata, "source": source}
    table = cells_layer.features.drop(columns="index")
    cells_layer.features = table.assign(
        cell_type=["neutrophil", "lymphocyte", "monocyte"], type_confidence=0.9, index=table["label"]
    )
    gallery = GalleryWidget(viewer)
    viewer.window.add_dock_widget(gallery, name="gallery")
    assert gallery.layer == cells_layer

    def row(label):
        return cells_layer.features.set_index("label").loc[label]

    def status(label):
        return gallery.model.index_of(label).data(STATUS_ROLE)

    # no reviewer name: refused, nothing changes
    widget.ids.value = "1"
    widget.cell_type.value = "lymphocyte"
    assert not widget.set_type()
    assert "reviewer" in widget.status.value and row(1)["cell_type"] == "neutrophil"
    assert any("error" in s and "reviewer" in m for s, m in notifications)
    # a type other than the suggestion: reclassified, the suggestion kept, who and when
    widget.reviewer.value = REVIEWER
    assert cells_layer.metadata["reviewer"] == REVIEWER  # shared with the gallery
    assert widget.set_type()
    first = row(1)
    assert (first["cell_type"], first["suggested_type"], first["review_status"]) == (
        "lymphocyte",
        "neutrophil",
        "reclassified",
    )
    assert first["reviewed_by"] == REVIEWER and first["reviewed_at"].endswith("Z") and first["reviewed"]
    assert widget.reviewed.value  # the box shows the cell's review
    # the suggested type: confirmed; 'not a white cell': excluded (out of the count)
    widget.ids.value = "2"
    assert widget.set_type()
    widget.ids.value = "3"
    widget.cell_type.value = "not_wbc"
    assert widget.set_type()
    assert [row(i)["review_status"] for i in (1, 2, 3)] == ["reclassified", "confirmed", "excluded"]
    # the gallery follows: statuses, groups, the live differential, progress; and saves the review
    qtbot.waitUntil(lambda: status(3) == "excluded", timeout=TIMEOUT_MS)
    assert [status(i) for i in (1, 2)] == ["reclassified", "confirmed"]
    assert gallery.model.groups() == {"lymphocyte": [1, 2], "not_wbc": [3]}
    counts = count_summary(cells_layer.features)
    assert counts["n_lymphocyte"] == 2 and counts["excluded"] == 1
    assert gallery.differential.text() == describe_counts(counts)
    assert gallery.progress.text() == "reviewed 3 of 3"
    review = tmp_path / "smear_review.json"
    qtbot.waitUntil(review.is_file, timeout=TIMEOUT_MS)
    saved = load_review(review)[0].set_index("label")
    assert list(saved["review_status"]) == ["reclassified", "confirmed", "excluded"]
    assert saved.loc[1, "suggested_type"] == "neutrophil" and saved.loc[1, "reviewed_by"] == REVIEWER
    # unticking 'reviewed' undoes the review: the suggestion back; ticking confirms
    widget.ids.value = "1"
    widget.reviewed.value = False
    assert (row(1)["cell_type"], row(1)["review_status"], row(1)["reviewed_by"]) == (
        "neutrophil",
        "suggested",
        "",
    )
    qtbot.waitUntil(lambda: status(1) == "suggested", timeout=TIMEOUT_MS)
    assert gallery.progress.text() == "reviewed 2 of 3 (1 to go)"
    widget.reviewed.value = True
    assert (row(1)["cell_type"], row(1)["review_status"]) == ("neutrophil", "confirmed")
    qtbot.waitUntil(lambda: status(1) == "confirmed", timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: load_review(review)[0].set_index("label").loc[1, "review_status"] == "confirmed")


REVIEW = ["cell_type", "suggested_type", "review_status", "reviewed_by", "reviewed_at", "reviewed"]
CLASSIFIED = ["type_confidence", "p_monocyte"]


def _typed(cells_layer) -> None:
    """The cells typed as the Segment widget types them: type, confidence, probabilities."""
    table = cells_layer.features.drop(columns="index")
    cells_layer.features = table.assign(
        cell_type=["neutrophil", "lymphocyte", "monocyte"],
        type_confidence=[0.9, 0.8, 0.7],
        p_monocyte=[0.05, 0.1, 0.7],
        index=table["label"],
    )


def _give_type(widget, ids: str, kind: str) -> None:
    widget.ids.value = ids
    widget.cell_type.value = kind
    assert widget.set_type(), widget.status.value


def test_a_review_survives_edits_with_the_gallery_closed(setup, qtbot):
    """No Cell gallery open: the tracker alone keeps the review of the cells an edit leaves."""
    _, cells_layer, nuclei_layer, widget = setup
    _typed(cells_layer)
    widget.reviewer.value = REVIEWER
    _give_type(widget, "3", "eosinophil")  # reclassified
    _give_type(widget, "2", "lymphocyte")  # confirmed
    before = cells_layer.features.set_index("label")[REVIEW + CLASSIFIED].copy()
    assert list(before["review_status"]) == ["suggested", "confirmed", "reclassified"]
    assert before.loc[3, "reviewed_at"].endswith("Z")

    cells_layer.brush_size = 5
    cells_layer.paint((12, 12), 0)  # an edit of another cell: a hole erased in cell 1
    _settle(qtbot, widget)
    _, _, features = _state(cells_layer, nuclei_layer)
    assert widget.edited == {1}
    pd.testing.assert_frame_equal(features[REVIEW + CLASSIFIED], before, check_dtype=False)

    # the reviewed cell split: its id keeps its review; the new piece is unreviewed and untyped
    points = widget.add_drawing("points")
    points.data = np.array([[55, 20], [55, 50]])
    widget.ids.value = ""
    widget.split_button.clicked.emit()
    _settle(qtbot, widget)
    _, _, features = _state(cells_layer, nuclei_layer)
    assert list(features.index) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(features.loc[[1, 2, 3], REVIEW + CLASSIFIED], before, check_dtype=False)
    new = features.loc[4]
    assert new["review_status"] == "suggested" and not new["reviewed"] and pd.isna(new["cell_type"])
    assert new["suggested_type"] == new["reviewed_by"] == new["reviewed_at"] == ""
    assert np.isnan(new["type_confidence"]) and np.isnan(new["p_monocyte"])


def test_an_edit_with_the_gallery_open_keeps_the_review_saved_of_the_new_labels(setup, qtbot, tmp_path):
    from napari_wbc._widgets.gallery import GalleryWidget
    from napari_wbc.core.verification import ReviewMismatch, open_review

    viewer, cells_layer, nuclei_layer, widget = setup
    source = str(tmp_path / "smear.png")  # the review is kept beside the image
    viewer.layers["smear"].metadata = {"source": source}
    cells_layer.metadata = {**cells_layer.metadata, "source": source}
    _typed(cells_layer)
    gallery = GalleryWidget(viewer)
    viewer.window.add_dock_widget(gallery, name="gallery")
    widget.reviewer.value = REVIEWER
    _give_type(widget, "3", "eosinophil")
    review = tmp_path / "smear_review.json"
    qtbot.waitUntil(review.is_file, timeout=TIMEOUT_MS)
    before = cells_layer.features.set_index("label")[REVIEW].copy()

    def reopened():
        """The saved review applied to the layer's labels now (None: of other labels)."""
        table = cells_layer.features.drop(columns="index")
        try:
            return open_review(review, table, np.asarray(cells_layer.data))[0].set_index("label")
        except ReviewMismatch:
            return None

    cells_layer.brush_size = 5
    cells_layer.paint((12, 12), 0)
    _settle(qtbot, widget)
    pd.testing.assert_frame_equal(cells_layer.features.set_index("label")[REVIEW], before, check_dtype=False)
    qtbot.waitUntil(lambda: reopened() is not None, timeout=TIMEOUT_MS)  # saved again, of the edit
    saved = reopened()
    assert (saved.loc[3, "review_status"], saved.loc[3, "reviewed_by"]) == ("reclassified", REVIEWER)
    assert saved.loc[3, "reviewed_at"] == before.loc[3, "reviewed_at"]
    assert gallery.model.index_of(3).isValid() and gallery.progress.text() == "reviewed 1 of 3 (2 to go)"


def test_edits_update_the_review(setup, qtbot):
    viewer, cells_layer, nuclei_layer, widget = setup
    cells, nuclei = _labels()
    viewer.add_labels(classes_from_instances(cells == 1, nuclei == 1), name="truth", scale=SCALE)
    review = ReviewWidget(viewer)
    viewer.window.add_dock_widget(review, name="review")
    review.prediction.value, review.reference.value = cells_layer, viewer.layers["truth"]
    review.run()
    qtbot.waitUntil(lambda: review.worker is None, timeout=TIMEOUT_MS)
    assert review.summary.value.startswith("cells: 1 matched, 0 missed, 2 extra")
    widget.ids.value = "2, 3"  # delete both extra cells
    widget.delete_button.clicked.emit()
    _settle(qtbot, widget)
    assert review.summary.value.startswith("cells: 1 matched, 0 missed, 0 extra")
    assert cells_layer.features["status"].tolist() == ["matched"]
    widget.ids.value = "1"
    widget.delete_button.clicked.emit()
    _settle(qtbot, widget)
    codes = np.asarray(viewer.layers["smear review"].data)
    assert codes[7, 7] == FN and TP_CYTOPLASM not in codes
    assert review.summary.value.startswith("cells: 0 matched, 1 missed, 0 extra")


def test_save_as_training_data(setup, qtbot, tmp_path, notifications):
    from napari_wbc.models import resolve_weights, sha256

    _, cells_layer, nuclei_layer, widget = setup
    widget.ids.value = "1, 2"
    widget.merge_button.clicked.emit()
    _settle(qtbot, widget)
    folder = tmp_path / "training"
    widget.folder.value = folder
    widget.save_button.clicked.emit()
    assert validate_training_folder(folder) == []
    (record,) = read_manifest(folder)
    assert record["stem"] == "smear" and record["source"] == "/data/smear.png"
    assert record["cells_edited"] == 2 and record["edited_ids"] == [1, 2]
    assert record["model"] == "mifnet"
    assert record["weights_sha256"] == sha256(resolve_weights("mifnet") / "model.safetensors")
    assert record["n_cells"] == 2 and record["shape"] == [80, 100] and "date" in record
    assert ("info", f"saved smear to {folder} (2 cells edited)") in notifications
    # saving again, unchanged: said, not written a second time
    files = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    widget.save_button.clicked.emit()
    message = f"already saved as smear in {folder}, unchanged since: not saved again"
    assert notifications[-1] == ("info", message) and widget.status.value == message
    assert [r["stem"] for r in read_manifest(folder)] == ["smear"]
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == files
    # a type set since: a new pair, beside the first (which is never overwritten)
    widget.ids.value = "3"
    widget.reviewer.value = REVIEWER
    widget.cell_type.value = "monocyte"
    widget.type_button.clicked.emit()
    widget.save_button.clicked.emit()
    assert [r["stem"] for r in read_manifest(folder)] == ["smear", "smear-2"]
    assert notifications[-1] == ("info", f"saved smear-2 to {folder} (2 cells edited)")
    assert validate_training_folder(folder) == []


def test_ctrl_click_adds_a_cell_to_the_ids(setup):
    from types import SimpleNamespace

    _, cells_layer, _, widget = setup
    cells_layer.selected_label = 1
    click = SimpleNamespace(
        type="mouse_press",
        modifiers=("Control",),
        position=(15 * 0.5, 35 * 0.5),
        view_direction=None,
        dims_displayed=[0, 1],
    )
    assert widget._on_click in cells_layer.mouse_drag_callbacks
    widget._on_click(cells_layer, click)  # what napari calls on a click on the cells layer
    assert widget.cell_ids() == [1, 2]
    widget._on_click(cells_layer, SimpleNamespace(**{**vars(click), "modifiers": ()}))
    assert widget.cell_ids() == [1, 2]  # a plain click does not pick


def test_save_the_visible_part(make_napari_viewer_proxy, qtbot, tmp_path):
    viewer, _, _, widget = _setup(make_napari_viewer_proxy(show=True))  # drawn: the view is known
    image = viewer.layers["smear"]
    viewer.scene.camera.center = (20 * 0.5, 25 * 0.5)
    viewer.scene.camera.zoom *= 1.5
    qtbot.waitUntil(lambda: np.asarray(image.corner_pixels)[1, 0] < 79, timeout=10_000)
    widget.visible_only.value = True
    widget.folder.value = tmp_path / "training"
    widget.save_button.clicked.emit()
    (record,) = read_manifest(tmp_path / "training")
    y0, x0, y1, x1 = record["region"]
    assert record["shape"] == [y1 - y0, x1 - x0] and record["shape"] != [80, 100]
    assert record["stem"] == f"smear_y{y0}_x{x0}"
    assert validate_training_folder(tmp_path / "training") == []


def test_a_short_dock_scrolls_to_every_control(make_napari_viewer_proxy, qtbot):
    """With other docks on a small screen the widget shrinks to DOCK_MIN_HEIGHT, and scrolls."""
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QScrollArea

    from napari_wbc._widgets._layers import DOCK_MIN_HEIGHT

    viewer = make_napari_viewer_proxy()
    widget = CorrectWidget(viewer)
    scroll = widget.native.findChild(QScrollArea)
    assert widget.native.minimumSizeHint().height() == DOCK_MIN_HEIGHT < scroll.sizeHint().height()
    widget.native.resize(420, DOCK_MIN_HEIGHT)
    widget.native.show()
    bar = scroll.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0, timeout=5_000)

    def shown(button) -> bool:
        top = button.native.mapTo(scroll.viewport(), QPoint(0, 0)).y()
        return 0 <= top and top + button.native.height() <= scroll.viewport().height()

    assert shown(widget.delete_button) and not shown(widget.save_button)
    scroll.ensureWidgetVisible(widget.save_button.native)
    assert shown(widget.save_button) and bar.value() > 0
    widget.native.close()


def test_the_traps_on_the_segmented_sample_field(
    make_napari_viewer_proxy, qtbot, trained_model, tmp_path, notifications
):
    """As a user met them, on the sample field: its two white cells touch over 13 px (merging
    them made one 'cell'), two clicks near the edge of a cell cut off a sliver, and a second
    save wrote the same pair again. Each is refused or said, and nothing changes."""
    from napari_wbc._widgets.segment import SegmentWidget

    viewer = make_napari_viewer_proxy()
    viewer.open_sample("napari-wbc", "two_cells")
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment)
    assert segment.run() is not None
    qtbot.waitUntil(lambda: segment.worker is None, timeout=120_000)
    widget = CorrectWidget(viewer)
    viewer.window.add_dock_widget(widget)
    cells_layer = viewer.layers["BloodImage_00034 cells"]
    nuclei_layer = viewer.layers["BloodImage_00034 nuclei"]
    assert widget.layer.value == cells_layer
    before = np.asarray(cells_layer.data).copy(), np.asarray(nuclei_layer.data).copy()
    assert set(np.unique(before[0])) == {0, 1, 2}

    widget.ids.value = "1, 2"
    widget.merge_button.clicked.emit()
    assert notifications[-1][0] == "error"
    assert notifications[-1][1].startswith("cells 1 and 2 barely touch (13 px of border in common")

    points = widget.add_drawing("points")
    ys, xs = np.nonzero(before[0] == 1)
    y = int(np.median(ys[xs == xs.max()]))
    points.data = np.array([[y, xs.max() - 12], [y, xs.max() - 2]])  # both within 12 px of its edge
    widget.split_button.clicked.emit()
    assert notifications[-1][0] == "error"
    assert notifications[-1][1].startswith("not split: the piece at point 2 would be")
    _settle(qtbot, widget)
    assert np.array_equal(cells_layer.data, before[0]) and np.array_equal(nuclei_layer.data, before[1])
    assert widget.edited == set()

    widget.folder.value = tmp_path / "training"
    widget.save_button.clicked.emit()
    widget.save_button.clicked.emit()
    assert notifications[-1][1].startswith("already saved as BloodImage_00034 in ")
    assert [r["stem"] for r in read_manifest(tmp_path / "training")] == ["BloodImage_00034"]
