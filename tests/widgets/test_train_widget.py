"""Train widget: a few fine-tuning steps on a folder saved by the correction tool; Cancel."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from napari_wbc._widgets.correct import CorrectWidget
from napari_wbc._widgets.segment import SegmentWidget
from napari_wbc._widgets.train import TrainWidget
from napari_wbc.core.measure import measure_cells

pytestmark = pytest.mark.gui

TIMEOUT_MS = 180_000  # a handful of CPU steps; the machine may be busy


@pytest.fixture
def models_home(tmp_path, monkeypatch):
    """A private user model folder (NAPARI_WBC_HOME), empty."""
    monkeypatch.setenv("NAPARI_WBC_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "models"


def _saved_folder(viewer, tmp_path):
    """A training folder written by Save as training data: a small field with three cells."""
    rng = np.random.default_rng(0)
    image = np.zeros((96, 128, 3), np.uint8)
    image[:] = (220, 170, 170)
    cells = np.zeros((96, 128), np.uint32)
    nuclei = np.zeros_like(cells)
    for label, (y, x) in enumerate([(30, 30), (60, 90), (70, 30)], start=1):
        yy, xx = np.ogrid[:96, :128]
        cells[(yy - y) ** 2 + (xx - x) ** 2 < 15**2] = label
        nuclei[(yy - y) ** 2 + (xx - x) ** 2 < 7**2] = label
    image[cells > 0] = (200, 180, 210)
    image[nuclei > 0] = (90, 40, 140)
    image = np.clip(image + rng.integers(-8, 8, image.shape), 0, 255).astype(np.uint8)
    viewer.add_image(image, name="field", rgb=True)
    meta = {"source_layer": "field", "model": "mifnet"}
    viewer.add_labels(nuclei, name="field nuclei", metadata=meta)
    table = measure_cells(cells, nuclei)
    viewer.add_labels(cells, name="field cells", metadata=meta, features=table.assign(index=table["label"]))
    correct = CorrectWidget(viewer)
    folder = tmp_path / "corrected"
    correct.save(folder)
    return folder


@pytest.fixture
def setup(make_napari_viewer_proxy, models_home, tmp_path):
    viewer = make_napari_viewer_proxy()
    folder = _saved_folder(viewer, tmp_path)
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="segment")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="train")
    widget.folders.value = str(folder)
    widget.batch_size.value, widget.patch.value, widget.steps.value = 2, 64, 4
    widget.device.value = "cpu"
    return viewer, segment, widget


def test_fine_tune_makes_a_new_model_the_segment_widget_offers(
    setup, qtbot, models_home, notifications, trained_model
):
    from napari_wbc.models import available_weights, sha256

    _, segment, widget = setup
    shipped = available_weights()[trained_model]
    before = sha256(shipped / "model.safetensors")
    assert widget.init.value == trained_model
    assert widget.run() is not None
    assert widget.cancel_button.enabled and not widget.run_button.enabled
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert [m for s, m in notifications if "error" in s] == []

    (folder,) = list(models_home.iterdir())
    assert re.fullmatch(r"mifnet-ft-\d{8}-\d{6}", folder.name)
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["CARD.md", "config.json", "history.json", "model.safetensors"]
    assert "mifnet: trained weights" in (folder / "CARD.md").read_text()
    config = json.loads((folder / "config.json").read_text())
    assert config["name"] == "mifnet" and "trained" not in config
    tuned = config["fine_tuned"]
    assert tuned["from"] == trained_model and tuned["from_sha256"] == before and tuned["steps"] == 4
    assert tuned["data"] == [widget.folders.value]
    assert sha256(shipped / "model.safetensors") == before  # the base weights are never written
    assert not (models_home.parent / "training" / folder.name).exists()  # no staging left

    assert widget.progress_bar.value == widget.progress_bar.max == 4
    assert [step for step, _ in widget.plot.loss] == [1, 2, 3, 4]
    assert widget.status.value == f"new model {folder.name}"
    # the Segment widget offers the new model, and can load and run it
    assert folder.name in segment.model.choices
    assert folder.name in widget.init.choices
    segment.model.value = folder.name
    assert segment.run() is not None
    qtbot.waitUntil(lambda: segment.worker is None, timeout=TIMEOUT_MS)
    assert [m for s, m in notifications if "error" in s] == []
    assert "field cells" in segment._viewer.layers


def test_cancel_discards_the_run(setup, qtbot, models_home, notifications):
    _, _, widget = setup
    widget.steps.value = 100_000
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.progress_bar.value >= 1, timeout=TIMEOUT_MS)
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert widget.status.value == "cancelled; no new model"
    assert ("info", "fine-tuning cancelled; nothing was saved") in notifications
    assert not models_home.exists() or not list(models_home.iterdir())
    assert not list((models_home.parent / "training").iterdir())
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_bad_requests_are_refused(setup, models_home, notifications, tmp_path):
    _, _, widget = setup
    widget.folders.value = str(tmp_path / "nothing here")
    assert widget.run() is None
    assert "not a dataset folder" in notifications[-1][1]
    widget.folders.value = ""
    assert widget.run() is None
    assert "add a training folder" in notifications[-1][1]
    widget.folders.value = str(tmp_path / "corrected")
    widget.model_name.value = widget.init.value  # the shipped model's own name
    assert widget.run() is None
    assert "exists already" in notifications[-1][1]
    assert not models_home.exists()


def test_segment_model_list_refreshes_when_opened(
    make_napari_viewer_proxy, models_home, qtbot, trained_model
):
    """A model that appears in the user folder by other means (the CLI) shows up on opening the list."""
    import shutil

    from qtpy.QtCore import Qt

    from napari_wbc.models import available_weights

    viewer = make_napari_viewer_proxy()
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="segment")
    assert "mifnet-cli" not in segment.model.choices
    shutil.copytree(available_weights()[trained_model], models_home / "mifnet-cli")
    qtbot.mousePress(segment.model.native, Qt.MouseButton.LeftButton)
    segment.model.native.hidePopup()
    assert "mifnet-cli" in segment.model.choices and segment.model.value == trained_model


def test_base_datasets_are_found_in_a_parent_folder(tmp_path, make_napari_viewer_proxy):
    from napari_wbc._widgets.train import dataset_folders

    folder = _saved_folder(make_napari_viewer_proxy(), tmp_path)  # tmp_path/corrected
    (tmp_path / "not a dataset").mkdir()
    assert dataset_folders("", base=tmp_path) == [folder]
    assert dataset_folders(f"{folder}; ", base=folder) == [folder]
