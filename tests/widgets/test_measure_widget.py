"""Measurement table: a view over a hand-built cells layer, selection both ways, CSV export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import Qt

from napari_wbc._widgets.measure import COLUMN_ROLE, LABEL_ROLE, MeasureWidget
from napari_wbc.core.measure import measure_cells

pytestmark = pytest.mark.gui

SCALE = (0.5, 0.5)  # um/px: the camera works in world coordinates, the table in pixels


def _cells_and_nuclei():
    cells = np.zeros((100, 120), np.uint32)
    cells[10:30, 10:30] = 1  # 20x20 square
    cells[50:90, 40:70] = 2  # 40x30
    cells[0:16, 100:120] = 3  # in the corner: touches the border
    nuclei = np.where(np.isin(cells, [1, 2, 3]), cells, 0).astype(np.uint32)
    nuclei[10:30, 10:20] = 0  # cell 1: half nucleus
    nuclei[50:90, 40:60] = 0  # cell 2: a third nucleus
    return cells, nuclei


def _add_cells(viewer, name="smear cells"):
    cells, nuclei = _cells_and_nuclei()
    table = measure_cells(cells, nuclei)
    layer = viewer.add_labels(cells, name=name, scale=SCALE, features=table.assign(index=table["label"]))
    return layer, table


@pytest.fixture
def setup(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    layer, table = _add_cells(viewer)
    widget = MeasureWidget(viewer)
    viewer.window.add_dock_widget(widget, name="measurements")
    return viewer, layer, table, widget


def _headers(widget):
    """The table's column names (the headers show plain names and keep these as data)."""
    return [widget.table.horizontalHeaderItem(c).data(COLUMN_ROLE) for c in range(widget.table.columnCount())]


def _column(widget, name):
    col = _headers(widget).index(name)
    return [
        widget.table.item(r, col).data(Qt.ItemDataRole.DisplayRole) for r in range(widget.table.rowCount())
    ]


def test_table_shows_one_row_per_cell(setup):
    _, layer, table, widget = setup
    assert widget.layer.value == layer
    assert widget.table.rowCount() == 3
    assert _column(widget, "label") == [1, 2, 3]
    assert _column(widget, "cell_area_px") == [400, 1200, 320]
    assert _column(widget, "ncr") == [1.0, 0.5, "–"]
    assert _column(widget, "touches_border") == ["no", "no", "yes"]
    headers = _headers(widget)
    assert headers[:3] == ["label", "ncr", "nucleus_cell_ratio"]
    assert headers[-2:] == ["centroid_y", "centroid_x"]
    assert sorted(headers) == sorted(table.columns)  # all measurements, no napari `index` column
    assert widget.summary.value == "3 white cells (2 complete)"
    # small as the table may get (docked with others), it shows its header and three rows
    rows = sum(widget.table.rowHeight(r) for r in range(3))
    header = widget.table.horizontalHeader().height()
    assert header + rows <= widget.table.minimumHeight() <= header + rows + 10
    # a person reads plain names, with what each means (and its unit) on hover
    shown = {
        widget.table.horizontalHeaderItem(c).data(COLUMN_ROLE): widget.table.horizontalHeaderItem(c)
        for c in range(widget.table.columnCount())
    }
    assert shown["ncr"].text() == "NCR" and "nucleus area / cytoplasm area" in shown["ncr"].toolTip()
    assert shown["cell_area_px"].text() == "cell area (px²)"
    assert shown["touches_border"].text() == "at border" and "complete" in shown["touches_border"].toolTip()


def _click_row(qtbot, widget, row):
    table = widget.table
    rect = table.visualItemRect(table.item(row, 0))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def test_clicking_a_row_selects_the_cell_and_centres_on_it(setup, qtbot):
    viewer, layer, table, widget = setup
    viewer.scene.camera.center = (0, 0)
    _click_row(qtbot, widget, 1)
    assert layer.selected_label == 2
    expected = (69.5 * SCALE[0], 54.5 * SCALE[1])  # centroid of rows 50..89, columns 40..69
    assert viewer.scene.camera.center[-2:] == pytest.approx(expected)
    # after sorting by area (largest first) the rows move; a click still finds the right cell
    widget.table.sortItems(_headers(widget).index("cell_area_px"), Qt.SortOrder.DescendingOrder)
    assert _column(widget, "label") == [2, 1, 3]
    _click_row(qtbot, widget, 2)
    assert layer.selected_label == 3
    assert viewer.scene.camera.center[-2:] == pytest.approx((7.5 * SCALE[0], 109.5 * SCALE[1]))


def test_selecting_a_label_selects_its_row(setup):
    viewer, layer, _, widget = setup
    viewer.scene.camera.center = (1, 2)
    layer.selected_label = 3
    assert widget.selected_cell() == 3
    assert widget.table.selectionModel().selectedRows()[0].row() == 2
    # a choice made on the canvas does not move the view
    assert viewer.scene.camera.center[-2:] == pytest.approx((1, 2))
    layer.selected_label = 7  # no such cell
    assert widget.selected_cell() is None


def test_table_follows_new_features(setup):
    _, layer, _, widget = setup
    cells, nuclei = _cells_and_nuclei()
    cells[cells == 3] = 0
    nuclei[nuclei == 3] = 0
    table = measure_cells(cells, nuclei)
    layer.data = cells
    layer.features = table.assign(index=table["label"])
    assert widget.table.rowCount() == 2
    assert widget.summary.value == "2 white cells (2 complete)"


def test_table_follows_the_active_cells_layer(setup):
    viewer, first, _, widget = setup
    second, _ = _add_cells(viewer, "other cells")
    viewer.layers.selection.active = second
    assert widget.layer.value == second
    second.selected_label = 2
    assert widget.selected_cell() == 2
    viewer.layers.remove(second)
    assert widget.layer.value == first
    viewer.layers.remove(first)
    assert widget.layer.value is None and widget.table.rowCount() == 0


def test_export_csv_writes_the_features_without_index(setup, tmp_path):
    _, _, table, widget = setup
    path = widget.export_csv(tmp_path / "cells.csv")
    assert path == tmp_path / "cells.csv"
    written = pd.read_csv(path)
    assert list(written.columns) == list(table.columns)  # no pandas index, no napari `index`
    pd.testing.assert_frame_equal(written, table, check_dtype=False)
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file is gone


def test_export_button_writes_where_the_dialog_says(setup, tmp_path, monkeypatch, notifications):
    import napari_wbc._widgets.measure as measure

    _, _, table, widget = setup
    target = tmp_path / "chosen.csv"
    asked = []

    def fake_dialog(parent, caption, start, filters):
        asked.append(start)
        return str(target), filters

    monkeypatch.setattr(measure.QFileDialog, "getSaveFileName", fake_dialog)
    widget.export_button.clicked.emit()
    assert asked == ["smear cells.csv"]
    assert len(pd.read_csv(target)) == len(table)
    assert notifications == [("info", f"wrote 3 cells to {target}")]


def test_export_without_cells_layer_is_refused(make_napari_viewer_proxy, notifications, tmp_path):
    viewer = make_napari_viewer_proxy()
    widget = MeasureWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.summary.value.startswith("no cells layer yet")
    widget.export_button.clicked.emit()
    assert [s for s, _ in notifications] == ["error"]
    assert not list(tmp_path.iterdir())


# -- a reclassification updates the rows it changed, in place -----------------------------------

KEPT = Qt.ItemDataRole.UserRole + 7  # a mark on an item: still there after an update in place


def _typed(table):
    return table.assign(cell_type=["neutrophil", "lymphocyte", "monocyte"], type_confidence=[0.9, 0.8, 0.7])


def _rows(widget):
    """label -> {column: what the row shows}."""
    names = _headers(widget)
    return {
        widget.table.item(r, 0).data(LABEL_ROLE): {
            name: widget.table.item(r, c).data(Qt.ItemDataRole.DisplayRole) for c, name in enumerate(names)
        }
        for r in range(widget.table.rowCount())
    }


def _mark_items(widget):
    for r in range(widget.table.rowCount()):
        for c in range(widget.table.columnCount()):
            widget.table.item(r, c).setData(KEPT, True)


def _all_marked(widget):
    return all(
        widget.table.item(r, c).data(KEPT)
        for r in range(widget.table.rowCount())
        for c in range(widget.table.columnCount())
    )


def test_a_reclassification_updates_its_row_in_place_and_keeps_the_sort(setup):
    from napari_wbc._widgets._layers import features_of, set_features
    from napari_wbc.core.measure import count_summary, describe_counts
    from napari_wbc.core.verification import set_type, start_review

    _, layer, table, widget = setup
    set_features(layer, start_review(_typed(table)))  # new columns: the table is rebuilt
    assert "review_status" in _headers(widget)
    widget.table.sortItems(_headers(widget).index("cell_type"), Qt.SortOrder.AscendingOrder)
    assert _column(widget, "cell_type") == ["lymphocyte", "monocyte", "neutrophil"]
    layer.selected_label = 3
    before = _rows(widget)
    _mark_items(widget)

    set_features(layer, set_type(features_of(layer), [1], "basophil", "Ann"))  # as the gallery and Correct do
    after = _rows(widget)
    changed = {name for name in after[1] if after[1][name] != before[1][name]}
    assert changed == {"cell_type", "review_status", "reviewed", "reviewed_by", "reviewed_at"}
    assert after[1]["cell_type"] == "basophil" and after[1]["review_status"] == "reclassified"
    assert after[1]["reviewed_by"] == "Ann" and after[1]["reviewed"] == "yes"
    assert after[2] == before[2] and after[3] == before[3]  # the other rows as they were
    assert _column(widget, "cell_type") == ["basophil", "lymphocyte", "monocyte"]  # still sorted
    assert _column(widget, "label") == [1, 2, 3]
    assert _all_marked(widget)  # updated in place, not rebuilt
    assert widget.selected_cell() == 3  # the selection stays on its cell
    assert widget.summary.value == describe_counts(count_summary(layer.features))

    # the sort order holds the other way round too, and a cell that leaves the count
    widget.table.sortItems(_headers(widget).index("cell_type"), Qt.SortOrder.DescendingOrder)
    set_features(layer, set_type(features_of(layer), [3], "not_wbc", "Ann"))
    assert _column(widget, "cell_type") == ["not_wbc", "lymphocyte", "basophil"]
    assert _rows(widget)[3]["review_status"] == "excluded" and _all_marked(widget)
    assert widget.summary.value == describe_counts(count_summary(layer.features))

    # other cells (a new segmentation, an edit): rebuilt
    set_features(layer, features_of(layer).iloc[:2])
    assert widget.table.rowCount() == 2 and not _all_marked(widget)


def test_the_gallery_keys_update_the_docked_table_in_place(setup, qtbot):
    from napari_wbc._widgets.gallery import GalleryWidget

    viewer, layer, table, widget = setup
    cells, nuclei = _cells_and_nuclei()
    viewer.add_image(np.full((*cells.shape, 3), 200, np.uint8), name="smear", scale=SCALE)
    viewer.add_labels(nuclei, name="smear nuclei", scale=SCALE)
    layer.features = _typed(table).assign(index=table["label"])
    gallery = GalleryWidget(viewer)
    viewer.window.add_dock_widget(gallery, name="Cell gallery")
    assert gallery.model.cell_order() == [1, 2, 3]
    assert set(_column(widget, "review_status")) == {"suggested"}
    widget.table.sortItems(_headers(widget).index("label"), Qt.SortOrder.DescendingOrder)
    before = _rows(widget)
    _mark_items(widget)

    gallery.reviewer.setText("Ann")
    gallery.select_cells([2])
    qtbot.keyClick(gallery.view, Qt.Key.Key_4)  # eosinophil
    after = _rows(widget)
    assert after[2]["cell_type"] == "eosinophil" and after[2]["review_status"] == "reclassified"
    assert after[1] == before[1] and after[3] == before[3]
    assert _column(widget, "label") == [3, 2, 1] and _all_marked(widget)
    gallery.select_cells([1])
    qtbot.keyClick(gallery.view, Qt.Key.Key_Return)  # confirmed as it is
    after = _rows(widget)
    assert after[1]["cell_type"] == "neutrophil" and after[1]["review_status"] == "confirmed"
    assert after[3] == before[3] and _all_marked(widget)
    assert widget.summary.value == gallery.differential.text()
