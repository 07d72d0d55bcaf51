"""Segment widget on the real sample field with the shipped model, and its error paths."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from napari_wbc._widgets.segment import SegmentWidget

pytestmark = pytest.mark.gui

SAMPLE = "BloodImage_00034"
TIMEOUT_MS = 120_000  # generous: the CI machine may be busy; a run takes a few seconds


@pytest.fixture
def viewer(make_napari_viewer_proxy):
    return make_napari_viewer_proxy()


def _widget(viewer) -> SegmentWidget:
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="segment")
    return widget


def _run(qtbot, widget):
    worker = widget.run()
    assert worker is not None, "the run did not start"
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def _errors(notifications):
    return [message for severity, message in notifications if "error" in severity]


def test_segment_sample_field(viewer, qtbot, trained_model, notifications, datasets):
    image = viewer.open_sample("napari-wbc", "two_cells")[0]
    widget = _widget(viewer)
    assert widget.image.value == image
    assert widget.model.value == trained_model
    _run(qtbot, widget)
    assert _errors(notifications) == []
    assert [layer.name for layer in viewer.layers] == [SAMPLE, f"{SAMPLE} nuclei", f"{SAMPLE} cells"]
    cells_layer, nuclei_layer = viewer.layers[f"{SAMPLE} cells"], viewer.layers[f"{SAMPLE} nuclei"]
    cells, nuclei = np.asarray(cells_layer.data), np.asarray(nuclei_layer.data)
    assert cells.shape == nuclei.shape == (480, 640)
    assert cells.dtype == nuclei.dtype == np.uint32

    ids = np.unique(cells[cells > 0])
    assert set(np.unique(nuclei[nuclei > 0])) <= set(ids)
    assert np.array_equal(cells[nuclei > 0], nuclei[nuclei > 0])  # a nucleus lies in its own cell

    # both white cells of the reference mask are found (IoU >= 0.5 with a predicted cell)
    reference, n = ndimage.label(np.asarray(Image.open(datasets / "bccd" / "labels" / f"{SAMPLE}.png")) > 0)
    assert n == 2
    for i in range(1, n + 1):
        ref = reference == i
        best = max((ref & (cells == j)).sum() / (ref | (cells == j)).sum() for j in ids)
        assert best >= 0.5, f"reference cell {i} not found (best IoU {best:.2f})"

    features = cells_layer.features
    assert len(features) == len(ids)
    assert sorted(features["label"]) == list(ids)
    assert list(features["index"]) == list(features["label"])  # napari's label -> row key
    for label in ids:  # hovering a cell shows its own measurements in napari's status bar
        pixel = tuple(np.argwhere(cells == label)[0])
        assert f"label: {label}," in cells_layer.get_status(pixel, world=False)["coordinates"]
    for _, row in features.iterrows():
        own = cells == row["label"]
        assert row["cell_area_px"] == own.sum()
        assert row["nucleus_area_px"] == (nuclei == row["label"]).sum()
    # every cell typed by the classifier, with its probabilities; the differential in the status
    assert features["cell_type"].notna().all() and "p_neutrophil" in features and "p_not_wbc" in features
    typed = features[features["cell_type"] != "not_wbc"]
    counts = cells_layer.metadata["counts"]
    assert counts["white_cells"] == len(typed) == 2
    assert sum(counts[f"n_{kind}"] for kind in set(typed["cell_type"])) == 2
    assert widget.status.value.startswith("2 white cells") and "%" in widget.status.value
    assert widget.progress_bar.value == widget.progress_bar.max > 0
    assert widget.run_button.enabled and not widget.cancel_button.enabled

    # the measurement table was docked and shows this layer, one row per cell
    _, table = viewer.window.add_plugin_dock_widget("napari-wbc", "Cell measurements")
    assert table.layer.value == cells_layer
    assert table.table.rowCount() == len(ids)
    assert table.summary.value.startswith(f"{len(ids)} white cells")


def _shows_whole(viewer, layer) -> bool:
    """The camera shows all of ``layer``, and fills the canvas with it (not a speck in the middle)."""
    h, w = viewer.canvas.size
    cy, cx = viewer.camera.center[-2:]
    zoom = viewer.camera.zoom
    (y0, x0), (y1, x1) = layer.extent.world[:, -2:]
    seen = cy - h / 2 / zoom <= y0 and cy + h / 2 / zoom >= y1 and cx - w / 2 / zoom <= x0
    return seen and cx + w / 2 / zoom >= x1 and zoom >= 0.9 * min(h / (y1 - y0), w / (x1 - x0))


def test_first_result_is_shown_whole_and_in_outlines(make_napari_viewer_proxy, qtbot, trained_model):
    """After an image's first segmentation the whole image is in view, though the view was
    fitted before the docks narrowed the canvas, and stays so while the docks settle, until the
    user moves it. Cells and nuclei are outlines over the stain."""
    viewer = make_napari_viewer_proxy(show=True)  # drawn: the canvas has its real size
    viewer.window._qt_window.resize(1920, 1080)
    image = viewer.open_sample("napari-wbc", "two_cells")[0]
    viewer.camera.zoom *= 3  # zoomed into a corner, as a view fitted before the docks may look
    viewer.camera.center = (0, 0)
    assert not _shows_whole(viewer, image)
    widget = _widget(viewer)
    _run(qtbot, widget)
    assert _shows_whole(viewer, image)
    viewer.window._qt_window.resize(1300, 800)  # the canvas shrinks further (a dock added, say)
    qtbot.waitUntil(lambda: viewer.canvas.size[1] < 900, timeout=5_000)
    qtbot.waitUntil(lambda: _shows_whole(viewer, image), timeout=5_000)
    cells, nuclei = viewer.layers[f"{SAMPLE} cells"], viewer.layers[f"{SAMPLE} nuclei"]
    assert (cells.contour, cells.opacity) == (2, 1.0)
    assert (nuclei.contour, nuclei.opacity) == (1, 1.0)
    viewer.camera.zoom *= 4  # the user zooms into a cell: from now on the view is theirs
    view, size = (viewer.camera.center, viewer.camera.zoom), viewer.canvas.size
    viewer.window._qt_window.resize(1600, 950)  # (the view followed the canvas until now)
    qtbot.waitUntil(lambda: viewer.canvas.size != size, timeout=5_000)
    assert (viewer.camera.center, viewer.camera.zoom) == view


def test_running_again_updates_the_layers(viewer, qtbot, trained_model, notifications):
    image = viewer.open_sample("napari-wbc", "two_cells")[0]
    widget = _widget(viewer)
    _run(qtbot, widget)
    cells_layer = viewer.layers[f"{SAMPLE} cells"]
    first_id, first = cells_layer.unique_id, np.asarray(cells_layer.data).copy()
    first_features = cells_layer.features.copy()
    # spoil the result, move the image: a second run must restore it, aligned with the image
    cells_layer.data = np.zeros_like(first)
    cells_layer.features = {}
    image.scale = (0.5, 0.5)
    _run(qtbot, widget)
    assert _errors(notifications) == []
    assert [layer.name for layer in viewer.layers] == [SAMPLE, f"{SAMPLE} nuclei", f"{SAMPLE} cells"]
    cells_layer = viewer.layers[f"{SAMPLE} cells"]
    assert cells_layer.unique_id == first_id  # the same layer, updated
    np.testing.assert_array_equal(cells_layer.data, first)
    assert cells_layer.features.equals(first_features)
    for name in (f"{SAMPLE} cells", f"{SAMPLE} nuclei"):
        assert tuple(viewer.layers[name].scale) == (0.5, 0.5)
    # a later run keeps the user's view and display settings: zoomed into a cell, nuclei filled
    viewer.layers[f"{SAMPLE} nuclei"].contour = 0  # layer controls: contour 0
    viewer.camera.zoom *= 4
    viewer.camera.center = tuple(0.5 * np.mean(np.argwhere(first == 1), axis=0))
    view = (viewer.camera.center, viewer.camera.zoom)
    # flip-averaged: the same cells, outlines a little different, still in the same layer
    widget.flip_average.value = True
    _run(qtbot, widget)
    assert _errors(notifications) == []
    assert (viewer.camera.center, viewer.camera.zoom) == view
    assert viewer.layers[f"{SAMPLE} nuclei"].contour == 0 and viewer.layers[f"{SAMPLE} cells"].contour == 2
    assert viewer.layers[f"{SAMPLE} cells"].unique_id == first_id
    tta = np.asarray(viewer.layers[f"{SAMPLE} cells"].data)
    assert len(np.unique(tta)) == len(np.unique(first))
    assert 0.9 < 2 * ((tta > 0) & (first > 0)).sum() / ((tta > 0).sum() + (first > 0).sum()) < 1.0
    # a single-cell crop: only the cell nearest the centre stays, as id 1, with its one table row
    widget.flip_average.value = False
    widget.single_cell.value = True
    _run(qtbot, widget)
    assert _errors(notifications) == []
    crop = np.asarray(viewer.layers[f"{SAMPLE} cells"].data)
    assert len(np.unique(first)) == 3 and set(np.unique(crop)) == {0, 1}
    assert any(np.array_equal(crop > 0, first == label) for label in (1, 2))
    assert len(viewer.layers[f"{SAMPLE} cells"].features) == 1
    assert set(np.unique(viewer.layers[f"{SAMPLE} nuclei"].data)) == {0, 1}


def test_bfloat16_from_the_options_gives_the_same_cells(viewer, qtbot, trained_model, notifications):
    viewer.open_sample("napari-wbc", "two_cells")
    widget = _widget(viewer)
    assert widget.precision.value == "auto"  # fp32 on this CPU
    _run(qtbot, widget)
    fp32 = np.asarray(viewer.layers[f"{SAMPLE} cells"].data).copy()
    widget.precision.value = "bf16"
    _run(qtbot, widget)
    assert _errors(notifications) == []
    bf16 = np.asarray(viewer.layers[f"{SAMPLE} cells"].data)
    assert len(np.unique(bf16)) == len(np.unique(fp32)) == 3
    assert 0.98 < 2 * ((bf16 > 0) & (fp32 > 0)).sum() / ((bf16 > 0).sum() + (fp32 > 0).sum())
    assert (bf16 != fp32).any()  # it did run in bfloat16 (measured: 35 of 307,200 px differ)


def test_typing_can_be_switched_off(viewer, qtbot, trained_model, notifications):
    viewer.open_sample("napari-wbc", "two_cells")
    widget = _widget(viewer)
    widget.typing.value = "none"
    _run(qtbot, widget)
    assert _errors(notifications) == []
    features = viewer.layers[f"{SAMPLE} cells"].features
    assert "cell_type" not in features and not any(c.startswith("p_") for c in features)
    assert "%" not in widget.status.value


def test_a_fine_tuned_classifier_is_offered_and_used(
    viewer, qtbot, trained_model, notifications, monkeypatch, tmp_path
):
    import dataclasses

    from napari_wbc._widgets.segment import TunedClassifier
    from napari_wbc.models import SHIPPED, load_model, save_model, sha256, user_model_dir

    def offered():
        box = widget.typing.native
        return [(box.itemText(i), box.itemData(i)) for i in range(box.count())]

    monkeypatch.setenv("NAPARI_WBC_HOME", str(tmp_path / "home"))
    viewer.open_sample("napari-wbc", "two_cells")
    widget = _widget(viewer)
    assert [label for label, _ in offered()] == [
        "cell-type classifier (shipped)",
        "the model's own (wcsegnet)",
        "off",
    ]
    # a classifier fine-tuned meanwhile, where the Train widget saves it (float32: other weights'
    # sha256); it calls every white cell unidentified, so the cells say which classifier typed them
    net, spec = load_model("celltype", device="cpu")  # cached: the shipped spec is left alone
    spec = dataclasses.replace(spec, extra={**spec.extra, "unidentified_below": 1.01})
    folder = save_model(net, spec, user_model_dir() / "celltype-ft-test")
    assert sha256(folder / "model.safetensors") != sha256(SHIPPED / "celltype" / "model.safetensors")
    widget.typing.reset_choices()  # as when the box is opened, or when the Train widget finishes
    tuned = TunedClassifier("celltype-ft-test", str(folder))
    assert ("celltype-ft-test (fine-tuned)", tuned) in offered()
    widget.typing.value = tuned
    _run(qtbot, widget)
    assert _errors(notifications) == []
    cells = viewer.layers[f"{SAMPLE} cells"]
    kinds = set(cells.features["cell_type"])
    assert "unidentified" in kinds and kinds <= {"unidentified", "not_wbc"}
    assert cells.metadata["classifier"] == "celltype-ft-test"
    assert cells.metadata["classifier_sha256"] == sha256(folder / "model.safetensors")
    # the shipped one again: its name and weights are recorded instead
    widget.typing.value = "classifier"
    _run(qtbot, widget)
    assert set(cells.features["cell_type"]) - {"unidentified", "not_wbc"}
    assert cells.metadata["classifier"] == "celltype"
    assert cells.metadata["classifier_sha256"] == sha256(SHIPPED / "celltype" / "model.safetensors")


def test_cancel_leaves_no_result(viewer, qtbot, trained_model, notifications):
    viewer.open_sample("napari-wbc", "two_cells")
    widget = _widget(viewer)
    assert widget.run() is not None
    assert widget.cancel_button.enabled
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert [layer.name for layer in viewer.layers] == [SAMPLE]
    assert widget.status.value == "cancelled"
    assert ("info", "segmentation cancelled") in notifications
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_grayscale_layer_is_refused_with_a_notification(viewer, notifications):
    viewer.add_image(np.zeros((64, 64), np.uint8), name="gray")
    widget = _widget(viewer)
    assert widget.run() is None
    errors = _errors(notifications)
    assert len(errors) == 1
    assert "'gray' is not a single RGB colour image" in errors[0]
    assert [layer.name for layer in viewer.layers] == ["gray"]
    assert widget.worker is None and widget.run_button.enabled


def test_gray_rgb_layer_gets_a_warning(viewer, qtbot, trained_model, notifications):
    """An RGB layer without colour (a grayscale file, converted) is segmented, with a warning."""
    image = viewer.open_sample("napari-wbc", "two_cells")[0]
    gray = np.asarray(image.data).mean(axis=2).astype(np.uint8)
    viewer.add_image(np.repeat(gray[..., None], 3, axis=2), name="gray field", rgb=True)
    widget = _widget(viewer)
    widget.image.value = viewer.layers["gray field"]
    assert widget.run() is not None
    widget.cancel_button.clicked.emit()  # the warning is said when the run starts
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    warnings = [message for severity, message in notifications if "warning" in severity]
    assert len(warnings) == 1 and warnings[0].startswith("gray field: grayscale image")
    assert "unreliable" in warnings[0]


def test_no_image_is_refused_with_a_notification(viewer, notifications):
    widget = _widget(viewer)
    assert widget.image.value is None
    widget.run_button.clicked.emit()
    errors = _errors(notifications)
    assert len(errors) == 1 and "open a smear image first" in errors[0]


def test_missing_model_is_refused_with_a_notification(viewer, notifications, monkeypatch, tmp_path):
    import napari_wbc.models as models

    monkeypatch.setattr(models, "SHIPPED", tmp_path / "no-shipped-weights")
    monkeypatch.setenv("NAPARI_WBC_HOME", str(tmp_path / "no-user-weights"))
    viewer.open_sample("napari-wbc", "two_cells")
    widget = _widget(viewer)
    # every architecture is listed, marked as untrained, and none is picked for the user
    assert set(widget.model.choices) == {"mifnet", "wbcnet", "wcsegnet", "leukocytemask", "yolact_cis"}
    combo = widget.model.native
    assert all("not trained yet" in combo.itemText(i) for i in range(combo.count()))
    assert "no trained model" in widget.status.value
    widget.model.value = "wbcnet"
    assert widget.run() is None
    errors = _errors(notifications)
    assert len(errors) == 1
    assert "no trained weights" in errors[0] and "napari-wbc train --model wbcnet" in errors[0]
    assert [layer.name for layer in viewer.layers] == [SAMPLE]


def test_model_list_marks_architectures_without_weights(viewer):
    widget = _widget(viewer)
    combo = widget.model.native
    labels = {combo.itemData(i): combo.itemText(i) for i in range(combo.count())}
    assert widget.model.value == "mifnet" and labels["mifnet"] == "mifnet"
    assert labels["wcsegnet"] == "wcsegnet (not trained yet)"


def test_failure_in_the_worker_becomes_a_notification(
    viewer, qtbot, trained_model, notifications, monkeypatch
):
    import napari_wbc.core.inference as inference

    def broken(*args, **kwargs):
        yield 0, 3, "running the network"
        raise RuntimeError("out of memory")

    monkeypatch.setattr(inference, "segment", broken)
    viewer.open_sample("napari-wbc", "two_cells")
    widget = _widget(viewer)
    _run(qtbot, widget)
    assert _errors(notifications) == ["segmentation failed: out of memory"]
    assert [layer.name for layer in viewer.layers] == [SAMPLE]
    assert widget.status.value == "failed" and widget.run_button.enabled


def test_image_choice_follows_the_active_layer(viewer):
    sample = viewer.open_sample("napari-wbc", "two_cells")[0]
    other = viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="other", rgb=True)
    widget = _widget(viewer)
    viewer.add_labels(np.zeros((64, 64), np.uint32), name="not an image")
    assert [layer.name for layer in widget.image.choices] == [SAMPLE, "other"]
    viewer.layers.selection.active = sample
    assert widget.image.value == sample
    viewer.layers.selection.active = other
    assert widget.image.value == other
    viewer.layers.selection.active = viewer.layers["not an image"]
    assert widget.image.value == other  # labels are not offered


# A 1080-px screen leaves about 1000 px to a window (a desktop panel, the title bar), of which
# napari's menu and status bars take some 60 and each dock's title bar and splitter some 26.
DOCKS = {  # display name: the most height (px) its widget may ask for
    "Segment white cells": 200,  # whole (its options folded): the count in its status stays in view
    "Cell measurements": 180,  # the table's header and three rows
    "Review against a reference": 160,  # these two scroll below DOCK_MIN_HEIGHT
    "Correct cells": 160,
    "Fine-tune a model": 160,  # its settings folded, its loss plot in the scrolling form
}


def test_the_docks_fit_a_1080p_screen(make_napari_viewer_proxy, qtbot):
    from napari_wbc._widgets._layers import DOCK_MIN_HEIGHT

    viewer = make_napari_viewer_proxy(show=True)
    window = viewer.window._qt_window
    widgets = {name: viewer.window.add_plugin_dock_widget("napari-wbc", name)[1] for name in DOCKS}
    heights = {name: widget.native.minimumSizeHint().height() for name, widget in widgets.items()}
    for name, most in DOCKS.items():
        assert heights[name] <= most, f"{name} asks for {heights[name]} px"
    for name in ("Correct cells", "Review against a reference", "Fine-tune a model"):
        assert heights[name] == DOCK_MIN_HEIGHT, name
    assert sum(sorted(heights.values())[-3:]) <= 560  # any three docks: well under 1000 - 60 - 3 * 26
    # all five docked: the window still fits the screen
    assert window.minimumSizeHint().height() <= 1000
    window.resize(1920, 1000)
    qtbot.waitUntil(lambda: window.height() == 1000 and viewer.canvas.size[0] > 800, timeout=5_000)
    # the folded options of Segment: there, and one click away
    segment = widgets["Segment white cells"]
    assert not segment.settings.expanded and not segment.device.native.isVisible()
    segment.settings.toggle.clicked.emit()
    qtbot.waitUntil(lambda: segment.device.native.isVisible(), timeout=5_000)
    assert segment.settings.expanded and segment.settings.toggle.text.startswith("▾")
