"""Review widget: a hand-made prediction against a hand-made reference, in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from qtpy.QtCore import Qt

from napari_wbc._widgets._layers import REVIEW_OPACITY
from napari_wbc._widgets.review import ReviewWidget
from napari_wbc.core.measure import measure_cells
from napari_wbc.core.review import AGREE, FN, FP, TP_CYTOPLASM, TP_NUCLEUS

pytestmark = pytest.mark.gui

TIMEOUT_MS = 30_000
YELLOW, BLUE, GREEN, RED = (1, 1, 0, 1), (0, 0, 1, 1), (0, 1, 0, 1), (1, 0, 0, 1)


def _prediction():
    cells = np.zeros((60, 80), np.uint32)
    cells[10:30, 10:30] = 1  # 400 px, nucleus 10x10
    cells[40:55, 50:70] = 2  # 300 px, no such cell in the reference: extra
    nuclei = np.zeros_like(cells)
    nuclei[15:25, 15:25] = 1
    return cells, nuclei


def _reference():
    """0/1/2 class map: cell A = predicted cell 1 less two columns, cell B missed by the prediction."""
    ref = np.zeros((60, 80), np.uint8)
    ref[10:30, 12:30] = 1  # 360 px
    ref[15:25, 15:22] = 2  # nucleus narrower than the predicted one
    ref[40:50, 5:20] = 1  # 150 px, missed
    return ref


@pytest.fixture
def setup(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    viewer.add_image(np.full((60, 80, 3), 200, np.uint8), name="smear", rgb=True, scale=(0.5, 0.5))
    cells, nuclei = _prediction()
    viewer.add_labels(nuclei, name="smear nuclei", scale=(0.5, 0.5), metadata={"source_layer": "smear"})
    table = measure_cells(cells, nuclei)
    cells_layer = viewer.add_labels(
        cells,
        name="smear cells",
        scale=(0.5, 0.5),
        features=table.assign(index=table["label"]),
        metadata={"source_layer": "smear"},
    )
    reference = viewer.add_labels(_reference(), name="truth", scale=(0.5, 0.5))
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="review")
    return viewer, cells_layer, reference, widget


def _review(qtbot, widget):
    assert widget.run() is not None, "the review did not start"
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def _metric(widget, row, col):
    return widget.metrics.item(row, col).text()


def test_review_colours_metrics_and_cells(setup, qtbot, notifications):
    viewer, cells_layer, reference, widget = setup
    # nuclei go with their cells layer; review layers and the prediction are not offered as reference
    assert [layer.name for layer in widget.prediction.choices] == ["smear cells", "truth"]
    widget.prediction.value = cells_layer
    assert [layer.name for layer in widget.reference.choices] == ["truth"]
    widget.reference.value = reference
    _review(qtbot, widget)
    assert [s for s, _ in notifications if "error" in s] == []

    review = viewer.layers["smear review"]
    assert tuple(review.scale) == (0.5, 0.5)
    # below the cells layer, so the cell contours stay on top
    assert viewer.layers.index(review) < viewer.layers.index(cells_layer)
    codes = np.asarray(review.data)
    assert codes[0, 0] == AGREE
    assert codes[12, 20] == TP_CYTOPLASM
    assert codes[20, 18] == TP_NUCLEUS
    assert codes[20, 11] == FP  # predicted cytoplasm on reference background
    assert codes[20, 23] == FP  # predicted nucleus on reference cytoplasm
    assert codes[45, 60] == FP  # the extra cell
    assert codes[45, 10] == FN  # the missed cell
    counts = np.bincount(codes.ravel(), minlength=5)
    assert counts[TP_NUCLEUS] == 70
    assert counts[TP_CYTOPLASM] == 360 - 100  # reference cell minus the predicted nucleus
    assert counts[FP] == 40 + 30 + 300  # two columns, three nucleus columns, the extra cell
    assert counts[FN] == 150
    colours = review.colormap.map(np.array([AGREE, TP_CYTOPLASM, TP_NUCLEUS, FP, FN]))
    assert colours[0][3] == 0  # agreement on background is transparent
    np.testing.assert_allclose(colours[1:], [YELLOW, BLUE, GREEN, RED])
    assert "false positive" in widget.legend.value and "#ffff00" in widget.legend.value
    assert widget.legend.value.count("<br>") == 1  # two lines; what each colour means on hover
    assert "in the reference, missed" in widget.legend.tooltip
    # faint, so that the stain under the colours stays readable; filled, as in the papers' figures
    assert review.opacity == REVIEW_OPACITY <= 0.5 and review.contour == 0

    # whole cell: predicted 700 px, reference 510, overlap 360
    assert _metric(widget, 0, 0) == f"{100 * 360 / 700:.2f}"  # precision
    assert _metric(widget, 0, 1) == f"{100 * 720 / 1210:.2f}"  # dice
    assert _metric(widget, 2, 1) == f"{100 * 140 / 170:.2f}"  # nucleus dice: 2*70 / (100 + 70)
    assert widget.summary.value.startswith("cells: 1 matched, 1 missed, 1 extra (2 in the reference)")
    assert "mean IoU 0.90" in widget.summary.value

    # the per-cell review joins the measurements, label by label
    features = cells_layer.features.set_index("label")
    assert features.loc[1, "status"] == "matched" and features.loc[1, "iou"] == pytest.approx(0.9)
    assert features.loc[1, "ref_label"] == 1
    assert features.loc[1, "ncr_pred"] == pytest.approx(100 / 300)
    assert features.loc[1, "ncr_ref"] == pytest.approx(70 / 290)
    assert features.loc[2, "status"] == "extra" and features.loc[2, "iou"] == 0
    assert list(cells_layer.features["index"]) == [1, 2]
    _, table = viewer.window.add_plugin_dock_widget("napari-wbc", "Cell measurements")
    headers = [table.table.horizontalHeaderItem(c).text() for c in range(table.table.columnCount())]
    assert headers[:3] == ["cell", "review", "IoU"]  # plain names of label, status, iou
    table.table.sortItems(2, Qt.SortOrder.AscendingOrder)  # worst IoU first: the cell to fix
    assert table.table.item(0, 0).data(Qt.ItemDataRole.DisplayRole) == 2

    # the missed cell is one pick away
    assert len(widget.missed.choices) == 2  # "1 missed: pick one" and the cell
    assert widget.missed.value is None
    widget.missed.value = widget.missed.choices[1]
    assert viewer.scene.camera.center[-2:] == pytest.approx((44.5 * 0.5, 12.0 * 0.5))


def test_reviewing_again_updates_the_layer(setup, qtbot):
    viewer, cells_layer, reference, widget = setup
    widget.prediction.value, widget.reference.value = cells_layer, reference
    _review(qtbot, widget)
    first = viewer.layers["smear review"]
    cells_layer.data = np.where(cells_layer.data == 2, 0, cells_layer.data).astype(np.uint32)
    _review(qtbot, widget)
    assert viewer.layers["smear review"] == first
    assert [layer.name for layer in viewer.layers].count("smear review") == 1
    assert widget.summary.value.startswith("cells: 1 matched, 1 missed, 0 extra")
    assert list(cells_layer.features["label"]) == [1]  # measured again, with the review joined
    assert cells_layer.features.columns.tolist().count("status") == 1


def test_reference_files_and_pairs(setup, qtbot, tmp_path):
    viewer, cells_layer, _, widget = setup
    # a dataset mask PNG becomes a class map layer
    Image.fromarray(_reference()).save(tmp_path / "field.png")
    layer = widget.open_reference(tmp_path / "field.png")
    assert layer.name == "field reference" and widget.reference.value == layer
    widget.prediction.value = cells_layer
    widget.reference.value = layer
    _review(qtbot, widget)
    assert widget.summary.value.startswith("cells: 1 matched, 1 missed, 1 extra")
    # a cells/nuclei TIFF pair equal to the prediction: everything agrees
    cells, nuclei = _prediction()
    tifffile.imwrite(tmp_path / "field_cells.tif", cells)
    tifffile.imwrite(tmp_path / "field_nuclei.tif", nuclei)
    layer = widget.open_reference(tmp_path / "field_cells.tif")
    assert layer.name == "field_cells" and "field_nuclei" in viewer.layers
    assert "field_nuclei" not in [choice.name for choice in widget.reference.choices]
    _review(qtbot, widget)
    codes = np.asarray(viewer.layers["smear review"].data)
    assert set(np.unique(codes)) == {AGREE, TP_CYTOPLASM, TP_NUCLEUS}
    assert widget.summary.value.startswith("cells: 2 matched, 0 missed, 0 extra")
    assert _metric(widget, 0, 1) == "100.00" and not widget.missed.enabled


def test_mismatched_reference_is_refused(setup, notifications):
    viewer, cells_layer, _, widget = setup
    other = viewer.add_labels(np.zeros((10, 10), np.uint8), name="small")
    widget.prediction.value, widget.reference.value = cells_layer, other
    assert widget.run() is None
    errors = [m for s, m in notifications if "error" in s]
    assert len(errors) == 1 and "differ in size" in errors[0]
    ids = viewer.add_labels(np.full((60, 80), 7, np.uint32), name="instances")
    widget.reference.value = ids
    assert widget.run() is None
    assert "not a class map" in [m for s, m in notifications if "error" in s][-1]
    assert "smear review" not in viewer.layers
