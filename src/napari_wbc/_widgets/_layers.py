"""Which layers belong together, and writing results into them (shared by the review,
correction and save tools).

Layers pair up by name: ``"<image> cells"`` with ``"<image> nuclei"`` (as the Segment
widget names them) and ``"<stem>_cells"`` with ``"<stem>_nuclei"`` (the TIFF pair that
``napari-wbc segment`` writes, opened in napari). A labels layer without such a partner
whose values are 0, 1 and 2 is a class map (the layout of the datasets). The review of a
cells layer is the layer ``"<image> review"``; its metadata holds the reference it was
made against, so that edits can bring it up to date.

How results are drawn: cells and nuclei as outlines (``contour``), so that the stain
inside them, the chromatin and granules a hematologist judges, stays in view; napari's
layer controls fill them (contour 0), and a new run keeps that choice. The review's
TP/FP/FN colours are faint (``REVIEW_OPACITY``) for the same reason.

The docks stay small (:func:`scroll_form`, :class:`OptionsPanel`): each scrolls rather than
asking for more height than the screen has, and settings one rarely changes are folded away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, PushButton
from napari.layers import Labels
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea

from ..core.io import InputError

if TYPE_CHECKING:
    import pandas as pd

KINDS = ("cells", "nuclei")
NAPARI_ONLY_COLUMNS = ("index",)
# outlines (px thick on screen at zoom 1), opaque so a thin line stays visible; the nucleus
# thinner than its cell, so the two nested outlines (same id, same colour) are told apart
CELLS_STYLE = {"contour": 2, "opacity": 1.0}
NUCLEI_STYLE = {"contour": 1, "opacity": 1.0}
REVIEW_OPACITY = 0.4  # the stain shows through the TP/FP/FN colours


def split_name(name: str) -> tuple[str, str, str] | None:
    """``"x cells"`` -> ``("x", " ", "cells")``; None when the name ends in neither kind."""
    for kind in KINDS:
        for sep in (" ", "_"):
            if name.endswith(sep + kind):
                return name[: -len(kind) - 1], sep, kind
    return None


def partner(layers, layer, kind: str) -> Labels | None:
    """The ``kind`` ("cells" or "nuclei") layer that goes with ``layer``, if there is one."""
    parts = None if layer is None else split_name(layer.name)
    if parts is None:
        return None
    base, sep, own = parts
    if own == kind:
        return layer
    name = f"{base}{sep}{kind}"
    other = layers[name] if name in layers else None
    if isinstance(other, Labels) and other.data.shape == layer.data.shape:
        return other
    return None


def is_cells_layer(layers, layer) -> bool:
    """A labels layer named ``... cells`` with its nuclei layer beside it."""
    return (
        isinstance(layer, Labels)
        and partner(layers, layer, "cells") == layer
        and partner(layers, layer, "nuclei") is not None
    )


def image_name(layer) -> str:
    """The name of the image a cells/nuclei layer was made from."""
    source = (layer.metadata or {}).get("source_layer")
    if source:
        return source
    parts = split_name(layer.name)
    return parts[0] if parts else layer.name


def review_name(layer) -> str:
    return f"{image_name(layer)} review"


def labels_of(layers, layer):
    """What a labels layer stands for: a (cells, nuclei) pair of copies, or a 0/1/2 class map."""
    if not isinstance(layer, Labels):
        raise InputError("pick a labels layer (a cells layer, or a 0/1/2 class map)")
    if layer.ndim != 2:
        raise InputError(f"{layer.name!r} is not a 2D labels layer")
    cells = partner(layers, layer, "cells")
    nuclei = partner(layers, cells, "nuclei")
    if cells is not None and nuclei is not None:
        return np.array(cells.data, np.uint32), np.array(nuclei.data, np.uint32)
    data = np.asarray(layer.data)
    if split_name(layer.name) is not None:
        parts = split_name(layer.name)
        missing = f"{parts[0]}{parts[1]}{'nuclei' if parts[2] == 'cells' else 'cells'}"
        raise InputError(
            f"{layer.name!r} has no layer {missing!r} of the same size beside it; "
            "a cell layer is reviewed together with its nuclei"
        )
    if data.size and (data.min() < 0 or data.max() > 2):
        raise InputError(
            f"{layer.name!r} holds values up to {data.max()}: not a class map (0 background, "
            "1 cytoplasm, 2 nucleus) nor a cells layer with a nuclei layer beside it"
        )
    return np.array(data, np.uint8)


def upsert_labels(viewer, name: str, data, like, **style) -> Labels:
    """Update the labels layer called ``name`` or add it with ``style``; aligned with ``like``."""
    align = {"scale": like.scale, "translate": like.translate, "units": like.units}
    layers = viewer.layers
    if name in layers and isinstance(layers[name], Labels):
        target = layers[name]
        target.data = data
        for key, value in align.items():
            setattr(target, key, value)
        return target
    target = viewer.add_labels(data, name=name, **align)
    for key, value in style.items():
        setattr(target, key, value)
    return target


def features_of(layer) -> pd.DataFrame | None:
    """The layer's per-cell table without napari's own columns (None if it has none)."""
    table = layer.features
    if "label" not in table.columns:
        return None
    return table.drop(columns=[c for c in NAPARI_ONLY_COLUMNS if c in table.columns])


def keep_columns(table: pd.DataFrame, current: pd.DataFrame | None, defaults: dict) -> pd.DataFrame:
    """``table`` with the columns in ``defaults`` taken from ``current`` for the cells both have;
    new cells keep their own value, else the default (in place)."""
    for column, value in defaults.items():
        if current is not None and column in current:
            kept = dict(zip(current["label"], current[column], strict=True))
            default = table[column] if column in table else [value] * len(table)
            table[column] = [
                kept.get(label, value) for label, value in zip(table["label"], default, strict=True)
            ]
    return table


def set_features(layer, table: pd.DataFrame) -> None:
    """Give the cells layer its measurements (napari maps label -> row by ``index``) and counts."""
    from ..core.measure import count_summary

    table = table.reset_index(drop=True)
    layer.features = table.assign(index=table["label"])
    layer.metadata = {**layer.metadata, "counts": count_summary(table)}


def show_review(viewer, cells, result, reference: dict, table: pd.DataFrame | None = None):
    """Put a review into the layers: ``"<image> review"`` and, for a cells layer, its features.

    ``reference`` describes the reference (``name``, ``labels`` as a LabelSet, ``min_iou``)
    and is kept in the review layer's metadata with the metrics, counts and matches.
    ``table`` is the cells' measurement table (default: the layer's features).
    """
    from napari.utils.colormaps import DirectLabelColormap

    from ..core.measure import measure_cells
    from ..core.review import join_measurements, napari_color_dict

    name = review_name(cells)
    new = name not in viewer.layers
    layer = upsert_labels(viewer, name, result.codes, cells, opacity=REVIEW_OPACITY)
    layer.colormap = DirectLabelColormap(color_dict=napari_color_dict())
    layer.editable = False
    if new and cells in viewer.layers:  # below the cells' contours, which stay clickable on top
        viewer.layers.move(viewer.layers.index(layer), viewer.layers.index(cells))
    if is_cells_layer(viewer.layers, cells):
        if table is None:
            table = features_of(cells)
        if table is None:
            nuclei = partner(viewer.layers, cells, "nuclei")
            table = measure_cells(np.asarray(cells.data), np.asarray(nuclei.data))
        set_features(cells, join_measurements(table, result.cells))
    layer.metadata = {
        **reference,
        "review_of": cells.name,
        "metrics": result.metrics,
        "counts": result.counts(),
        "summary": result.summary(),
        "matches": result.cells,
    }
    return layer


# -- compact docks ---------------------------------------------------------------------------

# A 1080-px screen leaves about 960 px to napari's dock area (less a panel, the window's title,
# napari's menu and status bars); each dock adds its title bar and a splitter (about 26 px).
# At 150 px five docks fit (5 x 176 = 880) and scroll; three fit at their full height.
DOCK_MIN_HEIGHT = 150


class _FormScroll(QScrollArea):
    """A vertical scroll area around a form: as tall as the form when there is room, down to
    ``min_height`` when there is not (then it scrolls); never narrower than the form."""

    def __init__(self, form, min_height: int):
        super().__init__()
        self._min_height = min_height
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(form)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name); Qt's own caps it at 24 lines and caches it
        hint = self.widget().sizeHint()
        return QSize(hint.width() + self.verticalScrollBar().sizeHint().width(), hint.height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        width = self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
        return QSize(width, min(self._min_height, self.sizeHint().height()))


def side_by_side(*widgets, labels: bool = False) -> Container:
    """``widgets`` side by side, without margins of their own (with their labels if ``labels``)."""
    out = Container(widgets=widgets, layout="horizontal", labels=labels)
    out.margins = (0, 0, 0, 0)
    return out


def scroll_form(outer: Container, widgets, min_height: int = DOCK_MIN_HEIGHT) -> Container:
    """Lay ``widgets`` out as a labelled form in a scroll area that fills ``outer`` (a dock's
    widget, otherwise empty); returns the form."""
    form = Container(widgets=widgets)
    outer.margins = (0, 0, 0, 0)
    outer.native.layout().addWidget(_FormScroll(form.native, min_height))
    return form


class OptionsPanel(Container):
    """Settings one rarely changes, folded under a button (folded at first)."""

    def __init__(self, widgets, title: str = "options", tooltip: str = ""):
        self._title = title
        self.body = Container(widgets=widgets)
        self.toggle = PushButton(text=f"▸ {title}", tooltip=tooltip or f"show or hide the {title}")
        self.toggle.native.setFlat(True)
        self.toggle.native.setStyleSheet("text-align: left")
        super().__init__(widgets=[self.toggle, self.body], labels=False)
        self.margins = (0, 0, 0, 0)
        self.body.native.setHidden(True)
        self.toggle.changed.connect(lambda _value=None: self.expand(not self.expanded))

    @property
    def expanded(self) -> bool:
        return not self.body.native.isHidden()

    def expand(self, value: bool = True) -> None:
        self.body.native.setHidden(not value)
        self.toggle.text = f"{'▾' if value else '▸'} {self._title}"
        for widget in (self.body.native, self.native):  # the scroll area around asks for the new height
            widget.updateGeometry()
