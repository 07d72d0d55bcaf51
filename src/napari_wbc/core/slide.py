"""Whole-slide images: open lazily, read regions and low-resolution looks, build mosaic slides.

A :class:`Slide` is a list of levels (level 0 at full resolution) that are read region by
region and never as a whole: tifffile's zarr view (``aszarr``) for tiled or striped TIFF,
OME-TIFF and SVS (pyramids from SubIFDs or SVS pages), direct file reads for uncompressed
contiguous TIFF. The pixel size comes from the OME metadata, the Aperio ``MPP`` or the TIFF
resolution tags. Pyramidal TIFF writing lives in :mod:`.pyramid`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import InputError, read_image

log = logging.getLogger(__name__)

# a TIFF stored in blocks (strips, tiles) bigger than this cannot be read in pieces
MAX_BLOCK_BYTES = 512 * 2**20
_UNITS_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _to_rgb8(a: np.ndarray) -> np.ndarray:
    """(h, w[, c]) region of any sample type as (h, w, 3) uint8; the same rule for every region."""
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = a[..., :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if np.issubdtype(a.dtype, np.integer):  # scaled by the type's range, not the region's
        return (a.astype(np.float64) * (255.0 / np.iinfo(a.dtype).max)).round().astype(np.uint8)
    return (np.clip(np.nan_to_num(a.astype(np.float64)), 0, 1) * 255).round().astype(np.uint8)


class _Level:
    """One resolution level over a lazy array with any axes; regions come out as (h, w, 3) uint8."""

    def __init__(self, array, axes: str):
        self.array, self.axes = array, axes
        self.shape = (int(array.shape[axes.index("Y")]), int(array.shape[axes.index("X")]))

    def read(self, y0: int, x0: int, y1: int, x1: int, step: int = 1) -> np.ndarray:
        """Pixels ``y0:y1:step, x0:x1:step`` (every ``step``-th, for a cheap low-resolution view)."""
        index, kept = [], []
        for axis in self.axes:
            if axis == "Y":
                index.append(slice(y0, y1, step))
            elif axis == "X":
                index.append(slice(x0, x1, step))
            elif axis in "SC" and not any(a in "SC" for a in kept):
                index.append(slice(None))
            else:  # a stack: the first plane
                index.append(0)
                continue
            kept.append(axis)
        region = np.asarray(self.array[tuple(index)])
        if kept.index("Y") > kept.index("X"):
            raise InputError("images stored with X before Y are not supported")
        if len(kept) == 3 and kept[0] in "SC":  # planar: samples first
            region = np.moveaxis(region, 0, -1)
        return _to_rgb8(region)


class _ContiguousArray:
    """Uncompressed, contiguous (H, W, S) TIFF data read row by row from the file, never mapped."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, dtype
        self.fd = os.open(path, os.O_RDONLY)

    def __getitem__(self, index):
        ys, xs = index[0], index[1]
        h, w = self.shape[:2]
        y0, y1, ystep = ys.indices(h)
        x0, x1, xstep = xs.indices(w)
        rows = range(y0, y1, ystep)
        x1 = max(x0, x1)
        pixel = int(np.prod(self.shape[2:], dtype=np.int64)) * self.dtype.itemsize
        out = bytearray()
        for y in rows:  # only the rows asked for: a strided view reads a fraction of the file
            start = self.offset + (y * w + x0) * pixel
            out += os.pread(self.fd, (x1 - x0) * pixel, start)
        block = np.frombuffer(bytes(out), self.dtype).reshape(len(rows), x1 - x0, *self.shape[2:])
        return block[:, ::xstep]

    def close(self):
        os.close(self.fd)


@dataclass
class Slide:
    """A slide opened lazily: ``levels[0]`` is full resolution, ``pixel_size`` um per level-0 px."""

    levels: list[_Level]
    pixel_size: float | None = None
    name: str = "slide"
    closers: list = field(default_factory=list, repr=False)

    @classmethod
    def from_array(cls, array: np.ndarray, pixel_size: float | None = None, name: str = "image") -> Slide:
        a = np.asarray(array)
        return cls([_Level(a, "YX" if a.ndim == 2 else "YXS")], pixel_size, name)

    @property
    def shape(self) -> tuple[int, int]:
        return self.levels[0].shape

    @property
    def downsamples(self) -> list[float]:
        h = self.shape[0]
        return [h / level.shape[0] for level in self.levels]

    def read(self, y0: int, x0: int, y1: int, x1: int, level: int = 0) -> np.ndarray:
        """(y1 - y0, x1 - x0, 3) uint8 region in the coordinates of ``level`` (clipped to it)."""
        h, w = self.levels[level].shape
        y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
        return self.levels[level].read(y0, x0, y1, x1)

    def look(self, y0: int, x0: int, y1: int, x1: int, max_downsample: float) -> np.ndarray:
        """A low-resolution look at a level-0 region, at most ``max_downsample`` coarser.

        Reads the coarsest pyramid level within that factor (a fraction of the pixels), and
        averages blocks of it when the pyramid is sparser than that or missing.
        """
        ds = self.downsamples
        level = max((k for k in range(len(ds)) if ds[k] <= max_downsample * 1.01), key=lambda k: ds[k])
        d = ds[level]
        region = self.read(int(y0 // d), int(x0 // d), -int(-y1 // d), -int(-x1 // d), level)
        f = max(1, int(max_downsample / d))
        if f == 1 or min(region.shape[:2]) < f:
            return region
        h, w = region.shape[0] // f * f, region.shape[1] // f * f
        blocks = region[:h, :w].reshape(h // f, f, w // f, f, 3).astype(np.float32)
        return blocks.mean((1, 3)).round().astype(np.uint8)

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers.clear()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _physical_size_um(value: float | None) -> float | None:
    return float(value) if value and 1e-3 < float(value) < 1e3 else None


def slide_pixel_size(tif, path: Path) -> float | None:
    """um per level-0 pixel from OME-XML, the Aperio description, or the resolution tags."""
    from .io import _tiff_pixel_size

    if tif.is_ome and tif.ome_metadata:
        m = re.search(r'PhysicalSizeX="([^"]+)"', tif.ome_metadata)
        if m:
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
            factor = _UNITS_UM.get(unit.group(1) if unit else "µm")
            if factor is not None:
                return _physical_size_um(float(m.group(1)) * factor)
    if tif.is_svs:
        m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", tif.pages.first.description)
        if m:
            return _physical_size_um(float(m.group(1)))
    return _physical_size_um(_tiff_pixel_size(path))


def open_slide(path: str | Path) -> Slide:
    """Open a whole slide (TIFF, OME-TIFF, SVS) lazily; other image files are read whole."""
    import tifffile

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() not in (".tif", ".tiff", ".svs", ".btf", ".tf8", ".ndpi"):
        image = read_image(path)
        return Slide.from_array(image.data, image.pixel_size, path.stem)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:
        raise InputError(f"{path.name}: cannot read this slide ({err}); is the file complete?") from err
    slide = Slide([], None, path.name.split(".")[0], [tif.close])
    try:
        series = tif.series[0]
        page = series.keyframe
        axes = series.get_axes(squeeze=True)
        if "Y" not in axes or "X" not in axes:
            raise InputError(f"{path.name}: no image plane (axes {axes}) in this file")
        channels = [n for a, n in zip(axes, series.get_shape(True), strict=True) if a in "SC"][:1]
        if channels and channels[0] not in (1, 3, 4):
            raise InputError(f"{path.name} has {channels[0]} channels; open an RGB (brightfield) slide")
        slide.pixel_size = slide_pixel_size(tif, path)
        if (
            len(series.levels) == 1
            and page.is_contiguous
            and not page.is_tiled
            and not tif.is_ome
            and axes in ("YX", "YXS")
        ):
            array = _ContiguousArray(
                path,
                page.dataoffsets[0],
                series.get_shape(True),
                np.dtype(tif.byteorder + page.dtype.str[1:]),
            )
            slide.closers.insert(0, array.close)
            slide.levels = [_Level(array, axes)]
            return slide
        block = int(np.prod(page.chunks, dtype=np.int64)) * page.dtype.itemsize  # decoded
        if block > MAX_BLOCK_BYTES:
            raise InputError(
                f"{path.name} is stored in blocks of {block / 2**20:.0f} MB, too big to "
                "read in pieces; save it as a tiled (pyramidal) TIFF"
            )
        import zarr

        store = series.aszarr(squeeze=True)
        slide.closers.insert(0, store.close)
        root = zarr.open(store, mode="r")
        arrays = [root] if isinstance(root, zarr.Array) else [root[str(k)] for k in range(len(series.levels))]
        slide.levels = [_Level(a, axes) for a in arrays]
        return slide
    except InputError:
        slide.close()
        raise
    except Exception as err:
        slide.close()
        raise InputError(f"{path.name}: cannot read this slide ({err})") from err


def _mosaic_fields(fields: Sequence) -> list[np.ndarray]:
    out = []
    for f in fields:
        out.append(read_image(f).data if isinstance(f, (str, Path)) else np.asarray(f, np.uint8))
    return out


def build_mosaic_slide(
    path: str | Path,
    fields: Sequence,
    grid: tuple[int, int] = (4, 4),
    gap: int = 0,
    border: int = 0,
    pixel_size: float | None = 0.1,
    glass=(236, 232, 238),
    tile: int = 256,
    compression: str = "zlib",
) -> Path:
    """Write a pyramidal OME-TIFF slide that tiles real smear ``fields`` on a ``grid``.

    Fields (arrays or image paths) repeat in order, flipped on each repeat; ``gap`` and
    ``border`` px of empty glass (``glass``; None for black, stored as empty tiles) lie
    between fields and around them. The slide is made tile by tile: any size fits in memory.
    """
    from .pyramid import write_pyramid_tiff

    images = _mosaic_fields(fields)
    fh, fw = max(f.shape[0] for f in images), max(f.shape[1] for f in images)
    rows, cols = grid
    shape = (2 * border + rows * fh + (rows - 1) * gap, 2 * border + cols * fw + (cols - 1) * gap)

    def field_at(i: int, j: int) -> np.ndarray:
        n = i * cols + j
        f = images[n % len(images)]
        turn = (n // len(images)) % 4
        return f[:: -1 if turn & 1 else 1, :: -1 if turn & 2 else 1]

    def region(y0: int, x0: int, y1: int, x1: int) -> np.ndarray | None:
        out = None if glass is None else np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        if out is not None:
            out[:] = glass
        for i in range(max(0, (y0 - border) // (fh + gap)), min(rows, (y1 - border) // (fh + gap) + 1)):
            for j in range(max(0, (x0 - border) // (fw + gap)), min(cols, (x1 - border) // (fw + gap) + 1)):
                f = field_at(i, j)
                fy, fx = border + i * (fh + gap), border + j * (fw + gap)
                a, b = max(y0, fy), min(y1, fy + f.shape[0])
                c, d = max(x0, fx), min(x1, fx + f.shape[1])
                if a < b and c < d:
                    if out is None:
                        out = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
                    out[a - y0 : b - y0, c - x0 : d - x0] = f[a - fy : b - fy, c - fx : d - fx]
        return out

    return write_pyramid_tiff(
        path,
        region,
        shape,
        np.uint8,
        channels=3,
        tile=tile,
        pixel_size=pixel_size,
        downsample="mean",
        compression=compression,
    )


def build_sample_slide(path: str | Path, grid: tuple[int, int] = (5, 6), gap: int = 160) -> Path:
    """A small pyramidal sample slide (3360 x 4960 px for the default grid) of the bundled fields.

    The bundled BCCD fields show white cells ~100 px wide, the network's working scale: the
    slide says 0.1 um/px.
    """
    folder = Path(__file__).resolve().parents[1] / "sample_data"
    return build_mosaic_slide(
        path, sorted(folder.glob("*.jpg")), grid=grid, gap=gap, border=gap, pixel_size=0.1
    )


SLIDE_SUFFIXES = (".svs", ".ndpi", ".btf", ".tf8")
SLIDE_PIXELS = 36e6  # a plain TIFF bigger than this (6000 x 6000) goes through the tiled engine


def is_slide(path: str | Path) -> bool:
    """Whether a file should be segmented in tiles: a slide format, a pyramid, or a huge TIFF."""
    import tifffile

    path = Path(path)
    if path.suffix.lower() in SLIDE_SUFFIXES:
        return True
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.get_axes(True), series.get_shape(True)
            pixels = shape[axes.index("Y")] * shape[axes.index("X")] if "Y" in axes and "X" in axes else 0
            return len(series.levels) > 1 or pixels > SLIDE_PIXELS
    except Exception:  # not readable as a TIFF: the ordinary reader says why
        return False
