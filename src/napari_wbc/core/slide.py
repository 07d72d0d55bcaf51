"""Whole-slide images: open lazily, read regions and low-resolution looks, build mosaic slides.

A :class:`Slide` is a list of levels (level 0 at full resolution) that are read region by
region and never as a whole: tifffile's zarr view (``aszarr``) for tiled or striped TIFF,
OME-TIFF and SVS (pyramids from SubIFDs or SVS pages), direct file reads for uncompressed
contiguous TIFF; one zarr array per level, so any tifffile version reads them (see "tifffile
compatibility" below). CMYK TIFFs come out as RGB. The pixel size comes from the OME metadata,
the Aperio ``MPP`` or the TIFF resolution tags, whichever first gives a plausible one. A region
of a damaged or truncated file raises :class:`.io.InputError`; :meth:`Slide.check` reads the
ends of the data to refuse such a file at open. Pyramidal TIFF writing lives in :mod:`.pyramid`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import (
    MAX_MEGAPIXELS,
    InputError,
    check_regular,
    cmyk_to_rgb,
    is_cmyk,
    plausible_pixel_size,
    read_header,
    read_image,
    squeezed,
)

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


def _damaged(source: str, err: Exception) -> InputError:
    return InputError(
        f"{source}: part of this slide cannot be decoded ({type(err).__name__}: {err}); the file is "
        "damaged or incomplete (an interrupted copy or export?): copy or export it again"
    )


class _Level:
    """One resolution level over a lazy array with any axes; regions come out as (h, w, 3) uint8.

    Axes of length 1 (and any stack axis) give their first plane; the first sample (S) or
    channel (C) axis longer than 1 gives a pixel's samples. ``source`` (the file name) names
    the file when a region cannot be decoded; ``cmyk`` converts CMYK samples to RGB.
    """

    def __init__(self, array, axes: str, source: str = "image", cmyk: bool = False):
        if len(axes) != len(array.shape):
            raise InputError(f"{source}: axes {axes} do not match the stored shape {tuple(array.shape)}")
        if axes.index("Y") > axes.index("X"):
            raise InputError(f"{source}: images stored with X before Y are not supported")
        self.array, self.axes, self.source, self.cmyk = array, axes, source, cmyk
        self.shape = (int(array.shape[axes.index("Y")]), int(array.shape[axes.index("X")]))
        samples = [i for i, a in enumerate(axes) if a in "SC" and array.shape[i] > 1]
        self.samples = samples[0] if samples else None

    def read_raw(self, y0: int, x0: int, y1: int, x1: int, step: int = 1) -> np.ndarray:
        """Stored pixels ``y0:y1:step, x0:x1:step`` as (h, w[, samples]); raises InputError if damaged."""
        index: list = []
        for i, axis in enumerate(self.axes):
            if axis == "Y":
                index.append(slice(y0, y1, step))
            elif axis == "X":
                index.append(slice(x0, x1, step))
            else:
                index.append(slice(None) if i == self.samples else 0)
        try:
            region = np.asarray(self.array[tuple(index)])
        except (InputError, MemoryError):
            raise
        except Exception as err:  # a truncated file, a corrupt tile: decoders raise all sorts
            raise _damaged(self.source, err) from err
        if self.samples is not None and self.samples < self.axes.index("Y"):  # planar: samples first
            region = np.moveaxis(region, 0, -1)
        return region

    def read(self, y0: int, x0: int, y1: int, x1: int, step: int = 1) -> np.ndarray:
        """Pixels ``y0:y1:step, x0:x1:step`` (every ``step``-th, for a cheap low-resolution view)."""
        region = self.read_raw(y0, x0, y1, x1, step)
        if self.cmyk and region.ndim == 3 and region.shape[-1] >= 4:
            region = cmyk_to_rgb(region)
        return _to_rgb8(region)


def check_levels(levels: list[_Level], tile: int = 256, whole: int = 2048 * 2048) -> None:
    """Read a little of each end of a slide's data, so a damaged file is refused at open (InputError).

    The coarsest level is read whole when it has at most ``whole`` pixels (else its first and
    last ``tile``), and level 0 its first and last ``tile``: writers put the coarsest level and
    the last tiles at the end of the file, where a truncated copy is cut.
    """
    coarsest = min(levels, key=lambda level: level.shape[0] * level.shape[1])
    ends = [levels[0], coarsest] if coarsest is not levels[0] else [coarsest]
    h, w = coarsest.shape
    if h * w <= whole:
        coarsest.read_raw(0, 0, h, w)
        ends.remove(coarsest)
    for level in ends:
        h, w = level.shape
        level.read_raw(0, 0, min(h, tile), min(w, tile))
        level.read_raw(max(0, h - tile), max(0, w - tile), h, w)


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
            row = os.pread(self.fd, (x1 - x0) * pixel, start)
            if len(row) < (x1 - x0) * pixel:
                raise OSError(f"the file ends at byte {start + len(row)}, before row {y} of the image")
            out += row
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
    path: Path | None = None  # the file it was opened from
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def from_array(cls, array: np.ndarray, pixel_size: float | None = None, name: str = "image") -> Slide:
        a = np.asarray(array)
        return cls([_Level(a, "YX" if a.ndim == 2 else "YXS")], pixel_size, name)

    @classmethod
    def pyramid_of(cls, image: np.ndarray, pixel_size: float | None = None, name: str = "image") -> Slide:
        """An RGB image in memory with 2x mean-downsampled levels down to 32 px, as a
        scanner's pyramid (to look at a field as the engine looks at a slide)."""
        levels = [np.asarray(image)]
        while min(levels[-1].shape[:2]) >= 32:
            a = levels[-1]
            h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
            half = a[:h, :w].reshape(h // 2, 2, w // 2, 2, a.shape[2]).mean((1, 3))
            levels.append(half.round().astype(np.uint8))
        return cls([_Level(a, "YXS") for a in levels], pixel_size, name)

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
        with self._lock:  # one reader at a time: a TIFF file handle seeks
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

    def check(self) -> None:
        """Refuse (InputError) a damaged or truncated file now, not when a region of it is first read."""
        check_levels(self.levels)

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers.clear()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def slide_pixel_size(tif, path: Path) -> float | None:
    """um per level-0 pixel from OME-XML, the Aperio description, or the resolution tags.

    The first of them that gives a microscope's pixel size (:func:`.io.plausible_pixel_size`)
    wins; a typo or a screen default is ignored with a warning, and the slide opens without one.
    """
    from .io import _tiff_pixel_size

    if tif.is_ome and tif.ome_metadata:
        m = re.search(r'PhysicalSizeX="([^"]*)"', tif.ome_metadata)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        factor = _UNITS_UM.get(unit.group(1) if unit else "µm")
        if m and factor is not None:
            try:
                value = float(m.group(1)) * factor
            except ValueError:  # not a number: plausible_pixel_size says so
                value = m.group(1)
            size = plausible_pixel_size(value, f"{path.name} (OME PhysicalSizeX)")
            if size:
                return size
    if tif.is_svs:
        m = re.search(r"\|\s*MPP\s*=\s*([^|\s]*)", tif.pages.first.description)
        size = plausible_pixel_size(m.group(1), f"{path.name} (Aperio MPP)") if m else None
        if size:
            return size
    try:
        value = _tiff_pixel_size(path)
    except Exception as err:  # odd resolution tags: a slide without a pixel size, not a refusal
        log.warning("%s: cannot read the resolution tags (%s); no pixel size", path.name, err)
        return None
    return plausible_pixel_size(value, f"{path.name} (TIFF resolution)")


# -- tifffile compatibility ------------------------------------------------------------------
# tifffile 2026.5 removed TiffPageSeries.get_axes/get_shape and the zarr store's `squeeze`, squeezes
# some kinds of series by default and not others, and changed the layout of multiscale zarr stores.
# So: take a series' axes and shape as they are and squeeze them here, and open one zarr store per
# level (a single array in every version) rather than the multiscale group.


def level_arrays(series) -> tuple[list, list]:
    """``(arrays, closers)``: a lazy zarr array of each pyramid level of ``series`` (with the
    level's own, unsqueezed ``axes``), and what closes their stores."""
    import zarr

    arrays, closers = [], []
    try:
        for k in range(len(series.levels)):
            store = series.aszarr(level=k)
            closers.append(store.close)
            node = zarr.open(store, mode="r")
            # one level is one array; should a version wrap it in a group, it is the group's "0"
            arrays.append(node if isinstance(node, zarr.Array) else node["0"])
    except Exception:
        for close in closers:
            close()
        raise
    return arrays, closers


def slide_name(path: str | Path) -> str:
    """A slide's name, which its outputs carry: the file name before its first dot
    (``a.ome.tif`` -> ``a``)."""
    return Path(path).name.split(".")[0]


def open_slide(path: str | Path) -> Slide:
    """Open a whole slide (TIFF, OME-TIFF, SVS) lazily; other image files are read whole.

    Regions of a damaged or truncated file raise InputError when read; :meth:`Slide.check`
    reads a little of each level's ends to refuse such a file at once.
    """
    import tifffile

    path = Path(path)
    check_regular(path)  # a missing file, a pipe or a device: an InputError before anything opens it
    if path.suffix.lower() not in (".tif", ".tiff", ".svs", ".btf", ".tf8", ".ndpi"):
        image = read_image(path)
        slide = Slide.from_array(image.data, image.pixel_size, path.stem)
        slide.path = path.resolve()
        return slide
    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:
        raise InputError(f"{path.name}: cannot read this slide ({err}); is the file complete?") from err
    slide = Slide([], None, slide_name(path), [tif.close], path.resolve())
    try:
        series = tif.series[0]
        page = series.keyframe
        axes, shape = squeezed(series)
        if "Y" not in axes or "X" not in axes:
            raise InputError(f"{path.name}: no image plane (axes {axes}) in this file")
        channels = [n for a, n in zip(axes, shape, strict=True) if a in "SC"][:1]
        if channels and channels[0] not in (1, 3, 4):
            raise InputError(f"{path.name} has {channels[0]} channels; open an RGB (brightfield) slide")
        cmyk = is_cmyk(page)
        slide.pixel_size = slide_pixel_size(tif, path)
        if (
            len(series.levels) == 1
            and page.is_contiguous
            and not page.is_tiled
            and not tif.is_ome
            and axes in ("YX", "YXS")
        ):
            dtype = np.dtype(tif.byteorder + page.dtype.str[1:])
            array = _ContiguousArray(path, page.dataoffsets[0], shape, dtype)
            slide.closers.insert(0, array.close)
            slide.levels = [_Level(array, axes, path.name, cmyk)]
            return slide
        block = int(np.prod(page.chunks, dtype=np.int64)) * page.dtype.itemsize  # decoded
        if block > MAX_BLOCK_BYTES:
            raise InputError(
                f"{path.name} is stored in blocks of {block / 2**20:.0f} MB, too big to "
                "read in pieces; save it as a tiled (pyramidal) TIFF"
            )
        arrays, closers = level_arrays(series)
        slide.closers[:0] = closers
        slide.levels = [
            _Level(a, level.axes, path.name, cmyk) for a, level in zip(arrays, series.levels, strict=True)
        ]
        return slide
    except InputError:
        slide.close()
        raise
    except Exception as err:
        slide.close()
        raise InputError(
            f"{path.name}: cannot read this slide ({type(err).__name__}: {err}); the file may be damaged "
            "or incomplete: copy or export it again"
        ) from err


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
# an image bigger than this goes through the tiled engine, whatever its format: more than
# the network may see at once (io.MAX_MEGAPIXELS), so memory stays bounded by the tile
SLIDE_PIXELS = MAX_MEGAPIXELS * 1e6


def is_slide(path: str | Path) -> bool:
    """Whether a file should be segmented in tiles: a slide format, a pyramid, or an image
    (TIFF, PNG, JPEG...) of more than ``SLIDE_PIXELS``."""
    import tifffile

    path = Path(path)
    if path.suffix.lower() in SLIDE_SUFFIXES:
        return True
    try:
        if not path.is_file():  # a pipe would block; a name too long raises
            return False
        if path.suffix.lower() not in (".tif", ".tiff"):
            header = read_header(path)
            return header.height * header.width > SLIDE_PIXELS
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = squeezed(series)
            pixels = shape[axes.index("Y")] * shape[axes.index("X")] if "Y" in axes and "X" in axes else 0
            return len(series.levels) > 1 or pixels > SLIDE_PIXELS
    except Exception:  # not readable as a TIFF: the ordinary reader says why
        return False


# --- windows of whatever holds an image or labels: numpy, dask, zarr, a Slide, levels ---


def level0(array):
    """The full-resolution level of a multiscale (a list of levels, as napari holds them)."""
    return array[0] if isinstance(array, list | tuple) else array


def plane_shape(image) -> tuple[int, int]:
    """(height, width) of an image, labels or slide at full resolution."""
    return tuple(int(n) for n in level0(image).shape[:2])


def read_window(array, y0: int, x0: int, y1: int, x1: int, fill) -> np.ndarray:
    """``array[y0:y1, x0:x1]`` read from a lazy array or a Slide, ``fill`` outside it."""
    source = level0(array)
    h, w = plane_shape(source)
    cy0, cx0, cy1, cx1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
    if hasattr(source, "levels") and hasattr(source, "read"):  # a core.slide.Slide
        region = source.read(cy0, cx0, cy1, cx1) if cy1 > cy0 and cx1 > cx0 else np.zeros((0, 0, 3), np.uint8)
    else:
        region = np.asarray(source[max(cy0, 0) : max(cy1, cy0), max(cx0, 0) : max(cx1, cx0)])
    if fill is not None and (region.dtype != np.uint8 or region.ndim != 3 or region.shape[-1] != 3):
        region = _to_rgb8(region)  # an image's samples as RGB uint8, the same rule for every region
    shape = (y1 - y0, x1 - x0, *region.shape[2:])
    if region.shape[:2] == shape[:2]:
        return region
    out = np.empty(shape, region.dtype)
    out[...] = 0 if fill is None else fill
    if cy1 > cy0 and cx1 > cx0:
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = region
    return out
