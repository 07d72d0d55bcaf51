"""Plain names and explanations of the measurement table's columns, for headers and tooltips.

The table and the CSV keep the short machine names (``ncr``, ``cell_area_um2``); a person
reads :func:`plain_name` in the header and :func:`explain` when hovering over it.
"""

from __future__ import annotations

from .dataset import CELL_TYPES

COMPLETE = "cells not touching the image border are 'complete': wholly in view, so their areas can be trusted"

_COLUMNS: dict[str, tuple[str, str]] = {
    "label": ("cell", "cell id: the same number in the cells and the nuclei layers"),
    "status": (
        "review",
        "against the reference: matched, missed (a reference cell not found) or extra "
        "(found, not in the reference)",
    ),
    "iou": ("IoU", "overlap with the matched reference cell: intersection over union, 0-1"),
    "cell_type": (
        "type",
        "the cell's type: " + ", ".join(CELL_TYPES) + "; 'unidentified' when the "
        "classifier is unsure; 'not_wbc' when it is no white cell (left out of the count)",
    ),
    "type_confidence": (
        "type confidence",
        "probability of the type, over the five white-cell types (for "
        "not_wbc: that the object is no white cell)",
    ),
    "reviewed": ("reviewed", "a person checked this cell"),
    "edited": ("edited", "the outline was changed by hand"),
    "ncr": (
        "NCR",
        "nucleus-to-cytoplasm ratio: nucleus area / cytoplasm area (MIF-Net Eq. 10), the "
        "cytoplasm being the cell minus its nucleus; no unit",
    ),
    "nucleus_cell_ratio": ("nucleus / cell", "nucleus area / whole-cell area, 0-1"),
    "nucleus_lobes": (
        "lobes",
        "nucleus lobes: pieces joined only by a thin chromatin bridge count apart; "
        "a band or a round nucleus is one",
    ),
    "circularity": ("circularity", "4π·area / perimeter²: 1 for a disc, lower for irregular outlines"),
    "touches_border": ("at border", "yes: the cell touches the image border and may be cut off; " + COMPLETE),
    "centroid_y": ("centre y (px)", "row of the cell's centre, in image pixels"),
    "centroid_x": ("centre x (px)", "column of the cell's centre, in image pixels"),
    "centroid_y_um": ("centre y (µm)", "row of the cell's centre, in micrometres"),
    "centroid_x_um": ("centre x (µm)", "column of the cell's centre, in micrometres"),
}
_AREAS = {"cell": "whole cell", "nucleus": "nucleus", "cytoplasm": "cytoplasm (cell minus nucleus)"}


def _lookup(column: str) -> tuple[str, str]:
    if column in _COLUMNS:
        return _COLUMNS[column]
    for part, what in _AREAS.items():
        for suffix, unit, name in (("_area_px", "px²", "pixels"), ("_area_um2", "µm²", "square micrometres")):
            if column == part + suffix:
                return f"{part} area ({unit})", f"area of the {what}, in {name}"
    if column == "perimeter_px":
        return "perimeter (px)", "length of the cell's outline (Crofton estimate), in pixels"
    if column == "perimeter_um":
        return "perimeter (µm)", "length of the cell's outline (Crofton estimate), in micrometres"
    if column.startswith("p_"):
        kind = column[2:]
        what = "no white cell" if kind == "not_wbc" else f"a {kind}"
        return f"P({kind})", f"the classifier's probability that the object is {what}"
    return column, column


def plain_name(column: str) -> str:
    """The header a person reads for a table column."""
    return _lookup(column)[0]


def explain(column: str) -> str:
    """What a table column means, with its unit (a tooltip)."""
    return _lookup(column)[1]
