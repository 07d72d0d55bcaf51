"""Verifying a smear: review statuses, sign-off, the review file, thumbnails and the report."""

import json
import re
from datetime import UTC, datetime
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_wbc.core import report as rp
from napari_wbc.core import thumbnails as tn
from napari_wbc.core import verification as v
from napari_wbc.core.dataset import NOT_WBC, UNIDENTIFIED
from napari_wbc.core.io import InputError, read_image
from napari_wbc.core.measure import count_summary, measure_cells
from napari_wbc.core.review import instances_from_class_map
from napari_wbc.models import weights_sha256

FIELD = "BloodImage_00031"  # two white cells; cell 2 touches the right edge
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def small_table() -> pd.DataFrame:
    """Five cells as the classifier typed them (label, type, confidence)."""
    rows = [
        (1, "neutrophil", 0.95),
        (2, "lymphocyte", 0.55),
        (3, UNIDENTIFIED, 0.35),
        (4, NOT_WBC, 0.9),
        (5, "monocyte", 0.8),
    ]
    return pd.DataFrame(
        {
            "label": [r[0] for r in rows],
            "cell_type": [r[1] for r in rows],
            "type_confidence": [r[2] for r in rows],
            "touches_border": [False, False, True, False, False],
            "ncr": [1.0, 3.0, 2.0, 0.5, 1.5],
            "cell_area_px": [9000, 5000, 7000, 800, 12000],
            "nucleus_area_px": [4500, 3750, 4700, 270, 7200],
        }
    )


@pytest.fixture(scope="module")
def field(datasets):
    """A real bccd field with its reference cells and nuclei, measured and typed."""
    image = read_image(datasets / "bccd" / "images" / f"{FIELD}.jpg").data
    classes = np.array(Image.open(datasets / "bccd" / "labels" / f"{FIELD}.png"))
    cells, nuclei = instances_from_class_map(classes)
    types = {1: ("neutrophil", 0.93), 2: ("lymphocyte", 0.52)}
    table = measure_cells(cells, nuclei, types=types)
    assert list(table["label"]) == [1, 2] and list(table["touches_border"]) == [False, True]
    return image, cells, nuclei, table


# --- statuses -----------------------------------------------------------------------------------


def test_start_review_adds_the_columns_once_and_leaves_its_input_alone():
    table = small_table()
    before = table.copy()
    started = v.start_review(table)
    pd.testing.assert_frame_equal(table, before)  # not mutated
    assert list(started["suggested_type"]) == list(table["cell_type"])
    assert set(started["review_status"]) == {"suggested"}
    assert set(started["reviewed_by"]) == set(started["reviewed_at"]) == {""}
    assert not started["reviewed"].any()
    pd.testing.assert_frame_equal(v.start_review(started), started)  # idempotent
    decided = v.set_type(started, [2], "monocyte", "Ann")
    pd.testing.assert_frame_equal(v.start_review(decided), decided)  # keeps a review as it is


def test_start_review_takes_over_an_earlier_reviewed_flag():
    table = small_table().assign(reviewed=[True, False, False, True, False])
    started = v.start_review(table)
    assert list(started["review_status"]) == ["confirmed", "suggested", "suggested", "excluded", "suggested"]
    assert list(started["reviewed"]) == [True, False, False, True, False]


def test_set_type_confirms_reclassifies_and_excludes():
    start = datetime.now(UTC).replace(microsecond=0)
    table = v.set_type(small_table(), [1], "neutrophil", "Ann")
    table = v.set_type(table, [2, 5], "lymphocyte", " Ben ")
    table = v.set_type(table, 3, NOT_WBC, "Ann")
    by = table.set_index("label")
    assert list(by["cell_type"]) == ["neutrophil", "lymphocyte", NOT_WBC, NOT_WBC, "lymphocyte"]
    assert list(by["suggested_type"]) == ["neutrophil", "lymphocyte", UNIDENTIFIED, NOT_WBC, "monocyte"]
    assert list(by["review_status"]) == ["confirmed", "confirmed", "excluded", "suggested", "reclassified"]
    assert list(by["reviewed_by"]) == ["Ann", "Ben", "Ann", "", "Ben"]
    assert list(by["reviewed"]) == [True, True, True, False, True]
    for when in by.loc[[1, 2, 3, 5], "reviewed_at"]:
        assert ISO.match(when)
        assert start <= datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    # back to the suggested type: confirmed again; the suggestion itself never changes
    back = v.set_type(table, [5], "monocyte", "Cy").set_index("label")
    assert back.loc[5, "review_status"] == "confirmed" and back.loc[5, "suggested_type"] == "monocyte"
    assert back.loc[5, "reviewed_by"] == "Cy"
    # the same decision twice: the same state
    again = v.set_type(table, [2, 5], "lymphocyte", "Ben")
    columns = ["cell_type", "suggested_type", "review_status", "reviewed_by", "reviewed"]
    pd.testing.assert_frame_equal(again[columns], table[columns])


def test_set_type_refuses_unknown_types_cells_and_anonymous_reviewers():
    table = small_table()
    with pytest.raises(ValueError, match="unknown cell type 'other'"):
        v.set_type(table, [1], "other", "Ann")
    with pytest.raises(ValueError, match=r"no cell \[9\]"):
        v.set_type(table, [1, 9], "neutrophil", "Ann")
    with pytest.raises(ValueError, match="reviewer's name"):
        v.set_type(table, [1], "neutrophil", "  ")
    with pytest.raises(ValueError, match="reviewer's name"):
        v.confirm(table, [1], None)


def test_confirm_keeps_each_cells_type():
    table = v.set_type(small_table(), [5], "eosinophil", "Ann")
    confirmed = v.confirm(table, [1, 2, 3, 4, 5], "Ben").set_index("label")
    assert list(confirmed["cell_type"]) == ["neutrophil", "lymphocyte", UNIDENTIFIED, NOT_WBC, "eosinophil"]
    # eosinophil was not the suggestion: still reclassified, now confirmed by Ben
    assert list(confirmed["review_status"]) == [
        "confirmed",
        "confirmed",
        "confirmed",
        "excluded",
        "reclassified",
    ]
    assert set(confirmed["reviewed_by"]) == {"Ben"}
    twice = v.confirm(confirmed.reset_index(), [1, 2, 3, 4, 5], "Ben").set_index("label")
    assert list(twice["review_status"]) == list(confirmed["review_status"])


# --- sign-off -----------------------------------------------------------------------------------


def test_signoff_problems_say_what_is_left_to_do():
    table = small_table()
    assert v.signoff_problems(table) == [
        "5 cells not reviewed yet (cells 1, 2, 3, 4, 5)",
        "1 cell unidentified: give each a type or exclude it (cell 3)",
    ]
    table = v.confirm(table, [1, 2, 3, 4], "Ann")
    assert v.signoff_problems(table) == [
        "1 cell not reviewed yet (cell 5)",
        "1 cell unidentified: give each a type or exclude it (cell 3)",
    ]
    table = v.set_type(table, [3], "monocyte", "Ann")
    table = v.confirm(table, [5], "Ann")
    assert v.signoff_problems(table) == []
    untyped = table.copy()
    untyped.loc[untyped["label"] == 2, "cell_type"] = None
    assert v.signoff_problems(untyped) == ["1 cell without a type: give each a type or exclude it (cell 2)"]
    other = table.copy()
    other.loc[other["label"].isin([1, 5]), "cell_type"] = "other"
    assert v.signoff_problems(other)[0].startswith(
        "2 cells of a type the differential has no place for (other)"
    )
    many = pd.DataFrame({"label": range(1, 13), "cell_type": "neutrophil", "touches_border": False})
    assert v.signoff_problems(many) == [
        "12 cells not reviewed yet (cells 1, 2, 3, 4, 5, 6, 7, 8, ... (4 more))"
    ]


def test_sign_off_refuses_with_the_reasons_then_records_who_when_and_what():
    table = v.confirm(small_table(), [1, 2, 4, 5], "Ann")
    with pytest.raises(v.SignOffRefused) as refused:
        v.sign_off(table, "Ann", {"mifnet": "ab" * 32})
    assert isinstance(refused.value, ValueError)
    assert refused.value.reasons == v.signoff_problems(table)
    assert "sign-off refused: 1 cell not reviewed yet (cell 3)" in str(refused.value)
    table = v.set_type(table, [3], NOT_WBC, "Ann")
    with pytest.raises(v.SignOffRefused) as refused:
        v.sign_off(table, "", {})
    assert refused.value.reasons == ["no reviewer name: give yours to sign off"]
    record = v.sign_off(table, "Ann Smith", {"mifnet": "ab" * 32, "celltype": None})
    assert record["reviewer"] == "Ann Smith" and ISO.match(record["time"])
    assert record["models"] == {"mifnet": "ab" * 32, "celltype": None}
    counts = record["counts"]
    assert counts["white_cells"] == 3 and counts["excluded"] == 2
    assert (counts["n_neutrophil"], counts["n_lymphocyte"], counts["n_monocyte"]) == (1, 1, 1)
    assert counts == {
        k: (None if isinstance(x, float) and np.isnan(x) else x) for k, x in count_summary(table).items()
    }
    json.dumps(record, allow_nan=False)  # plain JSON
    assert v.signoff_holds(record, table)
    assert not v.signoff_holds(record, v.set_type(table, [1], "monocyte", "Ann"))  # counts changed
    assert not v.signoff_holds(None, table)


def test_differential_is_the_count_summary_with_not_wbc_excluded():
    table = v.set_type(small_table(), [1], NOT_WBC, "Ann")
    counts = v.differential(table)
    assert counts == count_summary(table)
    assert counts["white_cells"] == 3 and counts["excluded"] == 2 and counts["n_neutrophil"] == 0
    assert counts["n_unidentified"] == 1 and counts["pct_unidentified"] == pytest.approx(100 / 3)


def test_weights_sha256_of_the_shipped_classifier():
    # the sha256 its model card states
    assert weights_sha256("celltype") == "899520b7d796bcdb5e7950e17fe3b6e23c1b8e13f27a69b37c4aeae14715b308"
    assert weights_sha256("wbcnet") is None  # no trained weights
    assert weights_sha256(None) is None


# --- the review file ----------------------------------------------------------------------------


def test_review_path_beside_the_labels_or_the_image(tmp_path):
    assert v.review_path(tmp_path, "x") == tmp_path / "x_review.json"
    assert v.review_path(tmp_path / "x_cells.tif") == tmp_path / "x_review.json"
    assert v.review_path(tmp_path / "x.png_cells.tif") == tmp_path / "x.png_review.json"
    assert v.review_path(tmp_path / "smear.jpg") == tmp_path / "smear_review.json"


def test_review_file_round_trip_and_apply_onto_a_remeasured_table(tmp_path, field):
    from napari_wbc.core.edit import delete_cell, new_cell, remeasure

    _, cells, nuclei, table = field
    reviewed = v.set_type(table, [1], "eosinophil", "Ann")
    path = v.review_path(tmp_path, FIELD)
    meta = {"image": tmp_path / "x.jpg", "models": {"mifnet": "cd" * 32}, "pixel_size": None}
    assert v.save_review(path, reviewed, meta) == path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    doc = json.loads(path.read_text())
    assert doc["format"] == "napari-wbc review" and doc["meta"]["image"] == str(tmp_path / "x.jpg")
    review, loaded = v.load_review(path)
    assert loaded == {"image": str(tmp_path / "x.jpg"), "models": {"mifnet": "cd" * 32}, "pixel_size": None}
    columns = ["label", "cell_type", *v.REVIEW_COLUMNS]
    expect = v.start_review(reviewed)[columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(review, expect, check_dtype=False)
    # the cells edited after the review was saved: cell 2 deleted, a new cell 3 drawn
    mask = np.zeros(cells.shape, bool)
    mask[10:60, 10:60] = True
    edited = new_cell(cells, nuclei, mask)
    assert edited.ids == [3]
    edited = delete_cell(edited.cells, edited.nuclei, 2)
    remeasured = remeasure(table, edited.cells, edited.nuclei)
    remeasured.loc[remeasured["label"] == 3, "cell_type"] = "lymphocyte"
    merged = v.apply_review(remeasured, review).set_index("label")
    assert list(merged.index) == [1, 3]
    assert merged.loc[1, "cell_type"] == "eosinophil" and merged.loc[1, "suggested_type"] == "neutrophil"
    assert merged.loc[1, "review_status"] == "reclassified" and merged.loc[1, "reviewed_by"] == "Ann"
    assert merged.loc[1, "reviewed"]
    assert merged.loc[3, "review_status"] == "suggested" and merged.loc[3, "cell_type"] == "lymphocyte"
    assert merged.loc[3, "suggested_type"] == "lymphocyte" and not merged.loc[3, "reviewed"]
    assert merged.loc[1, "cell_area_px"] == remeasured.set_index("label").loc[1, "cell_area_px"]
    # a suggested cell keeps the new table's type (a later classifier), not the saved one
    retyped = table.assign(cell_type=["monocyte", "basophil"])
    merged = v.apply_review(retyped, review).set_index("label")
    assert list(merged["cell_type"]) == ["eosinophil", "basophil"]


def test_reopen_undoes_a_review():
    reviewed = v.set_type(v.confirm(small_table(), [5], "Ann"), [1], "eosinophil", "Ann")
    back = v.reopen(reviewed, [1, 5]).set_index("label")
    assert list(back.loc[[1, 5], "cell_type"]) == ["neutrophil", "monocyte"]  # the suggestions again
    assert list(back.loc[[1, 5], "review_status"]) == ["suggested", "suggested"]
    assert list(back.loc[[1, 5], "reviewed_by"]) == ["", ""] and not back.loc[[1, 5], "reviewed"].any()


def test_a_review_file_applies_only_to_the_labels_it_is_of(tmp_path, field):
    import zarr

    _, cells, nuclei, table = field
    reviewed = v.set_type(table, [1], "eosinophil", "Ann")
    path = v.save_review(v.review_path(tmp_path, FIELD), reviewed, {"reviewer": "Ann"}, cells)
    doc = json.loads(path.read_text())
    assert doc["labels"]["kind"] == "pixels" and doc["labels"]["shape"] == list(cells.shape)
    assert "labels" not in doc["meta"]
    # the same labels (in another integer type, as a TIFF reads them back): applied
    merged, meta = v.open_review(path, table, cells.astype(np.int64))
    assert merged.set_index("label").loc[1, "cell_type"] == "eosinophil" and meta["reviewer"] == "Ann"
    # another segmentation, even with the same ids: refused in one message; the file is kept
    before = path.read_bytes()
    other = cells.copy()
    other[other == 2] = 0
    other[:5, :5] = 2
    for labels in (other, cells[:, :-1]):
        with pytest.raises(v.ReviewMismatch) as refused:
            v.open_review(path, table, labels)
        message = str(refused.value)
        assert str(path) in message and "another segmentation" in message
        assert f"move or delete {path.name}" in message
    assert path.read_bytes() == before
    # a slide's lazy labels: the fingerprint of its cells' ids and areas
    lazy = zarr.create_array(store={}, shape=cells.shape, dtype=np.uint32, chunks=(128, 128))
    lazy[:] = cells
    v.save_review(path, reviewed, {}, [lazy])
    assert json.loads(path.read_text())["labels"]["kind"] == "cells"
    assert v.open_review(path, table, [lazy])[0].set_index("label").loc[1, "cell_type"] == "eosinophil"
    with pytest.raises(v.ReviewMismatch):
        v.open_review(path, table.assign(cell_area_px=table["cell_area_px"] + 1), [lazy])
    # saved again without labels: no fingerprint (never the one the meta carried)
    v.save_review(path, reviewed, {**meta, "labels": {"kind": "pixels", "sha256": "0" * 64}})
    assert "labels" not in json.loads(path.read_text())


def test_a_review_file_from_before_fingerprints_still_opens(tmp_path, field):
    _, cells, nuclei, table = field
    path = v.save_review(v.review_path(tmp_path, FIELD), v.set_type(table, [2], "monocyte", "Ann"))
    assert "labels" not in json.loads(path.read_text())  # as versions before fingerprints wrote it
    merged, _ = v.open_review(path, table, cells)
    assert merged.set_index("label").loc[2, "cell_type"] == "monocyte"
    # ... unless it names cells these labels do not have
    with pytest.raises(v.ReviewMismatch, match="another segmentation"):
        v.open_review(path, table[table["label"] == 1], cells)


def test_the_report_refuses_a_review_of_another_segmentation(tmp_path, field):
    from napari_wbc.core.batch import write_csv, write_labels_tiff

    image, cells, nuclei, table = field
    write_labels_tiff(tmp_path / f"{FIELD}_cells.tif", cells, None)
    write_labels_tiff(tmp_path / f"{FIELD}_nuclei.tif", nuclei, None)
    write_csv(tmp_path / f"{FIELD}_cells.csv", table)
    path = v.review_path(tmp_path, FIELD)
    v.save_review(path, v.confirm(table, [1, 2], "Ann"), {}, np.roll(cells, 7, axis=1))
    before = path.read_bytes()
    with pytest.raises(v.ReviewMismatch, match=f"move or delete {path.name}"):
        rp.report_output(tmp_path, FIELD, reviewer="Ann")
    assert path.read_bytes() == before and not list(tmp_path.glob("*_report*"))
    # its own labels' review is applied and signed off, the record saved with the fingerprint
    v.save_review(path, v.confirm(table, [1, 2], "Ann"), {}, cells)
    done = rp.report_output(tmp_path, FIELD, reviewer="Ann")
    assert done["record"]["reviewer"] == "Ann" and done["refused"] is None
    doc = json.loads(path.read_text())
    assert doc["meta"]["signoff"]["reviewer"] == "Ann"
    assert doc["labels"] == v.labels_fingerprint(cells)


def test_load_review_refuses_other_files_in_one_line(tmp_path):
    with pytest.raises(InputError, match="no such review file"):
        v.load_review(tmp_path / "none_review.json")
    bad = tmp_path / "bad_review.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="cannot read this review file"):
        v.load_review(bad)
    bad.write_text(json.dumps({"cells": []}))
    with pytest.raises(InputError, match="not a napari-wbc review file"):
        v.load_review(bad)
    bad.write_text(json.dumps({"format": "napari-wbc review", "version": 1, "cells": [{"label": "x"}]}))
    with pytest.raises(InputError, match="damaged review file"):
        v.load_review(bad)


# --- thumbnails ---------------------------------------------------------------------------------


def colour_mask(thumb: np.ndarray, colour) -> np.ndarray:
    return (thumb == np.array(colour, np.uint8)).all(-1)


def test_thumbnail_is_centred_on_the_cell_with_both_outlines(field):
    image, cells, nuclei, table = field
    thumb = tn.thumbnail(image, cells, nuclei, 1)
    assert thumb.shape == (96, 96, 3) and thumb.dtype == np.uint8
    ring = colour_mask(thumb, tn.CELL_COLOUR)
    inner = colour_mask(thumb, tn.NUCLEUS_COLOUR)
    assert ring.sum() > 100 and inner.sum() > 50
    from scipy import ndimage

    ys, xs = np.nonzero(ring)
    cy, cx = np.argwhere(ndimage.binary_fill_holes(ring | inner)).mean(0)
    assert abs(cy - 47.5) < 1 and abs(cx - 47.5) < 1  # centred on the cell's centroid
    # default side: 2x the median cell width, so the cell spans about half the thumbnail
    widths = np.sqrt(4 * table["cell_area_px"] / np.pi)
    expect = 96 * widths[0] / (2 * np.median(widths))
    assert abs((xs.max() - xs.min() + 1) - expect) < 0.15 * expect
    # lines 1 px wide: no outline pixel has outline pixels on all four sides
    for line in (ring, inner):
        p = np.pad(line, 1)
        assert not (line & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]).any()
    # the nucleus's outline lies inside the cell's
    ny, nx = np.nonzero(inner)
    assert ys.min() <= ny.min() and ny.max() <= ys.max() and xs.min() <= nx.min() and nx.max() <= xs.max()
    # the pixels are the image's: inside the outlines, the cell's colour
    filled = ndimage.binary_fill_holes(ring | inner)
    inside = ndimage.binary_erosion(filled, iterations=2) & ~ndimage.binary_dilation(inner)
    assert np.abs(thumb[inside].mean(0) - image[cells == 1].mean(0)).max() < 25
    other = tn.thumbnail(image, cells, nuclei, 2)
    assert not np.array_equal(other, thumb)


def test_thumbnail_beyond_the_edge_is_grey_and_many_match_one(field):
    image, cells, nuclei, table = field
    thumb = tn.thumbnail(image, cells, nuclei, 2, side_px=300)
    # thumbnail pixel (i, j) samples the image at centroid + 0.5 - 150 + ((i, j) + 0.5) * 300 / 96
    along = (np.arange(96) + 0.5) * 300 / 96 - 150
    y = table.loc[1, "centroid_y"] + 0.5 + along[:, None]
    x = table.loc[1, "centroid_x"] + 0.5 + along[None, :]
    h, w = image.shape[:2]
    outside = (y < -4) | (y > h + 4) | (x < -4) | (x > w + 4)
    assert outside.sum() > 500
    grey = (thumb == np.array(tn.OUTSIDE, np.uint8)).all(-1)
    assert grey[outside].all()
    inside = (y > 4) & (y < h - 4) & (x > 4) & (x < w - 4)
    assert not grey[inside].any()
    many = tn.thumbnails(image, cells, nuclei, [2, 1], side_px=300)
    assert np.array_equal(many[0], thumb) and np.array_equal(
        many[1], tn.thumbnail(image, cells, nuclei, 1, side_px=300)
    )
    assert tn.thumbnails(image, cells, nuclei, []) == []
    with pytest.raises(ValueError, match=r"no cell \[7\]"):
        tn.thumbnail(image, cells, nuclei, 7)
    with pytest.raises(ValueError, match="needs the pixel size"):
        tn.thumbnail(image, cells, nuclei, 1, side_um=20)


def test_thumbnails_keep_one_physical_scale_across_pixel_sizes(field):
    image, cells, nuclei, _ = field
    big = np.array(Image.fromarray(image).resize((1280, 960), Image.Resampling.BICUBIC))
    big_cells = np.repeat(np.repeat(cells, 2, 0), 2, 1)
    big_nuclei = np.repeat(np.repeat(nuclei, 2, 0), 2, 1)
    coarse = tn.thumbnail(image, cells, nuclei, 1, side_um=20, pixel_size=0.1)  # 20 um: 200 px
    fine = tn.thumbnail(big, big_cells, big_nuclei, 1, side_um=20, pixel_size=0.05)  # 20 um: 400 px
    from scipy import ndimage

    def area(t):
        return ndimage.binary_fill_holes(
            colour_mask(t, tn.CELL_COLOUR) | colour_mask(t, tn.NUCLEUS_COLOUR)
        ).sum()

    areas = [area(coarse), area(fine)]
    assert areas[0] > 1000 and abs(areas[0] - areas[1]) < 0.04 * areas[0]
    # the pixel size, not the cells' width, sets the scale: half the pixel size, half the width
    wrong = tn.thumbnail(image, cells, nuclei, 1, side_um=20, pixel_size=0.05)
    assert abs(area(wrong) - areas[0] / 4) < 0.08 * areas[0] / 4
    plain = [~colour_mask(t, tn.CELL_COLOUR) & ~colour_mask(t, tn.NUCLEUS_COLOUR) for t in (coarse, fine)]
    both = plain[0] & plain[1]
    assert np.abs(coarse[both].astype(int) - fine[both].astype(int)).mean() < 6
    # side_um says how much: 40 um shows the cell at half the width
    wide = tn.thumbnail(image, cells, nuclei, 1, side_um=40, pixel_size=0.1)
    assert abs(area(wide) - areas[0] / 4) < 0.08 * areas[0] / 4


def test_thumbnails_read_lazy_slides_and_tables_alike(field):
    import zarr

    from napari_wbc.core.slide import Slide

    image, cells, nuclei, table = field
    lazy_cells = zarr.create_array(store={}, shape=cells.shape, dtype=np.uint32, chunks=(128, 128))
    lazy_cells[:] = cells
    slide = Slide.from_array(image, 0.2)
    expect = tn.thumbnails(image, cells, nuclei, [1, 2], pixel_size=0.2)
    got = tn.thumbnails(slide, [lazy_cells], nuclei, [1, 2], pixel_size=0.2, table=table)
    for a, b in zip(expect, got, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # regionprops' centroid = ours


# --- the report ---------------------------------------------------------------------------------


class WellFormed(HTMLParser):
    """Every element closed in order (void elements aside); counts the <img> tags."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def parse(html_text: str) -> WellFormed:
    assert html_text.startswith("<!DOCTYPE html>")
    parser = WellFormed()
    parser.feed(html_text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    return parser


def reviewed_field(field):
    image, cells, nuclei, table = field
    table = v.set_type(table, [1], "monocyte", "Ann")  # reclassified
    table = v.confirm(table, [2], "Ann")
    thumbs = dict(zip([1, 2], tn.thumbnails(image, cells, nuclei, [1, 2]), strict=True))
    return table, thumbs


def test_report_holds_the_differential_flags_and_one_thumbnail_per_cell(tmp_path, field):
    table, thumbs = reviewed_field(field)
    record = v.sign_off(table, "Ann", {"mifnet": "ef" * 32})
    paths = rp.write_report(tmp_path, FIELD, table, thumbs, record, {"image": "x.jpg"})
    assert paths == {"csv": tmp_path / f"{FIELD}_report.csv", "html": tmp_path / f"{FIELD}_report.html"}
    csv = pd.read_csv(paths["csv"])
    diff = csv[csv["section"] == "differential"].set_index("type")
    counts = count_summary(table)
    assert diff.loc["monocyte", "count"] == counts["n_monocyte"] == 1
    assert diff.loc["lymphocyte", "count"] == counts["n_lymphocyte"] == 1
    assert diff.loc["neutrophil", "count"] == 0 and diff.loc["monocyte", "percent"] == 50
    lymph = table.set_index("label").loc[2]
    assert diff.loc["lymphocyte", "ncr_median"] == pytest.approx(lymph["ncr"], abs=1e-3)
    assert diff.loc["lymphocyte", "cell_area_px_max"] == lymph["cell_area_px"]
    flagged = csv[csv["section"] == "flagged"].set_index("label")
    assert flagged.loc[1, "flags"] == "reclassified"
    assert flagged.loc[2, "flags"] == "low confidence; touches the border"
    signoff = csv[csv["section"] == "signoff"].iloc[0]
    assert signoff["type"] == "signed" and signoff["note"] == f"signed off by Ann at {record['time']}"
    assert csv[csv["section"] == "model"].iloc[0]["note"] == "weights sha256 " + "ef" * 32
    page = paths["html"].read_text()
    parsed = parse(page)
    assert [img["alt"] for img in parsed.images] == ["cell 2", "cell 1"]  # lymphocyte first
    for img in parsed.images:
        import base64
        import io

        png = Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))
        assert png.size == (96, 96)
    assert "Signed off</b> by Ann" in page and "Monocyte: 1 (50%)" in page and "was neutrophil" in page


def test_unsigned_report_says_why_and_is_replaced_signed_one_never(tmp_path, field):
    table, thumbs = reviewed_field(field)
    open_table = v.start_review(field[3])
    paths = rp.write_report(tmp_path, FIELD, open_table, thumbs)
    page = paths["html"].read_text()
    assert "Not signed off" in page and "2 cells not reviewed yet (cells 1, 2)" in page
    assert len(parse(page).images) == 2
    assert (
        pd.read_csv(paths["csv"]).iloc[0]["note"] == "not signed off: 2 cells not reviewed yet (cells 1, 2)"
    )
    # an unsigned draft is replaced by the next report
    record = v.sign_off(table, "Ann", {})
    assert rp.write_report(tmp_path, FIELD, table, thumbs, record) == paths
    signed = paths["html"].read_bytes()
    assert b"Signed off</b> by Ann" in signed
    # the same sign-off again: the report is there already
    assert rp.write_report(tmp_path, FIELD, table, thumbs, record) == paths
    # another report (unsigned, or another sign-off): a new name, the signed one untouched
    second = rp.write_report(tmp_path, FIELD, open_table, thumbs)
    assert second["html"].name == f"{FIELD}_report-2.html" and second["csv"].name == f"{FIELD}_report-2.csv"
    assert paths["html"].read_bytes() == signed
    later = dict(record, time="2099-01-01T00:00:00Z", reviewer="Ben")
    third = rp.write_report(tmp_path, FIELD, table, thumbs, later)
    assert third["html"].name == f"{FIELD}_report-2.html"  # the unsigned draft is replaced
    fourth = rp.write_report(tmp_path, FIELD, table, thumbs, dict(later, reviewer="Cy"))
    assert fourth["html"].name == f"{FIELD}_report-3.html"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_a_signoff_that_no_longer_holds_is_not_shown_as_signed(tmp_path, field):
    table, thumbs = reviewed_field(field)
    record = v.sign_off(table, "Ann", {})
    changed = v.set_type(table, [2], "basophil", "Ann")  # after the sign-off
    page = rp.write_report(tmp_path, FIELD, changed, thumbs, record)["html"].read_text()
    assert "Not signed off" in page and "no longer valid" in page
    assert 'name="napari-wbc-signoff"' not in page
