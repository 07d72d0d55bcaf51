import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_wbc.core.io import InputError, read_image, to_rgb8


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
