import os

import numpy as np
import pytest
import tifffile
from fuzz_files import png_declaring
from PIL import Image

from napari_wbc.core.io import (
    GRAYSCALE_WARNING,
    ImageHeader,
    InputError,
    is_grayscale,
    read_header,
    read_image,
    to_rgb8,
)

pytestmark = pytest.mark.io  # torch-free: also run on Python 3.12 with the newest tifffile


def test_rgb_png_unchanged(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    smear = read_image(tmp_path / "a.png")
    assert np.array_equal(smear.data, rgb) and smear.notes == [] and smear.pixel_size is None


def test_grayscale_rgba_and_16bit_are_converted(tmp_path):
    gray = np.tile(np.arange(64, dtype=np.uint8), (32, 1))
    Image.fromarray(gray).save(tmp_path / "g.png")
    smear = read_image(tmp_path / "g.png")
    assert smear.data.shape == (32, 64, 3) and np.array_equal(smear.data[..., 1], gray)
    assert "grayscale" in smear.notes[0]

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 200
    Image.fromarray(rgba).save(tmp_path / "a.png")
    smear = read_image(tmp_path / "a.png")
    assert smear.data.shape == (32, 32, 3) and smear.data[0, 0, 0] == 200 and "alpha" in smear.notes[0]

    deep = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32, 1) * 60).repeat(3, -1)
    tifffile.imwrite(tmp_path / "d.tif", deep, photometric="rgb")
    smear = read_image(tmp_path / "d.tif")
    assert smear.data.dtype == np.uint8 and smear.data.min() == 0 and smear.data.max() == 255
    assert "uint16" in smear.notes[0]


def test_pixel_size_from_tiff(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    tifffile.imwrite(
        tmp_path / "p.tif",
        rgb,
        photometric="rgb",
        resolution=(1e4 / 0.25, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
    )
    assert read_image(tmp_path / "p.tif").pixel_size == pytest.approx(0.25)


def test_bad_files_raise_one_clear_error(tmp_path, datasets):
    jpg = (datasets / "bccd" / "images" / "BloodImage_00000.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpg[: len(jpg) // 3])
    with pytest.raises(InputError, match="cannot read"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "note.png").write_text("not an image")
    with pytest.raises(InputError, match="cannot read"):
        read_image(tmp_path / "note.png")
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "x.czi").write_bytes(b"CZI")
    with pytest.raises(InputError, match="unsupported"):
        read_image(tmp_path / "x.czi")


def test_wrong_dimensions_and_dtypes():
    with pytest.raises(InputError, match="2D colour image"):
        to_rgb8(np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(InputError, match="too small"):
        to_rgb8(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="type"):
        to_rgb8(np.zeros((32, 32), bool))
    notes = []
    out = to_rgb8(np.full((32, 32, 3), 0.5, np.float32), notes)
    assert out[0, 0, 0] == 128 and "0..1" in notes[0]
    chw = to_rgb8(np.zeros((3, 40, 50), np.uint8))
    assert chw.shape == (40, 50, 3)


def test_only_regular_files_are_opened(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="named pipe"):
        read_image(fifo)  # would block forever if it were opened
    (tmp_path / "x.png").mkdir()
    with pytest.raises(InputError, match="a folder, not an image file"):
        read_image(tmp_path / "x.png")
    (tmp_path / "empty.jpg").touch()
    with pytest.raises(InputError, match=r"empty\.jpg: empty file"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(InputError, match="too long"):
        read_image(tmp_path / ("a" * 300 + ".png"))


def test_size_is_checked_from_the_header_before_decoding(tmp_path):
    (tmp_path / "big.png").write_bytes(png_declaring(9000, 9000))
    assert read_header(tmp_path / "big.png") == ImageHeader(9000, 9000, 9000 * 9000 * 16)
    # the data would not decode: the size message proves that nothing was decoded
    for read in (read_header, read_image):
        with pytest.raises(InputError, match=r"big\.png: 9000x9000 px \(81 MP\) is over the limit of 10 MP"):
            read(tmp_path / "big.png", max_megapixels=10)
    (tmp_path / "wide.png").write_bytes(png_declaring(2**32 - 1, 1))  # MemoryError if decoded
    with pytest.raises(InputError, match=r"wide\.png: declares an image of more than \d+ MP"):
        read_image(tmp_path / "wide.png", max_megapixels=10)
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((40, 50, 3), np.uint8), photometric="rgb")
    assert read_header(tmp_path / "t.tif").width == 50
    with pytest.raises(InputError, match=r"t\.tif: 50x40 px"):
        read_image(tmp_path / "t.tif", max_megapixels=0.001)
    assert read_image(tmp_path / "t.tif", max_megapixels=0.01).data.shape == (40, 50, 3)


def test_metadata_pixel_size_must_be_plausible(tmp_path, caplog):
    for um, expected in ((50.0, None), (0.001, None), (2.5, 2.5)):
        tifffile.imwrite(
            tmp_path / "p.tif",
            np.zeros((32, 32, 3), np.uint8),
            photometric="rgb",
            resolution=(1e4 / um, 1e4 / um),
            resolutionunit="CENTIMETER",
        )
        caplog.clear()
        assert read_image(tmp_path / "p.tif").pixel_size == (pytest.approx(expected) if expected else None)
        assert ("outside" in caplog.text and "p.tif" in caplog.text) == (expected is None)


def test_grayscale_images_get_a_warning(tmp_path, datasets):
    field = datasets / "bccd" / "images" / "BloodImage_00001.jpg"
    assert read_image(field).warnings == []
    gray = np.asarray(Image.open(field).convert("L"))
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit grayscale
    Image.fromarray(np.repeat(gray[..., None], 3, axis=2)).save(tmp_path / "rgb.jpg")  # an RGB file, gray
    for name in ("deep.png", "rgb.jpg"):
        smear = read_image(tmp_path / name)
        assert smear.warnings == [GRAYSCALE_WARNING] and "unreliable" in GRAYSCALE_WARNING
    assert not is_grayscale(read_image(field).data)


def test_cmyk_and_singleton_tiff_fields_read_as_rgb(tmp_path):
    """A CMYK TIFF field is converted to RGB (not read as RGBA, colour-inverted), and a
    (1, h, w, 3) TIFF is one RGB field."""
    rgb = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    assert tifffile.TiffFile(tmp_path / "cmyk.tif").pages[0].photometric == 5  # SEPARATED
    back = np.asarray(Image.fromarray(rgb).convert("CMYK").convert("RGB"))  # Pillow's own round trip
    assert np.abs(read_image(tmp_path / "cmyk.tif").data.astype(int) - back).max() <= 1
    tifffile.imwrite(tmp_path / "one.tif", rgb[None], photometric="rgb")
    assert np.array_equal(read_image(tmp_path / "one.tif").data, rgb)
