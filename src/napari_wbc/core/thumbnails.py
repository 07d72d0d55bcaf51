"""Thumbnails of cells: a crop centred on each cell, its outline and its nucleus's drawn on it.

:func:`thumbnail` / :func:`thumbnails`: a crop centred on a cell at a fixed physical scale
(``side_um``, 25 um, with a pixel size; else ``side_px``, 2x the median cell width), with
the cell's and its nucleus's outlines drawn 1 px wide; they read only a window around
each cell, so the image and labels may be lazy (zarr, dask, a :class:`.slide.Slide`). The
Cell gallery shows them, the report (:mod:`.report`) embeds them.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pandas as pd

from .dataset import NOT_WBC
from .slide import level0, plane_shape, read_window
from .verification import text

DEFAULT_SIDE_UM = 25.0  # a thumbnail's side with a known pixel size: a large monocyte (20 um) and a rim
SIDE_WIDTHS = 2.0  # ... else this many median cell widths
THUMB_SIZE = 96
CELL_COLOUR = (255, 214, 0)  # the cell's outline: amber
NUCLEUS_COLOUR = (0, 200, 255)  # its nucleus's outline: cyan
OUTSIDE = (96, 96, 96)  # beyond the image's edge
TILES_KEPT = 256  # tiles of each lazy image or labels thumbnails() keeps while it runs


def _geometry(cells, table: pd.DataFrame | None) -> tuple[dict[int, tuple[float, float]], float]:
    """Each cell's centroid (y, x) and the median white cell's width (px): from the table when
    given (slides: labels too big to read whole), else measured on the labels."""
    if table is not None:
        ids = table["label"].astype(np.int64).to_numpy()
        centres = dict(
            zip(
                ids.tolist(),
                zip(table["centroid_y"].astype(float), table["centroid_x"].astype(float), strict=True),
                strict=True,
            )
        )
        areas = table["cell_area_px"].astype(float)
        if "cell_type" in table:
            white = table["cell_type"].map(text) != NOT_WBC
            areas = areas[white] if white.any() else areas
    else:
        labels = np.asarray(level0(cells))
        if labels.ndim != 2:
            raise ValueError(f"cells must be a 2D label image, not of shape {labels.shape}")
        n = int(labels.max()) + 1 if labels.size else 1
        count, sy, sx = np.zeros(n), np.zeros(n), np.zeros(n)
        h, w = labels.shape
        step = max(1, (1 << 22) // max(w, 1))  # rows at a time: a few MB of weights, whatever the size
        for y0 in range(0, h, step):
            flat = labels[y0 : y0 + step].ravel().astype(np.intp)
            rows = flat.size // w
            count += np.bincount(flat, minlength=n)
            sy += np.bincount(flat, weights=np.repeat(np.arange(y0, y0 + rows, dtype=float), w), minlength=n)
            sx += np.bincount(flat, weights=np.tile(np.arange(w, dtype=float), rows), minlength=n)
        ids = np.flatnonzero(count[1:]) + 1
        centres = {int(i): (sy[i] / count[i], sx[i] / count[i]) for i in ids}
        areas = pd.Series(count[ids], dtype=float)
    width = float(np.median(np.sqrt(4 * areas / np.pi))) if len(areas) else 0.0
    return centres, width


def _outline(mask: np.ndarray) -> np.ndarray:
    """The mask's own pixels that touch (4-connected) a pixel outside it: a 1 px line."""
    p = np.pad(mask, 1, mode="edge")  # no line along the thumbnail's edge
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


class _Reader:
    """Windows of an image or labels: sliced directly from numpy arrays; from lazy ones
    (zarr, dask, a Slide) assembled from tiles that are each read once and kept while they
    are used (a few hundred), so cells close together do not decode a slide's tiles again."""

    def __init__(self, array, fill, keep: int = TILES_KEPT):
        self.source, self.fill, self.keep = level0(array), fill, keep
        self.shape = plane_shape(self.source)
        self.memory = isinstance(self.source, np.ndarray)
        self.side = _tile_side(self.source)
        self.tiles: OrderedDict = OrderedDict()

    def tile(self, ty: int, tx: int) -> np.ndarray:
        key = (ty, tx)
        if key in self.tiles:
            self.tiles.move_to_end(key)
            return self.tiles[key]
        t = self.side
        block = read_window(self.source, ty * t, tx * t, (ty + 1) * t, (tx + 1) * t, self.fill)
        self.tiles[key] = block
        if len(self.tiles) > self.keep:
            self.tiles.popitem(last=False)
        return block

    def read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        if self.memory:
            return read_window(self.source, y0, x0, y1, x1, self.fill)
        t = self.side
        rows = [
            np.concatenate([self.tile(ty, tx) for tx in range(x0 // t, (x1 - 1) // t + 1)], axis=1)
            for ty in range(y0 // t, (y1 - 1) // t + 1)
        ]
        whole = np.concatenate(rows, axis=0)
        return whole[y0 - (y0 // t) * t : y1 - (y0 // t) * t, x0 - (x0 // t) * t : x1 - (x0 // t) * t]


def _tile_side(source) -> int:
    """The side of the blocks a lazy array is stored in (256 when it does not say)."""
    axes = "YX"
    if hasattr(source, "levels") and hasattr(source, "read"):  # a Slide: its level 0's array
        axes, source = source.levels[0].axes, source.levels[0].array
    chunks = getattr(source, "chunksize", None) or getattr(source, "chunks", None)
    try:
        side = int(chunks[axes.index("Y")])
    except (TypeError, ValueError, IndexError):
        side = 256
    return min(max(side, 64), 2048)


def thumbnails(
    image,
    cells,
    nuclei,
    labels,
    side_um: float | None = None,
    side_px: float | None = None,
    size: int = THUMB_SIZE,
    *,
    pixel_size: float | None = None,
    table: pd.DataFrame | None = None,
) -> list[np.ndarray]:
    """``(size, size, 3)`` uint8 thumbnails of the cells ``labels``, in that order.

    Each is a square centred on the cell's centroid, ``side_um`` wide (default 25 um) when
    ``pixel_size`` (um/px) is given, else ``side_px`` image px (default 2x the median white
    cell's width), so all thumbnails share one scale; resampled with antialiasing, the cell's
    outline (amber) and its nucleus's (cyan) drawn 1 px wide; beyond the image's edge grey.
    ``image`` (H, W, 3), ``cells`` and ``nuclei`` (H, W) may be numpy arrays, lazy arrays
    (zarr, dask; a list of levels: the first) or, for the image, a :class:`.slide.Slide`;
    only a window around each cell is read. ``table`` (the measurement table: ``label``,
    ``centroid_y/x``, ``cell_area_px``) gives the cells' places and widths without reading
    the labels whole, as slides need.
    """
    from PIL import Image

    labels = [int(i) for i in labels]
    if not labels:
        return []
    if plane_shape(cells) != plane_shape(image) or plane_shape(nuclei) != plane_shape(image):
        raise ValueError(
            f"image {plane_shape(image)}, cells {plane_shape(cells)} and nuclei {plane_shape(nuclei)} "
            "differ in size"
        )
    centres, width = _geometry(cells, table)
    missing = [i for i in labels if i not in centres]
    if missing:
        raise ValueError(f"no cell {missing} in the {'table' if table is not None else 'labels'}")
    if side_px is None and pixel_size:
        side = (side_um or DEFAULT_SIDE_UM) / float(pixel_size)
    elif side_um is not None and side_px is None:
        raise ValueError("side_um needs the pixel size (pixel_size=); or give side_px")
    else:
        side = float(side_px) if side_px else SIDE_WIDTHS * max(width, 8.0)
    step = side / size
    grid = (np.arange(size) + 0.5) * step  # the thumbnail's pixel centres, from its edge
    margin = 2 + int(math.ceil(step))  # what the antialiasing filter reaches beyond the square
    windows = []  # per cell: the square's top and left (continuous), and the px window read
    for label in labels:
        cy, cx = centres[label]
        top, left = cy + 0.5 - side / 2, cx + 0.5 - side / 2  # pixel i spans [i, i + 1)
        y0, x0 = math.floor(top) - margin, math.floor(left) - margin
        windows.append((top, left, y0, x0, math.ceil(top + side) + margin, math.ceil(left + side) + margin))
    readers = [_Reader(image, OUTSIDE), _Reader(cells, None), _Reader(nuclei, None)]
    out: list = [None] * len(labels)
    for k in sorted(range(len(labels)), key=lambda k: windows[k][2:4]):  # row by row: tiles reused
        top, left, y0, x0, y1, x1 = windows[k]
        rgb, own_cells, own_nuclei = (r.read(y0, x0, y1, x1) for r in readers)
        box = (left - x0, top - y0, left - x0 + side, top - y0 + side)
        patch = Image.fromarray(np.ascontiguousarray(rgb))
        thumb = np.array(patch.resize((size, size), Image.Resampling.BILINEAR, box=box))
        # the masks sampled at the thumbnail's pixel centres
        iy = np.clip(np.floor(top + grid).astype(np.int64) - y0, 0, y1 - y0 - 1)
        ix = np.clip(np.floor(left + grid).astype(np.int64) - x0, 0, x1 - x0 - 1)
        thumb[_outline(own_cells[np.ix_(iy, ix)] == labels[k])] = CELL_COLOUR
        thumb[_outline(own_nuclei[np.ix_(iy, ix)] == labels[k])] = NUCLEUS_COLOUR
        out[k] = thumb
    return out


def thumbnail(
    image,
    cells,
    nuclei,
    label: int,
    side_um: float | None = None,
    side_px: float | None = None,
    size: int = THUMB_SIZE,
    **kwargs,
) -> np.ndarray:
    """One cell's thumbnail: :func:`thumbnails` of ``[label]``."""
    return thumbnails(image, cells, nuclei, [label], side_um, side_px, size, **kwargs)[0]
