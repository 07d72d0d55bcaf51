"""Segment widget on a small whole slide: tiled run, lazy multiscale results, preview, cancel and resume."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_wbc._widgets.segment import SegmentWidget
from napari_wbc.core.work_folder import WorkFolder

pytestmark = pytest.mark.gui

NAME = "small"
TIMEOUT_MS = 180_000  # generous: a run takes ~20 s on two busy cores
SAMPLES = Path(__file__).resolve().parents[2] / "src" / "napari_wbc" / "sample_data"


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory) -> Path:
    """1080 x 1400 px pyramidal OME-TIFF (0.1 um/px) of the bundled fields: 2 x 2 tiles (1024 px cores)."""
    from napari_wbc.core.slide import build_mosaic_slide

    path = tmp_path_factory.mktemp("slide") / f"{NAME}.ome.tif"
    return build_mosaic_slide(
        path, sorted(SAMPLES.glob("*.jpg")), grid=(2, 2), gap=40, border=40, pixel_size=0.1
    )


@pytest.fixture(autouse=True)
def _two_by_two_tiles(monkeypatch):
    """The bundled fields' cells (up to 170 px wide) set the small slide's scale (about 0.6-0.7),
    so that tiles of 600 working px are 768-1024 slide px: 2 x 2 tiles on the small slide."""
    monkeypatch.setattr("napari_wbc.core.wholeslide.WORK_TILE", 600)


@pytest.fixture
def viewer(make_napari_viewer_proxy):
    return make_napari_viewer_proxy()


def _open(viewer, path):
    layers = viewer.open(str(path), plugin="napari-wbc")
    assert len(layers) == 1
    return layers[0]


def _widget(viewer, out: Path) -> SegmentWidget:
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="segment")
    widget.output.value = out
    return widget


def _errors(notifications):
    return [message for severity, message in notifications if "error" in severity]


class _Steps:
    """Wraps core.wholeslide.segment_slide: records its messages (in the worker thread) and can
    hold the run after its first classified tile until the test lets it go on."""

    def __init__(self, monkeypatch, hold: bool = False):
        import napari_wbc.core.wholeslide as wholeslide

        self.messages: list[str] = []
        self.held, self.go_on = threading.Event(), threading.Event()
        self.hold = hold
        real = wholeslide.segment_slide

        def wrapped(*args, **kwargs):
            steps = real(*args, **kwargs)
            try:
                while True:
                    step = next(steps)
                    self.messages.append(step[2])
                    if self.hold and step[2].endswith(": classified"):
                        self.hold = False
                        self.held.set()
                        assert self.go_on.wait(60), "the test never let the run go on"
                    yield step
            except StopIteration as stop:
                return stop.value
            finally:
                steps.close()

        monkeypatch.setattr(wholeslide, "segment_slide", wrapped)

    def tiles(self, what: str) -> set[int]:
        found = (re.match(rf"tile (\d+)/\d+: {what}", s) for s in self.messages)
        return {int(m.group(1)) for m in found if m}


def _check_results(viewer, out: Path, image) -> tuple:
    cells_layer, nuclei_layer = viewer.layers[f"{NAME} cells"], viewer.layers[f"{NAME} nuclei"]
    assert [layer.name for layer in viewer.layers] == [NAME, f"{NAME} nuclei", f"{NAME} cells"]
    for layer, kind in ((cells_layer, "cells"), (nuclei_layer, "nuclei")):
        assert layer.multiscale
        assert layer.data[0].shape == image.data[0].shape[:2]
        assert len(layer.data) > 1 and not isinstance(layer.data[0], np.ndarray)  # lazy levels
        written = tifffile.imread(out / f"{NAME}_{kind}.tif")  # level 0 of the pyramid
        np.testing.assert_array_equal(np.asarray(layer.data[0]), written)
        assert tuple(layer.scale) == tuple(image.scale)
    cells, nuclei = np.asarray(cells_layer.data[0]), np.asarray(nuclei_layer.data[0])
    ids = np.unique(cells[cells > 0])
    assert len(ids) >= 4  # the fields hold white cells (two per field in the two samples)
    assert np.array_equal(cells[nuclei > 0], nuclei[nuclei > 0])
    features = cells_layer.features
    table = pd.read_csv(out / f"{NAME}_cells.csv")
    assert len(features) == len(table) == len(ids)
    assert sorted(features["label"]) == list(ids)
    assert list(features["index"]) == list(features["label"])
    return cells_layer, ids


def test_segment_a_small_slide(
    viewer, qtbot, trained_model, notifications, small_slide, tmp_path, monkeypatch
):
    image = _open(viewer, small_slide)
    assert image.multiscale and image.metadata["slide"] == str(small_slide)
    widget = _widget(viewer, tmp_path / "default-replaced")
    assert not widget.output.native.isHidden()  # the output folder is asked for slides only
    out = tmp_path / "out"
    widget.output.value = out
    inserted = []
    viewer.layers.events.inserted.connect(lambda event: inserted.append(event.value.name))
    steps = _Steps(monkeypatch)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert _errors(notifications) == []
    cells_layer, ids = _check_results(viewer, out, image)
    assert f"{NAME} preview" in inserted  # the class map showed up while the tiles were done ...
    assert f"{NAME} preview" not in viewer.layers  # ... and gave way to the results
    assert steps.messages[-1] == "done" and len(steps.tiles("cells separated")) == 4
    assert widget.status.value.startswith(f"{len(ids)} white cells") and str(out) in widget.status.tooltip
    assert any(str(out) in message for _, message in notifications)
    assert widget.progress_bar.value == widget.progress_bar.max > 0
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert not WorkFolder(out, NAME).path.exists()

    # the measurement table shows the slide's cells, one row per cell
    _, table = viewer.window.add_plugin_dock_widget("napari-wbc", "Cell measurements")
    assert table.layer.value == cells_layer
    assert table.table.rowCount() == len(ids)
    assert table.summary.value.startswith(f"{len(ids)} white cells")
    # hovering a cell at full resolution shows its id
    cells = np.asarray(cells_layer.data[0])
    pixel = tuple(int(v) for v in np.argwhere(cells == ids[0])[0])
    value = cells_layer.get_value(cells_layer.data_to_world(pixel), world=True)
    assert value is not None


def test_cancel_keeps_finished_tiles_and_a_rerun_resumes(
    viewer, qtbot, trained_model, notifications, small_slide, tmp_path, monkeypatch
):
    image = _open(viewer, small_slide)
    out = tmp_path / "out"
    widget = _widget(viewer, out)
    first = _Steps(monkeypatch, hold=True)
    assert widget.run() is not None
    qtbot.waitUntil(first.held.is_set, timeout=TIMEOUT_MS)  # the first tile is classified
    assert widget.cancel_button.enabled
    widget.cancel_button.clicked.emit()  # while the run is at its first classified tile
    first.go_on.set()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert _errors(notifications) == []
    assert widget.status.value.startswith("cancelled") and str(out) in widget.status.tooltip
    assert ("info", "segmentation cancelled") in notifications
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert f"{NAME} cells" not in viewer.layers and not (out / f"{NAME}_cells.tif").exists()
    kept = {i + 1 for i in WorkFolder(out, NAME).classified_tiles()}
    assert first.tiles("classified") == kept - first.tiles("no nuclei, skipped")
    assert len(first.tiles("classified")) == 1 and len(kept) < 4
    assert first.tiles("cells separated") == set()
    preview = viewer.layers[f"{NAME} preview"]  # what was classified stays in view
    assert np.asarray(preview.data).max() > 0

    rerun = _Steps(monkeypatch)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert _errors(notifications) == []
    redone = rerun.tiles("classified") | rerun.tiles("no nuclei, skipped")
    assert redone == {1, 2, 3, 4} - kept  # the finished tiles were not done again
    assert rerun.messages[-1] == "done"
    _check_results(viewer, out, image)


def test_a_slide_is_typed_by_a_fine_tuned_classifier(
    viewer, qtbot, trained_model, notifications, small_slide, tmp_path, monkeypatch
):
    """The classifier chosen in "cell types", fine-tuned, types a slide's cells as a field's,
    and the cells layer records which one (its name and weights' sha256)."""
    import dataclasses

    from napari_wbc._widgets.segment import TunedClassifier
    from napari_wbc.models import load_model, save_model, sha256, user_model_dir

    monkeypatch.setenv("NAPARI_WBC_HOME", str(tmp_path / "home"))
    # a fine-tuned classifier where the Train widget saves it; it calls every white cell
    # unidentified, so the cells say which classifier typed them
    net, spec = load_model("celltype", device="cpu")  # cached: the shipped spec is left alone
    spec = dataclasses.replace(spec, extra={**spec.extra, "unidentified_below": 1.01})
    folder = save_model(net, spec, user_model_dir() / "celltype-ft-slide")
    _open(viewer, small_slide)
    out = tmp_path / "out"
    widget = _widget(viewer, out)
    tuned = TunedClassifier("celltype-ft-slide", str(folder))
    widget.typing.reset_choices()
    widget.typing.value = tuned
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert _errors(notifications) == []
    cells = viewer.layers[f"{NAME} cells"]
    kinds = set(cells.features["cell_type"])
    assert "unidentified" in kinds and kinds <= {"unidentified", "not_wbc"}
    assert set(pd.read_csv(out / f"{NAME}_cells.csv")["cell_type"]) == kinds
    assert cells.metadata["classifier"] == "celltype-ft-slide"
    assert cells.metadata["classifier_sha256"] == sha256(folder / "model.safetensors")
