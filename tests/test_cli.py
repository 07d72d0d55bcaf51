"""The `napari-wbc` command on real bccd fields, with the shipped weights."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from fuzz_files import png_declaring
from PIL import Image

from napari_wbc.cli import main
from napari_wbc.models import MissingWeightsError

FIELDS = ("BloodImage_00001", "BloodImage_00007")
SAMPLE = Path(__file__).parents[1] / "sample_data" / "BloodImage_00034.jpg"


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


def test_evaluate_shows_the_cells_typed_wrong(tmp_path, datasets):
    """zheng_d2 test crops 005 (a neutrophil, typed right) and 066 (labelled neutrophil; the
    shipped classifier reads its round nucleus and thin rim as a lymphocyte's)."""
    root = tmp_path / "mini"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for stem in ("005", "066"):
        shutil.copy(datasets / "zheng_d2" / "images" / f"{stem}.png", root / "images")
        shutil.copy(datasets / "zheng_d2" / "labels" / f"{stem}.png", root / "labels")
    (root / "split.csv").write_text("stem,split\n005,test\n066,test\n")
    (root / "class_labels.csv").write_text("image ID,class label\n5,1\n66,1\n")
    assert main(["evaluate", "--dataset", str(root), "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    types = json.loads((tmp_path / "eval" / "mini_test_mifnet.json").read_text())["types"]
    assert types["cells"] == 2 and types["accuracy"] == 0.5
    (wrong,) = types["wrong_cells"]
    assert (wrong["field"], wrong["reference"], wrong["typed"]) == ("066", "neutrophil", "lymphocyte")
    assert 0.5 < wrong["confidence"] <= 1
    assert (
        "Typed wrong (1): 066 neutrophil -> lymphocyte"
        in (tmp_path / "eval" / "mini_test_mifnet.md").read_text()
    )
    picture = np.asarray(Image.open(tmp_path / "eval" / "mini_test_mifnet_wrong_types.png"))
    assert picture.shape[2] == 3 and picture.shape[1] > 128 and picture.std() > 20  # the cell, not a blank


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


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def test_bad_inputs_are_said_once_each_and_the_batch_goes_on(tmp_path, datasets, capsys):
    good = datasets / "zheng_d1" / "images" / "001.png"  # a small crop: a fast test
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good, folder / "good.png")
    long_name = "a" * 250 + ".png"  # a valid name, but "<stem>_nuclei.tif" would not be
    shutil.copy(good, folder / long_name)
    (folder / "empty.png").touch()
    field = datasets / "bccd" / "images" / f"{FIELDS[0]}.jpg"
    (folder / "cut.jpg").write_bytes(field.read_bytes()[:3000])
    os.mkfifo(folder / "pipe.tif")
    (folder / "x.png").mkdir()
    (folder / "huge.png").write_bytes(png_declaring(9000, 9000))
    (folder / "notes.txt").write_text("not an input")  # not named like an image: not looked at
    too_long = tmp_path / ("b" * 300 + ".png")
    out = tmp_path / "out"
    code = main(
        ["segment", str(folder), str(folder / "x.png"), str(too_long), "--out", str(out), "--device", "cpu"]
    )
    assert code == 1
    captured = capsys.readouterr()
    errors = _errors(captured.err)
    bad = ["empty.png", "cut.jpg", "pipe.tif", "x.png", "huge.png", "b" * 300]
    assert len(errors) == len(bad), errors
    for name in bad:  # one line each, naming the file
        assert sum(name in line for line in errors) == 1, (name, errors)
    # a 9000 x 9000 PNG goes through the tiled engine; this one declares it but holds no pixels
    assert "is the file complete?" in next(line for line in errors if "huge.png" in line)
    assert "Traceback" not in captured.err
    assert "wrote results for 2 of 8 inputs" in captured.out
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(Path(f).name for f in summary["file"]) == sorted(["good.png", long_name])
    for stem in summary["output"]:
        for suffix in ("_cells.tif", "_nuclei.tif", "_cells.csv"):
            assert (out / f"{stem}{suffix}").is_file() and len(f".{stem}{suffix}.123456789abc.tmp") <= 255


def test_outputs_are_never_overwritten_silently_and_same_stems_stay_apart(
    tmp_path, datasets, capsys, monkeypatch
):
    import napari_wbc.models

    crop = datasets / "zheng_d1" / "images" / "001.png"
    shutil.copy(crop, tmp_path / "x.png")
    Image.open(crop).convert("RGB").save(tmp_path / "x.jpg", quality=95)
    inputs = [str(tmp_path / "x.jpg"), str(tmp_path / "x.png")]
    out = tmp_path / "out"
    assert main(["segment", *inputs, "--out", str(out), "--device", "cpu"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["output"]) == ["x", "x.png"]  # one set of outputs per input
    for stem in ("x", "x.png"):
        for suffix in ("_cells.tif", "_nuclei.tif", "_cells.csv"):
            assert (out / f"{stem}{suffix}").is_file()
    for stem in ("x", "x.png"):  # the user's own work now
        (out / f"{stem}_cells.csv").write_text("mine")
    names = sorted(p.name for p in out.iterdir())
    capsys.readouterr()

    # again: refused per file, before the model loads, and nothing is touched
    monkeypatch.setattr(napari_wbc.models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["segment", *inputs, "--out", str(out)]) == 1
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 2 and all("already exists" in e and "--overwrite" in e for e in errors)
    assert sorted(p.name for p in out.iterdir()) == names
    assert all((out / f"{stem}_cells.csv").read_text() == "mine" for stem in ("x", "x.png"))
    monkeypatch.undo()

    # with --overwrite, x.png alone: its outputs (same names as before) and its summary row are
    # replaced, x.jpg's are kept
    assert main(["segment", inputs[1], "--out", str(out), "--device", "cpu", "--overwrite"]) == 0
    assert "label" in pd.read_csv(out / "x.png_cells.csv")
    assert (out / "x_cells.csv").read_text() == "mine"
    assert sorted(pd.read_csv(out / "summary.csv")["output"]) == ["x", "x.png"]
    assert sorted(p.name for p in out.iterdir()) == names


def test_bad_files_are_reported_before_the_model_loads(tmp_path, datasets, capsys, monkeypatch):
    import napari_wbc.models

    (tmp_path / "empty.png").touch()
    good = str(datasets / "zheng_d1" / "images" / "001.png")
    said_before_loading = []

    def load_model(*args, **kwargs):
        said_before_loading.append(capsys.readouterr().err)
        raise MissingWeightsError("stop here")

    monkeypatch.setattr(napari_wbc.models, "load_model", load_model)
    assert main(["segment", str(tmp_path / "empty.png"), good, "--out", str(tmp_path / "out")]) == 2
    assert len(said_before_loading) == 1 and "empty.png: empty file" in said_before_loading[0]
    # nothing to segment: the model never loads
    assert main(["segment", str(tmp_path / "empty.png"), "--out", str(tmp_path / "out")]) == 1
    assert len(said_before_loading) == 1
    # a pixel size no microscope gives is refused before anything is read
    assert main(["segment", good, "--out", str(tmp_path / "out"), "--pixel-size", "50"]) == 2
    assert "--pixel-size 50 is outside 0.02-5 um/px" in capsys.readouterr().err
    assert len(said_before_loading) == 1


def test_grayscale_fields_are_flagged(tmp_path, datasets, capsys):
    gray = np.asarray(Image.open(datasets / "zheng_d1" / "images" / "001.png").convert("L"))
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "gray16.png"), "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "gray16.png" in warnings[0] and "unreliable" in warnings[0]
    assert "unreliable" in pd.read_csv(out / "summary.csv")["warning"].item()


def test_working_size_is_checked_before_the_network_runs(tmp_path, datasets, capsys):
    # a field at a quarter of bccd's magnification: its white cells must be seen 2.25x bigger
    field = Image.open(datasets / "bccd" / "images" / f"{FIELDS[0]}.jpg")
    field.resize((160, 120), Image.LANCZOS).save(tmp_path / "low.png")
    # a field without cells whose file says 5 um/px: it would be resampled 50x
    rng = np.random.default_rng(0)
    plain = np.clip(rng.normal((230, 200, 205), 4, (150, 200, 3)), 0, 255).astype(np.uint8)
    tifffile.imwrite(
        tmp_path / "plain.tif", plain, photometric="rgb", resolution=(2e3, 2e3), resolutionunit="CENTIMETER"
    )
    out = tmp_path / "out"
    args = ["segment", str(tmp_path), "--out", str(out), "--device", "cpu", "--max-megapixels", "0.05"]
    assert main(args) == 1
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 2
    low, plain = sorted(errors)
    assert "low.png: its white cells are only" in low and "over the limit of 0.05 MP" in low
    assert "plain.tif: no white cell was found" in plain and "(5 um/px)" in plain and "--pixel-size" in plain
    assert not out.exists() or not any(out.iterdir())


def test_a_folder_that_is_also_the_output_gives_only_its_images(tmp_path):
    """`segment DIR --out DIR`: the label TIFFs written there are not taken as images next time,
    though a file given by name is."""
    from napari_wbc.core.batch import gather_inputs

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    for name in ("a_cells.tif", "a_nuclei.tif", "b.tif"):
        tifffile.imwrite(tmp_path / name, np.zeros((32, 32), np.uint32))
    files, skipped = gather_inputs([tmp_path], out=tmp_path)
    assert [p.name for p in files] == ["a.png", "b.tif"] and skipped == []
    files, _ = gather_inputs([tmp_path / "a_cells.tif"], out=tmp_path)
    assert [p.name for p in files] == ["a_cells.tif"]
    files, _ = gather_inputs([tmp_path], out=tmp_path / "elsewhere")  # another folder's are images
    assert len(files) == 4


def test_slides_never_replace_a_finished_run_or_a_fields_outputs(tmp_path, capsys, monkeypatch):
    """A slide whose results are already in --out, or whose outputs would take a field's
    names (x.jpg and x.ome.tif both write x_cells.tif), is refused before the model loads."""
    import napari_wbc.models
    from napari_wbc.core.slide import build_mosaic_slide

    field = np.asarray(Image.open(SAMPLE).convert("RGB"))
    done = build_mosaic_slide(tmp_path / "done.ome.tif", [field], grid=(2, 1), tile=128)
    clash = build_mosaic_slide(tmp_path / "x.ome.tif", [field], grid=(2, 1), tile=128)
    Image.fromarray(field).save(tmp_path / "x.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "done_summary.csv").write_text("mine")
    (out / "x_cells.tif").write_text("mine")  # x.jpg's outputs: refused too
    monkeypatch.setattr(napari_wbc.models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["segment", str(done), str(clash), str(tmp_path / "x.jpg"), "--out", str(out)]) == 1
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 3, errors
    assert any(str(done) in e and "already exists" in e and "--overwrite" in e for e in errors)
    assert any(str(clash) in e and "x.jpg" in e for e in errors)
    assert (out / "done_summary.csv").read_text() == "mine" and (out / "x_cells.tif").read_text() == "mine"
