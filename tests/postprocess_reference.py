"""Today's whole-image post-processing, verbatim from core/postprocess.py before it became
object-local (issue #13): the reference that tests and bench/postprocess.py compare with."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_wbc.core.postprocess import (
    DEFAULT_CELL_DIAMETER_PX,
    MIN_DIAMETER_FRACTION,
    MIN_NUCLEUS_FRACTION,
    SPECK_FRACTION,
)


def split_touching(mask: np.ndarray, radius: float | None) -> np.ndarray:
    """Instances of a binary mask, touching cells apart: a marker watershed on the distance
    transform with h-maxima of a fifth of ``radius`` (or of each blob's own largest
    inscribed radius when None) as markers."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    components, n = ndimage.label(mask)
    if n == 0:
        return components.astype(np.uint32)
    dist = ndimage.distance_transform_edt(mask)
    dist = ndimage.gaussian_filter(dist, 1.0)
    out = np.zeros(mask.shape, np.uint32)
    next_id = 1
    for i, sl in enumerate(ndimage.find_objects(components), start=1):
        comp = components[sl] == i
        d = np.where(comp, dist[sl], 0)
        r = radius or float(d.max())
        peaks = h_maxima(d, max(2.0, 0.2 * r)) & comp & (d >= 0.5 * d.max())
        markers, k = ndimage.label(peaks)
        if k <= 1:
            out[sl][comp] = next_id
            next_id += 1
            continue
        ws = watershed(-d, markers, mask=comp)
        out[sl][comp] = ws[comp] + (next_id - 1)
        next_id += k
    return out


def instances_from_classes(
    classes: np.ndarray, cell_diameter: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(cells, nuclei) uint32 instance maps from a 0/1/2 class map.

    ``cell_diameter`` is the expected diameter of a typical (10 um) white cell in px, known
    from the pixel size. Without it the minimum size assumes the network's working scale,
    and the split of touching cells adapts to each object.
    """
    from skimage.measure import regionprops
    from skimage.morphology import remove_small_holes, remove_small_objects
    from skimage.segmentation import relabel_sequential

    classes = np.asarray(classes)
    fg = ndimage.binary_fill_holes(classes > 0)
    typical_area = np.pi * ((cell_diameter or DEFAULT_CELL_DIAMETER_PX) / 2) ** 2
    min_area = MIN_DIAMETER_FRACTION**2 * typical_area
    cells = split_touching(fg, None if cell_diameter is None else cell_diameter / 2)
    # speckle: pinholes in a nucleus are nucleus, specks of "nucleus" in cytoplasm are not
    speck = max(4, int(SPECK_FRACTION * typical_area))
    nucleus = remove_small_holes(classes == 2, max_size=speck)
    nucleus = remove_small_objects(nucleus, max_size=speck)
    keep = np.zeros(int(cells.max()) + 1, bool)
    for region in regionprops(cells):
        rr, cc = region.coords[:, 0], region.coords[:, 1]
        has_nucleus = nucleus[rr, cc].mean() >= MIN_NUCLEUS_FRACTION
        keep[region.label] = region.area >= min_area and has_nucleus
    cells = np.where(keep[cells], cells, 0)
    cells = relabel_sequential(cells)[0].astype(np.uint32)
    nuclei = np.where(nucleus & (cells > 0), cells, 0).astype(np.uint32)
    return cells, nuclei
