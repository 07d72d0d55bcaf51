"""Whole slides: lazy reading of pyramidal, SVS and plain TIFFs, pixel sizes, mosaic and pyramid writers."""

import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_wbc.core.io import InputError, cmyk_to_rgb, read_image
from napari_wbc.core.pyramid import halve, level_shapes, write_pyramid_tiff
from napari_wbc.core.slide import Slide, build_mosaic_slide, open_slide

pytestmark = pytest.mark.io  # no torch, napari or Qt: also run on Python 3.12 (scripts/test-io-py312.sh)

GLASS = (236, 232, 238)


@pytest.fixture(scope="module")
def fields(datasets):
    names = ("BloodImage_00034", "BloodImage_00242", "BloodImage_00010")
    return [read_image(datasets / "bccd" / "images" / f"{n}.jpg").data for n in names]


def test_mosaic_slide_is_a_pyramid_with_the_fields_in_place(tmp_path, fields):
    path = build_mosaic_slide(
        tmp_path / "mosaic.ome.tif", fields, grid=(2, 3), gap=40, border=30, pixel_size=0.25, tile=128
    )
    with open_slide(path) as slide:
        assert slide.shape == (2 * 30 + 2 * 480 + 40, 2 * 30 + 3 * 640 + 2 * 40)
        assert slide.pixel_size == pytest.approx(0.25)
        assert slide.name == "mosaic"
        shapes = level_shapes(slide.shape, 128)
        assert [level.shape for level in slide.levels] == shapes and max(shapes[-1]) <= 128
        # field 0 at (30, 30); fields repeat flipped: the last of the second row is field 2 upside down
        assert np.array_equal(slide.read(30, 30, 510, 670), fields[0])
        y, x = 30 + 480 + 40, 30 + 2 * (640 + 40)
        assert np.array_equal(slide.read(y, x, y + 480, x + 640), fields[2][::-1])
        assert (slide.read(0, 0, 30, 30) == GLASS).all()
        # level 1 is level 0 halved by 2x2 means, tile by tile
        assert np.array_equal(slide.read(0, 0, 64, 64, level=1), halve(slide.read(0, 0, 128, 128), "mean"))
        look = slide.look(0, 0, 1000, 1000, max_downsample=8)
        assert look.shape == (126, 126, 3)  # level 3 (1060 / 133 = 7.97x), rounded outwards
        assert slide.look(0, 0, 100, 120, max_downsample=3).shape == (50, 60, 3)  # level 1, no 3x level


def test_svs_pages_and_aperio_pixel_size(tmp_path, fields):
    image = np.concatenate([fields[0], fields[1]], axis=1)
    desc = (
        "Aperio Image Library v12.0.0\n1280x480 [0,0 1280x480] (256x256) JPEG/RGB Q=90"
        "|AppMag = 40|MPP = 0.2520|Filename = test"
    )
    path = tmp_path / "slide.svs"
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            image, tile=(256, 256), photometric="rgb", compression="jpeg", description=desc, metadata=None
        )
        tif.write(
            image[::8, ::8], photometric="rgb", compression="jpeg", description="thumbnail", metadata=None
        )
        tif.write(
            np.ascontiguousarray(image[::4, ::4]),
            tile=(256, 256),
            photometric="rgb",
            compression="jpeg",
            description="level",
            metadata=None,
        )
    with open_slide(path) as slide:
        assert slide.pixel_size == pytest.approx(0.252)
        assert slide.downsamples == [1.0, 4.0]
        region = slide.read(100, 200, 300, 900)
        assert np.abs(region.astype(int) - image[100:300, 200:900]).mean() < 4  # JPEG


def test_plain_tiffs_open_lazily_with_their_pixel_size(tmp_path, fields):
    image = fields[0]
    res = {"resolution": (1e4 / 0.5, 1e4 / 0.5), "resolutionunit": "CENTIMETER"}
    cases = {
        "tiled.tif": dict(tile=(128, 128), compression="zlib"),
        "strips.tif": dict(rowsperstrip=32, compression="zlib"),
        "contiguous.tif": dict(),
    }
    for name, kwargs in cases.items():
        tifffile.imwrite(tmp_path / name, image, photometric="rgb", **res, **kwargs)
        with open_slide(tmp_path / name) as slide:
            assert slide.pixel_size == pytest.approx(0.5)
            assert len(slide.levels) == 1
            assert np.array_equal(slide.read(7, 9, 300, 411), image[7:300, 9:411]), name
            assert slide.look(0, 0, 480, 640, 4).shape == (120, 160, 3)
    tifffile.imwrite(
        tmp_path / "planar.tif",
        np.moveaxis(image, -1, 0),
        photometric="rgb",
        planarconfig="separate",
        compression="zlib",
    )
    gray = (np.arange(300 * 400, dtype=np.uint32).reshape(300, 400) % 65536).astype(np.uint16)
    tifffile.imwrite(tmp_path / "gray16.tif", gray, tile=(128, 128))
    with open_slide(tmp_path / "planar.tif") as slide, open_slide(tmp_path / "gray16.tif") as g:
        assert slide.pixel_size is None
        assert np.array_equal(slide.read(5, 6, 70, 80), image[5:70, 6:80])
        region = g.read(0, 0, 300, 400)
        assert region.shape == (300, 400, 3)
        assert np.array_equal(region[..., 1], np.round(gray / 257).astype(np.uint8))


def test_ome_pixel_size_units_and_in_memory_slides(tmp_path):
    def sevens(y0, x0, y1, x1):
        return np.full((y1 - y0, x1 - x0), 7, np.uint8)

    write_pyramid_tiff(tmp_path / "um.ome.tif", sevens, (300, 200), np.uint8, tile=128, pixel_size=0.2)
    with open_slide(tmp_path / "um.ome.tif") as slide:
        assert slide.pixel_size == pytest.approx(0.2)
        assert slide.read(0, 0, 2, 2).tolist() == [[[7] * 3] * 2] * 2
    tifffile.imwrite(
        tmp_path / "nm.ome.tif",
        np.zeros((64, 64, 3), np.uint8),
        photometric="rgb",
        metadata={"axes": "YXS", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm"},
    )
    with open_slide(tmp_path / "nm.ome.tif") as slide:
        assert slide.pixel_size == pytest.approx(0.25)
    slide = Slide.from_array(np.zeros((50, 60, 3), np.uint8), 0.3)
    assert slide.shape == (50, 60) and slide.downsamples == [1.0]
    assert slide.read(-5, -5, 10, 10).shape == (10, 10, 3)  # clipped to the slide
    with pytest.raises(InputError, match="no such file"):
        open_slide(tmp_path / "missing.svs")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match="broken.tif"):
        open_slide(tmp_path / "broken.tif")


def test_label_pyramid_keeps_ids(tmp_path):
    labels = np.zeros((600, 500), np.uint32)
    labels[100:300, 50:260] = 7
    labels[400:590, 300:499] = 123456

    def region(y0, x0, y1, x1):
        block = labels[y0:y1, x0:x1]
        return block if block.any() else None

    path = write_pyramid_tiff(
        tmp_path / "labels.tif",
        region,
        labels.shape,
        np.uint32,
        tile=128,
        pixel_size=0.1,
        downsample="nearest",
    )
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert np.array_equal(levels[0].asarray(), labels)
        assert np.array_equal(levels[1].asarray(), labels[::2, ::2])
        assert np.array_equal(levels[2].asarray(), labels[::4, ::4])
        assert set(np.unique(levels[-1].asarray())) == {0, 7, 123456}


BIG = """
import os, resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
import tifffile
from napari_wbc.core.slide import build_mosaic_slide, open_slide
out, field = sys.argv[1], np.load(sys.argv[2])
try:
    np.zeros((24000, 24000, 3), np.uint8).fill(1)  # a full level does not fit
    sys.exit("the memory limit does not hold")
except MemoryError:
    pass
# a 24k x 24k pyramid, built and read lazily: one real field in the middle of empty glass
pyr = build_mosaic_slide(os.path.join(out, "big.ome.tif"), [field], grid=(1, 1), border=11760,
                         glass=None, pixel_size=0.25, tile=512)
plain = os.path.join(out, "plain.tif")  # a plain, uncompressed, contiguous TIFF of the same size
tifffile.imwrite(plain, shape=(24000, 24000, 3), dtype=np.uint8, photometric="rgb")
with open_slide(pyr) as slide:
    assert slide.shape == (24000, 24160) and len(slide.levels) == 7, slide.shape
    assert np.array_equal(slide.read(11760, 11760, 12240, 12400), field)
    assert slide.look(0, 0, 24000, 24160, 64).shape[:2] == (375, 378)  # level 6
    assert slide.read(23990, 24100, 24000, 24160).max() == 0
with open_slide(plain) as slide:
    assert slide.shape == (24000, 24000)
    assert slide.read(20000, 20000, 21024, 21024).shape == (1024, 1024, 3)
    assert slide.look(0, 0, 2048, 2048, 8).shape == (256, 256, 3)
# VmHWM is this process image's own peak (ru_maxrss would carry the forking parent's across exec)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print("peak MB", int(hwm.split()[1]) // 1024)
"""


def test_reader_never_loads_a_full_level(tmp_path, fields):
    """Under an address-space limit smaller than level 0 (1.7 GB), a 24k slide is built and read."""
    np.save(tmp_path / "field.npy", fields[0])
    script = BIG.format(limit=1200 * 2**20)
    env = dict(os.environ, MALLOC_ARENA_MAX="2", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(tmp_path), str(tmp_path / "field.npy")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = int(proc.stdout.split("peak MB")[1])
    print(f"peak RSS {peak} MB")
    assert peak < 600


# -- damaged files, CMYK, pixel size metadata ------------------------------------------------


def _noise(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def _pyramid(path, image, compression="zlib"):
    return write_pyramid_tiff(
        path,
        lambda y0, x0, y1, x1: image[y0:y1, x0:x1],
        image.shape[:2],
        np.uint8,
        channels=3,
        tile=128,
        pixel_size=0.2,
        compression=compression,
    )


def _open_and_check(path) -> None:
    with open_slide(path) as slide:
        slide.check()


@pytest.mark.parametrize("compression", ["zlib", None])
@pytest.mark.parametrize("kept", [0.3, 0.7, 0.97])
def test_truncated_pyramids_are_refused_with_one_clear_error(tmp_path, compression, kept):
    image = _noise(600, 500)
    whole = _pyramid(tmp_path / "whole.ome.tif", image, compression)
    _open_and_check(whole)  # the intact file passes the check
    raw = whole.read_bytes()
    cut = tmp_path / "cut.ome.tif"
    cut.write_bytes(raw[: int(len(raw) * kept)])
    with pytest.raises(InputError) as err:
        _open_and_check(cut)
    message = str(err.value)
    assert message.startswith("cut.ome.tif: ") and "again" in message
    assert err.type is InputError  # not DeflateError, TiffFileError or a reshape's ValueError


def test_a_corrupt_tile_raises_input_error_when_read_and_the_rest_reads(tmp_path):
    image = _noise(768, 640)  # 6 x 5 tiles of 128 px
    path = _pyramid(tmp_path / "bad.ome.tif", image)
    with tifffile.TiffFile(path) as tif:  # level-0 tile 10: row 2, column 0, away from the file's ends
        page = tif.pages[0]
        start, size = page.dataoffsets[10], page.databytecounts[10]
    raw = bytearray(path.read_bytes())
    raw[start + 8 : start + size - 8] = bytes(size - 16)
    path.write_bytes(bytes(raw))
    with open_slide(path) as slide:
        slide.check()  # the cheap check reads the ends of the data only
        with pytest.raises(InputError, match=r"^bad\.ome\.tif: part of this slide cannot be decoded") as err:
            slide.read(200, 0, 300, 100)
        assert err.type is InputError and "again" in str(err.value)
        assert np.array_equal(slide.read(0, 0, 256, 640), image[:256])  # other tiles still read
        assert np.array_equal(slide.read(256, 128, 384, 640), image[256:384, 128:])


def test_a_truncated_plain_tiff_is_refused_not_a_reshape_error(tmp_path):
    image = _noise(500, 400)
    whole = tmp_path / "plain.tif"  # uncompressed and contiguous: read row by row from the file
    tifffile.imwrite(whole, image, photometric="rgb")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 9 // 10])
    with open_slide(cut) as slide:
        assert np.array_equal(slide.read(0, 0, 100, 400), image[:100])  # the part that is there
        with pytest.raises(InputError, match=r"^cut\.tif: .*ends at byte") as err:
            slide.read(400, 0, 500, 400)
        assert err.type is InputError
        with pytest.raises(InputError, match="copy or export it again"):
            slide.check()


def test_cmyk_slides_read_as_rgb(tmp_path):
    cmyk = _noise(300, 260, channels=4, seed=3)
    rgb = np.asarray(Image.fromarray(cmyk, mode="CMYK").convert("RGB")).astype(int)
    assert np.abs(cmyk_to_rgb(cmyk).astype(int) - rgb).max() <= 1
    paths = [tmp_path / "tiled.tif", tmp_path / "contiguous.tif", tmp_path / "pillow.tif"]
    tifffile.imwrite(paths[0], cmyk, photometric="separated", tile=(128, 128), compression="zlib")
    tifffile.imwrite(paths[1], cmyk, photometric="separated")
    Image.fromarray(cmyk, mode="CMYK").save(paths[2])
    for path in paths:
        with open_slide(path) as slide:
            region = slide.read(0, 0, 300, 260)
            assert region.shape == (300, 260, 3)
            assert np.abs(region.astype(int) - rgb).max() <= 1, path.name
    # pure inks: white paper, cyan, and black
    inks = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], np.uint8)
    assert cmyk_to_rgb(inks).tolist() == [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]]
    deep = (inks.astype(np.uint16) * 257)[..., :4]
    assert cmyk_to_rgb(deep).tolist() == [[[65535] * 3, [0, 65535, 65535], [0, 0, 0]]]


def _svs(path, mpp: str, resolution=None):
    desc = (
        f"Aperio Image Library v12.0.0\n256x256 (128x128) JPEG/RGB Q=90|AppMag = 40|MPP = {mpp}|Filename = x"
    )
    res = {"resolution": resolution, "resolutionunit": "CENTIMETER"} if resolution else {}
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            _noise(256, 256), tile=(128, 128), photometric="rgb", description=desc, metadata=None, **res
        )
    return path


def test_garbled_or_implausible_pixel_sizes_open_without_one_and_warn(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    cases = {
        "typo.svs": (_svs(tmp_path / "typo.svs", "0.2.5"), None, "not a number"),
        "words.svs": (_svs(tmp_path / "words.svs", "unknown"), None, "not a number"),
        "huge.svs": (_svs(tmp_path / "huge.svs", "25"), None, "outside"),
        # a bad MPP falls back to the resolution tags (0.25 um/px = 40000 px/cm)
        "fallback.svs": (_svs(tmp_path / "fallback.svs", "0.2.5", (40000, 40000)), 0.25, "not a number"),
        "good.svs": (_svs(tmp_path / "good.svs", "0.4999"), 0.4999, None),
    }
    for name, (path, expected, warning) in cases.items():
        caplog.clear()
        with open_slide(path) as slide:
            assert slide.pixel_size == (pytest.approx(expected) if expected else None), name
            assert slide.read(0, 0, 8, 8).shape == (8, 8, 3)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        warnings = [w for w in warnings if name in w]  # tifffile's own log lines aside
        if warning is None:
            assert warnings == [], name
        else:
            assert len(warnings) == 1 and warning in warnings[0], (name, warnings)


def test_ome_pixel_size_typos_are_ignored(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    path = tmp_path / "typo.ome.tif"
    tifffile.imwrite(
        path, _noise(64, 64), photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 0.255}
    )
    raw = path.read_bytes()
    assert raw.count(b'PhysicalSizeX="0.255"') == 1
    path.write_bytes(raw.replace(b'PhysicalSizeX="0.255"', b'PhysicalSizeX="0.2.5"'))  # same length
    with open_slide(path) as slide:
        assert slide.pixel_size is None
    assert any("typo.ome.tif" in r.getMessage() and "not a number" in r.getMessage() for r in caplog.records)
    # millimetres where micrometres were meant: 0.25 mm/px is no microscope's pixel
    tifffile.imwrite(
        tmp_path / "mm.ome.tif",
        _noise(64, 64),
        photometric="rgb",
        metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "mm"},
    )
    with open_slide(tmp_path / "mm.ome.tif") as slide:
        assert slide.pixel_size is None
    assert any("mm.ome.tif" in r.getMessage() and "outside" in r.getMessage() for r in caplog.records)
