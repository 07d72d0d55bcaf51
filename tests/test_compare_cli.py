"""`napari-wbc compare` on real bccd fields segmented with the shipped weights."""

import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from napari_wbc.cli import main
from napari_wbc.core.io import read_image
from napari_wbc.core.metrics import class_map_metrics

FIELDS = ("BloodImage_00001", "BloodImage_00007")
COLOUR = {
    (0, 0, 0, 0): "agree",
    (255, 255, 0, 255): "tp_cyto",
    (0, 0, 255, 255): "tp_nuc",
    (0, 255, 0, 255): "fp",
    (255, 0, 0, 255): "fn",
}


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, datasets, trained_model):
    out = tmp_path_factory.mktemp("seg")
    images = [str(datasets / "bccd" / "images" / f"{stem}.jpg") for stem in FIELDS]
    assert main(["segment", *images, "--out", str(out), "--device", "cpu"]) == 0
    return out


def pred_classes(folder, stem):
    cells = tifffile.imread(folder / f"{stem}_cells.tif")
    nuclei = tifffile.imread(folder / f"{stem}_nuclei.tif")
    return np.where(nuclei > 0, 2, np.where(cells > 0, 1, 0)).astype(np.uint8)


def ref_classes(datasets, stem):
    return np.asarray(Image.open(datasets / "bccd" / "labels" / f"{stem}.png"))


def test_compare_writes_exact_colours_metrics_and_matches(tmp_path, segmented, datasets):
    out = tmp_path / "review"
    args = ["compare", "--pred", str(segmented), "--ref", str(datasets / "bccd"), "--out", str(out)]
    assert main(args) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert summary["stem"].tolist() == list(FIELDS)
    assert "| nucleus |" in (out / "summary.md").read_text()
    for stem in FIELDS:
        pred, ref = pred_classes(segmented, stem), ref_classes(datasets, stem)
        rgba = np.asarray(Image.open(out / f"{stem}_review.png"))
        assert rgba.shape == (480, 640, 4) and rgba.dtype == np.uint8
        names = np.array([COLOUR.get(tuple(px), "other") for px in rgba.reshape(-1, 4)]).reshape(480, 640)
        assert not (names == "other").any()  # only the five exact colours
        assert np.array_equal(names == "agree", (pred == 0) & (ref == 0))
        assert np.array_equal(names == "tp_cyto", (pred == 1) & (ref == 1))
        assert np.array_equal(names == "tp_nuc", (pred == 2) & (ref == 2))
        assert np.array_equal(names == "fp", pred > ref)
        assert np.array_equal(names == "fn", pred < ref)
        assert (names == "tp_nuc").any() and (names == "tp_cyto").any()  # real cells were found

        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        image = read_image(datasets / "bccd" / "images" / f"{stem}.jpg").data
        agree = names == "agree"
        assert np.array_equal(overlay[agree], image[agree])
        assert np.array_equal(overlay[~agree], rgba[~agree][:, :3])

        metrics = pd.read_csv(out / f"{stem}_metrics.csv").set_index("region")
        expected = class_map_metrics(pred, ref)
        for region, scores in expected.items():
            for name, value in scores.items():
                assert metrics.loc[region, name] == pytest.approx(value)
                assert summary.set_index("stem").loc[stem, f"{region}_{name}"] == pytest.approx(value)

        matches = pd.read_csv(out / f"{stem}_matches.csv")
        cells = tifffile.imread(segmented / f"{stem}_cells.tif")
        measured = pd.read_csv(segmented / f"{stem}_cells.csv")
        found = matches[matches["label"].notna()]
        assert sorted(found["label"].astype(int)) == measured["label"].tolist()
        assert measured["label"].tolist() == sorted(set(np.unique(cells)) - {0})
        assert set(matches["status"]) <= {"matched", "missed", "extra"}
        assert (matches.loc[matches["status"] == "matched", "iou"] >= 0.5).all()
        n_ref = ndimage.label(ref > 0, structure=np.ones((3, 3)))[1]  # reference cells: white regions
        assert sorted(matches["ref_label"].dropna().astype(int)) == list(range(1, n_ref + 1))  # each once
        assert summary.set_index("stem").loc[stem, "ref_cells"] == n_ref >= 1


def test_reference_as_instance_tiffs_and_prediction_as_masks(tmp_path, segmented):
    masks = tmp_path / "masks"
    masks.mkdir()
    for stem in FIELDS:
        Image.fromarray(pred_classes(segmented, stem)).save(masks / f"{stem}.png")
    out = tmp_path / "self"
    # the prediction against itself: masks vs the instance TIFFs they came from
    assert main(["compare", "--pred", str(masks), "--ref", str(segmented), "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["fp_px"] == 0).all() and (summary["fn_px"] == 0).all()
    assert (summary["cell_dice"] == 1).all() and (summary["missed"] == 0).all()
    assert not list(out.glob("*_overlay.png"))  # no images known: no overlay
    for stem in FIELDS:
        rgba = np.asarray(Image.open(out / f"{stem}_review.png"))
        assert set(map(tuple, np.unique(rgba.reshape(-1, 4), axis=0))) <= {
            (0, 0, 0, 0),
            (255, 255, 0, 255),
            (0, 0, 255, 255),
        }


def test_missing_and_unreadable_pairs_are_reported_and_others_done(tmp_path, segmented, datasets, capsys):
    pred = tmp_path / "pred"
    shutil.copytree(segmented, pred)
    shutil.copy(pred / f"{FIELDS[0]}_cells.tif", pred / "not_in_ref_cells.tif")
    shutil.copy(pred / f"{FIELDS[0]}_nuclei.tif", pred / "not_in_ref_nuclei.tif")
    (pred / f"{FIELDS[1]}_nuclei.tif").unlink()
    out = tmp_path / "out"
    assert (
        main(["compare", "--pred", str(pred), "--ref", str(datasets / "bccd" / "labels"), "--out", str(out)])
        == 1
    )
    err = capsys.readouterr().err
    assert "not_in_ref: no reference" in err
    assert f"{FIELDS[1]}_nuclei.tif is missing" in err
    assert pd.read_csv(out / "summary.csv")["stem"].tolist() == [FIELDS[0]]
    assert (out / f"{FIELDS[0]}_review.png").exists()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / f"{FIELDS[0]}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["compare", "--pred", str(broken), "--ref", str(datasets / "bccd"), "--out", str(out)]) == 1
    assert "cannot read" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", "--pred", str(empty), "--ref", str(datasets / "bccd"), "--out", str(out)]) == 2
    assert "no predictions found" in capsys.readouterr().err
