"""The `napari-wbc` command on real bccd fields, with the shipped weights."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_wbc.cli import main

FIELDS = ("BloodImage_00001", "BloodImage_00007")


def test_segment_writes_labels_tables_and_summary(tmp_path, datasets, capsys):
    images = [datasets / "bccd" / "images" / f"{stem}.jpg" for stem in FIELDS]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(images[0].read_bytes()[:2000])
    out = tmp_path / "out"
    args = [str(images[0]), str(broken), str(images[1]), "--out", str(out), "--device", "cpu"]
    code = main(["segment", *args])
    assert code == 1  # one input failed ...
    assert "broken.jpg" in capsys.readouterr().err
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 2  # ... and the others still got done
    for stem in FIELDS:
        cells = tifffile.imread(out / f"{stem}_cells.tif")
        nuclei = tifffile.imread(out / f"{stem}_nuclei.tif")
        assert cells.dtype == np.uint32 and cells.shape == (480, 640)
        assert np.array_equal(nuclei[nuclei > 0], cells[nuclei > 0])  # nucleus id = its cell's id
        table = pd.read_csv(out / f"{stem}_cells.csv")
        assert list(table["label"]) == sorted(set(np.unique(cells)) - {0})
        assert "Unnamed: 0" not in table  # no index column
        assert table["ncr"].between(0.05, 20).all()
        ref = np.asarray(tifffile.imread(out / f"{stem}_cells.tif"))  # round trip
        assert ref.max() == len(table)
    # each bccd field shows one or two white cells
    assert summary["white_cells"].between(1, 2).all()


def test_flip_averaged_segmentation_finds_the_same_cells(tmp_path, datasets):
    image = datasets / "bccd" / "images" / f"{FIELDS[0]}.jpg"
    args = ["segment", str(image), "--device", "cpu", "--out"]
    assert main([*args, str(tmp_path / "plain")]) == 0
    assert main([*args, str(tmp_path / "tta"), "--flip-average"]) == 0
    plain = tifffile.imread(tmp_path / "plain" / f"{FIELDS[0]}_cells.tif") > 0
    tta = tifffile.imread(tmp_path / "tta" / f"{FIELDS[0]}_cells.tif") > 0
    dice = 2 * (plain & tta).sum() / (plain.sum() + tta.sum())
    assert 0.9 < dice < 1.0  # the same white cell, outlined a little differently
    assert (
        pd.read_csv(tmp_path / "tta" / "summary.csv")["white_cells"].item()
        == pd.read_csv(tmp_path / "plain" / "summary.csv")["white_cells"].item()
    )


def test_single_cell_crop_keeps_the_centre_cell(tmp_path, datasets):
    """zheng_d2 040: a CellaVision crop of one lymphocyte, with a second white cell cut by its
    right edge that the reference does not annotate."""
    image = datasets / "zheng_d2" / "images" / "040.png"
    args = ["segment", str(image), "--device", "cpu", "--out"]
    assert main([*args, str(tmp_path / "all")]) == 0
    assert main([*args, str(tmp_path / "crop"), "--single-cell"]) == 0
    everything = tifffile.imread(tmp_path / "all" / "040_cells.tif")
    crop = tifffile.imread(tmp_path / "crop" / "040_cells.tif")
    nuclei = tifffile.imread(tmp_path / "crop" / "040_nuclei.tif")
    assert everything.max() == 2 and crop.max() == 1
    assert crop[150, 150] == 1  # the centre cell, outlined as without the option
    assert np.array_equal(crop > 0, everything == everything[150, 150])
    assert set(np.unique(nuclei)) == {0, 1}
    assert pd.read_csv(tmp_path / "crop" / "summary.csv")["white_cells"].item() == 1
    assert len(pd.read_csv(tmp_path / "crop" / "040_cells.csv")) == 1


def test_segment_pixel_size_gives_um(tmp_path, datasets):
    image = datasets / "bccd" / "images" / f"{FIELDS[0]}.jpg"
    assert main(["segment", str(image), "--out", str(tmp_path), "--pixel-size", "0.1"]) == 0
    table = pd.read_csv(tmp_path / f"{FIELDS[0]}_cells.csv")
    assert np.allclose(table["cell_area_um2"], table["cell_area_px"] * 0.01)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_missing_weights_and_device_are_clear_errors(tmp_path, datasets, capsys):
    image = str(datasets / "bccd" / "images" / f"{FIELDS[0]}.jpg")
    assert main(["segment", image, "--out", str(tmp_path), "--weights", str(tmp_path)]) == 2
    assert "napari-wbc train" in capsys.readouterr().err
    assert main(["segment", image, "--out", str(tmp_path), "--device", "cuda"]) == 2
    assert "not available" in capsys.readouterr().err


def test_evaluate_writes_json_and_markdown(tmp_path, datasets, capsys):
    root = tmp_path / "mini"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    stems = ["001", "002"]
    for stem in stems:
        shutil.copy(datasets / "zheng_d2" / "images" / f"{stem}.png", root / "images")
        shutil.copy(datasets / "zheng_d2" / "labels" / f"{stem}.png", root / "labels")
    (root / "split.csv").write_text("stem,split\n" + "".join(f"{s},test\n" for s in stems))
    assert main(["evaluate", "--dataset", str(root), "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "| cell |" in printed and "| nucleus |" in printed
    result = json.loads((tmp_path / "eval" / "mini_test_mifnet.json").read_text())
    assert result["images"] == 2 and len(result["weights_sha256"]) == 64
    for region, least in (("cell", 0.8), ("cytoplasm", 0.5), ("nucleus", 0.8)):
        m = result["metrics"][region]
        assert set(m) == {"precision", "dice", "miou", "me", "fpr", "fnr"}
        assert least < m["dice"] <= 1 and 0 <= m["me"] < 0.15
        # leaving out cells the reference lacks only removes false positive pixels
        assert result["annotated_metrics"][region]["dice"] >= m["dice"]
        assert 0 < result["single_cell_metrics"][region]["dice"] <= 1
    ap = result["instances"]
    assert set(ap) == {"AP", "AP50", "AP75"}
    assert 0 <= ap["AP75"] <= ap["AP50"] <= 100 and ap["AP"] <= ap["AP50"]
    assert result["ncr_agreement"]["cells"] == 2  # each crop's one cell matched
    assert 0.5 < result["ncr_agreement"]["median_ratio"] < 2
    assert "types" not in result  # mifnet does not type cells
    report = (tmp_path / "eval" / "mini_test_mifnet.md").read_text()
    assert report.startswith("mifnet on mini test") and "AP50" in report and "Annotated cells only" in report
    assert "Single-cell crop mode" in report


def test_segment_types_every_cell_and_writes_the_differential(tmp_path, datasets):
    """BloodImage_00007 (a test field, never trained on) shows one neutrophil."""
    image = datasets / "bccd" / "images" / "BloodImage_00007.jpg"
    args = ["segment", str(image), "--device", "cpu", "--out"]
    assert main([*args, str(tmp_path / "typed")]) == 0
    table = pd.read_csv(tmp_path / "typed" / "BloodImage_00007_cells.csv")
    counted = table[table["cell_type"] != "not_wbc"]
    assert counted["cell_type"].tolist() == ["neutrophil"]
    probs = table[
        [f"p_{k}" for k in ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "not_wbc")]
    ]
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert (table["type_confidence"] > 0.5).all()
    summary = pd.read_csv(tmp_path / "typed" / "summary.csv").iloc[0]
    assert summary["white_cells"] == 1 and summary["n_neutrophil"] == 1 and summary["pct_neutrophil"] == 100
    assert summary["n_lymphocyte"] == 0 and summary["n_unidentified"] == 0
    assert summary["typing"].startswith("celltype")
    # typing off: no type columns, no differential
    assert main([*args, str(tmp_path / "plain"), "--typing", "none"]) == 0
    plain = pd.read_csv(tmp_path / "plain" / "BloodImage_00007_cells.csv")
    assert "cell_type" not in plain and not any(c.startswith("p_") for c in plain)
    assert "n_neutrophil" not in pd.read_csv(tmp_path / "plain" / "summary.csv")
