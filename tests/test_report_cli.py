"""`napari-wbc report` on real `segment` outputs: counts, thumbnails, sign-off, slides."""

import base64
import io
import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from napari_wbc.cli import main
from napari_wbc.core import report as rp
from napari_wbc.core import thumbnails as tn
from napari_wbc.core import verification as v
from napari_wbc.core.measure import count_summary

STEM = "BloodImage_00034"  # a bccd field with two white cells


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, datasets):
    """The folder `napari-wbc segment` wrote for one real bccd field."""
    out = tmp_path_factory.mktemp("segmented")
    image = datasets / "bccd" / "images" / f"{STEM}.jpg"
    assert main(["segment", str(image), "--out", str(out), "--device", "cpu"]) == 0
    return out


@pytest.fixture
def out(segmented, tmp_path):
    """A copy of the segment output, for a test to change."""
    return shutil.copytree(segmented, tmp_path / "out")


def images_of(page: str) -> list[dict]:
    """The page's <img> tags; asserts that it is one well-formed HTML document."""

    class Check(HTMLParser):
        def __init__(self):
            super().__init__()
            self.open, self.bad, self.images = [], [], []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs))
            elif tag != "meta":
                self.open.append(tag)

        def handle_endtag(self, tag):
            if not self.open or self.open.pop() != tag:
                self.bad.append(tag)

    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    check = Check()
    check.feed(page)
    check.close()
    assert check.bad == [] and check.open == []
    return check.images


def test_report_of_a_segmented_field(out, capsys):
    assert main(["report", str(out)]) == 0
    said = capsys.readouterr()
    table = pd.read_csv(out / f"{STEM}_cells.csv")
    n = len(table)
    assert n >= 2
    ids = ", ".join(map(str, table["label"]))
    assert f"{STEM}_report.html (NOT SIGNED OFF: {n} cells not reviewed yet (cells {ids}))" in said.out
    counts = count_summary(table)
    report = pd.read_csv(out / f"{STEM}_report.csv")
    diff = report[report["section"] == "differential"].set_index("type")
    for kind in diff.index:
        assert diff.loc[kind, "count"] == counts[f"n_{kind}"]
        assert diff.loc[kind, "percent"] == pytest.approx(counts[f"pct_{kind}"], abs=0.01)
    totals = report[report["section"] == "total"].set_index("type")["count"]
    assert totals["white cells"] == counts["white_cells"]
    assert totals["excluded (not a white cell)"] == counts["excluded"]
    page = (out / f"{STEM}_report.html").read_text()
    images = images_of(page)
    assert sorted(int(img["alt"].removeprefix("cell ")) for img in images) == sorted(table["label"])
    for img in images:  # JPEG at the size shown
        assert img["src"].startswith("data:image/jpeg;base64,")
        jpeg = Image.open(io.BytesIO(base64.b64decode(img["src"].removeprefix("data:image/jpeg;base64,"))))
        assert jpeg.format == "JPEG" and jpeg.size == (rp.REPORT_THUMB, rp.REPORT_THUMB)
        assert (img["width"], img["height"]) == (str(rp.REPORT_THUMB), str(rp.REPORT_THUMB))
    assert "Not signed off" in page and "mifnet" in page
    assert not (out / f"{STEM}_review.json").exists()  # a report alone changes no review


def test_report_signs_off_a_finished_review_once(out, capsys):
    table = v.start_review(pd.read_csv(out / f"{STEM}_cells.csv"))
    first = int(table["label"].iloc[0])
    table = v.confirm(table, table["label"], "A. Tech")
    table = v.set_type(table, [first], "monocyte", "A. Tech")
    path = v.review_path(out, STEM)
    v.save_review(path, table, {"models": {"mifnet": "ab" * 32}})
    assert main(["report", str(out), "--reviewer", "B. Head"]) == 0
    said = capsys.readouterr().out
    _, meta = v.load_review(path)
    record = meta["signoff"]
    assert record["reviewer"] == "B. Head" and record["models"] == {"mifnet": "ab" * 32}
    assert record["counts"]["n_monocyte"] == count_summary(table)["n_monocyte"] >= 1
    assert f"signed off by B. Head at {record['time']}" in said
    page = (out / f"{STEM}_report.html").read_text()
    assert "Signed off</b> by B. Head" in page and "was " in page  # the reclassified cell says so
    csv = pd.read_csv(out / f"{STEM}_report.csv")
    assert (
        csv.loc[csv["section"] == "flagged"].set_index("label").loc[first, "review_status"] == "reclassified"
    )
    signed = (out / f"{STEM}_report.html").read_bytes()
    # later runs carry the record from the review file and leave the signed report as it is
    assert main(["report", str(out)]) == 0
    assert main(["report", str(out), "--reviewer", "C. Other"]) == 0
    assert (out / f"{STEM}_report.html").read_bytes() == signed
    assert not list(out.glob(f"{STEM}_report-*"))
    assert v.load_review(path)[1]["signoff"] == record


def test_report_refuses_a_signoff_before_every_cell_is_reviewed(out, capsys):
    table = v.start_review(pd.read_csv(out / f"{STEM}_cells.csv"))
    v.save_review(v.review_path(out, STEM), v.confirm(table, table["label"].iloc[:1], "A. Tech"), {})
    assert main(["report", str(out), "--reviewer", "B. Head"]) == 1
    err = capsys.readouterr().err
    rest = ", ".join(map(str, table["label"].iloc[1:]))
    n = len(table) - 1
    assert f"error: {STEM}: sign-off refused: {n} cell{'s' if n > 1 else ''} not reviewed yet (cell" in err
    assert rest in err
    assert "signoff" not in json.loads(v.review_path(out, STEM).read_text())["meta"]
    assert "Not signed off" in (out / f"{STEM}_report.html").read_text()


def test_report_finds_moved_images_and_says_what_it_lacks(out, datasets, capsys):
    summary = pd.read_csv(out / "summary.csv")
    summary["file"] = "/nowhere/" + summary["output"] + ".jpg"
    summary.to_csv(out / "summary.csv", index=False)
    assert main(["report", str(out)]) == 0
    assert (
        "image not found: no thumbnails (give the folder of the images with --images)"
        in capsys.readouterr().err
    )
    assert images_of((out / f"{STEM}_report.html").read_text()) == []
    assert main(["report", str(out), "--images", str(datasets / "bccd" / "images")]) == 0
    assert len(images_of((out / f"{STEM}_report.html").read_text())) == len(
        pd.read_csv(out / f"{STEM}_cells.csv")
    )


def test_report_of_bad_folders_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no segment outputs here" in err and err.count("\n") == 1
    (tmp_path / "x_cells.csv").write_text("not,a\ncell,table\n")
    (tmp_path / "x_cells.tif").write_bytes(b"")
    (tmp_path / "x_nuclei.tif").write_bytes(b"")
    assert main(["report", str(tmp_path)]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"error: x: {tmp_path / 'x_cells.csv'}: no label column; not a cell table"
    )


def test_report_of_slide_outputs_reads_thumbnails_from_the_slide(out, datasets, tmp_path, capsys):
    """A slide's outputs (pyramidal label TIFFs, <name>_cells.csv, <name>_summary.csv) made of
    the segmented field, and the slide (a pyramidal OME-TIFF of the field) in another folder."""
    from napari_wbc.core.pyramid import write_pyramid_tiff
    from napari_wbc.core.slide import build_mosaic_slide

    slides = tmp_path / "slides"
    slides.mkdir()
    image = datasets / "bccd" / "images" / f"{STEM}.jpg"
    build_mosaic_slide(slides / "smear.ome.tif", [image], grid=(1, 1), pixel_size=0.1, tile=128)
    folder = tmp_path / "slide_out"
    folder.mkdir()
    for kind in ("cells", "nuclei"):
        labels = tifffile.imread(out / f"{STEM}_{kind}.tif")
        write_pyramid_tiff(
            folder / f"smear_{kind}.tif",
            lambda y0, x0, y1, x1, a=labels: a[y0:y1, x0:x1],
            labels.shape,
            np.uint32,
            tile=128,
            pixel_size=0.1,
            downsample="nearest",
        )
        with tifffile.TiffFile(folder / f"smear_{kind}.tif") as tif:
            assert len(tif.series[0].levels) > 1  # a pyramid, read lazily
    table = pd.read_csv(out / f"{STEM}_cells.csv")
    table.to_csv(folder / "smear_cells.csv", index=False)
    summary = {"file": "smear", **count_summary(table), "pixel_size_um": 0.1, "model": "mifnet"}
    pd.DataFrame([summary]).to_csv(folder / "smear_summary.csv", index=False)
    assert main(["report", str(folder), "--images", str(slides)]) == 0
    page = (folder / "smear_report.html").read_text()
    images = images_of(page)
    assert len(images) == len(table)
    assert "0.1 µm/px" in page and "smear.ome.tif" in page
    # the same cells as the field's own thumbnails at that scale
    field = np.asarray(Image.open(image).convert("RGB"))
    labels = tifffile.imread(out / f"{STEM}_cells.tif"), tifffile.imread(out / f"{STEM}_nuclei.tif")
    label = int(table["label"].iloc[0])
    expect = tn.thumbnail(field, *labels, label, size=rp.REPORT_THUMB, pixel_size=0.1)
    shown = {int(img["alt"].removeprefix("cell ")): img["src"] for img in images}[label]

    def pixels(url):
        data = base64.b64decode(url.removeprefix("data:image/jpeg;base64,"))
        return np.asarray(Image.open(io.BytesIO(data)))

    got, expect = pixels(shown), pixels(rp._jpeg(expect))  # both through the report's JPEG
    assert got.shape == expect.shape
    assert np.abs(got.astype(int) - expect.astype(int)).mean() <= 0.5
