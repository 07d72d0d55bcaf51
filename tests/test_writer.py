"""The napari WBC writer: a segmented, reviewed field saved from napari and opened again.

A real bccd field is segmented once (the shipped models, as the Segment widget does) and put
into real napari viewers by the Segment widget's own code; the files are written through
napari's save API with the plugin's writer and read back through napari's open.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_wbc._writer import SaveRefused, result_stem
from napari_wbc.core.dataset import CELL_TYPES

pytestmark = pytest.mark.gui

FIELD = "BloodImage_00010"  # a bccd field with two white cells
PIXEL_SIZE = 0.1
REVIEWER = "Dr. A. Reviewer"
SUFFIXES = ("_cells.tif", "_nuclei.tif", "_cells.csv", "_review.json")


@pytest.fixture(scope="module")
def field(datasets, trained_model):
    """The field segmented and measured as the Segment widget does it: (path, image, result, table)."""
    from napari_wbc.core.celltypes import load_classifier
    from napari_wbc.core.inference import run, segment
    from napari_wbc.core.io import read_image
    from napari_wbc.core.measure import measure_cells
    from napari_wbc.core.options import Options
    from napari_wbc.models import load_model

    path = datasets / "bccd" / "images" / f"{FIELD}.jpg"
    image = read_image(path).data
    net, spec = load_model(trained_model, device="cpu")
    options = Options(pixel_size=PIXEL_SIZE, device="cpu")
    result = run(segment(image, net, spec, options, classifier=load_classifier("classifier", "cpu")))
    table = measure_cells(
        result.cells, result.nuclei, PIXEL_SIZE, types=result.types, type_probs=result.type_probs
    )
    assert len(table) >= 2, "the test needs a field with two cells or more"
    return path, image, result, table


def _show(viewer, field, model):
    """The field in ``viewer`` and its cells and nuclei layers, made by the Segment widget's code."""
    from napari_wbc._widgets.segment import SegmentWidget

    path, image, result, table = field
    layer = viewer.add_image(image, name=FIELD, rgb=True, metadata={"source": str(path), "pixel_size": None})
    SegmentWidget(viewer)._update_layers(layer, model, PIXEL_SIZE, result, table)
    return viewer.layers[f"{FIELD} cells"], viewer.layers[f"{FIELD} nuclei"]


def _review(cells) -> pd.DataFrame:
    """Reclassify the first cell, confirm the second, as a reviewer does; the reviewed table."""
    from napari_wbc._widgets._layers import features_of, set_features
    from napari_wbc.core.verification import confirm, set_type

    table = features_of(cells)
    first, second = (int(label) for label in table["label"][:2])
    other = next(kind for kind in CELL_TYPES if kind != table["cell_type"].iloc[0])
    table = confirm(set_type(table, [first], other, REVIEWER), [second], REVIEWER)
    set_features(cells, table)
    cells.metadata = {**cells.metadata, "reviewer": REVIEWER}  # where the gallery keeps the name
    return features_of(cells)


def _save(viewer, path, *layers) -> list[str]:
    viewer.layers.selection.clear()
    viewer.layers.selection.update(layers)
    return viewer.layers.save(str(path), selected=True, plugin="napari-wbc")


def _files(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` (temporary ones too) by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_review_saved_from_napari_opens_again_as_it_was(
    make_napari_viewer, field, trained_model, tmp_path, notifications
):
    from napari_wbc._widgets._layers import CELLS_STYLE, NUCLEI_STYLE, features_of, image_name, is_cells_layer
    from napari_wbc.core.measure import count_summary
    from napari_wbc.core.slide import slide_pixel_size
    from napari_wbc.core.verification import REVIEW_COLUMNS, labels_fingerprint, load_review
    from napari_wbc.models import weights_sha256

    viewer = make_napari_viewer()
    cells, nuclei = _show(viewer, field, trained_model)
    table = _review(cells)
    assert list(table["review_status"]) == ["reclassified", "confirmed"] + ["suggested"] * (len(table) - 2)
    # the cells layer alone is selected: its nuclei layer comes with it
    written = _save(viewer, tmp_path / f"{FIELD}_cells.tif", cells)
    assert written == [str(tmp_path / f"{FIELD}{suffix}") for suffix in SUFFIXES]
    for layer, suffix in ((cells, "_cells.tif"), (nuclei, "_nuclei.tif")):
        with tifffile.TiffFile(tmp_path / f"{FIELD}{suffix}") as tif:
            assert tif.series[0].dtype == np.uint32
            np.testing.assert_array_equal(tif.asarray(), layer.data)
            assert slide_pixel_size(tif, tmp_path / f"{FIELD}{suffix}") == pytest.approx(PIXEL_SIZE)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / f"{FIELD}_cells.csv")[["label", "ncr"]], table[["label", "ncr"]]
    )
    saved, meta = load_review(tmp_path / f"{FIELD}_review.json")
    assert list(saved["review_status"]) == list(table["review_status"])
    assert meta["reviewer"] == REVIEWER and meta["image"] == str(field[0])
    assert meta["labels"] == labels_fingerprint(np.asarray(cells.data))  # what the review is of
    assert meta["pixel_size"] == PIXEL_SIZE
    assert (
        meta["models"] == {trained_model: weights_sha256(trained_model)}
        and len(meta["models"][trained_model]) == 64
    )

    # opened again in a new viewer, through napari and the plugin's reader
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / f"{FIELD}_cells.tif"), plugin="napari-wbc")
    assert [layer.name for layer in layers] == [f"{FIELD} nuclei", f"{FIELD} cells"]
    new_nuclei, new_cells = layers
    np.testing.assert_array_equal(new_cells.data, cells.data)
    np.testing.assert_array_equal(new_nuclei.data, nuclei.data)
    assert new_cells.data.dtype == new_nuclei.data.dtype == np.uint32
    # the widgets pair them, and with the image
    assert is_cells_layer(viewer.layers, new_cells) and image_name(new_cells) == FIELD
    reopened = features_of(new_cells)
    pd.testing.assert_frame_equal(reopened, table, check_dtype=False)  # every value, the review too
    for column in (*REVIEW_COLUMNS, "cell_type", "reviewed"):
        assert list(reopened[column]) == list(table[column]), column
    assert list(new_cells.features["index"]) == list(table["label"])  # napari's label -> row key
    assert new_cells.metadata["counts"] == pytest.approx(count_summary(table), nan_ok=True)
    assert new_cells.metadata["pixel_size"] == pytest.approx(PIXEL_SIZE)
    # aligned with the image as before: the JPEG records no pixel size, so pixels (0.1 um/px was given)
    assert tuple(new_cells.scale) == tuple(new_nuclei.scale) == tuple(cells.scale) == (1.0, 1.0)
    assert new_cells.metadata["source"] == str(field[0]) and new_cells.metadata["model"] == trained_model
    assert new_cells.metadata["reviewer"] == REVIEWER
    assert new_cells.metadata["files"] == {
        kind: str(tmp_path / f"{FIELD}{suffix}")
        for kind, suffix in zip(("cells", "nuclei", "table", "review"), SUFFIXES, strict=True)
    }
    for layer, style in ((new_cells, CELLS_STYLE), (new_nuclei, NUCLEI_STYLE)):  # outlined, as Segment does
        assert {key: getattr(layer, key) for key in style} == style
    # the image opens apart, as itself, beside them
    (image,) = viewer.open(str(field[0]), plugin="napari-wbc")
    assert image.name == FIELD and image.rgb and len(viewer.layers) == 3
    assert tuple(image.scale) == tuple(new_cells.scale) and image.data.shape[:2] == new_cells.data.shape
    assert [s for s, _ in notifications if "error" in s] == []

    # saved again from the reopened layers (both selected), under the same name: the same files
    before = _files(tmp_path)
    assert _save(viewer, tmp_path / f"{FIELD}_nuclei.tif", new_cells, new_nuclei) == written
    after = _files(tmp_path)
    assert sorted(after) == sorted(before)  # no temporary file left
    for suffix in SUFFIXES:
        assert after[f"{FIELD}{suffix}"] == before[f"{FIELD}{suffix}"], suffix
    # and as a copy elsewhere: the review's meta (reviewer, sign-off...) goes with it
    (tmp_path / "copy").mkdir()
    assert len(_save(viewer, tmp_path / "copy" / "copy.tif", new_cells)) == 4
    copied, copied_meta = load_review(tmp_path / "copy" / "copy_review.json")
    assert copied_meta == meta
    pd.testing.assert_frame_equal(copied, saved)


def test_saving_never_replaces_files_the_user_did_not_choose_to_replace(
    make_napari_viewer, field, trained_model, tmp_path
):
    from napari_wbc.core.verification import load_review, save_review

    viewer = make_napari_viewer()
    cells, nuclei = _show(viewer, field, trained_model)

    # a new name without review columns: three files, named after the stem of the chosen name
    assert _save(viewer, tmp_path / "smear.tif", nuclei) == [
        str(tmp_path / f"smear{suffix}") for suffix in SUFFIXES[:3]
    ]
    # napari's dialog offers the layer's name: "<image> cells.tif" is not one of the files, so
    # napari asked nothing, and the result there is not replaced
    files = _files(tmp_path)
    with pytest.raises(SaveRefused, match=r"smear_cells\.tif.*already in.*Save as 'smear_cells\.tif'"):
        _save(viewer, tmp_path / "smear cells.tif", cells)
    assert _files(tmp_path) == files

    # the review the gallery keeps beside the image is this review: saved beside it, it is replaced
    source = cells.metadata["source"]
    cells.metadata = {**cells.metadata, "source": str(tmp_path / "g.jpg")}
    table = _review(cells)
    save_review(tmp_path / "g_review.json", table, {"reviewer": REVIEWER, "signoff": {"reviewer": REVIEWER}})
    assert len(_save(viewer, tmp_path / "g_cells.tif", cells)) == 4
    saved, meta = load_review(tmp_path / "g_review.json")
    assert meta["signoff"] == {"reviewer": REVIEWER} and meta["image"] == str(tmp_path / "g.jpg")
    cells.metadata = {**cells.metadata, "source": source}
    cells.features = table.drop(columns=["suggested_type", "review_status", "reviewed_by", "reviewed_at"])
    files = _files(tmp_path)

    # the user's own file in the way of a new result: refused before anything is written
    notes = tmp_path / "mine_cells.csv"
    notes.write_text("my notes\n")
    with pytest.raises(SaveRefused, match=r"mine_cells\.csv already in"):
        _save(viewer, tmp_path / "mine_cells.tif", cells)
    assert _files(tmp_path) == {**files, "mine_cells.csv": b"my notes\n"}

    # replacing a result (the name chosen is its cells TIFF), with a file of the set the user
    # made: refused, nothing changed
    (tmp_path / "smear_cells.csv").write_text("label\n")  # ours: a table with labels
    (tmp_path / "smear_review.json").write_text("{}")  # not a review
    files = _files(tmp_path)
    with pytest.raises(SaveRefused, match=r"smear_review\.json .*not a napari-wbc file"):
        _save(viewer, tmp_path / "smear_cells.tif", cells)
    assert _files(tmp_path) == files

    # a reviewed result replaced by cells without a review: the old review goes with them
    (tmp_path / "smear_review.json").unlink()
    _review(cells)
    assert len(_save(viewer, tmp_path / "smear_cells.tif", cells)) == 4
    assert (tmp_path / "smear_review.json").is_file()
    cells.features = table.drop(columns=["suggested_type", "review_status", "reviewed_by", "reviewed_at"])
    assert len(_save(viewer, tmp_path / "smear_cells.tif", cells)) == 3
    assert not (tmp_path / "smear_review.json").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files


def test_layers_that_are_no_result_are_refused_with_a_message(
    make_napari_viewer, field, trained_model, tmp_path
):
    from napari_wbc.core.measure import measure_cells

    viewer = make_napari_viewer()
    cells, nuclei = _show(viewer, field, trained_model)
    mask = viewer.add_labels(np.asarray(cells.data) > 0, name="mask")
    with pytest.raises(SaveRefused, match=r"select one or both of them \(not 'mask'\)"):
        _save(viewer, tmp_path / "mask.tif", mask)
    with pytest.raises(SaveRefused, match="select one or both"):
        _save(viewer, tmp_path / "x.tif", cells, mask)
    viewer.layers.remove(nuclei)  # a cells layer without its nuclei
    with pytest.raises(SaveRefused, match=rf"no layer '{FIELD} nuclei' of the same size.*select both"):
        _save(viewer, tmp_path / "x.tif", cells)
    assert list(tmp_path.iterdir()) == []

    # labels without a table (drawn, or opened from elsewhere): measured as they are saved
    plain = viewer.add_labels(np.asarray(cells.data), name="plain cells")
    viewer.add_labels(np.asarray(nuclei.data), name="plain nuclei")
    assert len(_save(viewer, tmp_path / "plain_cells.tif", plain)) == 3
    expected = measure_cells(np.asarray(cells.data), np.asarray(nuclei.data))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "plain_cells.csv"), expected, check_dtype=False)


@pytest.mark.parametrize(
    "name, stem",
    [
        ("x_cells.tif", "x"),
        ("x_nuclei.tif", "x"),
        ("x cells.tif", "x"),
        ("x.tif", "x"),
        ("x.y_cells.tif", "x.y"),
    ],
)
def test_result_stem(name, stem):
    assert result_stem(Path("/data") / name) == stem
