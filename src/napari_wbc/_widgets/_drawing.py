"""Drawings that drive cell edits (points, shapes, a painted mask), read in the cells' pixel grid.

A drawing layer may have its own scale and translation: every vertex goes through world
coordinates into the data coordinates of the cells layer. A drawing is consumed by the
edit that used it (cleared), so the next edit starts from a clean sheet.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels, Points, Shapes

from ..core.io import InputError

CLOSED = ("polygon", "rectangle", "ellipse")
OPEN = ("path", "line")
KINDS = {"points": Points, "shapes": Shapes, "mask": Labels}


def _to_grid(layer, cells, coords) -> np.ndarray:
    coords = np.asarray(coords, float).reshape(-1, layer.ndim)
    return np.array([cells.world_to_data(layer.data_to_world(p))[-2:] for p in coords]).reshape(-1, 2)


def drawn_points(layer, cells) -> list[tuple[float, float]]:
    """The points of a Points layer as (y, x) in the cells' grid, in the order they were added."""
    if not isinstance(layer, Points) or len(layer.data) == 0:
        raise InputError("click points into a points layer first (the 'points' button adds one)")
    return [tuple(p) for p in _to_grid(layer, cells, layer.data)]


def drawn_line(layer, cells) -> list[tuple[float, float]]:
    """The last line or path of a Shapes layer as (y, x) vertices in the cells' grid."""
    if isinstance(layer, Shapes):
        for data, kind in zip(reversed(layer.data), reversed(layer.shape_type), strict=True):
            if kind in OPEN:
                return [tuple(p) for p in _to_grid(layer, cells, data)]
    raise InputError(
        "draw a line or path across the cell in a shapes layer first "
        "(the 'shapes' button adds one; pick the line or path tool)"
    )


def drawn_mask(layer, cells) -> np.ndarray:
    """The union of a Shapes layer's closed shapes, or a painted Labels layer's pixels, as a mask."""
    shape = tuple(cells.data.shape)
    if isinstance(layer, Labels):
        data = np.asarray(layer.data)
        if data.shape != shape:
            raise InputError(f"the mask {layer.name!r} {data.shape} is not the size of the cells {shape}")
        if not data.any():
            raise InputError(f"paint the region into {layer.name!r} first")
        return data > 0
    if isinstance(layer, Shapes):
        found = [
            (_to_grid(layer, cells, data), kind)
            for data, kind in zip(layer.data, layer.shape_type, strict=True)
            if kind in CLOSED
        ]
        if found:
            grid = Shapes([d for d, _ in found], shape_type=[k for _, k in found])
            return grid.to_masks(mask_shape=shape).any(axis=0)
    raise InputError(
        "draw a polygon, rectangle or ellipse (a shapes layer) or paint a mask "
        "(a labels layer) first; the buttons beside 'drawing' add one"
    )


def clear_drawing(layer) -> None:
    """Empty a drawing layer once an edit has used it."""
    if isinstance(layer, Points):
        layer.data = np.empty((0, layer.ndim))
    elif isinstance(layer, Shapes):
        layer.data = []
    elif isinstance(layer, Labels):
        layer.data = np.zeros_like(np.asarray(layer.data))


def drawing_layer(viewer, cells, base: str, kind: str):
    """The layer ``"<base> edit <kind>"`` aligned with ``cells``, added if needed, active, in draw mode."""
    name = f"{base} edit {kind}"
    layers = viewer.layers
    if name in layers and isinstance(layers[name], KINDS[kind]):
        layer = layers[name]
    else:
        align = {"scale": cells.scale, "translate": cells.translate}
        if kind == "points":
            layer = viewer.add_points(np.empty((0, 2)), name=name, size=8, face_color="magenta", **align)
        elif kind == "shapes":
            layer = viewer.add_shapes(
                name=name, edge_color="magenta", face_color="transparent", edge_width=2, ndim=2, **align
            )
        else:
            layer = viewer.add_labels(np.zeros(cells.data.shape, np.uint8), name=name, opacity=0.5, **align)
        layer.metadata = {**layer.metadata, "drawing_for": cells.name}
    layers.selection.active = layer
    layer.mode = {"points": "add", "shapes": "add_polygon", "mask": "paint"}[kind]
    return layer


def cell_at(cells: np.ndarray, point) -> int:
    """The cell id under a (y, x) point (0: background or outside)."""
    y, x = (int(round(v)) for v in point)
    inside = 0 <= y < cells.shape[0] and 0 <= x < cells.shape[1]
    return int(cells[y, x]) if inside else 0


def cell_under(cells: np.ndarray, mask: np.ndarray) -> int:
    """The cell that covers most of ``mask``."""
    under = cells[mask]
    under = under[under > 0]
    if not under.size:
        raise InputError("draw it over a cell")
    return int(np.bincount(under).argmax())


def crossed_cell(cells: np.ndarray, line) -> int:
    """The cell a polyline [(y, x), ...] crosses most."""
    from skimage.draw import line as draw_line

    pts = np.round(np.asarray(line)).astype(int)
    rr, cc = np.concatenate(
        [np.stack(draw_line(*a, *b)) for a, b in zip(pts[:-1], pts[1:], strict=True)], axis=1
    )
    ok = (rr >= 0) & (rr < cells.shape[0]) & (cc >= 0) & (cc < cells.shape[1])
    mask = np.zeros(cells.shape, bool)
    mask[rr[ok], cc[ok]] = True
    return cell_under(cells, mask)
