"""Tiles over a slide, the network's pixel grid, and exact stitching of cells across tiles.

Two passes make a tiled run equal to an untiled one:

1. Classes. Each tile core's class map comes from a network window that adds ``context``
   working px (the network's receptive reach, measured for every semantic model:
   ``RECEPTIVE_REACH`` in its module) on every side, with origins on multiples of the
   network's grid (``pad_multiple``: 8 working px for MIF-Net's three stride-2 stages, 16
   for WBC-Net and WCSegNet), so it equals the whole-image class map (bit for bit on CPU
   one tile at a time; batches of tiles round differently, below 1e-6).
   Resampling between slide and working px uses the slide's global pixel grid, so it
   does not depend on where a tile starts either. The class map is stored.
2. Cells. Each tile reads the stored class map over its core plus ``halo`` and separates
   cells. A connected white-cell object belongs to the tile whose core holds its first
   pixel in raster order; that tile keeps it when the object, widened by ``margin`` px
   (what the clean-up looks at around an object: distance transform, smoothing, speckle
   removal), lies inside what it read, and otherwise reads a larger window around it.
   Every object is thus made from the same pixels as in the untiled run, exactly once
   (unless plasma wider than the window is ringed by white-cell pixels: hole filling
   then differs; a smear has no such ring).

Global ids are assigned at the end by the raster order of each cell's first pixel, so
they depend on neither tile size nor order of work.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .postprocess import DEFAULT_CELL_DIAMETER_PX, finish_margin, instances_and_objects

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 in level-0 slide px, end exclusive
# Skipping tiles (nucleus_size): a look's pixel counts as nucleus stain from 0 at a purple
# score (R + B) / 2 - G of NUCLEUS_PURPLE[0] to fully at [1], after white balance on the look's
# brightest pixels (red cells of bccd reach 33 at most, nuclei mostly 50 or more); what counts
# is summed in a square window of NUCLEUS_WINDOW typical cell widths (the lobes of one nucleus
# lie within it), and a tile is looked at when the largest sum reaches a disc MIN_NUCLEUS
# typical cell widths across (3.3 um of a 10 um cell; a platelet is 2-3 um, a nucleus 4 um or
# more). bench/tile_skip.py: every white cell of zheng_d1, zheng_d2 and bccd reaches 0.40 (in
# its field, alone on its glass, or cut by the field's edge); bccd quarters without one reach
# 0.31 (a platelet clump), but for the spilled granules of a burst cell (0.44)
NUCLEUS_PURPLE = (35.0, 55.0)
NUCLEUS_WINDOW = 0.7
MIN_NUCLEUS = 0.33
# a look has this many px across a typical white cell, or up to twice as many (pyramid levels)
LOOK_CELL_PX = 12.0
# objects wider than this many typical (10 um) white cells are not white cells: not followed
MAX_OBJECT_CELLS = 20


@dataclass(frozen=True)
class TileGrid:
    """Tile cores of ``tile`` px over a slide of ``shape``, each read with ``halo`` px around."""

    shape: tuple[int, int]
    tile: tuple[int, int]
    halo: int

    @property
    def rows(self) -> int:
        return -(-self.shape[0] // self.tile[0])

    @property
    def cols(self) -> int:
        return -(-self.shape[1] // self.tile[1])

    def __len__(self) -> int:
        return self.rows * self.cols

    def core(self, index: int) -> Box:
        r, c = divmod(index, self.cols)
        ty, tx = self.tile
        return r * ty, c * tx, min(self.shape[0], (r + 1) * ty), min(self.shape[1], (c + 1) * tx)

    def index(self, y: int, x: int) -> int:
        """The tile whose core holds slide pixel (y, x)."""
        return (y // self.tile[0]) * self.cols + x // self.tile[1]

    def expand(self, box: Box, by: int) -> Box:
        return (
            max(0, box[0] - by),
            max(0, box[1] - by),
            min(self.shape[0], box[2] + by),
            min(self.shape[1], box[3] + by),
        )


@dataclass(frozen=True)
class WorkGrid:
    """The network's pixel grid over the whole slide: working px j <-> slide px (j + 0.5) / scale - 0.5."""

    shape: tuple[int, int]
    scale: float
    context: int = 32
    align: int = 8  # the network's grid (models.pad_multiple): windows start on its multiples

    @property
    def identity(self) -> bool:
        return abs(self.scale - 1.0) <= 1e-3  # as core.inference: no resampling

    @property
    def work_shape(self) -> tuple[int, int]:
        if self.identity:
            return self.shape
        return tuple(max(8, round(n * self.scale)) for n in self.shape)

    def _blur(self) -> tuple[float, int]:
        """Anti-aliasing sigma (slide px) when shrinking, and the margin it needs."""
        if self.identity or self.scale >= 1:
            return 0.0, 0
        sigma = (1 / self.scale - 1) / 2
        return sigma, int(4 * sigma + 0.5) + 1

    def window(self, box: Box) -> Box:
        """Working-px window whose network output covers ``box`` exactly (on the network's grid,
        with context)."""
        (h, w), s = self.work_shape, 1.0 if self.identity else self.scale
        out = []
        for lo, hi, n in ((box[0], box[2], h), (box[1], box[3], w)):
            a = min(n - 1, max(0, math.floor((lo + 0.5) * s - 0.5)))
            b = min(n - 1, max(0, math.floor((hi - 0.5) * s - 0.5)) + 1)
            m = self.align
            out.append((max(0, (a - self.context) // m * m), min(n, -(-(b + 1 + self.context) // m) * m)))
        return out[0][0], out[1][0], out[0][1], out[1][1]

    def source(self, window: Box) -> Box:
        """Slide-px box to read for resampling ``window`` to working px."""
        if self.identity:
            return window
        _, pad = self._blur()
        out = []
        for lo, hi, n in ((window[0], window[2], self.shape[0]), (window[1], window[3], self.shape[1])):
            a = math.floor((lo + 0.5) / self.scale - 0.5)
            b = math.floor((hi - 0.5) / self.scale - 0.5) + 2
            out.append((max(0, a - pad), min(n, b + pad)))
        return out[0][0], out[1][0], out[0][1], out[1][1]

    def to_work(self, image: np.ndarray, source: Box, window: Box) -> np.ndarray:
        """The working-px image over ``window`` from the slide region ``image`` read at ``source``."""
        if self.identity:
            return image
        from scipy.ndimage import gaussian_filter

        sigma, _ = self._blur()
        a = image.astype(np.float32)
        if sigma:
            a = gaussian_filter(a, (sigma, sigma, 0), mode="reflect", truncate=4.0)
        for axis in (0, 1):
            pos = (np.arange(window[axis], window[axis + 2]) + 0.5) / self.scale - 0.5
            a = _lerp(a, pos, self.shape[axis], source[axis], axis)
        return a

    def to_slide(self, prob: np.ndarray, window: Box, box: Box) -> np.ndarray:
        """(C, ...) working-px probabilities over ``window`` -> uint8 argmax over slide ``box``."""
        if not self.identity:
            for axis in (0, 1):
                pos = (np.arange(box[axis], box[axis + 2]) + 0.5) * self.scale - 0.5
                prob = _lerp(prob, pos, self.work_shape[axis], window[axis], axis + 1)
            return prob.argmax(0).astype(np.uint8)
        y, x = box[0] - window[0], box[1] - window[1]
        return prob[:, y : y + box[2] - box[0], x : x + box[3] - box[1]].argmax(0).astype(np.uint8)


def _lerp(a: np.ndarray, pos: np.ndarray, n: int, origin: int, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` (whose index 0 is global index ``origin``) at global ``pos``."""
    pos = np.clip(pos, 0, n - 1)
    i0 = np.minimum(np.floor(pos).astype(np.int64), max(0, n - 2))
    t = (pos - i0).astype(np.float32)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * a.ndim
    shape[axis] = -1
    t = t.reshape(shape)
    lo, hi = np.take(a, i0 - origin, axis=axis), np.take(a, i1 - origin, axis=axis)
    return lo * (np.float32(1) - t) + hi * t


def network_context(spec) -> int:
    """Working px of context around a tile (the network's receptive reach: ``spec.context``)."""
    if spec.context is None:
        raise ValueError(f"{spec.name} is not a semantic network: it has no receptive reach to tile by")
    return spec.context


def nucleus_size(look: np.ndarray, cell_px: float) -> float:
    """How large the most nucleus-like purple of a low-resolution RGB look is: the equivalent
    diameter, in typical white-cell widths (``cell_px`` look px), of the nucleus stain summed
    in the window of ``NUCLEUS_WINDOW`` cell widths that holds most of it. A white cell's
    nucleus (lobes together) reaches ``MIN_NUCLEUS``; a platelet, a clump of them or pink red
    cells stay below. 0 for a black look (outside the scan)."""
    a = look[..., :3].reshape(-1, 3).astype(np.float32)
    if a.size == 0:
        return 0.0
    k = max(1, len(a) // 50)  # white balance on the brightest 2% (glass or plasma)
    white = a[np.argpartition(a.sum(1), -k)[-k:]].mean(0)
    if white.max() < 60:
        return 0.0
    a = np.minimum(a * (255 / np.maximum(white, 1)), 255)
    purple = (a[:, 0] + a[:, 2]) / 2 - a[:, 1]
    lo, hi = NUCLEUS_PURPLE
    stain = np.clip((purple - lo) / (hi - lo), 0, 1).reshape(look.shape[:2])
    side = max(1, round(NUCLEUS_WINDOW * cell_px))
    mass = float(ndimage.uniform_filter(stain, side, mode="constant").max()) * side * side
    return math.sqrt(4 * mass / math.pi) / cell_px


@dataclass
class TileCells:
    """The cells a tile owns: local ids 1..n in ``cells``/``nuclei`` placed at ``origin``."""

    origin: tuple[int, int] = (0, 0)
    cells: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint32))
    nuclei: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint32))
    first: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # per cell, slide px
    bbox: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))  # per cell, slide px


def _objects(classes: np.ndarray, cell_diameter: float | None):
    """Cells, nuclei and the hole-filled objects they come from (object-local, one pass)."""
    return instances_and_objects(classes, cell_diameter=cell_diameter)


def _first_pixel(mask: np.ndarray) -> tuple[int, int]:
    row = int(np.argmax(mask.any(1)))
    return row, int(np.argmax(mask[row]))


def _inside(obj: Box, crop: Box, shape: tuple[int, int], margin: int) -> bool:
    """Whether ``obj`` widened by ``margin`` lies in ``crop``; the slide's own edges are no limit."""
    return (
        (crop[0] == 0 or obj[0] - crop[0] >= margin)
        and (crop[1] == 0 or obj[1] - crop[1] >= margin)
        and (crop[2] == shape[0] or crop[2] - obj[2] >= margin)
        and (crop[3] == shape[1] or crop[3] - obj[3] >= margin)
    )


def cells_in_tile(
    read_classes: Callable[[Box], np.ndarray],
    grid: TileGrid,
    index: int,
    cell_diameter: float | None = None,
    margin: int | None = None,
    max_object: int | None = None,
) -> TileCells:
    """Separate the cells of the objects that tile ``index`` owns, exactly as in the whole slide.

    ``read_classes(box)`` returns the stored 0/1/2 class map over a slide box. Objects wider
    than ``max_object`` px (default 20 typical white cells, 200 um: not white cells) are
    left out, with a warning, where the untiled run would keep them.
    """
    margin = finish_margin(cell_diameter) if margin is None else margin
    max_object = max_object or int(MAX_OBJECT_CELLS * (cell_diameter or DEFAULT_CELL_DIAMETER_PX))
    core = grid.core(index)
    found: dict[tuple[int, int], tuple] = {}  # first pixel -> (crop, cells, nuclei, objects, slice, k)

    def owned(y: int, x: int) -> bool:
        return core[0] <= y < core[2] and core[1] <= x < core[3]

    crop = grid.expand(core, grid.halo)
    cells, nuclei, objects = _objects(read_classes(crop), cell_diameter)
    pending = []
    for k, sl in enumerate(ndimage.find_objects(objects), start=1):
        mask = objects[sl] == k
        fy, fx = _first_pixel(mask)
        first = (crop[0] + sl[0].start + fy, crop[1] + sl[1].start + fx)
        if not owned(*first):
            continue
        obj = (crop[0] + sl[0].start, crop[1] + sl[1].start, crop[0] + sl[0].stop, crop[1] + sl[1].stop)
        if _inside(obj, crop, grid.shape, margin):
            found[first] = (crop, cells, nuclei, objects, sl, k)
        else:
            pending.append((first, obj))
    for first, obj in pending:  # objects reaching past the halo: read around them until whole
        while first not in found:
            if max(obj[2] - obj[0], obj[3] - obj[1]) > max_object:
                log.warning(
                    "left out an object of %dx%d px at %s: too big for a white cell",
                    obj[3] - obj[1],
                    obj[2] - obj[0],
                    first,
                )
                break
            big = grid.expand(obj, grid.halo + margin)
            c2, n2, o2 = _objects(read_classes(big), cell_diameter)
            k = o2[first[0] - big[0], first[1] - big[1]]
            sl = ndimage.find_objects(o2)[k - 1]
            fy, fx = _first_pixel(o2[sl] == k)
            first2 = (big[0] + sl[0].start + fy, big[1] + sl[1].start + fx)
            obj = (big[0] + sl[0].start, big[1] + sl[1].start, big[0] + sl[0].stop, big[1] + sl[1].stop)
            if not owned(*first2) or first2 in found:
                break  # another tile owns it, or another piece of it was already done here
            if _inside(obj, big, grid.shape, margin):
                found[first2] = (big, c2, n2, o2, sl, k)
                break
    return _collect(found)


def _collect(found) -> TileCells:
    """Local labels for the cells of the owned objects, in one crop around all of them."""
    pieces = []
    for crop, cells, nuclei, objects, osl, k in found.values():
        local = np.where(objects[osl] == k, cells[osl], 0)
        for cid, sl in enumerate(ndimage.find_objects(local), start=1):
            if sl is None:
                continue
            m = local[sl] == cid
            fy, fx = _first_pixel(m)
            y0, x0 = crop[0] + osl[0].start + sl[0].start, crop[1] + osl[1].start + sl[1].start
            pieces.append(
                ((y0 + fy, x0 + fx), (y0, x0, y0 + m.shape[0], x0 + m.shape[1]), m, nuclei[osl][sl] == cid)
            )
    if not pieces:
        return TileCells()
    pieces.sort(key=lambda p: p[0])
    boxes = np.array([p[1] for p in pieces], np.int64)
    y0, x0 = boxes[:, 0].min(), boxes[:, 1].min()
    shape = (boxes[:, 2].max() - y0, boxes[:, 3].max() - x0)
    cells, nuclei = np.zeros(shape, np.uint32), np.zeros(shape, np.uint32)
    for i, (_, b, m, n) in enumerate(pieces, start=1):
        sl = (slice(b[0] - y0, b[2] - y0), slice(b[1] - x0, b[3] - x0))
        cells[sl][m] = i
        nuclei[sl][n] = i
    first = np.array([p[0] for p in pieces], np.int64)
    return TileCells((int(y0), int(x0)), cells, nuclei, first, boxes)


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel by the raster order of each object's first pixel (the slide engine's id rule):
    two label images of the same objects become equal whatever ids they had."""
    flat = labels.ravel()
    nz = np.flatnonzero(flat)
    ids, first = np.unique(flat[nz], return_index=True)
    lut = np.zeros(int(labels.max()) + 1, np.uint32)
    lut[ids[np.argsort(nz[first])]] = np.arange(1, len(ids) + 1)
    return lut[labels]
