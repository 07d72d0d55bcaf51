"""The field's own ruler: the diameter of its red cells, in image px.

A red cell is about 7.5 um across in every smear, whatever the lab, camera or
magnification, so a white cell's width in red-cell diameters is its size (textbook:
lymphocytes 7-10 um, neutrophils 10-12, monocytes 12-20). The cell-type classifier gets it
as its size cue; it is what tells a large monocyte from a small lymphocyte.

How (:func:`red_cell_diameter`): the stained pixels are those darker than the glass in the
green channel (Otsu's threshold), less the segmented objects; red cells' pale centres are
filled; then a granulometry: the mask is opened by discs of growing radius, and the radius
at which the most area goes (red cells touch and overlap, but one disc still fits each) is
the red cells'. The field is mirrored at its frame, so cells cut by it count whole. A field
with too little of such area (a crop of one white cell on clean glass, a pale rapid stain)
has no ruler: ``None``.
"""

from __future__ import annotations

import numpy as np

WORK_SIDE = 320  # the mask is measured at about this many px on its shorter side
MIN_DIAMETER_PX = 10.0  # smaller "red cells" are debris, or a threshold gone astray
MIN_CELLS = 3.0  # the field must hold at least this many red cells' worth of area
MIN_PEAK = 0.3  # share of that area the dominant radius (+-10%) must account for


def red_cell_diameter(image: np.ndarray, exclude: np.ndarray | None = None) -> float | None:
    """The typical red-cell diameter (image px) in ``image`` (RGB), or None when the field
    shows too few red cells to tell. ``exclude``: pixels to leave out (the segmented
    white cells and other objects)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    green = np.asarray(image)[..., 1].astype(np.float32)
    if green.ndim != 2 or min(green.shape) < 16 or np.ptp(green) < 10:
        return None
    factor = max(1.0, min(green.shape) / WORK_SIDE)
    if factor > 1:
        green = ndimage.zoom(green, 1 / factor, order=1)
    stained = green < threshold_otsu(green)
    if exclude is not None:
        keep = np.asarray(exclude) > 0
        if keep.shape != stained.shape:
            keep = ndimage.zoom(keep.astype(np.float32), np.divide(stained.shape, keep.shape), order=1) > 0.25
        stained &= ~ndimage.binary_dilation(keep, iterations=2)
    diameter = _granulometry(stained)
    if diameter is None or diameter * factor < MIN_DIAMETER_PX:
        return None
    return diameter * factor


def _granulometry(stained: np.ndarray) -> float | None:
    """The dominant disc diameter (px) of the mask ``stained``, or None (see the module doc)."""
    from scipy import ndimage

    filled = ndimage.binary_fill_holes(stained)
    holes, n = ndimage.label(filled & ~stained)
    if n:  # pale centres are filled; glass ringed by cells is not
        sizes = ndimage.sum_labels(np.ones_like(holes), holes, np.arange(1, n + 1))
        filled[np.isin(holes, 1 + np.flatnonzero(sizes > 0.01 * filled.size))] = False
    total = int(filled.sum())
    if total == 0:
        return None
    h, w = filled.shape
    pad = min(h, w) // 4
    depth = ndimage.distance_transform_edt(np.pad(filled, pad, mode="symmetric"))
    inner = (slice(pad, pad + h), slice(pad, pad + w))
    radii = np.geomspace(1.5, min(h, w) / 4, 40)
    # the opening by a disc of radius r: every pixel within r of a centre that fits the disc
    area = np.array(
        [(ndimage.distance_transform_edt(depth < r) <= r)[inner].sum() for r in radii], np.float64
    )
    spectrum = -np.diff(area) / total  # the share of the area that goes between two radii
    k = int(np.argmax(spectrum))
    near = slice(max(0, k - 1), k + 2)  # the peak and its neighbours: about +-10% in radius
    mass = float(spectrum[near].sum())
    if k < 2 or mass < MIN_PEAK:
        return None
    centres = np.sqrt(radii[:-1] * radii[1:])[near]
    radius = float(np.exp(np.sum(spectrum[near] * np.log(centres)) / mass))
    if total / (np.pi * radius * radius) < MIN_CELLS:
        return None
    return 2 * radius
