"""Train widget: a few fine-tuning steps on a folder saved by the correction tool; Cancel;
no run without a val split; the cell-type classifier fine-tuned from type corrections; an
untrained architecture trained from scratch in the widget."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from napari_wbc._widgets.correct import CorrectWidget
from napari_wbc._widgets.segment import SegmentWidget
from napari_wbc._widgets.train import CLASSIFIER_FINE_TUNE, TrainWidget, Untrained
from napari_wbc.core.dataset import save_training_pair
from napari_wbc.core.measure import measure_cells

pytestmark = pytest.mark.gui

TIMEOUT_MS = 180_000  # a handful of CPU steps; the machine may be busy


@pytest.fixture
def models_home(tmp_path, monkeypatch):
    """A private user model folder (NAPARI_WBC_HOME), empty."""
    monkeypatch.setenv("NAPARI_WBC_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "models"


def _field():
    """A small field with three cells: image, cells, nuclei."""
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
    return image, cells, nuclei


def _saved_folder(viewer, tmp_path):
    """A training folder written by Save as training data (a small field with three cells),
    with a second pair kept for validation."""
    image, cells, nuclei = _field()
    viewer.add_image(image, name="field", rgb=True)
    meta = {"source_layer": "field", "model": "mifnet"}
    viewer.add_labels(nuclei, name="field nuclei", metadata=meta)
    table = measure_cells(cells, nuclei)
    viewer.add_labels(cells, name="field cells", metadata=meta, features=table.assign(index=table["label"]))
    correct = CorrectWidget(viewer)
    folder = tmp_path / "corrected"
    correct.save(folder)
    save_training_pair(
        folder, image[:, ::-1], cells[:, ::-1], nuclei[:, ::-1], {"source": "val"}, split="val"
    )
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
    widget.model_name.value = "celltype"  # the shipped classifier's
    assert widget.run() is None
    assert "exists already" in notifications[-1][1]
    assert not models_home.exists()


def test_no_run_without_a_val_split(setup, models_home, notifications, tmp_path):
    """A fine-tune that could not be validated is refused, saying what to do."""
    _, _, widget = setup
    image, cells, nuclei = _field()
    save_training_pair(tmp_path / "no val", image, cells, nuclei, {"source": "field"})
    widget.folders.value = str(tmp_path / "no val")
    assert widget.run() is None and widget.worker is None
    assert "no val pairs, so the new model could not be validated" in notifications[-1][1]
    assert "save at least 5 fields" in notifications[-1][1]
    # mixing in base datasets does not stand in for a val part of the user's own data
    widget.base.value, widget.base_folder.value = True, tmp_path / "corrected"
    assert widget.run() is None
    assert "no val pairs" in notifications[-1][1]
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


def _corrections(datasets, folder, n_fields):
    """A type corrections folder: the reference white cells of bccd val fields of one type,
    each reviewed (the field's type given instead of another suggestion)."""
    import pandas as pd
    from scipy import ndimage

    from napari_wbc.core.corrections import save_type_corrections
    from napari_wbc.core.dataset import CELL_TYPES, image_cell_types, list_pairs, load_pair

    types = image_cell_types(datasets / "bccd")
    for pair in [p for p in list_pairs(datasets / "bccd", "val") if p.stem in types][:n_fields]:
        image, label = load_pair(pair)
        cells = ndimage.label(label > 0)[0].astype(np.uint32)
        nuclei = np.where(label == 2, cells, 0).astype(np.uint32)
        other = next(t for t in CELL_TYPES if t != types[pair.stem])
        table = pd.DataFrame({"label": range(1, int(cells.max()) + 1)}).assign(
            cell_type=types[pair.stem],
            suggested_type=other,
            review_status="reclassified",
            reviewed_by="tester",
            reviewed_at="2026-11-30T10:00:00+00:00",
        )
        save_type_corrections(folder, image, cells, nuclei, table, {"source": str(pair.image)})
    return folder


def test_classifier_fine_tunes_from_type_corrections(
    setup, qtbot, models_home, notifications, tmp_path, datasets
):
    from napari_wbc.models import available_weights, load_model, sha256

    _, _, widget = setup
    shipped = available_weights(classifiers=True)["celltype"]
    before = sha256(shipped / "model.safetensors")
    widget.init.value = "celltype"
    steps, batch, _, lr, val_every = CLASSIFIER_FINE_TUNE
    assert (widget.steps.value, widget.batch_size.value, widget.lr.value) == (steps, batch, lr)
    assert widget.patch.native.isHidden() and "type corrections" in widget.plan.value
    folder = _corrections(datasets, tmp_path / "type_corrections", 1)
    widget.folders.value = str(folder)
    # one field: none kept for validation, so no run
    assert widget.run() is None
    assert "none kept for validation" in notifications[-1][1]
    _corrections(datasets, folder, 2)  # the first again (unchanged), and a second: kept for val
    widget.steps.value, widget.batch_size.value, widget.val_every.value = 3, 8, 2
    refused = len(notifications)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert [m for s, m in notifications[refused:] if "error" in s] == []

    (model,) = list(models_home.iterdir())
    assert re.fullmatch(r"celltype-ft-\d{8}-\d{6}", model.name)
    assert sorted(p.name for p in model.iterdir()) == [
        "CARD.md",
        "config.json",
        "history.json",
        "model.safetensors",
    ]
    net, spec = load_model(weights=model)  # a classifier that loads
    start = load_model("celltype")[1].extra["unidentified_below"]  # the shipped classifier's
    assert spec.name == "celltype" and spec.extra["unidentified_below"] == start
    tuned = json.loads((model / "config.json").read_text())["fine_tuned"]
    assert tuned["from"] == "celltype" and tuned["from_sha256"] == before and tuned["steps"] == 3
    assert tuned["run"]["corrections"] == {"train": 1, "val": 1}
    assert sha256(shipped / "model.safetensors") == before
    assert widget.progress_bar.value == widget.progress_bar.max == 3
    assert widget.status.value.startswith(f"new model {model.name}")
    assert any("--classifier-weights" in m for s, m in notifications if s == "info")
    assert model.name in widget.init.choices


def test_an_untrained_architecture_trains_from_scratch_in_the_widget(
    setup, qtbot, models_home, notifications
):
    """No terminal: picking an architecture without weights says what Train will do, and
    Train trains it; Segment then offers it as a trained model."""
    _, segment, widget = setup

    def segment_labels():
        return [segment.model.native.itemText(i) for i in range(segment.model.native.count())]

    assert "wbcnet (not trained yet)" in segment_labels()
    widget.init.value = "celltype"
    assert widget.patch.native.isHidden()
    widget.init.value = Untrained("wbcnet")
    assert "wbcnet has no weights yet: Train trains it here from scratch" in widget.plan.value
    assert "hours on a CPU" in widget.plan.value and widget.run_button.text == "Train from scratch"
    assert not widget.patch.native.isHidden()  # shown again
    widget.steps.value, widget.batch_size.value, widget.patch.value, widget.val_every.value = 2, 2, 64, 2
    assert widget.run() is not None
    assert widget.status.value.startswith("training wbcnet from scratch into wbcnet on cpu")
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert [m for s, m in notifications if "error" in s] == []
    (model,) = list(models_home.iterdir())
    assert model.name == "wbcnet"
    config = json.loads((model / "config.json").read_text())
    assert config["name"] == "wbcnet" and config["trained"]["from"] == "scratch"
    assert config["trained"]["steps"] == 2 and config["trained"]["best"]["step"] == 2  # validated
    assert widget.status.value == "new model wbcnet"
    assert "wbcnet" in segment_labels() and "wbcnet (not trained yet)" not in segment_labels()
    assert "wbcnet" in widget.init.choices and Untrained("wbcnet") not in widget.init.choices
