"""Cell types a reviewer set, saved as classifier training data: layout and provenance, the
classifier's input cut from them, no overwrite, superseding, concurrent savers, and a tiny
fine-tune from them with `napari-wbc train --model celltype --init`."""

import json

import numpy as np
import pandas as pd
import pytest
from concurrency import run_together
from scipy import ndimage

from napari_wbc.cli import main
from napari_wbc.core.celltype_data import _box_masks, correction_examples, voc_boxes
from napari_wbc.core.celltypes import cell_crops, field_ruler, size_cue
from napari_wbc.core.corrections import (
    read_corrections,
    save_type_corrections,
    validate_corrections,
)
from napari_wbc.core.dataset import CELL_TYPES, image_cell_types, list_pairs, load_pair, read_manifest
from napari_wbc.core.io import InputError
from napari_wbc.models import SHIPPED, load_model, sha256
from napari_wbc.models.celltype import CLASSES

PROVENANCE = {
    "model": "mifnet",
    "weights_sha256": "ab" * 32,
    "classifier": "celltype",
    "classifier_sha256": "cd" * 32,
}
NOW = "2026-11-30T10:00:00+00:00"


def reviewed_field(pair):
    """A bccd field as a reviewer leaves it: its reference white cells (ids 1..) with the
    field's type, given instead of another suggestion (reclassified); two red cells excluded
    (not a white cell), one red cell not reviewed, one reviewed object left unidentified."""
    image, label = load_pair(pair)
    kind = image_cell_types(pair.image.parent.parent)[pair.stem]
    cells = ndimage.label(label > 0)[0].astype(np.uint32)
    nuclei = np.where(label == 2, cells, 0).astype(np.uint32)
    n_white = int(cells.max())
    added = 0
    for box in voc_boxes(pair.image.parent.parent, pair.stem)["RBC"]:
        c, nu = _box_masks(image, box, "RBC")
        free = (c > 0) & (cells == 0)
        if added < 4 and free.sum() > 20:
            added += 1
            cells[free] = n_white + added
            nuclei[free & (nu > 0)] = n_white + added
    assert added == 4
    other = next(t for t in CELL_TYPES if t != kind)
    rows = [(i, kind, other, "reclassified") for i in range(1, n_white + 1)]
    rows += [
        (n_white + 1, "not_wbc", "lymphocyte", "excluded"),
        (n_white + 2, "not_wbc", "not_wbc", "excluded"),
        (n_white + 3, "not_wbc", "not_wbc", "suggested"),
        (n_white + 4, "unidentified", "unidentified", "confirmed"),
    ]
    table = pd.DataFrame(
        [
            {
                "label": i,
                "cell_type": t,
                "suggested_type": s,
                "review_status": st,
                "reviewed_by": "" if st == "suggested" else "dr who",
                "reviewed_at": "" if st == "suggested" else NOW,
                "ncr": 0.5,
            }
            for i, t, s, st in rows
        ]
    )
    return image, cells, nuclei, table, kind, n_white


@pytest.fixture
def fields(datasets):
    """Two bccd val fields of one known type each, with red cells in their VOC boxes."""
    types = image_cell_types(datasets / "bccd")
    pairs = [
        p
        for p in list_pairs(datasets / "bccd", "val")
        if p.stem in types and len(voc_boxes(datasets / "bccd", p.stem).get("RBC", [])) >= 8
    ]
    return pairs[:2]


def snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_saved_corrections_are_valid_carry_provenance_and_give_the_classifiers_input(tmp_path, fields):
    from PIL import Image

    folder = tmp_path / "type_corrections"
    image, cells, nuclei, table, kind, n_white = reviewed_field(fields[0])
    source = {**PROVENANCE, "source": str(fields[0].image)}
    result = save_type_corrections(folder, image, cells, nuclei, table, source)
    red_cell = field_ruler(image, cells)  # bccd's red cells: about 90 px
    assert 60 < red_cell < 130
    # the reviewed cells with a type to learn: the white cells and two excluded objects
    assert result["split"] == "train" and result["unchanged"] == 0
    assert len(result["saved"]) == n_white + 2
    assert validate_corrections(folder) == []
    records = read_corrections(folder)
    assert [r["id"] for r in records] == result["saved"]
    assert [r["label"] for r in records] == [*range(1, n_white + 1), n_white + 1, n_white + 2]
    for r in records:
        assert {k: r[k] for k in PROVENANCE} == PROVENANCE and r["source"] == str(fields[0].image)
        assert r["reviewed_by"] == "dr who" and r["reviewed_at"] == NOW and r["red_cell_px"] == red_cell
        for part in ("crop", "mask"):
            assert sha256(folder / r["files"][part]) == r["sha256"][part]
        crop = np.asarray(Image.open(folder / r["files"]["crop"]))
        mask = np.asarray(Image.open(folder / r["files"]["mask"]))
        (y0, x0), (h, w) = r["origin"], mask.shape
        assert np.array_equal(crop, image[y0 : y0 + h, x0 : x0 + w])  # the field's own pixels
        assert np.array_equal(mask == 2, nuclei[y0 : y0 + h, x0 : x0 + w] == r["label"])
        assert np.array_equal(mask > 0, cells[y0 : y0 + h, x0 : x0 + w] == r["label"])
    white = records[0]
    assert (white["cell_type"], white["suggested_type"], white["review_status"]) == (
        kind,
        next(t for t in CELL_TYPES if t != kind),
        "reclassified",
    )
    assert [r["cell_type"] for r in records[n_white:]] == ["not_wbc", "not_wbc"]
    assert [r["review_status"] for r in records[n_white:]] == ["excluded", "excluded"]

    # the classifier's examples are what it would cut from the field itself
    ex = correction_examples([folder], "train", 64, 1.5)
    ids = [r["label"] for r in records]
    rgb, label, width = cell_crops(image, cells, nuclei, ids, 64, 1.5)
    assert np.array_equal(ex["small"], rgb) and np.array_equal(ex["small_label"], label)
    assert np.allclose(ex["size"], size_cue(width, red_cell)) and (ex["size"][:, 1] == 1).all()
    assert list(ex["target"]) == [CLASSES.index(kind)] * n_white + [CLASSES.index("not_wbc")] * 2
    assert len(correction_examples([folder], "val", 64, 1.5)["target"]) == 0

    # the second field saved is kept for validation
    image2, cells2, nuclei2, table2, *_ = reviewed_field(fields[1])
    second = save_type_corrections(
        folder, image2, cells2, nuclei2, table2, {**PROVENANCE, "source": str(fields[1].image)}
    )
    assert second["split"] == "val" and read_corrections(folder, "val")
    assert read_corrections(folder, "val")[0]["red_cell_px"] == field_ruler(image2, cells2)


def test_a_slide_saves_its_cells_read_around_each_one(tmp_path, fields):
    """A slide's lazy image and labels (read only around the reviewed cells) give the records a
    field in memory gives: the same crops, masks and places."""
    import zarr

    from napari_wbc.core.measure import measure_cells
    from napari_wbc.core.slide import Slide

    image, cells, nuclei, table, kind, n_white = reviewed_field(fields[0])
    places = measure_cells(cells, nuclei)[["label", "centroid_y", "centroid_x", "cell_area_px"]]
    table = table.merge(places, on="label")
    lazy = []
    for labels in (cells, nuclei):
        array = zarr.create_array(store={}, shape=labels.shape, dtype=np.uint32, chunks=(64, 64))
        array[:] = labels
        lazy.append([array])  # napari's multiscale: a list of levels
    source = {**PROVENANCE, "source": "slide.ome.tif"}
    field = save_type_corrections(tmp_path / "field", image, cells, nuclei, table, source)
    slide = save_type_corrections(tmp_path / "slide", Slide.from_array(image, 0.1), *lazy, table, source)
    assert len(slide["saved"]) == len(field["saved"]) == n_white + 2
    assert validate_corrections(tmp_path / "slide") == []
    for a, b in zip(read_corrections(tmp_path / "field"), read_corrections(tmp_path / "slide"), strict=True):
        # the slide's ruler is read around each cell: here, all of this small field
        assert (a["label"], a["origin"], a["cell_type"], a["red_cell_px"]) == (
            b["label"],
            b["origin"],
            b["cell_type"],
            b["red_cell_px"],
        )
        assert 60 < a["red_cell_px"] < 130
        assert a["sha256"] == b["sha256"]  # the same crop and mask files
    # the slide stands for the field: saved again, nothing new
    again = save_type_corrections(tmp_path / "slide", Slide.from_array(image, 0.1), *lazy, table, source)
    assert again == {"saved": [], "unchanged": n_white + 2, "split": "train"}
    fresh = save_type_corrections(tmp_path / "other", Slide.from_array(image, 0.1), *lazy, table, source)
    assert len(fresh["saved"]) == n_white + 2
    # a table of other cells is refused before anything is written
    with pytest.raises(InputError, match="the table names cells the labels lack"):
        save_type_corrections(
            tmp_path / "bad",
            Slide.from_array(image, 0.1),
            *lazy,
            table.assign(centroid_y=1.0, centroid_x=1.0),
        )
    assert not (tmp_path / "bad").exists()


def test_nothing_is_overwritten_and_a_retyped_cell_supersedes(tmp_path, fields):
    folder = tmp_path / "tc"
    image, cells, nuclei, table, kind, n_white = reviewed_field(fields[0])
    save_type_corrections(folder, image, cells, nuclei, table, PROVENANCE)
    before = snapshot(folder)
    again = save_type_corrections(folder, image, cells, nuclei, table, PROVENANCE)
    assert again["saved"] == [] and again["unchanged"] == n_white + 2
    assert snapshot(folder) == before  # nothing written

    retyped = table.copy()
    retyped.loc[retyped["label"] == 1, "cell_type"] = "monocyte" if kind != "monocyte" else "lymphocyte"
    third = save_type_corrections(folder, image, cells, nuclei, retyped, PROVENANCE)
    assert third["unchanged"] == n_white + 1 and len(third["saved"]) == 1
    after = snapshot(folder)
    assert all(after[k] == v for k, v in before.items() if k != "manifest.jsonl")  # old files kept
    old, new = read_manifest(folder)[0], read_manifest(folder)[-1]
    assert new["supersedes"] == old["id"] and new["id"] != old["id"]
    current = {r["label"]: r["cell_type"] for r in read_corrections(folder)}
    assert current[1] == retyped.loc[retyped["label"] == 1, "cell_type"].item()
    assert len(read_corrections(folder)) == n_white + 2
    assert validate_corrections(folder) == []

    # bad input: one clear message, nothing written
    with pytest.raises(InputError, match="names cells the labels lack"):
        save_type_corrections(folder, image, cells, nuclei, table.assign(label=table["label"] + 99))
    with pytest.raises(InputError, match="no review"):
        save_type_corrections(folder, image, cells, nuclei, table.drop(columns=["review_status"]))
    assert snapshot(folder) == after

    # a changed file, and one no record names, are found
    (folder / old["files"]["crop"]).write_bytes(b"not a png")
    (folder / "crops" / "stray.png").write_bytes(b"")
    problems = validate_corrections(folder)
    assert any("is not the file saved with it" in p for p in problems)
    assert "crops/stray.png: named by no record (an interrupted save)" in problems


# --- concurrent savers -----------------------------------------------------------------------


def marked_field(saver, n):
    """A small field that says who saved it: its colour, and its cell's size."""
    image = np.full((40, 48, 3), (10 * saver + n, 100, 150), np.uint8)
    cells = np.zeros((40, 48), np.uint32)
    cells[5 : 15 + saver, 5 : 15 + n] = 3
    nuclei = np.zeros_like(cells)
    nuclei[8:11, 8:11] = 3
    table = pd.DataFrame(
        [{"label": 3, "cell_type": CELL_TYPES[saver], "suggested_type": "neutrophil"}]
    ).assign(review_status="confirmed", reviewed_by=f"saver {saver}", reviewed_at=NOW)
    return image, cells, nuclei, table


def saver_process(root, saver, rounds, start, results):
    start.wait()
    saved = []
    for n in range(rounds):
        try:
            got = save_type_corrections(root, *marked_field(saver, n), {"source": "smear.png"})
            saved.append((saver, n, got["saved"], got["split"]))
        except Exception as err:  # a crash is a failure of the test, reported by the parent
            saved.append((saver, n, f"error: {type(err).__name__}: {err}", None))
    results.put(saved)


def test_concurrent_savers_do_not_clash(tmp_path):
    from PIL import Image

    savers, rounds = 3, 6
    saved = run_together(saver_process, tmp_path, savers, rounds)
    assert [ids for _, _, ids, _ in saved if isinstance(ids, str)] == []
    ids = [i for _, _, got, _ in saved for i in got]
    assert len(ids) == len(set(ids)) == savers * rounds  # the same source stem, distinct ids
    assert validate_corrections(tmp_path) == []
    records = {r["id"]: r for r in read_corrections(tmp_path)}
    assert sorted(records) == sorted(ids)
    for saver, n, (cid,), split in saved:  # each record holds what its saver saved
        image, cells, _, table = marked_field(saver, n)
        r = records[cid]
        assert r["cell_type"] == CELL_TYPES[saver] and r["reviewed_by"] == f"saver {saver}"
        assert r["split"] == split
        crop = np.asarray(Image.open(tmp_path / r["files"]["crop"]))
        assert (crop[..., 0] == 10 * saver + n).all()
        assert (np.asarray(Image.open(tmp_path / r["files"]["mask"])) > 0).sum() == (cells > 0).sum()
    # the 2nd and 12th of the 18 fields, whichever saver saved them, validate
    order = [r["field"] for r in read_manifest(tmp_path)]
    assert [records[i]["split"] for i in ids].count("val") == 2
    assert [r["split"] for r in read_manifest(tmp_path)] == [
        "val" if k in (1, 11) else "train" for k in range(len(order))
    ]


# --- fine-tuning from corrections ------------------------------------------------------------


def test_tiny_fine_tune_from_corrections_end_to_end(tmp_path, fields, capsys):
    folder = tmp_path / "type_corrections"
    image, cells, nuclei, table, *_ = reviewed_field(fields[0])
    save_type_corrections(folder, image, cells, nuclei, table, PROVENANCE)
    shipped = SHIPPED / "celltype"
    before = sha256(shipped / "model.safetensors")
    args = ["train", "--model", "celltype", "--data", str(folder), "--init", str(shipped)]
    args += ["--max-steps", "3", "--val-every", "2", "--batch-size", "8", "--lr", "2e-4"]
    args += ["--workers", "0", "--device", "cpu", "--out"]
    # one field: nothing kept for validation, so it is refused in one line
    assert main([*args, str(tmp_path / "refused")]) == 2
    assert "no corrections in the val split" in capsys.readouterr().err

    image2, cells2, nuclei2, table2, *_ = reviewed_field(fields[1])
    save_type_corrections(folder, image2, cells2, nuclei2, table2, PROVENANCE)
    out = tmp_path / "tuned"
    assert main([*args, str(out)]) == 0
    net, spec = load_model(weights=out)  # the weights load
    assert spec.name == "celltype" and spec.classes == CLASSES
    assert spec.extra["init"]["sha256"] == before
    history = json.loads((out / "history.json").read_text())
    assert history["steps"] == 3 and [v["step"] for v in history["val"]] == [0, 2, 3]
    n_train, n_val = len(read_corrections(folder, "train")), len(read_corrections(folder, "val"))
    assert history["corrections"] == {"train": n_train, "val": n_val} and n_train and n_val
    assert spec.extra["trained"]["corrections"] == history["corrections"]
    # the start weights kept (no step beat them), or too few val white cells to choose the
    # threshold again: either way the start's threshold is kept, and the card says why
    start = json.loads((shipped / "config.json").read_text())["unidentified_below"]
    assert spec.extra["unidentified_below"] == start
    kept = history["best"]["step"] == 0
    why = "no step beat the start weights" if kept else f"kept the unidentified threshold {start}"
    assert any(why in note for note in history["notes"])
    assert why in (out / "CARD.md").read_text()
    assert "type corrections" in (out / "CARD.md").read_text()
    assert sha256(shipped / "model.safetensors") == before  # the start is never written
