"""Bad and unusual input files for the fuzz tests (``test_fuzz.py``), made deterministically.

:func:`make_bad_files` fills a folder with small files in every category of the hardening
issue (zero-byte, truncated, random bytes, wrong extensions, tiny images, huge declared
sizes, odd sample types and channel counts, multi-page and damaged pyramidal TIFFs, FIFOs,
names at the file-system limit, a folder named like an image) plus two good smear images,
and returns ``[(path, category)]``. Every file has a unique stem without dots, so the
outputs of ``napari-wbc segment`` (``<stem>_cells.tif``, or ``<name>_cells.tif`` for a
slide) can be told apart. One path in the list does not exist: a name longer than the
file system allows (category ``long-name``), for the readers and the CLI to refuse.

Run it as a script to look at the files: ``python tests/fuzz_files.py FOLDER``.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOOD_IMAGE = ROOT / "sample_data" / "BloodImage_00034.jpg"
GOOD = "good"
FORMATS = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP"}
CATEGORIES = (
    "zero-byte",
    "truncated",
    "random-bytes",
    "wrong-extension",
    "tiny",
    "huge-declared",
    "odd-dtype",
    "multi-page",
    "damaged-pyramid",
    "fifo",
    "long-name",
    "folder",
    GOOD,
)


# ---------------------------------------------------------------- encoders


def _pil_bytes(array: np.ndarray, fmt: str, mode: str | None = None, **kwargs) -> bytes:
    from PIL import Image

    im = Image.fromarray(array)
    if mode is not None:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _tiff_bytes(array: np.ndarray, **kwargs) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, colour: int = 2) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` px, with a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(bytes(64)))
        + _png_chunk(b"IEND", b"")
    )


def _tiff_declaring(
    width: int,
    height: int,
    data: bytes,
    samples: int = 3,
    compression: int = 1,
    bytecount: int | None = None,
) -> bytes:
    """A classic little-endian TIFF of one strip declaring ``width`` x ``height`` px of 8-bit
    samples, holding only ``data`` (``bytecount`` is what StripByteCounts claims)."""
    entries = []  # (tag, type, count, payload)
    bits = struct.pack(f"<{samples}H", *([8] * samples))
    entries.append((256, 4, 1, struct.pack("<I", width)))
    entries.append((257, 4, 1, struct.pack("<I", height)))
    entries.append((258, 3, samples, bits))
    entries.append((259, 3, 1, struct.pack("<H", compression)))
    entries.append((262, 3, 1, struct.pack("<H", 2 if samples == 3 else 1)))
    entries.append((273, 4, 1, None))  # strip offset, filled below
    entries.append((277, 3, 1, struct.pack("<H", samples)))
    entries.append((278, 4, 1, struct.pack("<I", height)))
    entries.append((279, 4, 1, struct.pack("<I", len(data) if bytecount is None else bytecount)))
    entries.append((284, 3, 1, struct.pack("<H", 1)))
    ifd_size = 2 + 12 * len(entries) + 4
    extra_at = 8 + ifd_size
    extra = b""
    packed = []
    for tag, kind, count, payload in entries:
        if payload is not None and len(payload) > 4:
            packed.append((tag, kind, count, struct.pack("<I", extra_at + len(extra))))
            extra += payload
        else:
            packed.append((tag, kind, count, payload))
    data_at = extra_at + len(extra)
    ifd = struct.pack("<H", len(packed))
    for tag, kind, count, payload in packed:
        payload = struct.pack("<I", data_at) if payload is None else payload
        ifd += struct.pack("<HHI", tag, kind, count) + payload.ljust(4, b"\0")
    ifd += struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8) + ifd + extra + data


def _bmp_declaring(width: int, height: int, data: bytes) -> bytes:
    """A 24-bit BMP whose header declares ``width`` x ``height`` px (negative: top-down)."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    head = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(data), 0, 0, 14 + len(info))
    return head + info + data


def _jpeg_declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its frame header (SOF0) patched to say ``width`` x ``height`` px."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def _pyramid(path: Path, image: np.ndarray, tile: int = 64, **kwargs) -> Path:
    from napari_wbc.core.pyramid import write_pyramid_tiff

    def region(y0, x0, y1, x1):
        return image[y0:y1, x0:x1]

    channels = 3 if image.ndim == 3 else 0
    return write_pyramid_tiff(
        path, region, image.shape[:2], image.dtype, channels=channels, tile=tile, **kwargs
    )


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _patch_tag(path: Path, tag, value: int) -> None:
    """Every value of an integer TIFF ``tag`` of ``path`` set to ``value`` (clipped to its type)."""
    code = {3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q"}[int(tag.dtype)]
    value = min(value, 2 ** (8 * struct.calcsize(code)) - 1)
    _patch(path, tag.valueoffset, struct.pack(f"<{tag.count}{code}", *([value] * tag.count)))


def _truncate(data: bytes, points: int) -> list[tuple[str, bytes]]:
    """``data`` cut after 8 bytes, at evenly spread fractions, and one byte short of the end."""
    cuts = [8] + [int(len(data) * k / (points - 1)) for k in range(1, points - 1)] + [len(data) - 1]
    cuts = [c for c in dict.fromkeys(cuts) if 0 < c < len(data)]
    return [(f"{c:06d}", data[:c]) for c in cuts]


# ---------------------------------------------------------------- the files


def make_bad_files(folder: str | Path, seed: int = 0, n: int = 5) -> list[tuple[Path, str]]:
    """Write the fuzz files into ``folder``; return ``[(path, category)]`` (see the module doc).

    ``n`` sets how many truncation points each format gets and how many pure random-byte
    files are made; ``seed`` the random bytes and pixels. Deterministic for a given pair.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files: list[tuple[Path, str]] = []

    def put(name: str, category: str, data: bytes | None = None) -> Path:
        path = folder / name
        stem = name.rsplit(".", 1)[0]
        assert "." not in stem, name  # one dot: a slide's name is its stem
        assert all(p.name.rsplit(".", 1)[0] != stem for p, _ in files), name  # unique stems
        if data is not None:
            path.write_bytes(data)
        files.append((path, category))
        return path

    with Image.open(GOOD_IMAGE) as im:
        smear = np.asarray(im.convert("RGB"))
    # a crop with a white cell in it, so decoders meet real image data
    field = np.ascontiguousarray(smear[180:228, 270:334])  # 48 x 64 x 3
    small = np.ascontiguousarray(field[:48, :48])

    # good smear images: a copy of the sample field and the same pixels as a PNG
    put("good_field_a.jpg", GOOD, GOOD_IMAGE.read_bytes())
    put("good_field_b.png", GOOD, _pil_bytes(smear, "PNG"))

    # zero-byte files of every type
    for ext in ("png", "jpg", "jpeg", "bmp", "tif", "tiff"):
        put(f"zero_{ext}.{ext}", "zero-byte", b"")

    # truncated at many points, every format
    encoded = {
        "png": _pil_bytes(field, "PNG"),
        "jpg": _pil_bytes(field, "JPEG", quality=90),
        "bmp": _pil_bytes(field, "BMP"),
        "tif": _tiff_bytes(field, photometric="rgb", compression="zlib", rowsperstrip=8),
        "tiledtif": _tiff_bytes(field, photometric="rgb", compression="zlib", tile=(16, 16)),
    }
    pyramid = _pyramid(folder / "tmp_pyramid.tif", np.tile(field, (4, 3, 1)), pixel_size=0.25)
    encoded["pyramidtif"] = pyramid.read_bytes()
    pyramid.unlink()
    for kind, data in encoded.items():
        ext = "tif" if kind.endswith("tif") else kind
        for cut, part in _truncate(data, n):
            put(f"trunc_{kind}_{cut}.{ext}", "truncated", part)

    # random bytes, bare and behind each format's magic number
    for k in range(n):
        ext = ("png", "jpg", "tif", "bmp", "tiff", "jpeg")[k % 6]
        put(f"random_{k}.{ext}", "random-bytes", rng.bytes(int(rng.integers(1, 4096))))
    magics = {
        "png": b"\x89PNG\r\n\x1a\n",
        "jpg": b"\xff\xd8\xff\xe0",
        "bmp": b"BM",
        "tif": b"II*\0",
        "tiff": b"MM\0*",
    }
    for ext, magic in magics.items():
        put(f"magic_random_{ext}.{ext}", "random-bytes", magic + rng.bytes(2048))
    put("magic_random_bigtiff.tif", "random-bytes", b"II+\0\x08\0\0\0" + rng.bytes(2048))

    # wrong extensions
    put("png_named_jpg.jpg", "wrong-extension", encoded["png"])
    put("jpeg_named_tif.tif", "wrong-extension", encoded["jpg"])
    put("text_named_png.png", "wrong-extension", b"this is not an image\n" * 20)
    put("tiff_named_png.png", "wrong-extension", encoded["tif"])
    put("bmp_named_tiff.tiff", "wrong-extension", encoded["bmp"])
    put("jpeg_named_bmp.bmp", "wrong-extension", encoded["jpg"])

    # tiny images: 1x1 up to 16x16, and none at all
    for side, ext in ((1, "png"), (2, "jpg"), (4, "bmp"), (8, "tif"), (15, "png")):
        image = np.ascontiguousarray(field[:side, :side])
        data = _tiff_bytes(image, photometric="rgb") if ext == "tif" else _pil_bytes(image, FORMATS[ext])
        put(f"tiny_{side}x{side}.{ext}", "tiny", data)
    put("tiny_16x16.png", "tiny", _pil_bytes(np.ascontiguousarray(field[:16, :16]), "PNG"))
    put("tiny_16x16_tif.tif", "tiny", _tiff_bytes(np.ascontiguousarray(field[:16, :16]), photometric="rgb"))
    put("tiny_64x1.png", "tiny", _pil_bytes(np.ascontiguousarray(field[:1]), "PNG"))
    put("tiny_0x0_tif.tif", "tiny", _tiff_declaring(0, 0, b""))
    put("tiny_0x0_png.png", "tiny", png_declaring(0, 0))

    # huge declared sizes, tiny data
    put("huge_png_100k.png", "huge-declared", png_declaring(100_000, 100_000))
    put("huge_png_2e31.png", "huge-declared", png_declaring(2**31 - 1, 2**31 - 1))
    put("huge_png_bomb_zone.png", "huge-declared", png_declaring(12_000, 8_000))  # 96 Mpx: a warning only
    put("huge_jpeg_65535.jpg", "huge-declared", _jpeg_declaring(encoded["jpg"], 65535, 65535))
    put("huge_bmp_100k.bmp", "huge-declared", _bmp_declaring(100_000, -100_000, bytes(300)))
    put("huge_bmp_bomb_zone.bmp", "huge-declared", _bmp_declaring(15_000, 8_000, bytes(300)))
    pixels = field.tobytes()[:3000]
    put("huge_tif_100k_raw.tif", "huge-declared", _tiff_declaring(100_000, 100_000, pixels))
    put(
        "huge_tif_100k_raw_claims.tif",
        "huge-declared",
        _tiff_declaring(100_000, 100_000, pixels, bytecount=2**32 - 1),
    )
    put("huge_tif_2e32.tif", "huge-declared", _tiff_declaring(2**32 - 1, 2**32 - 1, pixels[:1000], 1))
    put(
        "huge_tif_100k_zlib.tif",
        "huge-declared",
        _tiff_declaring(100_000, 100_000, zlib.compress(bytes(100_000)), compression=8),
    )
    put("huge_tif_wide_strip.tif", "huge-declared", _tiff_declaring(2**31, 1, pixels))

    # odd sample types and channel counts
    gray = small.mean(-1)
    with_nan = (small / 255).astype(np.float32)
    with_nan[0, :8] = np.nan
    with_nan[1, :8] = np.inf
    with_nan[2, :8] = -np.inf
    odd = {
        "bool": gray > 128,
        "int8": (small.astype(np.int16) - 128).astype(np.int8),
        "uint16": small.astype(np.uint16) * 257,
        "int32_gray": (gray * 1000).astype(np.int32),
        "int32_rgb": small.astype(np.int32) - 100,
        "uint64": small.astype(np.uint64) << 40,
        "float16": (small / 255).astype(np.float16),
        "float32_naninf": with_nan,
        "float32_allnan": np.full(small.shape, np.nan, np.float32),
        "float64_gray": gray.astype(np.float64) * 1e6,
        "complex64": gray.astype(np.complex64),
        "ch1": small[..., :1],
        "ch2": small[..., :2],
        "ch5": np.concatenate([small, small[..., :2]], -1),
        "planar_rgb": np.ascontiguousarray(np.moveaxis(small, -1, 0)),
    }
    for name, array in odd.items():
        rgb = array.ndim == 3 and array.shape[-1] == 3 and array.dtype != np.complex64
        kwargs = {"photometric": "rgb"} if rgb else {"photometric": "minisblack"}
        if name == "planar_rgb":
            kwargs = {"photometric": "rgb", "planarconfig": "separate"}
        put(f"dtype_{name}.tif", "odd-dtype", _tiff_bytes(array, **kwargs))
    put("dtype_png16_gray.png", "odd-dtype", _pil_bytes((gray * 257).astype(np.uint16), "PNG"))
    put("dtype_png_1bit.png", "odd-dtype", _pil_bytes(small, "PNG", mode="1"))
    put("dtype_png_la.png", "odd-dtype", _pil_bytes(small, "PNG", mode="LA"))
    put("dtype_png_rgba.png", "odd-dtype", _pil_bytes(small, "PNG", mode="RGBA"))
    put("dtype_png_palette.png", "odd-dtype", _pil_bytes(small, "PNG", mode="P"))
    put("dtype_jpeg_cmyk.jpg", "odd-dtype", _pil_bytes(small, "JPEG", mode="CMYK"))
    put("dtype_jpeg_gray.jpg", "odd-dtype", _pil_bytes(small, "JPEG", mode="L"))
    put("dtype_bmp_1bit.bmp", "odd-dtype", _pil_bytes(small, "BMP", mode="1"))

    # multi-page TIFFs
    import tifffile

    put("pages_rgb3.tif", "multi-page", _tiff_bytes(np.stack([small] * 3), photometric="rgb"))
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tif:
        tif.write(small, photometric="rgb")
        tif.write(gray.astype(np.uint16), photometric="minisblack")
    put("pages_two_series.tif", "multi-page", buf.getvalue())
    put(
        "pages_imagej_zc.tif",
        "multi-page",
        _tiff_bytes(np.stack([np.moveaxis(small, -1, 0)] * 2), imagej=True, metadata={"axes": "ZCYX"}),
    )
    stack = _tiff_bytes(np.stack([small] * 4), photometric="rgb", compression="zlib")
    put("pages_second_cut.tif", "multi-page", stack[: int(len(stack) * 0.6)])

    # damaged pyramids: the project's own pyramid writer, then corrupted
    mosaic = np.tile(field, (4, 3, 1))  # 192 x 192: levels 192, 96, 48 at 64 px tiles

    def damaged(name: str, image: np.ndarray = mosaic, **kwargs) -> tuple[Path, tifffile.TiffPage, list]:
        path = _pyramid(folder / name, image, **kwargs)
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            levels = [level.keyframe for level in tif.series[0].levels]
        files.append((path, "damaged-pyramid"))
        return path, page, levels

    path, page, _ = damaged("pyr_tile_garbled.tif", pixel_size=0.25)
    _patch(path, page.dataoffsets[0] + 2, rng.bytes(page.databytecounts[0] - 2))
    path, page, _ = damaged("pyr_tile_offsets_past_end.tif")
    _patch_tag(path, page.tags["TileOffsets"], path.stat().st_size + 10**6)
    path, page, _ = damaged("pyr_tile_bytecounts_huge.tif")
    _patch_tag(path, page.tags["TileByteCounts"], 2**40)
    path, page, _ = damaged("pyr_subifds_past_end.tif")
    _patch_tag(path, page.tags["SubIFDs"], path.stat().st_size + 10**6)
    path, page, levels = damaged("pyr_level_too_wide.tif")
    _patch_tag(path, levels[1].tags["ImageWidth"], 65535)
    path, page, levels = damaged("pyr_level_garbled.tif")
    tag = levels[-1].tags["TileOffsets"]
    _patch(path, tag.valueoffset, rng.bytes(tag.count * struct.calcsize({4: "I", 16: "Q"}[int(tag.dtype)])))
    path, page, _ = damaged("pyr_ome_garbled.tif", pixel_size=0.25)
    tag = page.tags["ImageDescription"]
    _patch(path, tag.valueoffset + 10, rng.bytes(min(200, tag.count - 20)))
    labels = np.kron(np.arange(12, dtype=np.uint32).reshape(3, 4), np.ones((64, 48), np.uint32))
    path, page, _ = damaged("pyr_labels_garbled_cells.tif", labels, downsample="nearest")
    _patch(path, page.dataoffsets[0] + 2, rng.bytes(page.databytecounts[0] - 2))
    path, page, _ = damaged("pyr_labels_cut_cells.tif", labels, downsample="nearest")
    os.truncate(path, path.stat().st_size // 2)
    from napari_wbc.core.slide import build_mosaic_slide

    path = build_mosaic_slide(folder / "mosaic_cut.tif", [field, small], grid=(2, 2), gap=8, tile=64)
    os.truncate(path, int(path.stat().st_size * 0.7))
    files.append((path, "damaged-pyramid"))

    # FIFOs named like images: opening one for reading waits for a writer forever
    for ext in ("png", "tif"):
        os.mkfifo(folder / f"fifo_{ext}.{ext}")
        files.append((folder / f"fifo_{ext}.{ext}", "fifo"))

    # the longest name the file system allows (a real image), and a longer one (no file)
    name_max = os.pathconf(folder, "PC_NAME_MAX")
    put("long_" + "n" * (name_max - 9) + ".png", "long-name", _pil_bytes(small, "PNG"))
    files.append((folder / ("toolong_" + "n" * name_max + ".png"), "long-name"))

    # folders named like images
    for name in ("folder_png.png", "folder_tif.tif"):
        (folder / name).mkdir()
        files.append((folder / name, "folder"))
    (folder / "folder_tif.tif" / "inside.png").write_bytes(encoded["png"])

    assert {c for _, c in files} == set(CATEGORIES)
    return files


if __name__ == "__main__":
    made = make_bad_files(sys.argv[1] if len(sys.argv) > 1 else "fuzz-files")
    for p, category in made:
        size = os.stat(p).st_size if len(p.name) <= 255 and p.is_file() else "-"
        print(f"{category:16} {size:>8}  {p.name[:70]}")
