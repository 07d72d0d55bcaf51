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
