"""Cell gallery on a real bccd field segmented and typed by the shipped models: thumbnails by
type, keys that review, the differential, sign-off and the report, and a review that resumes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from qtpy.QtCore import Qt

from napari_wbc._widgets.gallery import ZOOM_FIT, ZOOM_MAX, GalleryWidget
from napari_wbc._widgets.gallery_view import GROUPS, STATUS_ROLE, TITLES
from napari_wbc._widgets.measure import MeasureWidget
from napari_wbc.core.dataset import NOT_WBC, UNIDENTIFIED
from napari_wbc.core.measure import count_summary, describe_counts

pytestmark = pytest.mark.gui

FIELD = "BloodImage_00111"  # a bccd field with several objects: 3 white cells, 5 the classifier excludes
REVIEWER = "A. Hematologist"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def segmented(datasets, trained_model):
    """The field segmented and typed once, as the Segment widget does: (path, cells, nuclei, table)."""
    from napari_wbc.core.celltypes import load_classifier
    from napari_wbc.core.inference import run, segment
    from napari_wbc.core.measure import measure_cells
    from napari_wbc.models import load_model

    path = datasets / "bccd" / "images" / f"{FIELD}.jpg"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    net, spec = load_model(trained_model, device="cpu")
    result = run(segment(rgb, net, spec, classifier=load_classifier("classifier", "cpu")))
    table = measure_cells(result.cells, result.nuclei, None, types=result.types, type_probs=result.type_probs)
    return path, result.cells, result.nuclei, table


def _add_layers(viewer, image_layer, cells, nuclei, table, model="mifnet"):
    """The labels layers the Segment widget adds for ``image_layer``."""
    name = image_layer.name
    viewer.add_labels(nuclei, name=f"{name} nuclei", opacity=0.6)
    layer = viewer.add_labels(
        cells,
        name=f"{name} cells",
        features=table.assign(index=table["label"]),
        metadata={
            "counts": count_summary(table),
            "source_layer": name,
            "source": image_layer.metadata["source"],
            "model": model,
            "pixel_size": None,
        },
    )
    layer.contour = 2
    return layer


@pytest.fixture
def field(make_napari_viewer_proxy, segmented, tmp_path, trained_model):
    """A viewer with the field (opened from a copy in tmp_path, where its review goes) and its
    cells and nuclei layers; the gallery docked on them."""
    path, cells, nuclei, table = segmented
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    viewer = make_napari_viewer_proxy(show=True)
    image = viewer.open(copy, plugin="napari-wbc")[0]
    layer = _add_layers(viewer, image, cells, nuclei, table, trained_model)
    gallery = GalleryWidget(viewer)
    viewer.window.add_dock_widget(gallery, name="Cell gallery")
    return viewer, layer, gallery, table


def _features(layer) -> pd.DataFrame:
    return layer.features.set_index("label")


def _click(qtbot, gallery, label, modifier=Qt.KeyboardModifier.NoModifier):
    gallery.view.scrollTo(gallery.model.index_of(label))
    rect = gallery.view.visualRect(gallery.model.index_of(label))
    assert rect.isValid() and gallery.view.viewport().rect().contains(rect.center())
    qtbot.mouseClick(gallery.view.viewport(), Qt.MouseButton.LeftButton, modifier, rect.center())


def _key(qtbot, gallery, key):
    qtbot.keyClick(gallery.view, key)


def _review_every_cell(qtbot, gallery, unidentified_key):
    """Enter on every cell, then ``unidentified_key`` (a type) on the unidentified ones."""
    gallery.select_cells(gallery.model.cell_order())
    _key(qtbot, gallery, Qt.Key.Key_Return)
    unidentified = gallery.model.groups().get(UNIDENTIFIED, [])
    if unidentified:
        gallery.select_cells(unidentified)
        _key(qtbot, gallery, unidentified_key)


def _pixels(image) -> np.ndarray:
    """A QImage's pixels as an (h, w, 3) uint8 array."""
    image = image.convertToFormat(image.Format.Format_RGB888)
    bits = image.constBits()
    bits.setsize(image.sizeInBytes())
    rows = np.frombuffer(bits, np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, : 3 * image.width()].reshape(image.height(), image.width(), 3).copy()


def _status(gallery, label):
    return gallery.model.index_of(label).data(STATUS_ROLE)


def test_thumbnails_are_the_cells_by_type(field, qtbot):
    from napari_wbc.core.thumbnails import thumbnails

    viewer, layer, gallery, table = field
    assert gallery.layer == layer
    groups = gallery.model.groups()
    # one thumbnail per cell, in its type's group; groups in the analyser's order
    assert sorted(label for labels in groups.values() for label in labels) == sorted(table["label"])
    for group, labels in groups.items():
        expected = table[table["cell_type"] == group]
        assert sorted(labels) == sorted(expected["label"])
        # least sure first
        confidence = expected.set_index("label").loc[labels, "type_confidence"].to_numpy()
        assert np.all(np.diff(confidence) >= 0)
        assert gallery.model.header_text(group) == (
            f"{TITLES[group]}: {len(expected)}"
            if group != NOT_WBC
            else f"{TITLES[group]} (excluded from the count): {len(expected)}"
        )
    assert list(groups) == [g for g in GROUPS if g in groups]
    assert NOT_WBC in groups and len(groups) >= 3  # this field has white cells of two types and debris
    counts = count_summary(table)
    assert gallery.differential.text() == describe_counts(counts)
    assert gallery.progress.text() == f"reviewed 0 of {len(table)} ({len(table)} to go)"
    assert all(_status(gallery, label) == "suggested" for label in table["label"])

    # the thumbnails are made off the GUI thread for the cells on screen: each shows its own cell
    order = gallery.model.cell_order()
    made = {}

    def shown():
        on_screen = gallery.view.visible_labels()
        assert on_screen == [label for label in order if gallery.view.is_visible(label)]
        made.update({label: gallery.thumbs.cached(label) for label in on_screen})
        return on_screen and all(made[label] is not None for label in on_screen)

    qtbot.waitUntil(shown, timeout=TIMEOUT_MS)
    while set(made) != set(order):  # scroll down a screen at a time
        bar = gallery.view.verticalScrollBar()
        assert bar.value() < bar.maximum(), f"cells never on screen: {set(order) - set(made)}"
        bar.setValue(bar.value() + bar.pageStep())
        qtbot.waitUntil(shown, timeout=TIMEOUT_MS)
    assert gallery.message.text() == ""
    rgb = np.asarray(viewer.layers[layer.name.removesuffix(" cells")].data)
    want = thumbnails(
        rgb,
        np.asarray(layer.data),
        np.asarray(viewer.layers[layer.name.replace(" cells", " nuclei")].data),
        order,
        table=table,
    )
    for label, expected in zip(order, want, strict=True):
        assert np.array_equal(_pixels(made[label]), expected), f"thumbnail of cell {label}"

    # bigger thumbnails: the same crop in more pixels
    gallery.size_box.setCurrentIndex(gallery.size_box.findData(160))
    first = order[0]
    gallery.view.scrollTo(gallery.model.index_of(first))
    qtbot.waitUntil(lambda: gallery.thumbs.cached(first) is not None, timeout=TIMEOUT_MS)
    assert gallery.view.visualRect(gallery.model.index_of(first)).width() > 160
    big = _pixels(gallery.thumbs.cached(first))
    assert big.shape == (160, 160, 3)
    cells, nuclei = np.asarray(layer.data), np.asarray(viewer.layers[f"{FIELD} nuclei"].data)
    assert np.array_equal(big, thumbnails(rgb, cells, nuclei, [first], size=160, table=table)[0])


def test_selection_follows_the_viewer_and_the_table(field, qtbot):
    viewer, layer, gallery, table = field
    order = gallery.model.cell_order()
    first, other = order[0], order[-1]
    viewer.scene.camera.center = (0, 0)
    _click(qtbot, gallery, other)
    assert gallery.selected_cells() == [other]
    assert layer.selected_label == other
    row = table.set_index("label").loc[other]
    camera = viewer.scene.camera
    assert np.allclose(camera.center[-2:], (row["centroid_y"], row["centroid_x"]))
    # zoomed so that the cell is seen whole, and not as a dot
    for zoom in (0.01, 100.0):
        camera.zoom = zoom
        gallery.view.clearSelection()
        _click(qtbot, gallery, first if zoom > 1 else other)
        width = 2 * np.sqrt(table.set_index("label").loc[layer.selected_label, "cell_area_px"] / np.pi)
        shown = min(viewer.canvas.size) / camera.zoom  # data px across the canvas (scale 1)
        assert ZOOM_FIT * width <= shown <= ZOOM_MAX * width
    # picking a cell in the viewer (or a row of the Measurements table) highlights its thumbnail
    layer.selected_label = first
    assert gallery.selected_cells() == [first]
    measurements = MeasureWidget(viewer)
    viewer.window.add_dock_widget(measurements, name="measurements")
    measurements.table.selectRow(measurements.row_of(other))
    assert layer.selected_label == other
    assert gallery.selected_cells() == [other]


def test_keys_review_the_cells(field, qtbot, notifications):
    viewer, layer, gallery, table = field
    measurements = MeasureWidget(viewer)
    viewer.window.add_dock_widget(measurements, name="measurements")
    groups = gallery.model.groups()
    white = [label for group, labels in groups.items() if group != NOT_WBC for label in labels]
    target = white[0]
    suggested = _features(layer).loc[target, "cell_type"]

    # no name: nothing changes, the widget says why
    _click(qtbot, gallery, target)
    _key(qtbot, gallery, Qt.Key.Key_3)
    assert _features(layer).loc[target, "review_status"] == "suggested"
    assert "your name" in gallery.message.text()

    gallery.reviewer.setText(REVIEWER)
    _click(qtbot, gallery, target)
    _key(qtbot, gallery, Qt.Key.Key_3)  # monocyte
    features = _features(layer)
    assert features.loc[target, "cell_type"] == "monocyte"
    assert features.loc[target, "suggested_type"] == suggested
    assert features.loc[target, "review_status"] == "reclassified"
    assert features.loc[target, "reviewed_by"] == REVIEWER
    assert target in gallery.model.groups()["monocyte"]
    assert gallery.model.header_text("monocyte") == "monocyte: 1"
    assert _status(gallery, target) == "reclassified"
    assert "1 monocyte" in gallery.differential.text()
    assert gallery.differential.text() == describe_counts(count_summary(features.reset_index()))
    assert gallery.progress.text() == f"reviewed 1 of {len(table)} ({len(table) - 1} to go)"
    assert gallery.selected_cells() != [target]  # on to the next cell
    # the Measurements table shows the new type
    table_widget = measurements.table
    column = [
        table_widget.horizontalHeaderItem(c).data(Qt.ItemDataRole.UserRole)
        for c in range(table_widget.columnCount())
    ]
    row = measurements.row_of(target)
    assert measurements.table.item(row, column.index("cell_type")).text() == "monocyte"

    # X: not a white cell, out of the count
    before = layer.metadata["counts"]["white_cells"]
    _click(qtbot, gallery, target)
    _key(qtbot, gallery, Qt.Key.Key_X)
    assert _features(layer).loc[target, "review_status"] == "excluded"
    assert layer.metadata["counts"]["white_cells"] == before - 1
    assert target in gallery.model.groups()[NOT_WBC]
    assert _status(gallery, target) == "excluded"

    # Enter confirms the suggested type
    other = [label for label in white if label != target][0]
    _click(qtbot, gallery, other)
    _key(qtbot, gallery, Qt.Key.Key_Return)
    assert _features(layer).loc[other, "review_status"] == "confirmed"
    assert _status(gallery, other) == "confirmed"

    # arrows go from cell to cell, over the group headers
    groups = gallery.model.groups()
    first, second = list(groups)[:2]
    gallery.select_cells([groups[first][-1]])
    qtbot.keyClick(gallery.view, Qt.Key.Key_Right)
    assert gallery.selected_cells() == [groups[second][0]]
    assert layer.selected_label == groups[second][0]
    qtbot.keyClick(gallery.view, Qt.Key.Key_Left)
    assert gallery.selected_cells() == [groups[first][-1]]
    qtbot.keyClick(gallery.view, Qt.Key.Key_Down)  # the last row of its group: below is the next group
    assert gallery.selected_cells() == [groups[second][0]]
    qtbot.keyClick(gallery.view, Qt.Key.Key_Up)
    assert gallery.selected_cells()[0] in groups[first]

    # several at once: Shift+click, then U
    debris = gallery.model.groups()[NOT_WBC]
    _click(qtbot, gallery, debris[0])
    _click(qtbot, gallery, debris[2], Qt.KeyboardModifier.ShiftModifier)
    assert gallery.selected_cells() == debris[:3]
    _key(qtbot, gallery, Qt.Key.Key_U)
    features = _features(layer)
    assert (features.loc[debris[:3], "cell_type"] == UNIDENTIFIED).all()
    assert set(gallery.model.groups()[UNIDENTIFIED]) == set(debris[:3])
    assert f"{3} unidentified" in gallery.differential.text()
    # Shift+arrow extends the selection; 1 types both
    _click(qtbot, gallery, gallery.model.groups()[UNIDENTIFIED][0])
    qtbot.keyClick(gallery.view, Qt.Key.Key_Right, Qt.KeyboardModifier.ShiftModifier)
    pair = gallery.selected_cells()
    assert len(pair) == 2
    _key(qtbot, gallery, Qt.Key.Key_1)
    assert (_features(layer).loc[pair, "cell_type"] == "neutrophil").all()
    assert all(_status(gallery, label) == "reclassified" for label in pair)
    assert not [m for severity, m in notifications if "error" in severity]


def test_signoff_is_refused_until_every_cell_is_reviewed(field, qtbot, notifications, tmp_path):
    viewer, layer, gallery, table = field
    gallery.reviewer.setText(REVIEWER)
    assert gallery.sign_off() is None
    assert f"{len(table)} cells not reviewed yet" in gallery.message.text()
    assert any("warning" in s and "not reviewed yet" in m for s, m in notifications)
    assert not list(tmp_path.glob("*_report*"))

    # all but one confirmed; that one unidentified: still refused, for that reason
    order = gallery.model.cell_order()
    gallery.select_cells(order[:-1])
    _key(qtbot, gallery, Qt.Key.Key_Return)
    gallery.select_cells(order[-1:])
    _key(qtbot, gallery, Qt.Key.Key_U)
    assert gallery.progress.text() == f"reviewed {len(table)} of {len(table)}"
    assert gallery.sign_off() is None
    assert "1 cell unidentified" in gallery.message.text() and "not reviewed" not in gallery.message.text()

    gallery.select_cells(order[-1:])
    _key(qtbot, gallery, Qt.Key.Key_2)  # lymphocyte
    worker = gallery.sign_off()
    assert worker is not None
    qtbot.waitUntil(lambda: gallery.signoff_worker is None, timeout=TIMEOUT_MS)
    assert gallery.report is not None, gallery.message.text()
    assert gallery.report["html"] == tmp_path / f"{FIELD}_report.html"
    assert str(gallery.report["html"]) in gallery.message.text()
    assert any("info" in s and "signed off by" in m for s, m in notifications)

    # the report's counts are the table's
    features = layer.features
    counts = count_summary(features)
    report = pd.read_csv(gallery.report["csv"])
    differential = report[report["section"] == "differential"].set_index("type")
    for kind in ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", UNIDENTIFIED):
        assert differential.loc[kind, "count"] == counts[f"n_{kind}"] == (features["cell_type"] == kind).sum()
    total = report[report["section"] == "total"].set_index("type")
    assert (
        total.loc["white cells", "count"] == counts["white_cells"] == (features["cell_type"] != NOT_WBC).sum()
    )
    assert total.loc["excluded (not a white cell)", "count"] == (features["cell_type"] == NOT_WBC).sum()
    page = gallery.report["html"].read_text()
    assert page.count('src="data:image/') == len(table)  # every cell's thumbnail
    saved = json.loads((tmp_path / f"{FIELD}_review.json").read_text())
    assert saved["meta"]["signoff"]["reviewer"] == REVIEWER
    assert saved["meta"]["signoff"]["counts"]["white_cells"] == counts["white_cells"]
    assert saved["meta"]["models"]["mifnet"]  # the weights' sha256
    # the reviewed cells are classifier training data now, with where they came from
    from napari_wbc._widgets.gallery import corrections_folder
    from napari_wbc.core.corrections import read_corrections, validate_corrections

    records = read_corrections(corrections_folder())
    assert validate_corrections(corrections_folder()) == []
    assert sorted(gallery.corrections["saved"]) == sorted(r["id"] for r in records)
    learnable = features[features["cell_type"] != UNIDENTIFIED]
    assert len(records) == len(learnable) and {r["reviewed_by"] for r in records} == {REVIEWER}
    assert {r["source"] for r in records} == {saved["meta"]["image"]}
    assert "saved as training data" in gallery.message.text()


def test_signoff_makes_thumbnails_of_the_cells_the_report_shows_only(field, qtbot, monkeypatch):
    """Above ``REPORT_ALL_CELLS`` cells the report shows the flagged cells and a sample per type
    (``report_cells``): sign-off makes only their thumbnails (here with the limits lowered, so
    that the field's cells are "many")."""
    import sys

    import napari_wbc.core.report as report
    import napari_wbc.core.thumbnails as thumbnails

    viewer, layer, gallery, table = field
    monkeypatch.setattr(report, "REPORT_ALL_CELLS", 2)
    monkeypatch.setattr(report, "REPORT_SAMPLE", 1)
    asked = []
    real = thumbnails.thumbnails

    def counted(image, cells, nuclei, labels, **options):
        if sys._getframe(1).f_code.co_name == "_report_job":  # not the gallery's own thumbnails
            asked.append(list(labels))
        return real(image, cells, nuclei, labels, **options)

    monkeypatch.setattr(thumbnails, "thumbnails", counted)
    gallery.reviewer.setText(REVIEWER)
    _review_every_cell(qtbot, gallery, Qt.Key.Key_2)
    shown = report.report_cells(gallery.table)
    assert 0 < len(shown) < len(table)  # a sample: some cells are not shown
    assert gallery.sign_off() is not None
    qtbot.waitUntil(lambda: gallery.signoff_worker is None, timeout=TIMEOUT_MS)
    assert gallery.report is not None, gallery.message.text()
    assert asked == [shown]
    page = gallery.report["html"].read_text()
    assert page.count('src="data:image/') == len(shown)  # every shown cell has its thumbnail


def test_a_review_resumes_after_closing(field, qtbot, segmented, tmp_path):
    viewer, layer, gallery, table = field
    gallery.reviewer.setText(REVIEWER)
    order = gallery.model.cell_order()
    gallery.select_cells([order[0]])
    _key(qtbot, gallery, Qt.Key.Key_5)  # basophil
    gallery.select_cells([order[1]])
    _key(qtbot, gallery, Qt.Key.Key_X)
    gallery.select_cells([order[2]])
    _key(qtbot, gallery, Qt.Key.Key_Enter)
    reviewed = _features(layer)[["cell_type", "review_status", "reviewed_by"]].copy()
    groups = gallery.model.groups()
    assert order[0] in groups["basophil"]
    viewer.window.remove_dock_widget(gallery)  # closing writes what was not saved yet
    review = tmp_path / f"{FIELD}_review.json"
    assert review.is_file()

    # the same layer again: the review is where it was
    again = GalleryWidget(viewer)
    viewer.window.add_dock_widget(again, name="Cell gallery")
    assert again.layer == layer
    assert again.reviewer.text() == REVIEWER
    assert again.progress.text() == f"reviewed 3 of {len(table)} ({len(table) - 3} to go)"
    assert again.model.groups() == groups
    viewer.window.remove_dock_widget(again)

    # a fresh layer from the same segmentation (e.g. napari restarted): the file resumes it
    image = viewer.layers[FIELD]
    for name in (f"{FIELD} cells", f"{FIELD} nuclei"):
        viewer.layers.remove(name)
    _, cells, nuclei, table = segmented
    fresh = _add_layers(viewer, image, cells, nuclei, table)
    assert "review_status" not in fresh.features
    resumed = GalleryWidget(viewer)
    viewer.window.add_dock_widget(resumed, name="Cell gallery")
    assert resumed.layer == fresh
    assert "resumed the review" in resumed.message.text()
    pd.testing.assert_frame_equal(_features(fresh)[reviewed.columns], reviewed)
    assert _status(resumed, order[0]) == "reclassified" and _status(resumed, order[1]) == "excluded"
    assert resumed.model.groups() == groups


def test_an_unreadable_review_is_kept(make_napari_viewer_proxy, segmented, tmp_path, notifications, qtbot):
    path, cells, nuclei, table = segmented
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    damaged = tmp_path / f"{FIELD}_review.json"
    damaged.write_text('{"format": "napari-wbc review", "cells": [{"label": "x"')
    viewer = make_napari_viewer_proxy(show=True)
    image = viewer.open(copy, plugin="napari-wbc")[0]
    layer = _add_layers(viewer, image, cells, nuclei, table)
    gallery = GalleryWidget(viewer)
    viewer.window.add_dock_widget(gallery, name="Cell gallery")
    errors = [m for s, m in notifications if "error" in s]
    assert len(errors) == 1 and str(damaged) in errors[0]
    assert "could not be read" in gallery.message.text()
    assert gallery.progress.text() == f"reviewed 0 of {len(table)} ({len(table)} to go)"
    # the first change saves the review; the file it could not read is kept under a new name
    gallery.reviewer.setText(REVIEWER)
    gallery.select_cells(gallery.model.cell_order()[:1])
    _key(qtbot, gallery, Qt.Key.Key_Return)
    assert gallery.save() == damaged
    kept = tmp_path / f"{FIELD}_review-1.json"
    assert kept.read_text() == '{"format": "napari-wbc review", "cells": [{"label": "x"'
    assert sum(cell["reviewed_by"] == REVIEWER for cell in json.loads(damaged.read_text())["cells"]) == 1
    assert _features(layer)["review_status"].ne("suggested").sum() == 1


def _open_field(viewer, segmented, tmp_path):
    """The field (a copy in tmp_path, where its review goes) and its cells and nuclei layers."""
    path, cells, nuclei, table = segmented
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    image = viewer.open(copy, plugin="napari-wbc")[0]
    return _add_layers(viewer, image, cells, nuclei, table)


def test_a_review_of_another_segmentation_is_refused_and_kept(
    make_napari_viewer_proxy, segmented, tmp_path, notifications, qtbot
):
    from napari_wbc.core.verification import labels_fingerprint, load_review, save_review, set_type

    _, cells, nuclei, table = segmented
    review = tmp_path / f"{FIELD}_review.json"
    other = np.roll(cells, 9, axis=1)  # another segmentation of the field, with the same ids
    save_review(
        review, set_type(table, table["label"][:1], "basophil", "Someone"), {"reviewer": "Someone"}, other
    )
    before = review.read_bytes()
    viewer = make_napari_viewer_proxy(show=True)
    layer = _open_field(viewer, segmented, tmp_path)
    gallery = GalleryWidget(viewer)
    viewer.window.add_dock_widget(gallery, name="Cell gallery")
    said = [m for s, m in notifications if str(review) in m]
    assert len(said) == 1 and "another segmentation" in said[0] and f"move or delete {review.name}" in said[0]
    assert gallery.message.text() == said[0]
    assert set(_features(layer)["review_status"]) == {"suggested"}  # not applied
    assert gallery.reviewer.text() != "Someone"
    # no change is taken and nothing is written over the file while it is there
    gallery.reviewer.setText(REVIEWER)
    gallery.select_cells(gallery.model.cell_order()[:1])
    _key(qtbot, gallery, Qt.Key.Key_Return)
    assert (
        set(_features(layer)["review_status"]) == {"suggested"}
        and "another segmentation" in gallery.message.text()
    )
    assert gallery.sign_off() is None and gallery.save() is None
    viewer.window.remove_dock_widget(gallery)
    assert review.read_bytes() == before and sorted(p.name for p in tmp_path.glob("*.json")) == [review.name]
    # moved away: a new review of these cells starts, saved with their fingerprint
    review.rename(tmp_path / "elsewhere.json")
    gallery = GalleryWidget(viewer)
    viewer.window.add_dock_widget(gallery, name="Cell gallery")
    gallery.reviewer.setText(REVIEWER)
    gallery.select_cells(gallery.model.cell_order()[:1])
    _key(qtbot, gallery, Qt.Key.Key_Return)
    assert gallery.save() == review
    assert load_review(review)[1]["labels"] == labels_fingerprint(cells)


def test_a_review_from_before_fingerprints_still_resumes(make_napari_viewer_proxy, segmented, tmp_path):
    from napari_wbc.core.verification import save_review, set_type

    _, cells, nuclei, table = segmented
    first = int(table["label"].iloc[0])
    review = tmp_path / f"{FIELD}_review.json"
    save_review(
        review, set_type(table, [first], "basophil", "Someone"), {"reviewer": "Someone"}
    )  # no fingerprint
    viewer = make_napari_viewer_proxy(show=True)
    layer = _open_field(viewer, segmented, tmp_path)
    gallery = GalleryWidget(viewer)
    viewer.window.add_dock_widget(gallery, name="Cell gallery")
    assert "resumed the review" in gallery.message.text()
    assert (
        _features(layer).loc[first, "cell_type"] == "basophil" and _status(gallery, first) == "reclassified"
    )
    assert gallery.reviewer.text() == "Someone"


def test_signing_off_a_slide_keeps_its_reviewed_cells_as_training_data(
    make_napari_viewer_proxy, segmented, tmp_path, qtbot, monkeypatch
):
    """The gallery on a slide's lazy multiscale layers: sign-off saves the reviewed cells, read
    around each cell, as a field's would be saved."""
    import dask.array as da

    from napari_wbc._widgets.gallery import corrections_folder
    from napari_wbc.core.corrections import read_corrections, save_type_corrections, validate_corrections
    from napari_wbc.core.verification import load_review

    monkeypatch.setenv("NAPARI_WBC_HOME", str(tmp_path / "home"))  # a corrections folder of its own
    path, cells, nuclei, table = segmented
    rgb = np.asarray(Image.open(path).convert("RGB"))

    def levels(array):
        return [da.from_array(array, chunks=128), da.from_array(array[::2, ::2], chunks=128)]

    viewer = make_napari_viewer_proxy(show=True)
    slide = str(tmp_path / "slide.ome.tif")
    viewer.add_image(levels(rgb), name="slide", rgb=True, multiscale=True, metadata={"source": slide})
    viewer.add_labels(levels(nuclei), name="slide nuclei", multiscale=True)
    meta = {"source_layer": "slide", "source": slide, "model": "mifnet", "pixel_size": None}
    meta["files"] = {"cells": str(tmp_path / "slide_cells.tif")}
    layer = viewer.add_labels(
        levels(cells),
        name="slide cells",
        multiscale=True,
        features=table.assign(index=table["label"]),
        metadata=meta,
    )
    gallery = GalleryWidget(viewer)
    viewer.window.add_dock_widget(gallery, name="Cell gallery")
    assert gallery.layer == layer
    gallery.reviewer.setText(REVIEWER)
    _review_every_cell(qtbot, gallery, Qt.Key.Key_1)
    assert gallery.sign_off() is not None
    qtbot.waitUntil(lambda: gallery.signoff_worker is None, timeout=TIMEOUT_MS)
    assert gallery.report is not None, gallery.message.text()
    assert gallery.report["html"] == tmp_path / "slide_report.html"
    assert load_review(tmp_path / "slide_review.json")[1]["labels"]["kind"] == "cells"
    folder = corrections_folder()
    records = read_corrections(folder)
    assert validate_corrections(folder) == [] and "saved as training data" in gallery.message.text()
    assert sorted(gallery.corrections["saved"]) == sorted(r["id"] for r in records)
    assert len(records) == len(table) and {r["reviewed_by"] for r in records} == {REVIEWER}
    assert {(r["source"], r["model"], r["classifier"]) for r in records} == {(slide, "mifnet", "celltype")}
    # the same crops and masks as the field in memory gives
    reviewed = _features(layer).reset_index()
    field = save_type_corrections(tmp_path / "field", rgb, cells, nuclei, reviewed, {})
    expect = {r["label"]: r for r in read_corrections(tmp_path / "field")}
    assert len(field["saved"]) == len(records)
    assert {r["label"]: r["sha256"] for r in records} == {k: r["sha256"] for k, r in expect.items()}
    # the slide's ruler (its red cells' diameter) is read around each cell, the field's in all of it
    for r in records:
        assert r["red_cell_px"] == pytest.approx(expect[r["label"]]["red_cell_px"], rel=0.05)
