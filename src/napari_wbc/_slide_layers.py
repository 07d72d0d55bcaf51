"""Whole slides and their label pyramids as lazy multiscale napari layer data.

Every level is a dask array whose chunks are read from the file when napari shows them
(tifffile's zarr view of tiled, striped and SVS files; direct reads of uncompressed
TIFF), so a slide is never read whole: napari reads the part of the level it draws. RGB
slides come through :func:`napari_wbc.core.slide.open_slide`, so the layer shows the
same uint8 pixels the tiled segmentation reads. When the coarsest stored level is still
large (a plain TIFF without a pyramid, or a shallow pyramid) lazy strided views of it
are added, down to ``COARSEST`` px a side: napari's whole-slide view and thumbnail then
read every n-th row and column of that level, never all of it at full resolution.

This module imports neither napari nor Qt (dask is imported when a slide is opened).
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np

# the coarsest level a layer gets: napari reads it whole (thumbnail, the whole-slide view)
COARSEST = 1024
CHUNK = 512  # dask chunk side (px) of the levels napari reads
LABEL_SUFFIXES = (".tif", ".tiff")

Read = Callable[[int, int, int, int, int], np.ndarray]  # (y0, x0, y1, x1, step) -> block


class RegionArray:
    """A read-only (h, w[, c]) array: every ``step``-th pixel of a level of ``source`` (h, w).

    Blocks come from ``read(y0, x0, y1, x1, step)`` in the level's own coordinates; indexing
    with slices or integers on the first two axes reads just that block (what dask asks
    for, chunk by chunk).
    """

    def __init__(self, source: tuple[int, int], extra: tuple[int, ...], dtype, read: Read, step: int = 1):
        self.source = (int(source[0]), int(source[1]))
        self.shape = (-(-self.source[0] // step), -(-self.source[1] // step)) + tuple(extra)
        self.dtype, self.ndim = np.dtype(dtype), 2 + len(extra)
        self._read, self._step = read, step

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __getitem__(self, index):
        if not isinstance(index, tuple):
            index = (index,)
        if any(i is Ellipsis for i in index):
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (self.ndim - len(index) + 1) + index[at + 1 :]
        index = index + (slice(None),) * (self.ndim - len(index))
        bounds, after, drop = [], [], []
        for axis, i in enumerate(index[:2]):
            n = self.shape[axis]
            if isinstance(i, slice):
                start, stop, step = i.indices(n)
                if step < 0:  # never from dask or napari: read forwards, then flip
                    start, stop = stop + 1, start + 1
                bounds.append((start, max(start, stop)))
                after.append(slice(None, None, step))
            else:
                i = int(i) + n if int(i) < 0 else int(i)
                if not 0 <= i < n:
                    raise IndexError(f"index {i} out of range for axis {axis} of size {n}")
                bounds.append((i, i + 1))
                after.append(slice(None))
                drop.append(axis)
        (y0, y1), (x0, x1) = bounds
        f, (h, w) = self._step, self.source
        if y0 == y1 or x0 == x1:
            block = np.zeros((y1 - y0, x1 - x0) + self.shape[2:], self.dtype)
        else:
            block = self._read(y0 * f, x0 * f, min(y1 * f, h), min(x1 * f, w), f)
        block = block[tuple(after) + tuple(index[2:])]
        for axis in reversed(drop):
            block = np.take(block, 0, axis=axis)
        return block

    def __array__(self, dtype=None, copy=None):
        block = self[:, :]
        return block if dtype is None else block.astype(dtype)


def _levels(
    sources: list[tuple[tuple[int, int], Read]],
    extra: tuple[int, ...],
    dtype,
    token: str,
    coarsest: int = COARSEST,
) -> list:
    """Dask arrays for the stored levels, then strided views of the last down to ``coarsest``."""
    import dask.array as da

    arrays = [RegionArray(shape, extra, dtype, read) for shape, read in sources]
    last_shape, last_read = sources[-1]
    step = 2
    while max(arrays[-1].shape[:2]) > coarsest:
        arrays.append(RegionArray(last_shape, extra, dtype, last_read, step))
        step *= 2
    levels = []
    for k, array in enumerate(arrays):
        chunks = (min(CHUNK, array.shape[0]), min(CHUNK, array.shape[1])) + extra
        levels.append(
            da.from_array(
                array,
                chunks=chunks,
                name=f"napari-wbc-{token}-{k}",
                lock=False,
                asarray=True,
                meta=np.empty((0,) * array.ndim, dtype),
            )
        )
    return levels


def _token(path: Path, kind: str) -> str:
    """A name for the dask graph that changes when the file does (napari caches chunks by it)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{kind}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _close_all(closers: list) -> None:
    for close in closers:
        try:
            close()
        except Exception:  # already closed, or the interpreter is going away
            pass


def slide_levels(path: str | Path):
    """``(levels, slide)``: RGB uint8 dask levels (h, w, 3) of a slide, and the opened Slide.

    The files stay open while the levels are in use and close when they are collected. A
    damaged or truncated file raises InputError here, not when napari first draws it.
    """
    from .core.slide import open_slide

    path = Path(path)
    slide = open_slide(path)
    try:
        slide.check()
    except Exception:
        slide.close()
        raise
    weakref.finalize(slide, _close_all, list(slide.closers))

    def reader(k: int):
        def read(y0, x0, y1, x1, step):  # holds the slide, so its files stay open while read
            return slide.levels[k].read(y0, x0, y1, x1, step)

        return read

    sources = [(level.shape, reader(k)) for k, level in enumerate(slide.levels)]
    return _levels(sources, (3,), np.uint8, _token(path, "rgb")), slide


def label_pyramid_info(path: str | Path) -> tuple[bool, float | None]:
    """(whether ``path`` is a label image stored as a 2D integer pyramid, its pixel size)."""
    import tifffile

    from .core.io import squeezed
    from .core.slide import slide_pixel_size

    path = Path(path)
    if path.suffix.lower() not in LABEL_SUFFIXES or not path.is_file():
        return False, None
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            dtype = np.dtype(series.dtype)
            ok = (
                squeezed(series)[0] == "YX"
                and dtype.kind in "iu"
                and dtype.itemsize >= 4
                and len(series.levels) > 1
            )
            return ok, (slide_pixel_size(tif, path) if ok else None)
    except Exception:
        return False, None


def label_levels(path: str | Path) -> list:
    """Lazy integer dask levels of a pyramidal label TIFF (``*_cells.tif``, ``*_nuclei.tif``).

    Raises InputError for a file that is not a 2D label image, or is damaged or truncated.
    """
    import tifffile

    from .core.io import InputError, squeezed
    from .core.slide import _Level, check_levels, level_arrays

    path = Path(path)
    tif = tifffile.TiffFile(path)
    closers = [tif.close]
    try:
        series = tif.series[0]
        axes = squeezed(series)[0]
        if axes != "YX":
            raise InputError(f"{path.name}: not a 2D label image (axes {axes})")
        arrays, level_closers = level_arrays(series)
        closers[:0] = level_closers
        levels = [_Level(a, level.axes, path.name) for a, level in zip(arrays, series.levels, strict=True)]
        check_levels(levels)
    except Exception:
        _close_all(closers)
        raise
    files = _OpenFiles(closers)

    def reader(level):
        def read(y0, x0, y1, x1, step):  # holds `files`, so they stay open while read
            files.used = True
            return level.read_raw(y0, x0, y1, x1, step)

        return read

    sources = [(level.shape, reader(level)) for level in levels]
    return _levels(sources, (), np.dtype(series.dtype), _token(path, "labels"))


class _OpenFiles:
    """Open files of lazy arrays: closed when the last array that reads them is collected."""

    def __init__(self, closers: list):
        self.used = False
        weakref.finalize(self, _close_all, closers)
