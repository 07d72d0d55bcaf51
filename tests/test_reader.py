"""The napari reader: what it claims, what layers it returns, and how it reports bad files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_wbc._reader import get_reader, layer_data, read_smears
from napari_wbc._sample_data import SAMPLE_DIR, sample_path
from napari_wbc.core.io import InputError

# tests marked `io` need neither torch nor napari nor Qt: they also run on Python 3.12 with the
# newest tifffile (scripts/test-io-py312.sh); read_smears imports napari only to notify
io = pytest.mark.io


def _rgb(h=40, w=50, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _read_one(path):
    reader = get_reader(str(path))
    assert callable(reader)
    layers = reader(str(path))
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image"
    assert kwargs["rgb"] is True
    assert data.dtype == np.uint8 and data.ndim == 3 and data.shape[-1] == 3
    return data, kwargs


@io
@pytest.mark.parametrize("name", ["a.png", "a.PNG", "b.jpg", "c.jpeg", "d.tif", "e.TIFF", "f.bmp"])
def test_claims_smear_image_types(tmp_path, name):
    assert get_reader(str(tmp_path / name)) is read_smears


@io
@pytest.mark.parametrize("name", ["a.txt", "b.zarr", "c.czi", "d.csv"])
def test_leaves_other_files_alone(tmp_path, name):
    assert get_reader(str(tmp_path / name)) is None


@io
def test_leaves_folders_stacks_and_labels_to_other_readers(tmp_path):
    folder = tmp_path / "images.png"
    folder.mkdir()
    assert get_reader(str(folder)) is None
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 32, 32), np.uint16))
    assert get_reader(str(stack)) is None
    pages = tmp_path / "pages.tif"
    with tifffile.TiffWriter(pages) as tif:
        tif.write(np.zeros((32, 32, 3), np.uint8))
        tif.write(np.zeros((16, 16, 3), np.uint8))
    assert get_reader(str(pages)) is None
    labels = tmp_path / "field_cells.tif"  # as `napari-wbc segment` writes them
    tifffile.imwrite(labels, np.zeros((32, 32), np.uint32))
    assert get_reader(str(labels)) is None


@io
def test_list_of_paths_reads_each(tmp_path):
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"f{i}.png"))
        Image.fromarray(_rgb(seed=i)).save(paths[-1])
    layers = get_reader(paths)(paths)
    assert [kw["name"] for _, kw, _ in layers] == ["f0", "f1"]
    np.testing.assert_array_equal(layers[1][0], _rgb(seed=1))


def test_png_rgb_is_returned_unchanged(tmp_path, notifications):
    rgb = _rgb()
    path = tmp_path / "field.png"
    Image.fromarray(rgb).save(path)
    data, kwargs = _read_one(path)
    np.testing.assert_array_equal(data, rgb)
    assert kwargs["name"] == "field"
    assert kwargs["metadata"] == {"pixel_size": None, "source": str(path), "notes": []}
    assert "scale" not in kwargs  # unknown pixel size: pixel units
    assert notifications == []


def test_bundled_jpeg(notifications):
    path = sample_path("two_cells")
    data, kwargs = _read_one(path)
    assert data.shape == (480, 640, 3)
    with Image.open(path) as im:
        np.testing.assert_array_equal(data, np.asarray(im.convert("RGB")))
    assert kwargs["name"] == "BloodImage_00034"
    assert notifications == []


def test_grayscale_becomes_three_equal_channels(tmp_path, notifications):
    gray = np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) % 256
    path = tmp_path / "gray.png"
    Image.fromarray(gray.astype(np.uint8), mode="L").save(path)
    data, kwargs = _read_one(path)
    for c in range(3):
        np.testing.assert_array_equal(data[..., c], gray)
    assert any("grayscale" in n for n in kwargs["metadata"]["notes"])
    assert len(notifications) == 1
    severity, message = notifications[0]
    assert "info" in severity and "gray.png" in message and "grayscale" in message


def test_rgba_drops_alpha(tmp_path, notifications):
    rgba = np.dstack([_rgb(), np.full((40, 50), 128, np.uint8)])
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    data, _ = _read_one(path)
    np.testing.assert_array_equal(data, rgba[..., :3])
    assert len(notifications) == 1 and "alpha" in notifications[0][1]


def test_16bit_tiff_with_pixel_size(tmp_path, notifications):
    ramp = np.tile(np.linspace(1000, 40000, 64).astype(np.uint16), (32, 1))
    path = tmp_path / "deep.tif"
    # 0.25 um/px = 40000 px per cm
    tifffile.imwrite(path, ramp, resolution=(40000, 40000), resolutionunit="CENTIMETER")
    data, kwargs = _read_one(path)
    assert data.shape == (32, 64, 3)
    assert np.all(np.diff(data[0, :, 0].astype(int)) >= 0)  # order of intensities kept
    assert data[0, 0, 0] <= 1 and data[0, -1, 0] >= 254  # stretched to the full 8 bits
    assert kwargs["metadata"]["pixel_size"] == pytest.approx(0.25)
    assert kwargs["scale"] == pytest.approx((0.25, 0.25))
    assert kwargs["units"] == ("um", "um")
    messages = " ".join(m for _, m in notifications)
    assert "uint16" in messages and "grayscale" in messages


@pytest.mark.parametrize("name", ["cut.jpg", "cut.png", "cut.tif"])
def test_truncated_file_gives_one_clear_error(tmp_path, notifications, name):
    whole = tmp_path / f"whole{name[3:]}"
    if name.endswith(".tif"):
        tifffile.imwrite(whole, _rgb(200, 200))
    else:
        Image.fromarray(_rgb(200, 200)).save(whole)
    raw = whole.read_bytes()
    path = tmp_path / name
    path.write_bytes(raw[: len(raw) // 3])
    reader = get_reader(str(path))
    assert reader is read_smears
    assert reader(str(path)) == [(None,)]  # handled: nothing to add, no exception
    assert len(notifications) == 1
    severity, message = notifications[0]
    assert "error" in severity
    assert name in message and "cannot read" in message


def test_napari_opens_through_the_plugin(tmp_path, notifications):
    from napari.components import ViewerModel
    from npe2 import PluginManager

    PluginManager.instance().discover()  # what napari does when its window starts

    rgb = _rgb()
    path = tmp_path / "field.png"
    Image.fromarray(rgb).save(path)
    viewer = ViewerModel()
    layers = viewer.open(str(path), plugin="napari-wbc")
    assert [layer.name for layer in layers] == ["field"]
    assert layers[0].rgb
    np.testing.assert_array_equal(layers[0].data, rgb)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    assert viewer.open(str(bad), plugin="napari-wbc") == []
    assert len(viewer.layers) == 1
    assert [s for s, _ in notifications] == ["error"]


@io
def test_tiff_fields_read_with_any_tifffile(tmp_path):
    rgb = _rgb(60, 70)
    path = tmp_path / "field.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", resolution=(40000, 40000), resolutionunit="CENTIMETER")
    assert get_reader(str(path)) is read_smears
    data, kwargs, kind = layer_data(path)
    assert kind == "image" and kwargs["rgb"] and not kwargs["metadata"]["notes"]
    np.testing.assert_array_equal(data, rgb)
    assert kwargs["metadata"]["pixel_size"] == pytest.approx(0.25)


@io
def test_a_tiff_too_large_for_a_field_is_left_to_other_readers(tmp_path, monkeypatch):
    from napari_wbc import _reader

    path = tmp_path / "big.tif"
    tifffile.imwrite(path, _rgb(40, 50))
    assert get_reader(str(path)) is read_smears
    monkeypatch.setattr(_reader, "MAX_FIELD_PIXELS", 40 * 50 - 1)
    assert get_reader(str(path)) is None


@io
def test_reader_samples_and_demo_import_without_torch_or_qt():
    import subprocess
    import sys

    code = (
        "import sys, napari_wbc._reader, napari_wbc._sample_data, napari_wbc.demo\n"
        "heavy = sorted(m for m in ('torch', 'napari', 'qtpy', 'PyQt6', 'magicgui') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- whole slides ----------------------------------------------------------------------------

SAMPLE_FIELDS = sorted(SAMPLE_DIR.glob("*.jpg"))
LEVEL0 = (1600, 1400)


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """A 1600 x 1400 px pyramidal OME-TIFF (0.1 um/px, 256 px tiles) and its level 0 in memory."""
    from napari_wbc.core.slide import build_mosaic_slide, open_slide

    path = build_mosaic_slide(
        tmp_path_factory.mktemp("mosaic") / "mosaic.ome.tif",
        SAMPLE_FIELDS,
        grid=(3, 2),
        gap=40,
        border=40,
        pixel_size=0.1,
    )
    with open_slide(path) as slide:
        return path, slide.read(0, 0, *slide.shape)


@pytest.fixture
def reads(monkeypatch):
    """Every region read from a slide or label level: (level shape, y0, x0, y1, x1, step)."""
    from napari_wbc.core import slide

    seen = []
    real = slide._Level.read_raw

    def read_raw(self, y0, x0, y1, x1, step=1):
        seen.append((self.shape, y0, x0, y1, x1, step))
        return real(self, y0, x0, y1, x1, step)

    monkeypatch.setattr(slide._Level, "read_raw", read_raw)
    return seen


def _area(read) -> int:
    _, y0, x0, y1, x1, step = read
    return -(-(y1 - y0) // step) * -(-(x1 - x0) // step) * step * step  # level px the read spans


def test_pyramidal_tiff_opens_as_lazy_multiscale_layer(mosaic, reads, notifications):
    import dask.array as da

    from napari_wbc.core.pyramid import level_shapes

    path, level0 = mosaic
    reader = get_reader(str(path))
    assert reader is read_smears
    ((data, kwargs, kind),) = reader(str(path))
    assert kind == "image" and kwargs["rgb"] and kwargs["multiscale"]
    assert kwargs["name"] == "mosaic"
    assert [tuple(level.shape) for level in data] == [s + (3,) for s in level_shapes((1600, 1400), 256)]
    assert all(isinstance(level, da.Array) and level.dtype == np.uint8 for level in data)
    assert kwargs["scale"] == pytest.approx((0.1, 0.1)) and kwargs["units"] == ("um", "um")
    assert kwargs["metadata"]["pixel_size"] == pytest.approx(0.1)
    assert kwargs["metadata"]["slide"] == kwargs["metadata"]["source"] == str(path)
    # opening decodes only the coarsest level (200 x 175) and level 0's first and last 256 px tiles
    assert sorted(reads) == [
        ((200, 175), 0, 0, 200, 175, 1),
        (LEVEL0, 0, 0, 256, 256, 1),
        (LEVEL0, 1344, 1144, 1600, 1400, 1),
    ]
    reads.clear()
    np.testing.assert_array_equal(np.asarray(data[0][700:900, 100:1300]), level0[700:900, 100:1300])
    assert max(_area(r) for r in reads) <= 1024 * 1024  # chunks, not the level
    np.testing.assert_array_equal(np.asarray(data[1][10, 20]), level0[20:22, 40:42].mean((0, 1)).round())
    assert notifications == []


@io
def test_plain_huge_tiff_opens_lazily_with_strided_levels(tmp_path, mosaic, reads, monkeypatch):
    from napari_wbc.core import slide

    _, level0 = mosaic
    path = tmp_path / "plain.tif"  # uncompressed, contiguous, no pyramid
    tifffile.imwrite(path, level0, resolution=(1e5, 1e5), resolutionunit="CENTIMETER")
    assert get_reader(str(path)) is read_smears  # a field: 2.2 Mpx
    monkeypatch.setattr(slide, "SLIDE_PIXELS", 1_000_000)  # now a slide
    ((data, kwargs, kind),) = get_reader(str(path))(str(path))
    assert reads == [(LEVEL0, 0, 0, 1600, 1400, 1)]  # the check at open: 2.2 Mpx are read whole
    reads.clear()
    assert kind == "image" and kwargs["multiscale"] and kwargs["metadata"]["slide"] == str(path)
    assert [tuple(level.shape[:2]) for level in data] == [(1600, 1400), (800, 700)]
    assert kwargs["scale"] == pytest.approx((0.1, 0.1))
    np.testing.assert_array_equal(np.asarray(data[1]), level0[::2, ::2])  # every other px ...
    assert {r[5] for r in reads} == {2}  # ... read as such, not the whole level
    np.testing.assert_array_equal(np.asarray(data[0][1000:1100, 5:600]), level0[1000:1100, 5:600])


@io
def test_label_pyramids_open_as_multiscale_labels_with_their_table(tmp_path):
    import pandas as pd

    from napari_wbc.core.pyramid import write_pyramid_tiff

    labels = np.zeros((700, 600), np.uint32)
    labels[100:200, 300:420] = 1
    labels[500:640, 20:90] = 2
    path = write_pyramid_tiff(
        tmp_path / "slide_cells.tif",
        lambda y0, x0, y1, x1: labels[y0:y1, x0:x1],
        labels.shape,
        np.uint32,
        pixel_size=0.25,
        downsample="nearest",
    )
    pd.DataFrame({"label": [1, 2], "cell_area_px": [12000, 9800], "touches_border": [False, False]}).to_csv(
        tmp_path / "slide_cells.csv", index=False
    )
    ((data, kwargs, kind),) = get_reader(str(path))(str(path))
    assert kind == "labels" and kwargs["multiscale"] and kwargs["name"] == "slide_cells"
    assert [level.shape for level in data] == [(700, 600), (350, 300), (175, 150)]
    np.testing.assert_array_equal(np.asarray(data[0]), labels)
    np.testing.assert_array_equal(np.asarray(data[1]), labels[::2, ::2])
    assert kwargs["scale"] == pytest.approx((0.25, 0.25))
    assert list(kwargs["features"]["label"]) == list(kwargs["features"]["index"]) == [1, 2]
    assert kwargs["metadata"]["counts"]["white_cells"] == 2


@pytest.mark.gui
def test_napari_draws_a_slide_without_reading_level_0_whole(make_napari_viewer, qtbot, mosaic, reads):
    path, level0 = mosaic
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(path), plugin="napari-wbc")
    for probe in [(LEVEL0, 0, 0, 256, 256, 1), (LEVEL0, 1344, 1144, 1600, 1400, 1)]:
        reads.remove(probe)  # the check at open; the rest is what napari draws
    assert layer.multiscale and layer.rgb and len(layer.data) == 4
    assert tuple(layer.scale) == pytest.approx((0.1, 0.1))
    viewer.reset_view()
    qtbot.waitUntil(lambda: any(r[0] != LEVEL0 for r in reads), timeout=10_000)
    assert layer.data_level > 0
    assert not any(r[0] == LEVEL0 for r in reads)  # the whole slide in view: a coarse level
    # zoomed in on a corner at full resolution: level 0, only the part in view
    reads.clear()
    viewer.scene.camera.center = (0, 20.0, 20.0)
    viewer.scene.camera.zoom = viewer.scene.camera.zoom * 16
    qtbot.waitUntil(lambda: layer.data_level == 0 and any(r[0] == LEVEL0 for r in reads), timeout=10_000)
    level0_area = max(_area(r) for r in reads if r[0] == LEVEL0)
    assert level0_area < 1600 * 1400 / 2
    np.testing.assert_array_equal(np.asarray(layer.data[0][:64, :64]), level0[:64, :64])


# -- damaged slides and label pyramids ---------------------------------------------------------


def _truncated_copy(path, name: str, kept: float = 0.8):
    raw = path.read_bytes()
    cut = path.with_name(name)
    cut.write_bytes(raw[: int(len(raw) * kept)])
    return cut


def _label_pyramid(folder, name="slide_cells.tif"):
    from napari_wbc.core.pyramid import write_pyramid_tiff

    labels = np.zeros((700, 600), np.uint32)
    labels[100:200, 300:420] = 1
    return write_pyramid_tiff(
        folder / name,
        lambda y0, x0, y1, x1: labels[y0:y1, x0:x1],
        labels.shape,
        np.uint32,
        downsample="nearest",
    )


def _zero_coarsest_tile(path) -> None:
    """Zero the compressed bytes of the coarsest level's tile: the file's structure stays intact."""
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[-1].keyframe
        start, size = page.dataoffsets[0], page.databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[start + 2 : start + size] = bytes(size - 2)
    path.write_bytes(bytes(raw))


@io
def test_damaged_slides_and_labels_are_refused_at_open(tmp_path, mosaic):
    slide = _truncated_copy(mosaic[0], "cut.ome.tif")
    assert get_reader(str(slide)) is read_smears  # still claimed: the reader says what is wrong
    with pytest.raises(InputError, match=r"^cut\.ome\.tif: .*damaged or incomplete.*again") as err:
        layer_data(slide)
    assert err.type is InputError
    labels = _label_pyramid(tmp_path, "bad_cells.tif")
    assert layer_data(labels)[2] == "labels"  # intact: a labels layer
    _zero_coarsest_tile(labels)
    assert get_reader(str(labels)) is read_smears
    with pytest.raises(InputError, match=r"^bad_cells\.tif: .*damaged or incomplete.*again") as err:
        layer_data(labels)
    assert err.type is InputError


def test_a_damaged_slide_gives_one_error_notification_and_no_layer(tmp_path, mosaic, notifications):
    # cut at 80% the file still holds a pyramid (a slide); at 50% one level of it (read as a field)
    for kept in (0.8, 0.5):
        notifications.clear()
        cut = _truncated_copy(mosaic[0], f"cut{kept}.ome.tif", kept=kept)
        assert read_smears(str(cut)) == [(None,)]  # handled: nothing to add, no exception
        assert len(notifications) == 1
        severity, message = notifications[0]
        assert "error" in severity and message.startswith(f"{cut.name}: ") and "cannot" in message


@io
def test_pipes_and_impossible_names_are_refused_without_opening_them(tmp_path):
    import os
    import signal

    from napari_wbc.core.slide import is_slide, open_slide

    pipe = tmp_path / "pipe.tif"
    os.mkfifo(pipe)  # opening it for reading would wait for a writer forever
    too_long = tmp_path / ("n" * 300 + ".tif")

    def blocked(*_):
        raise TimeoutError("a reader opened the pipe")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(20)
    try:
        for path, why in [(pipe, "pipe"), (too_long, "too long")]:
            assert get_reader(str(path)) is read_smears  # claimed, so that the reader says why
            with pytest.raises(InputError, match=why):
                layer_data(path)
            with pytest.raises(InputError, match=why):
                open_slide(path)
            assert not is_slide(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- field results: the cells and nuclei TIFFs of `napari-wbc segment` and of the napari WBC writer --


def _field_result(folder, stem="f", pixel_size=0.25, review=True):
    """A field result as `segment` writes it (labels, table), and a review as napari saves it."""
    from napari_wbc.core.batch import write_csv, write_labels_tiff
    from napari_wbc.core.measure import measure_cells
    from napari_wbc.core.verification import review_path, save_review, set_type

    cells = np.zeros((60, 80), np.uint32)
    cells[5:25, 5:30] = 1
    cells[30:55, 40:75] = 2
    nuclei = np.where((cells > 0) & (np.arange(80) % 10 < 5), cells, 0).astype(np.uint32)
    table = measure_cells(cells, nuclei, pixel_size)
    table = table.assign(cell_type=["neutrophil", "lymphocyte"], type_confidence=[0.9, 0.8])
    write_labels_tiff(folder / f"{stem}_cells.tif", cells, pixel_size)
    write_labels_tiff(folder / f"{stem}_nuclei.tif", nuclei, pixel_size)
    write_csv(folder / f"{stem}_cells.csv", table)
    if review:  # of an image that records its pixel size (0.25 um/px = 40000 px per cm)
        image = folder / f"{stem}.tif"
        tifffile.imwrite(
            image, _rgb(60, 80), photometric="rgb", resolution=(4e4, 4e4), resolutionunit="CENTIMETER"
        )
        meta = {"image": str(image), "reviewer": "Dr. R", "models": {"mifnet": "ab" * 32}}
        save_review(
            review_path(folder / f"{stem}_cells.tif"), set_type(table, [2], "monocyte", "Dr. R"), meta
        )
    return cells, nuclei, table


@io
def test_a_field_result_opens_from_either_tiff_as_cells_and_nuclei_with_table_and_review(tmp_path):
    cells, nuclei, table = _field_result(tmp_path)
    for name in ("f_cells.tif", "f_nuclei.tif"):
        path = str(tmp_path / name)
        assert get_reader(path) is read_smears
        (n_data, n_kwargs, n_kind), (c_data, c_kwargs, c_kind) = read_smears(path)
        assert (n_kind, c_kind) == ("labels", "labels")
        assert (n_kwargs["name"], c_kwargs["name"]) == ("f nuclei", "f cells")  # as Segment names them
        np.testing.assert_array_equal(c_data, cells)
        np.testing.assert_array_equal(n_data, nuclei)
        assert c_data.dtype == n_data.dtype == np.uint32
        for kwargs in (n_kwargs, c_kwargs):  # in um, as the image f.tif opens
            assert kwargs["scale"] == pytest.approx((0.25, 0.25)) and kwargs["units"] == ("um", "um")
            assert kwargs["metadata"]["pixel_size"] == pytest.approx(0.25)
            assert kwargs["metadata"]["source_layer"] == "f" and kwargs["metadata"]["model"] == "mifnet"
        features = c_kwargs["features"]
        assert list(features["label"]) == list(features["index"]) == [1, 2]
        assert list(features["cell_area_px"]) == list(table["cell_area_px"])
        # the saved review, applied onto the table segment wrote
        assert list(features["cell_type"]) == ["neutrophil", "monocyte"]
        assert list(features["suggested_type"]) == ["neutrophil", "lymphocyte"]
        assert list(features["review_status"]) == ["suggested", "reclassified"]
        assert list(features["reviewed_by"]) == ["", "Dr. R"] and list(features["reviewed"]) == [False, True]
        meta = c_kwargs["metadata"]
        assert meta["counts"]["n_monocyte"] == 1 and meta["counts"]["white_cells"] == 2
        assert (
            meta["source"] == str(tmp_path / "f.tif") and meta["reviewer"] == "Dr. R" and meta["notes"] == []
        )
        assert meta["files"]["cells"] == str(tmp_path / "f_cells.tif")
        assert meta["files"]["review"] == str(tmp_path / "f_review.json")
    # both TIFFs chosen together: the result opens once
    both = read_smears([str(tmp_path / "f_cells.tif"), str(tmp_path / "f_nuclei.tif")])
    assert [kwargs["name"] for _, kwargs, _ in both] == ["f nuclei", "f cells"]


def test_damaged_field_results_are_refused_and_damaged_tables_left_out(tmp_path, notifications):
    _field_result(tmp_path)
    _truncated_copy(tmp_path / "f_cells.tif", "cut_cells.tif", kept=0.5)
    (tmp_path / "cut_nuclei.tif").write_bytes((tmp_path / "f_nuclei.tif").read_bytes())
    assert (
        get_reader(str(tmp_path / "cut_nuclei.tif")) is read_smears
    )  # claimed: the reader says what is wrong
    assert read_smears(str(tmp_path / "cut_nuclei.tif")) == [(None,)]
    assert len(notifications) == 1
    severity, message = notifications[0]
    assert "error" in severity and "damaged or incomplete" in message
    assert message.startswith("cut_nuclei.tif: its partner cut_cells.tif: cannot read these labels")

    notifications.clear()
    tifffile.imwrite(tmp_path / "odd_cells.tif", np.zeros((60, 81), np.uint32))
    (tmp_path / "odd_nuclei.tif").write_bytes((tmp_path / "f_nuclei.tif").read_bytes())
    assert read_smears(str(tmp_path / "odd_cells.tif")) == [(None,)]
    assert [s for s, _ in notifications] == ["error"]
    assert notifications[0][1].startswith("odd_cells.tif: odd_cells.tif (60, 81) and odd_nuclei.tif (60, 80)")

    # a table or a review that cannot be read: the labels open without it, and a note says so
    for stem, broken in (("t", "_cells.csv"), ("r", "_review.json")):
        notifications.clear()
        _field_result(tmp_path, stem)
        (tmp_path / f"{stem}{broken}").write_text("{ not, what it should be\n")
        layers = read_smears(str(tmp_path / f"{stem}_cells.tif"))
        assert [kwargs["name"] for _, kwargs, _ in layers] == [f"{stem} nuclei", f"{stem} cells"]
        assert ("features" in layers[1][1]) == (broken == "_review.json")
        assert [s for s, _ in notifications] == ["info"]
        assert (
            notifications[0][1].startswith(f"{stem}_cells.tif: ") and f"{stem}{broken}" in notifications[0][1]
        )


def test_a_review_of_another_segmentation_is_not_applied_and_left_as_it_is(tmp_path, notifications):
    from napari_wbc.core.verification import review_path, save_review, set_type

    cells, _, table = _field_result(tmp_path, review=False)
    path = review_path(tmp_path / "f_cells.tif")
    other = np.zeros_like(cells)  # another segmentation, with the same ids
    other[10:30, 10:35], other[25:50, 45:70] = 1, 2
    reviewed = set_type(table, [2], "monocyte", "Dr. R")
    save_review(path, reviewed, {"reviewer": "Dr. R"}, other)
    before = path.read_bytes()
    (_, nuclei_kwargs, _), (_, kwargs, _) = read_smears(str(tmp_path / "f_cells.tif"))
    features = kwargs["features"]  # the cells open with their table, without that review
    assert list(features["cell_type"]) == ["neutrophil", "lymphocyte"] and "review_status" not in features
    assert len(notifications) == 1
    severity, message = notifications[0]
    assert severity == "info" and str(path) in message and "another segmentation" in message
    assert "move or delete f_review.json" in message
    assert path.read_bytes() == before
    # the review of these labels, as the gallery and the writer save it, is applied
    notifications.clear()
    save_review(path, reviewed, {"reviewer": "Dr. R"}, cells)
    (_, _, _), (_, kwargs, _) = read_smears(str(tmp_path / "f_cells.tif"))
    assert list(kwargs["features"]["review_status"]) == ["suggested", "reclassified"]
    assert notifications == [] and kwargs["metadata"]["reviewer"] == "Dr. R"


def test_segment_output_opens_with_its_table(tmp_path, datasets, trained_model, notifications):
    import pandas as pd

    from napari_wbc.cli import main
    from napari_wbc.core.measure import count_summary

    field = datasets / "bccd" / "images" / "BloodImage_00010.jpg"
    out = tmp_path / "out"
    assert main(["segment", str(field), "--out", str(out), "--pixel-size", "0.1"]) == 0
    table = pd.read_csv(out / "BloodImage_00010_cells.csv")
    assert len(table) >= 2
    for name in ("BloodImage_00010_cells.tif", "BloodImage_00010_nuclei.tif"):
        (n_data, n_kwargs, _), (c_data, c_kwargs, _) = get_reader(str(out / name))(str(out / name))
        assert (n_kwargs["name"], c_kwargs["name"]) == ("BloodImage_00010 nuclei", "BloodImage_00010 cells")
        np.testing.assert_array_equal(c_data, tifffile.imread(out / "BloodImage_00010_cells.tif"))
        np.testing.assert_array_equal(n_data, tifffile.imread(out / "BloodImage_00010_nuclei.tif"))
        pd.testing.assert_frame_equal(c_kwargs["features"].drop(columns="index"), table)
        meta = c_kwargs["metadata"]
        assert meta["counts"] == pytest.approx(count_summary(table), nan_ok=True)
        assert meta["source"] == str(field) and meta["model"] == trained_model  # from summary.csv
        # the pixel size was given, the JPEG records none: in pixels, as the image opens
        assert (
            meta["pixel_size"] == pytest.approx(0.1) and "scale" not in c_kwargs and "scale" not in n_kwargs
        )
    ((image, kwargs, _),) = read_smears(str(field))
    assert "scale" not in kwargs and image.shape[:2] == c_data.shape
    assert notifications == []
