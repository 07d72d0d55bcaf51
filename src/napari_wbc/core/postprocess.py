"""Class map -> white-cell instances and their nuclei (nucleus label = owning cell id).

Touching cells are split by a marker watershed on the distance transform of the white
cell mask: a cell is a basin whose peak stands out by more than a fifth of a cell radius
(an h-maximum). Objects with (almost) no nucleus are dropped: every white cell has one,
while stain debris, platelets and the edges of red cells that a network may call
cytoplasm do not.

Every step is object-local: white cells cover well under 1% of a smear, so the work
follows their area, not the image's. The foreground is labelled once, only in the
``BLOCK`` px blocks that hold any; hole filling, the smoothed distance transform, the
split, the nucleus clean-up and the keep/drop rules then run on a crop around each
connected object, and give the same labels and ids, bit for bit, as the same operations
over the whole image (``tests/postprocess_reference.py``):

- a hole (background not 4-connected to the image border, as ``binary_fill_holes`` has
  it) is enclosed by one 8-connected object, so each object's holes are filled in its own
  box; an object nested in another's hole joins it, as it does over the whole image;
- the distance transform's nearest background lies within 1 px of an object's box, the
  smoothing (a Gaussian of sigma 1, truncated at 4 sigma) reaches ``SMOOTH_RADIUS`` px
  into the neighbours, and their nearest background lies within ``SMOOTH_RADIUS * sqrt 2``
  px more (there is background on the way from them to the object): ``FIELD_MARGIN`` px
  around the box (at the image edge a crop reaches the edge, so the Gaussian reflects the
  same pixels);
- nucleus pinholes and specks are at most ``speck`` px; the clean-up on a crop tells where
  it could differ from the whole image's (a speck or pinhole cut by the crop's side) and
  then widens the crop.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

# A white cell is 7-20 um across (small lymphocyte to monocyte), a platelet 2-3 um: a blob
# narrower than MIN_DIAMETER_FRACTION of a typical 10 um cell is not a white cell.
MIN_DIAMETER_FRACTION = 0.45
# Without a pixel size the image is taken to be at the network's working scale, where a
# typical white cell is ~100 px across (0.1 um/px).
DEFAULT_CELL_DIAMETER_PX = 100.0
MIN_NUCLEUS_FRACTION = 0.02
# nucleus pinholes and specks below this fraction of a typical cell's area are speckle
SPECK_FRACTION = 0.01
# the distance transform is smoothed by a Gaussian of this sigma (px), truncated at 4 sigma
SMOOTH_SIGMA = 1.0
SMOOTH_RADIUS = int(4.0 * SMOOTH_SIGMA + 0.5)
# px around an object's box that its smoothed distance transform depends on (see above)
FIELD_MARGIN = SMOOTH_RADIUS + int(SMOOTH_RADIUS * math.sqrt(2))
# objects are looked for in groups of blocks of this many px a side that hold foreground
BLOCK = 64

Box = tuple[slice, slice]


def typical_cell_area(cell_diameter: float | None) -> float:
    return np.pi * ((cell_diameter or DEFAULT_CELL_DIAMETER_PX) / 2) ** 2


def speck_size(cell_diameter: float | None) -> int:
    """Largest nucleus pinhole or speck (px) that the clean-up removes."""
    return max(4, int(SPECK_FRACTION * typical_cell_area(cell_diameter)))


def finish_margin(cell_diameter: float | None) -> int:
    """Px around an object that the clean-up in ``instances_from_classes`` looks at.

    The smoothed distance transform reads ``FIELD_MARGIN`` (9) px around an object; a
    nucleus speck or pinhole is at most ``speck`` px, so a region that reaches further is
    large in both a crop and the whole image. (``core.tiling`` reads this much around an
    object; the object-local clean-up here checks its crops itself.)
    """
    return max(12, speck_size(cell_diameter) + 4)


def _grow(box: Box, by: int, shape: tuple[int, ...]) -> Box:
    return tuple(slice(max(0, s.start - by), min(n, s.stop + by)) for s, n in zip(box, shape, strict=True))


def _within(box: Box, crop: Box) -> Box:
    """``box`` in the coordinates of ``crop``."""
    return tuple(slice(s.start - c.start, s.stop - c.start) for s, c in zip(box, crop, strict=True))


def _smoothed_distance(mask: np.ndarray, box: Box) -> np.ndarray:
    """The smoothed distance transform of ``mask`` over ``box``: equal, on the object whose
    bounding box it is, to that of the whole image."""
    crop = _grow(box, FIELD_MARGIN, mask.shape)
    dist = ndimage.distance_transform_edt(mask[crop])
    return ndimage.gaussian_filter(dist, SMOOTH_SIGMA)[_within(box, crop)]


def _split(d: np.ndarray, comp: np.ndarray, radius: float | None) -> tuple[np.ndarray, int]:
    """(basins 1..k over ``comp``, k) from the smoothed distance ``d`` (0 off ``comp``)."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    r = radius or float(d.max())
    peaks = h_maxima(d, max(2.0, 0.2 * r)) & comp & (d >= 0.5 * d.max())
    markers, k = ndimage.label(peaks)
    if k <= 1:
        return comp.astype(np.int32), 1
    return watershed(-d, markers, mask=comp), k


def split_touching(mask: np.ndarray, radius: float | None) -> np.ndarray:
    """Instances of a binary mask, touching cells apart: a marker watershed on the distance
    transform with h-maxima of a fifth of ``radius`` (or of each blob's own largest
    inscribed radius when None) as markers."""
    mask = np.asarray(mask)
    components, _ = ndimage.label(mask)
    out = np.zeros(mask.shape, np.uint32)
    next_id = 1
    for i, box in enumerate(ndimage.find_objects(components), start=1):
        comp = components[box] == i
        basins, k = _split(np.where(comp, _smoothed_distance(mask, box), 0), comp, radius)
        out[box][comp] = basins[comp] + (next_id - 1)
        next_id += k
    return out


def _first(mask: np.ndarray, box: Box, width: int) -> int:
    """Raster index in the image of the first pixel of ``mask`` (which covers ``box``)."""
    y, x = divmod(int(np.argmax(mask)), mask.shape[1])
    return (box[0].start + y) * width + box[1].start + x


def _offset(box: Box, origin: Box) -> Box:
    """``box`` in the coordinates of ``origin``'s array -> in the image's."""
    return tuple(slice(o.start + s.start, o.start + s.stop) for s, o in zip(box, origin, strict=True))


def _clusters(fg: np.ndarray):
    """(box, mask) of each 8-connected group of ``BLOCK`` px blocks holding foreground: an
    8-connected object lies in one group, and more than a block from the others' pixels."""
    h, w = fg.shape
    if h == 0 or w == 0:
        return
    rows = np.stack([fg[y : y + BLOCK].any(axis=0) for y in range(0, h, BLOCK)])
    wb = -(-w // BLOCK)
    rows = np.pad(rows, ((0, 0), (0, wb * BLOCK - w)))
    occupied = rows.reshape(len(rows), wb, BLOCK).any(axis=2)
    groups, _ = ndimage.label(occupied, structure=np.ones((3, 3), bool))
    for g, gbox in enumerate(ndimage.find_objects(groups), start=1):
        box = tuple(
            slice(s.start * BLOCK, min(n, s.stop * BLOCK)) for s, n in zip(gbox, fg.shape, strict=True)
        )
        own = np.repeat(np.repeat(groups[gbox] == g, BLOCK, 0), BLOCK, 1)
        yield box, own[: box[0].stop - box[0].start, : box[1].stop - box[1].start]


def filled_objects(fg: np.ndarray) -> list[tuple[Box, np.ndarray]]:
    """The connected (4-) components of ``binary_fill_holes(fg)``, each as (box, mask), in
    ``ndimage.label``'s order (raster order of their first pixels); fills ``fg`` in place.

    A hole is enclosed by one 8-connected component of ``fg``: each is filled on its own
    box, and a component in another's hole is then part of that one. Components are
    labelled only in the groups of blocks that hold foreground.
    """
    width = fg.shape[1]
    found = []
    for cluster, own in _clusters(fg):
        eight, n = ndimage.label(fg[cluster] & own, structure=np.ones((3, 3), bool))
        boxes = ndimage.find_objects(eight)
        nested = np.zeros(n + 1, bool)
        fills: dict[int, np.ndarray] = {}
        for e, box in enumerate(boxes, start=1):
            if box[0].stop - box[0].start < 3 or box[1].stop - box[1].start < 3:
                continue  # no room for a hole
            mask = eight[box] == e
            filled = ndimage.binary_fill_holes(mask)
            inside = filled & ~mask
            if inside.any():
                nested[eight[box][inside]] = True
                fg[_offset(box, cluster)] |= filled
                fills[e] = filled
        for e, box in enumerate(boxes, start=1):
            if nested[e]:
                continue
            region = fills[e] if e in fills else eight[box] == e
            box = _offset(box, cluster)
            parts, k = ndimage.label(region)
            if k == 1:
                found.append((_first(region, box, width), box, region))
                continue
            for j, sub in enumerate(ndimage.find_objects(parts), start=1):
                part = parts[sub] == j
                sub = _offset(sub, box)
                found.append((_first(part, sub, width), sub, part))
    found.sort(key=lambda f: f[0])
    return [(box, mask) for _, box, mask in found]


def clean_nucleus(classes: np.ndarray, box: Box, comp: np.ndarray, speck: int) -> np.ndarray:
    """The nucleus mask over ``box`` after the clean-up of the whole image (pinholes, then
    specks of at most ``speck`` px filled and removed, 4-connected, as
    ``remove_small_holes`` and ``remove_small_objects``), exact on the pixels of ``comp``.

    It is worked out on a crop around ``box``. Where a crop side lies inside the image, a
    region cut by it may be larger outside: such a region of up to ``speck`` px is in doubt,
    and so is a nucleus region of up to ``speck`` px that touches it or the side. When
    ``comp`` meets one, the crop doubles.
    """
    shape = classes.shape
    margin = FIELD_MARGIN
    while True:
        crop = _grow(box, margin, shape)
        inner = _within(box, crop)
        nucleus = classes[crop] == 2
        side = np.zeros(nucleus.shape, bool)  # crop sides inside the image
        side[0] |= crop[0].start > 0
        side[-1] |= crop[0].stop < shape[0]
        side[:, 0] |= crop[1].start > 0
        side[:, -1] |= crop[1].stop < shape[1]
        holes, _ = ndimage.label(~nucleus)
        small = np.bincount(holes.ravel()) <= speck
        small[0] = False
        cut = np.zeros_like(small)
        cut[holes[side]] = True
        filled = nucleus | (small & ~cut)[holes]
        parts, _ = ndimage.label(filled)
        big = np.bincount(parts.ravel()) > speck
        doubt = (small & cut)[holes]
        if side.any():
            touched = np.zeros_like(big)
            touched[parts[side]] = True
            if doubt.any():
                touched[parts[ndimage.binary_dilation(doubt)]] = True
            touched &= ~big
            touched[0] = False
            if doubt[inner][comp].any() or touched[parts[inner][comp]].any():
                margin *= 2
                continue
        return (filled & big[parts])[inner]


def instances_and_objects(
    classes: np.ndarray, cell_diameter: float | None = None, objects: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(cells, nuclei) as :func:`instances_from_classes`, and the objects they come from:
    int32 labels of the hole-filled white-cell mask's connected components, as
    ``ndimage.label(ndimage.binary_fill_holes(classes > 0))`` (None unless ``objects``)."""
    classes = np.asarray(classes)
    fg = classes > 0
    min_area = MIN_DIAMETER_FRACTION**2 * typical_cell_area(cell_diameter)
    radius = None if cell_diameter is None else cell_diameter / 2
    speck = speck_size(cell_diameter)
    cells = np.zeros(classes.shape, np.uint32)
    nuclei = np.zeros(classes.shape, np.uint32)
    labels = np.zeros(classes.shape, np.int32) if objects else None
    next_id = 1
    for i, (box, comp) in enumerate(filled_objects(fg), start=1):
        if labels is not None:
            labels[box][comp] = i
        if np.count_nonzero(comp) < min_area:
            continue  # so is each of its cells
        basins, k = _split(np.where(comp, _smoothed_distance(fg, box), 0), comp, radius)
        nucleus = clean_nucleus(classes, box, comp, speck)
        for j in range(1, k + 1):
            cell = basins == j
            if np.count_nonzero(cell) >= min_area and nucleus[cell].mean() >= MIN_NUCLEUS_FRACTION:
                cells[box][cell] = next_id
                nuclei[box][cell & nucleus] = next_id
                next_id += 1
    return cells, nuclei, labels


def instances_from_classes(
    classes: np.ndarray, cell_diameter: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(cells, nuclei) uint32 instance maps from a 0/1/2 class map.

    ``cell_diameter`` is the expected diameter of a typical (10 um) white cell in px, known
    from the pixel size. Without it the minimum size assumes the network's working scale,
    and the split of touching cells adapts to each object. Ids follow the raster order of
    each object's first pixel, then the order of its basins.
    """
    cells, nuclei, _ = instances_and_objects(classes, cell_diameter, objects=False)
    return cells, nuclei


def centre_cell(cells: np.ndarray) -> int:
    """Id of the white cell of a single-cell crop (CellaVision style, or the Zheng sets):
    the one under the image centre, else the one that comes nearest it; 0 if none."""
    ys, xs = np.nonzero(cells)
    if ys.size == 0:
        return 0
    h, w = cells.shape
    k = np.argmin((ys - (h - 1) / 2) ** 2 + (xs - (w - 1) / 2) ** 2)
    return int(cells[ys[k], xs[k]])
