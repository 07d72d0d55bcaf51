"""Cell gallery: verify a smear as on an analyser, one thumbnail per cell, grouped by type.

The gallery shows the cells of a cells layer (``"<image> cells"`` with its ``features``, the
measurement table, and its ``"<image> nuclei"`` partner) as thumbnails at a fixed physical
scale with the cell and nucleus outlines (:func:`napari_wbc.core.thumbnails.thumbnails`),
grouped by type under a header with the count: the five types, then "unidentified", then
"not a white cell" (excluded from the count); within a group the least sure cell comes
first. A thumbnail's border says its review status (suggested, confirmed, reclassified,
excluded).

The reviewer works with the keyboard (or the mouse): arrows move (Shift+arrows, Shift- or
Ctrl-click select several), 1-5 give the type (neutrophil, lymphocyte, monocyte,
eosinophil, basophil), U "unidentified", X "not a white cell", Enter confirms the type
shown; the selection then moves on to the next cell. Every change goes through
:mod:`~napari_wbc.core.verification` into the layer's ``features`` (so the Measurements
table follows), the differential and the "reviewed N of M" line update, and the review is
saved (:func:`~napari_wbc.core.verification.save_review`, shortly after the last change)
beside the image or its outputs, where the gallery finds it again when it next opens on the
layer; a type set elsewhere (the Correct widget) is saved the same way. A review file there of
another segmentation (its labels' fingerprint is not the layer's) is not applied: the gallery
says so once, writes nothing over it and takes no changes until it is moved or deleted.
Selection is shared with the viewer and the Measurements table through the layer's
``selected_label``: a thumbnail picked here selects the cell and centres the viewer on it; a
cell picked there is highlighted here. "Sign off" refuses, saying why, while cells are
unreviewed or unidentified; once allowed it records the sign-off, writes the report (CSV and
a self-contained HTML page) beside the review file, and saves the reviewed cells as
classifier training data (:func:`corrections_folder`), of a field or of a slide alike.

Thousands of cells stay fast (:mod:`.gallery_view`): one list model with a header row per
group, drawn by a delegate, so only the visible items are painted; a thumbnail is made when
its item is first painted, in batches, off the GUI thread, and kept in a bounded cache.
Thumbnails are 96 px; the "thumbnails" box makes them larger (the same crop in more pixels).
Figures: ``bench/gallery.py``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from napari.layers import Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, Qt, QTimer
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from ..core.celltypes import CLASSIFIER
from ..core.dataset import CELL_TYPES
from ..core.io import InputError
from ..core.verification import STATUS_COLOURS  # the legend's colours: the thumbnails' borders
from ._layers import features_of, is_cells_layer, partner, set_features
from .gallery_view import (
    CAPTION,
    CONFIRM,
    HEADER_HEIGHT,
    LABEL_ROLE,
    PAD,
    THUMB,
    CellModel,
    GalleryView,
    ThumbnailLoader,
)

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

SIZES = (96, 128, 160, 192)  # the sizes offered: a bccd cell at native resolution at 192
SAVE_DELAY_MS = 400  # the review is written this long after the last change
ZOOM_FIT = 1.5  # the view must show at least this many cell widths around a picked cell...
ZOOM_MAX = 15.0  # ...and at most this many (else the cell is a dot: zoom in)
ZOOM_TO = 6.0  # cell widths shown after zooming

SHORT = {
    "neutrophil": "neut",
    "lymphocyte": "lymph",
    "monocyte": "mono",
    "eosinophil": "eos",
    "basophil": "baso",
}
LEGEND = (  # the keys, short (the full words on hover), and the border colours
    " ".join(f"<b>{i}</b> {SHORT.get(kind, kind)}" for i, kind in enumerate(CELL_TYPES, start=1))
    + " <b>U</b> unidentified <b>X</b> not a WBC <b>Enter</b> confirm &nbsp; "
    + " ".join(f"<span style='color:{colour}'>■</span>{status}" for status, colour in STATUS_COLOURS.items())
)
LEGEND_TIP = (
    "keys (with the gallery focused): arrows move, Shift+arrows or Shift/Ctrl+click select more; "
    + ", ".join(f"{i} {kind}" for i, kind in enumerate(CELL_TYPES, start=1))
    + "; U unidentified; X not a white cell (left out of the count); Enter confirms the type shown. "
    "A thumbnail's border: grey suggested (not reviewed), green confirmed, orange reclassified, red excluded"
)


def _level0(layer):
    """A layer's full-resolution data (a slide's labels are multiscale)."""
    return layer.data[0] if layer.multiscale else layer.data


def corrections_folder() -> Path:
    """Where signed-off reviews leave their cells as classifier training data (the Train
    widget's data folder for fine-tuning the classifier)."""
    from .._paths import user_data_dir

    return user_data_dir() / "type_corrections"


@thread_worker(ignore_errors=True)
def _report_job(image, cells, nuclei, options, folder, stem, table, record, meta, provenance):
    """The report, then the reviewed cells saved as training data (a field's or a slide's,
    read around each cell): ``(report paths, what save_type_corrections saved)``. Thumbnails
    are made of the cells the report shows only (``report_cells``: a sample above
    ``REPORT_ALL_CELLS``)."""
    from ..core.corrections import save_type_corrections
    from ..core.report import report_cells, write_report
    from ..core.thumbnails import thumbnails

    labels = report_cells(table)
    thumbs = dict(zip(labels, thumbnails(image, cells, nuclei, labels, **options), strict=True))
    paths = write_report(folder, stem, table, thumbs, record, meta)
    saved = save_type_corrections(corrections_folder(), image, cells, nuclei, table, provenance)
    return paths, saved


def _review_changed(old: pd.DataFrame, new: pd.DataFrame) -> bool:
    """Whether a cell both tables hold has another type or review in ``new``."""
    from ..core.verification import REVIEW_COLUMNS, text

    columns = ["cell_type", *REVIEW_COLUMNS]
    old, new = (t.set_index(t["label"].astype(int))[columns] for t in (old, new))
    both = old.index.intersection(new.index)
    return not old.loc[both].map(text).equals(new.loc[both].map(text))


def _keep_aside(path: Path) -> Path:
    """Copy ``path`` to the first free ``<stem>-<n><suffix>`` beside it (atomic); the copy."""
    import shutil

    from ..core.batch import write_atomic

    n = 1
    while (copy := path.with_name(f"{path.stem}-{n}{path.suffix}")).exists():
        n += 1
    write_atomic(copy, lambda tmp: shutil.copyfile(path, tmp))
    return copy


class GalleryWidget(QWidget):
    """The cells of a cells layer as thumbnails by type, for a reviewer to verify and sign off."""

    def __init__(self, viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self._viewer = viewer
        self._layer: Labels | None = None
        self._table: pd.DataFrame | None = None  # the reviewed table (the layer's features)
        self._meta: dict = {}  # what the review file holds besides the table
        self._review_file: Path | None = None
        self._fresh = False  # the layer's pixels were replaced: the old review does not apply
        self._set_aside = False  # the review file there is not this review's: keep a copy before saving
        self._foreign: Path | None = None  # a review file of another segmentation: never written over
        self._syncing = False  # True while the gallery itself moves the selection
        self._writing = False  # True while the gallery itself writes the features
        self._dirty = False  # a change not saved yet
        self._models_seen: dict | None = None  # model name -> weights sha256, found once per layer
        self.report: dict | None = None  # the files of the last sign-off
        self.corrections: dict | None = None  # what it saved as training data
        self.signoff_worker = None

        self.layer_box = QComboBox()
        self.layer_box.setToolTip("the cells layer to review (a segmentation with its measurements)")
        self.differential = QLabel("no cells layer yet: run Segment white cells")
        self.differential.setWordWrap(True)
        self.differential.setToolTip(
            "the differential count as it stands: count and percent per type; unidentified cells "
            "apart, objects that are not a white cell excluded"
        )
        self.progress = QLabel("")
        self.legend = QLabel(LEGEND)
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setToolTip(LEGEND_TIP)
        font = self.legend.font()
        font.setPointSizeF(max(7.0, font.pointSizeF() - 1))
        self.legend.setFont(font)

        self.thumbs = ThumbnailLoader(self, self._is_visible)
        self.model = CellModel(self.thumbs, self)
        self.view = GalleryView(self)
        self.view.setModel(self.model)
        self.view.setMinimumHeight(HEADER_HEIGHT + THUMB + 2 * PAD + CAPTION + 12)  # a row
        self.size_box = QComboBox()
        for side in SIZES:
            self.size_box.addItem(f"{side} px", side)
        self.size_box.setToolTip(
            "thumbnail size: the same 20 um (or twice a cell's width) across, in more pixels"
        )

        self.reviewer = QLineEdit()
        self.reviewer.setPlaceholderText("your name")
        self.reviewer.setToolTip("who reviews: recorded with every change and with the sign-off")
        self.signoff_button = QPushButton("Sign off")
        self.signoff_button.setToolTip(
            "record that the review is complete and write the report (CSV and HTML) beside the review"
        )
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("cells layer"))
        row.addWidget(self.layer_box, 1)
        layout.addLayout(row)
        layout.addWidget(self.differential)
        row = QHBoxLayout()
        row.addWidget(self.progress, 1)
        row.addWidget(QLabel("thumbnails"))
        row.addWidget(self.size_box)
        layout.addLayout(row)
        layout.addWidget(self.legend)
        layout.addWidget(self.view, 1)
        row = QHBoxLayout()
        row.addWidget(QLabel("reviewer"))
        row.addWidget(self.reviewer, 1)
        row.addWidget(self.signoff_button)
        layout.addLayout(row)
        layout.addWidget(self.message)

        self._save_timer = QTimer(self, singleShot=True, interval=SAVE_DELAY_MS)
        self._save_timer.timeout.connect(self.save)
        self.thumbs.ready.connect(self.model.refresh_labels)
        self.thumbs.failed.connect(self._say)
        self.view.command.connect(self._on_command)
        self.view.selectionModel().currentChanged.connect(self._on_current_changed)
        self.view.clicked.connect(self._on_current_changed)  # a click on the current cell centres it again
        self.signoff_button.clicked.connect(self.sign_off)
        self.reviewer.editingFinished.connect(self._on_reviewer)
        self.layer_box.currentIndexChanged.connect(self._on_box)
        self.size_box.currentIndexChanged.connect(self._on_size)
        self._attached = False
        self._attach()

    def _viewer_connections(self):
        events = self._viewer.layers.events
        out = [
            (e, self._refresh_layers)
            for e in (events.inserted, events.removed, events.reordered, events.renamed)
        ]
        return [*out, (self._viewer.layers.selection.events.active, self._follow_active)]

    def _attach(self) -> None:
        """Follow the viewer's layers (again)."""
        if self._attached:
            return
        self._attached = True
        for emitter, slot in self._viewer_connections():
            emitter.connect(slot)
        self._refresh_layers()
        active = self._viewer.layers.selection.active
        if self._is_cells(active):
            self.show_layer(active)

    def detach(self) -> None:
        """Save, then stop following the viewer (the widget was closed or taken out of its dock)."""
        if not self._attached:
            return
        self._attached = False
        for emitter, slot in self._viewer_connections():
            emitter.disconnect(slot)
        self._bind(None)

    def event(self, event) -> bool:
        # napari takes a removed widget out of its dock (no parent): stop following the viewer
        if event.type() == QEvent.Type.ParentChange and hasattr(self, "_attached"):
            if self.parent() is None:
                self.detach()
            else:
                self._attach()
        return super().event(event)

    def closeEvent(self, event) -> None:
        self.detach()
        super().closeEvent(event)

    def hideEvent(self, event) -> None:
        self.save()  # e.g. the dock was hidden or tabbed away: write what is not saved yet
        super().hideEvent(event)

    # -- which layer -----------------------------------------------------------------------

    def _is_cells(self, layer) -> bool:
        return is_cells_layer(self._viewer.layers, layer) and "label" in layer.features.columns

    def _cell_layers(self) -> list[Labels]:
        return [layer for layer in self._viewer.layers if self._is_cells(layer)]

    def _refresh_layers(self, _event=None) -> None:
        layers = self._cell_layers()
        self.layer_box.blockSignals(True)
        try:
            self.layer_box.clear()
            for layer in layers:
                self.layer_box.addItem(layer.name)
            if self._layer in layers:
                self.layer_box.setCurrentIndex(layers.index(self._layer))
        finally:
            self.layer_box.blockSignals(False)
        if self._layer not in layers:
            self._bind(layers[0] if layers else None)

    def _on_box(self, index: int) -> None:
        layers = self._cell_layers()
        if 0 <= index < len(layers) and layers[index] != self._layer:
            self._bind(layers[index])

    def _follow_active(self, _event=None) -> None:
        active = self._viewer.layers.selection.active
        if self._is_cells(active) and active != self._layer:
            self.show_layer(active)

    def show_layer(self, layer: Labels) -> None:
        """Review the cells of ``layer`` (a cells layer with its measurements)."""
        layers = self._cell_layers()
        if layer not in layers:
            raise InputError(f"{layer.name!r} is not a cells layer with measurements and a nuclei layer")
        self.layer_box.blockSignals(True)
        self.layer_box.setCurrentIndex(layers.index(layer))
        self.layer_box.blockSignals(False)
        if layer != self._layer:
            self._bind(layer)

    @property
    def layer(self) -> Labels | None:
        return self._layer

    def _bind(self, layer: Labels | None) -> None:
        self.save()  # what the previous layer's review has not written yet
        old = self._layer
        if old is not None:
            for emitter, slot in self._connections(old):
                emitter.disconnect(slot)
        self._layer, self._table, self._meta, self._review_file = layer, None, {}, None
        self._fresh = self._set_aside = False
        self._foreign = None
        self._models_seen = None
        self.report = None
        self.thumbs.set_source(None, None, None, {})
        self._say("")
        if layer is None:
            self.model.set_table(None)
            self.differential.setText("no cells layer yet: run Segment white cells")
            self.progress.setText("")
            return
        for emitter, slot in self._connections(layer):
            emitter.connect(slot)
        self._review_file = self._find_review_file(layer)
        self._load()
        self._set_source()

    def _connections(self, layer):
        nuclei = partner(self._viewer.layers, layer, "nuclei")
        out = [
            (layer.events.features, self._on_features),
            (layer.events.selected_label, self._on_label_selected),
            (layer.events.data, self._on_data_replaced),
            (layer.events.paint, self._on_painted),
        ]
        if nuclei is not None:
            out += [(nuclei.events.data, self._on_painted), (nuclei.events.paint, self._on_painted)]
        return out

    def _set_source(self) -> None:
        """Give the thumbnail loader the pixels: the image, the cells and the nuclei."""
        from ._save import source_image

        layer = self._layer
        nuclei = partner(self._viewer.layers, layer, "nuclei")
        try:
            image = source_image(self._viewer, layer)
        except InputError as err:
            self.thumbs.set_source(None, None, None, {})
            self._say(f"no thumbnails: {err}")
            return
        self.thumbs.set_source(_level0(image), _level0(layer), _level0(nuclei), self._thumb_options())

    def _thumb_options(self) -> dict:
        """The thumbnails' scale (20 um with a pixel size, else twice the median cell width, as
        the cells are now) and the cells' places, from the table (labels are not read whole)."""
        options: dict = {"size": self.view.thumb}
        pixel_size = (self._layer.metadata or {}).get("pixel_size")
        if pixel_size:
            options["pixel_size"] = float(pixel_size)
        if self._table is not None and {"centroid_y", "centroid_x", "cell_area_px"} <= set(self._table):
            columns = ["label", "centroid_y", "centroid_x", "cell_area_px", "cell_type"]
            options["table"] = self._table[[c for c in columns if c in self._table]].copy()
        return options

    def _on_size(self, _index=None) -> None:
        self.view.set_thumb_size(self.size_box.currentData())
        if self._layer is not None:
            self._set_source()  # made again at the new size

    def _find_review_file(self, layer) -> Path | None:
        """``<stem>_review.json`` beside the layer's cell TIFF (segment or slide outputs), else
        beside its image; None when it has no file."""
        from ..core.verification import review_path

        meta = layer.metadata or {}
        where = (meta.get("files") or {}).get("cells") or meta.get("source")
        return review_path(where) if where else None

    # -- the table -------------------------------------------------------------------------

    def _load(self) -> None:
        """Start the review of the layer's table, resuming the saved review if there is one."""
        from ..core.verification import ReviewMismatch, open_review, start_review

        table = features_of(self._layer)
        if table is None:
            self.model.set_table(None)
            self.differential.setText(f"{self._layer.name} has no cell measurements")
            return
        table = start_review(table)
        path = self._review_file
        if path is not None and path.is_file():
            try:
                table, self._meta = open_review(path, table, _level0(self._layer))
            except ReviewMismatch as err:
                self._foreign = path
                self._refuse(str(err))
            except (OSError, ValueError) as err:
                show_error(f"could not read the review {path}: {err}")
                self._say(f"the saved review could not be read ({err}); starting afresh (it is kept)")
                self._set_aside = True
            else:
                self._say(f"resumed the review saved in {path}")
        reviewer = self._meta.get("reviewer") or (self._layer.metadata or {}).get("reviewer")
        if reviewer:
            self.reviewer.setText(str(reviewer))
        self._show(table)

    def _show(self, table: pd.DataFrame, keep: list[int] | None = None, current: int | None = None) -> None:
        """Make ``table`` the layer's features and the gallery's items; select ``keep``."""
        from ..core.measure import describe_counts

        self._table = table.reset_index(drop=True)
        self._writing = True
        try:
            set_features(self._layer, self._table)
        finally:
            self._writing = False
        self.model.set_table(self._table)
        if keep:
            self.select_cells(keep, current=current)
        self.differential.setText(describe_counts(self._layer.metadata["counts"]))  # set_features counted
        n = len(self._table)
        done = int((self._table["review_status"] != "suggested").sum()) if n else 0
        self.progress.setText(f"reviewed {done} of {n}" + ("" if done == n else f" ({n - done} to go)"))

    @property
    def table(self) -> pd.DataFrame | None:
        """The reviewed table (the layer's features without napari's columns)."""
        return None if self._table is None else self._table.copy()

    def _on_features(self, _event=None) -> None:
        if not self._writing:  # another tool changed the table: take it after its event
            QTimer.singleShot(0, self._adopt_features)

    def _adopt_features(self) -> None:
        """Follow a table another tool wrote (a new segmentation, edited cells, a type set
        elsewhere), keeping the review of the cells that are still there."""
        from ..core.verification import apply_review, start_review

        if self._layer is None:
            return
        table = features_of(self._layer)
        if table is None:
            self._table = None
            self.model.set_table(None)
            return
        kept = self.selected_cells()
        if "review_status" not in table and self._table is not None and not self._fresh:
            table = apply_review(start_review(table), self._table)
            self._dirty = True
            self._save_timer.start()
        else:
            table = start_review(table)
            if self._fresh:  # new cells: the saved review and its sign-off were of others
                self._set_aside, self._meta, self._models_seen = True, {}, None
            elif self._table is not None and _review_changed(self._table, table):  # typed elsewhere
                self._changed()
            elif self._table is not None:  # e.g. cells edited (the review kept): saved of their new labels
                self._dirty = True
                self._save_timer.start()
        self._fresh = False
        self._show(table, keep=[label for label in kept if label in set(table["label"])])
        self._set_source()  # the cells may have moved, or be new

    def _on_data_replaced(self, _event=None) -> None:
        self._fresh = True  # new cells: ids no longer name the reviewed ones
        self._on_painted()

    def _on_painted(self, _event=None) -> None:
        self.thumbs.clear()
        self.view.viewport().update()

    # -- selection -------------------------------------------------------------------------

    def selected_cells(self) -> list[int]:
        """Ids of the selected thumbnails, in gallery order."""
        rows = sorted(index.row() for index in self.view.selectionModel().selectedIndexes())
        return [label for label in (self.model.label_at(row) for row in rows) if label is not None]

    def select_cells(self, labels, current: int | None = None) -> None:
        """Select these cells' thumbnails (``current``, default the first, gets the focus)."""
        from qtpy.QtCore import QItemSelection, QItemSelectionModel

        labels = [int(label) for label in labels]
        selection = QItemSelection()
        for label in labels:
            index = self.model.index_of(label)
            if index.isValid():
                selection.select(index, index)
        model = self.view.selectionModel()
        focus = self.model.index_of(current if current is not None else (labels[0] if labels else -1))
        if focus.isValid():
            model.setCurrentIndex(focus, QItemSelectionModel.SelectionFlag.NoUpdate)
            self.view.scrollTo(focus)
        model.select(selection, QItemSelectionModel.SelectionFlag.ClearAndSelect)

    def _on_current_changed(self, current, _previous=None) -> None:
        label = current.data(LABEL_ROLE) if current.isValid() else None
        if label is None or self._layer is None or self._syncing:
            return
        self._syncing = True
        try:
            self._layer.selected_label = int(label)
        finally:
            self._syncing = False
        self.centre_on(int(label))

    def _on_label_selected(self, _event=None) -> None:
        if self._syncing or self._layer is None:
            return
        label = int(self._layer.selected_label)
        if not self.model.index_of(label).isValid() or label in self.selected_cells():
            return
        self._syncing = True
        try:
            self.select_cells([label])
        finally:
            self._syncing = False

    def centre_on(self, label: int) -> None:
        """Centre the viewer on cell ``label``, zooming when it would be cut or a dot."""
        table = self._table
        row = table.loc[table["label"] == label] if table is not None else None
        if row is None or row.empty or "centroid_y" not in row:
            return
        centroid = (float(row["centroid_y"].iloc[0]), float(row["centroid_x"].iloc[0]))
        camera = self._viewer.scene.camera
        camera.center = tuple(float(v) for v in self._layer.data_to_world(centroid))
        area = float(row["cell_area_px"].iloc[0]) if "cell_area_px" in row else 0.0
        width = 2 * math.sqrt(max(area, 1.0) / math.pi) * float(np.min(np.abs(self._layer.scale[-2:])))
        canvas = min(self._viewer.canvas.size)
        shown = canvas / camera.zoom  # world units across the smaller side of the canvas
        if not ZOOM_FIT * width <= shown <= ZOOM_MAX * width:
            camera.zoom = canvas / (ZOOM_TO * width)

    def _is_visible(self, label: int) -> bool:
        return self.view.isVisible() and self.view.is_visible(label)

    # -- review ----------------------------------------------------------------------------

    def _on_command(self, command: str) -> None:
        if command == CONFIRM:
            self.confirm()
        else:
            self.set_type(command)

    def set_type(self, cell_type: str) -> bool:
        """Give the selected cells ``cell_type``; False (and a message) when nothing changed."""
        from ..core.verification import set_type

        return self._change(lambda table, labels, who: set_type(table, labels, cell_type, who))

    def confirm(self) -> bool:
        """Confirm the selected cells' types."""
        from ..core.verification import confirm

        return self._change(confirm)

    def _blocked(self) -> bool:
        """While a review file of another segmentation is where this review goes: True, and
        it says so again (nothing is written over that file). False once it was moved."""
        from ..core.verification import ReviewMismatch

        if self._foreign is None:
            return False
        if not self._foreign.exists():  # moved or deleted: a new review starts
            self._foreign = None
            return False
        self._refuse(str(ReviewMismatch(self._foreign)))
        return True

    def _change(self, change) -> bool:
        labels = self.selected_cells()
        if self.signoff_worker is not None:
            self._say("wait a moment: the report of the sign-off is being written")
            return False
        if self._blocked():
            return False
        if self._table is None or not labels:
            self._say("select a cell first (click a thumbnail)")
            return False
        reviewer = self.reviewer.text().strip()
        if not reviewer:
            self._refuse("type your name in 'reviewer' first: every change records who made it")
            self.reviewer.setFocus()
            return False
        try:
            table = change(self._table, labels, reviewer)
        except ValueError as err:
            self._refuse(str(err))
            return False
        order = self.model.cell_order()
        after = [label for label in order[order.index(labels[-1]) + 1 :] if label not in labels]
        before = [label for label in order[: order.index(labels[0])] if label not in labels]
        following = after[0] if after else (before[-1] if before else labels[0])
        self._show(table, keep=[following])
        self._say("")
        self._changed()
        return True

    def _changed(self) -> None:
        """The review changed: save it shortly; a sign-off no longer holds."""
        if self._meta.get("signoff"):
            self._meta["signoff"] = None
            self._say("changed after the sign-off: sign off again")
        self._dirty = True
        self._save_timer.start()

    def _on_reviewer(self) -> None:
        name = self.reviewer.text().strip()
        if self._layer is not None and name:
            self._layer.metadata = {**self._layer.metadata, "reviewer": name}

    def save(self) -> Path | None:
        """Write the review now if a change is not saved yet; the file (None if not written)."""
        from ..core.verification import save_review

        self._save_timer.stop()
        if not self._dirty or self._table is None:
            return None
        path = self._review_file
        if path is None:
            self._say("the review is kept in the layer only: its image has no file to save it beside")
            self._dirty = False
            return None
        if self._foreign is not None and self._foreign.exists():  # another's review: left alone
            return None
        try:
            if self._set_aside and path.exists():
                kept = _keep_aside(path)
                self._say(f"the earlier review there is kept as {kept.name}")
            self._set_aside = False
            save_review(path, self._table, self._review_meta(), _level0(self._layer))
        except (OSError, ValueError) as err:
            show_error(f"could not save the review to {path}: {err}")
            self._say(f"not saved: {err}")
            return None
        self._dirty = False
        return path

    def _review_meta(self) -> dict:
        meta = dict(self._meta)
        layer_meta = self._layer.metadata or {}
        meta["image"] = layer_meta.get("source")
        meta["reviewer"] = self.reviewer.text().strip()
        if "models" not in meta:
            meta["models"] = self._models()
        self._meta = meta
        return meta

    def _models(self) -> dict[str, str | None]:
        """Model name -> weights sha256 of what segmented and typed the cells."""
        from ..models import weights_sha256

        if self._models_seen is not None:
            return self._models_seen
        models = {}
        meta = self._layer.metadata or {}
        model = meta.get("model")
        if model:
            models[model] = weights_sha256(model)
        classifier = self._classifier()
        if classifier:  # the Segment widget records which classifier typed the cells
            models[classifier] = meta.get("classifier_sha256") or weights_sha256(classifier)
        self._models_seen = models
        return models

    def _classifier(self) -> str | None:
        """The name of the classifier that typed the cells: as the Segment widget recorded it,
        else the shipped one when the table has its probabilities."""
        meta = self._layer.metadata or {}
        if "classifier" in meta:
            return meta["classifier"]
        if self._table is not None and any(c.startswith("p_") for c in self._table.columns):
            return CLASSIFIER
        return None

    # -- sign-off --------------------------------------------------------------------------

    def sign_off(self, _checked=None):
        """Sign the review off and write the report; returns the worker (None when refused)."""
        from ..core.verification import SignOffRefused, sign_off

        if self.signoff_worker is not None or self._blocked():
            return None
        if self._table is None:
            self._refuse("sign-off refused: no cells layer to review (run Segment white cells)")
            return None
        try:
            record = sign_off(self._table, self.reviewer.text(), self._models())
        except SignOffRefused as err:
            self._refuse(str(err))
            return None
        if self._review_file is None:
            self._refuse("sign-off refused: the image has no file, so the report has no folder to go in")
            return None
        if self.thumbs.source is None:
            self._refuse("sign-off refused: the image is not in the viewer, so the report has no thumbnails")
            return None
        folder, stem = self._review_file.parent, self._review_file.name.removesuffix("_review.json")
        image, cells, nuclei, options = self.thumbs.source
        options = {**options, "size": THUMB}  # the report's page has room for 96 px
        meta = {**self._review_meta(), "pixel_size": (self._layer.metadata or {}).get("pixel_size")}
        table = self._table.copy()
        models, classifier = record.get("models") or {}, self._classifier()
        model = (self._layer.metadata or {}).get("model")
        provenance = {
            "source": meta.get("image"),
            "model": model,
            "weights_sha256": models.get(model),
            "classifier": classifier,
            "classifier_sha256": models.get(classifier),
            "signed_off": record.get("time"),
        }
        worker = _report_job(image, cells, nuclei, options, folder, stem, table, record, meta, provenance)
        worker.returned.connect(lambda out: self._signed(record, *out))
        worker.errored.connect(self._report_failed)
        worker.finished.connect(self._report_finished)
        self.signoff_worker = worker
        self.signoff_button.setEnabled(False)
        self._say(f"signing off: writing the report into {folder}")
        worker.start()
        return worker

    def _signed(self, record: dict, paths: dict, corrections: dict | None = None) -> None:
        self.report = {key: Path(path) for key, path in paths.items()}
        self.corrections = corrections
        self._meta["signoff"] = record
        self._meta["report"] = {key: str(path) for key, path in self.report.items()}
        self._dirty = True
        self.save()
        page = self.report.get("html") or next(iter(self.report.values()), None)
        text = f"signed off by {record.get('reviewer')}; report: {page}"
        if corrections and corrections.get("saved"):
            text += (
                f"; {len(corrections['saved'])} reviewed cells saved as training data in "
                f"{corrections_folder()} (Train widget: fine-tune the classifier from it)"
            )
        self._say(text)
        show_info(text)

    def _report_failed(self, err: Exception) -> None:
        log.error("report failed", exc_info=err)
        self._refuse(f"the sign-off was not recorded: the report could not be written: {err}")

    def _report_finished(self) -> None:
        self.signoff_worker = None
        self.signoff_button.setEnabled(True)

    # -- messages --------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        self.message.setStyleSheet("")
        self.message.setText(text)

    def _refuse(self, text: str) -> None:
        self.message.setStyleSheet("color: #ff6b6b;")
        self.message.setText(text)
        show_warning(text)
