"""Correct widget: cell-level edits on a cells layer and its nuclei, then save as training data.

napari's own paint, fill and erase work on the ``"<image> cells"`` and ``"<image> nuclei"``
layers (with "preserve labels" on and the new-label button, the brush draws a new cell on
background only). The buttons add what a cell editor needs, each a function of
:mod:`napari_wbc.core.edit` applied to the cells in "cell ids" (the selected label;
Ctrl+click on a cell adds it): delete, merge, split (two or more points clicked inside
the cell, or a line drawn across it), new cell (a drawn polygon or a painted mask), the
nucleus (replace, add to or remove from it with a drawing), type, reviewed. A type set here
or a tick in "reviewed" is a review decision like one in the Cell gallery, made through the
same functions (:func:`napari_wbc.core.verification.set_type`, ``confirm``; unticking is
``reopen``): the table gets the review status, keeps the classifier's suggestion and records
the reviewer (the "reviewer" box, shared with the gallery through the layer) and the time;
the gallery and the differential follow. Edits go
into the layers through ``data_setitem``, so napari's undo (Ctrl+Z, per layer) undoes
them too. An :class:`~._tracker.EditTracker` keeps nuclei inside their cells and the
measurements, counts and review in step, and counts the edited cells, which "Save as
training data" writes into the training folder's manifest.

An edit that would make a cell no reviewer means is refused, said in a notification and the
status line, and changes nothing: merging cells that do not touch or merely touch (two cells,
not the pieces of one), a split that leaves a sliver. Saving a field the folder holds
unchanged already says so ("already saved as <stem>") instead of writing it again. The
controls scroll when the dock is short (:func:`._layers.scroll_form`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, PushButton
from napari.layers import Labels, Points, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QSizePolicy

from ..core.io import InputError
from . import _drawing as drawing
from ._layers import features_of, image_name, is_cells_layer, scroll_form, set_features, side_by_side
from ._tracker import EditTracker, write_changes

if TYPE_CHECKING:
    import napari

from ..core.dataset import CELL_TYPES as DATASET_TYPES
from ..core.dataset import NOT_WBC, UNIDENTIFIED

log = logging.getLogger(__name__)

# "not a white cell" leaves the object out of the count (and back in when given a type)
CELL_TYPES = (
    ("—", None),
    *((name, name) for name in (*DATASET_TYPES, UNIDENTIFIED)),
    ("not a white cell", NOT_WBC),
)
TIPS = {
    "ids": "the cells to act on, e.g. '3, 7'; follows the selected label; Ctrl+click a cell to add it",
    "drawing": "points (split), a line (cut), a polygon or a painted mask (new cell, nucleus); "
    "the + buttons add a layer to draw in",
    "merge": "merge the cells in 'cell ids': the pieces of one cell, which share a long border",
    "split": "split the cell under the first point into one piece per point (at the waist between "
    "them, else halfway), or cut the cell (the first id, else the one crossed most) along the last "
    "line/path of the drawing",
    "new": "add a cell with the next free id where the drawing covers background",
    "nucleus": "replace / add to / remove from the nucleus of the first cell id (else the cell under "
    "the drawing) with the drawing",
    "folder": "training folder (images/, labels/, manifest.jsonl); created if needed; a field saved "
    "there unchanged is not saved again",
    "visible": "save only the part of the image shown on the canvas",
    "reviewer": "who reviews: recorded with every type set or confirmed here, as in the Cell gallery",
    "type": "give the cells in 'cell ids' this type: a review decision (confirmed when it is the "
    "classifier's suggestion, else reclassified; 'not a white cell' excludes them from the count)",
    "reviewed": "tick: confirm the type of the cells in 'cell ids' (reviewed by you); untick: undo "
    "their review (back to the classifier's suggestion)",
}


class CorrectWidget(Container):
    """Delete, merge, split, draw cells and nuclei, type and mark them; save as training data."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._syncing = False
        self.tracker = EditTracker(viewer, self.native, on_status=self._set_status)
        self.layer = ComboBox(label="cells layer", choices=self._cell_layers)
        self.ids = LineEdit(label="cell ids", tooltip=TIPS["ids"])
        self.delete_button = PushButton(text="Delete")
        self.merge_button = PushButton(text="Merge", tooltip=TIPS["merge"])
        self.drawing = ComboBox(label="drawing", choices=self._drawing_layers, tooltip=TIPS["drawing"])
        self.points_button = PushButton(text="+ points")
        self.shapes_button = PushButton(text="+ shapes")
        self.mask_button = PushButton(text="+ mask")
        self.split_button = PushButton(text="Split", tooltip=TIPS["split"])
        self.new_button = PushButton(text="New cell", tooltip=TIPS["new"])
        self.nucleus_button = PushButton(text="Set nucleus", tooltip=TIPS["nucleus"])
        self.nucleus_mode = ComboBox(choices=["replace", "add", "remove"], value="replace")
        self.reviewer = LineEdit(label="reviewer", tooltip=TIPS["reviewer"])
        self.reviewer.native.setPlaceholderText("your name")
        self.cell_type = ComboBox(label="type", choices=CELL_TYPES, tooltip=TIPS["type"])
        self.type_button = PushButton(text="Set type", tooltip=TIPS["type"])
        self.reviewed = CheckBox(text="reviewed", tooltip=TIPS["reviewed"])
        self.folder = FileEdit(label="training folder", mode="d", nullable=True, tooltip=TIPS["folder"])
        self.visible_only = CheckBox(text="visible part only", tooltip=TIPS["visible"])
        self.save_button = PushButton(text="Save as training data")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)  # long messages must not widen the dock
        self.form = scroll_form(
            self,
            [
                self.layer,
                self.ids,
                side_by_side(self.delete_button, self.merge_button),
                self.drawing,
                side_by_side(self.points_button, self.shapes_button, self.mask_button),
                side_by_side(self.split_button, self.new_button),
                side_by_side(self.nucleus_button, self.nucleus_mode),
                self.reviewer,
                side_by_side(self.cell_type, self.type_button, self.reviewed, labels=True),
                self.folder,
                side_by_side(self.visible_only, self.save_button),
                self.status,
            ],
        )
        self.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

        self.layer.changed.connect(self._bind)
        for button, action in (
            (self.delete_button, self.delete),
            (self.merge_button, self.merge),
            (self.split_button, self.split),
            (self.new_button, self.new_cell),
            (self.nucleus_button, self.set_nucleus),
            (self.type_button, self.set_type),
            (self.save_button, self._ask_save),
        ):
            button.changed.connect(action)
        for button, kind in (
            (self.points_button, "points"),
            (self.shapes_button, "shapes"),
            (self.mask_button, "mask"),
        ):
            button.changed.connect(lambda _v=None, kind=kind: self.add_drawing(kind))
        self.reviewed.changed.connect(self._on_reviewed)
        self.reviewer.changed.connect(self._on_reviewer)
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.reordered, events.renamed):
            emitter.connect(self._refresh_layers)
        viewer.layers.selection.events.active.connect(self._follow_active)
        self._bind(self.layer.value)

    # -- layers ----------------------------------------------------------------------------

    @property
    def edited(self) -> set[int]:
        """Ids of the cells changed since the layer was segmented (or first bound)."""
        return self.tracker.edited

    def _cell_layers(self, _widget=None):
        layers = self._viewer.layers
        return [(layer.name, layer) for layer in layers if is_cells_layer(layers, layer)]

    def _drawing_layers(self, _widget=None):
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, Points | Shapes)
            or (isinstance(layer, Labels) and "drawing_for" in layer.metadata)
        ]

    def _refresh_layers(self, _event=None) -> None:
        self.layer.reset_choices()
        self.drawing.reset_choices()
        cells = self.tracker.cells
        if cells is not None and cells not in list(self._viewer.layers):
            self._bind(self.layer.value)

    def _follow_active(self, _event=None) -> None:
        active = self._viewer.layers.selection.active
        if is_cells_layer(self._viewer.layers, active) and active != self.tracker.cells:
            self.layer.value = active
        elif active is not None and active in [layer for _, layer in self._drawing_layers()]:
            self.drawing.value = active

    def _bind(self, layer) -> None:
        old = self.tracker.cells
        if old is not None:
            old.events.selected_label.disconnect(self._on_selected)
            if self._on_click in old.mouse_drag_callbacks:
                old.mouse_drag_callbacks.remove(self._on_click)
        self.tracker.bind(layer)
        if layer is not None:
            reviewer = (layer.metadata or {}).get("reviewer")
            if reviewer:
                self.reviewer.value = str(reviewer)
            layer.events.selected_label.connect(self._on_selected)
            layer.mouse_drag_callbacks.append(self._on_click)
            self._on_selected()

    def _layers(self) -> tuple[Labels, Labels]:
        if self.tracker.cells is None:
            raise InputError("pick a cells layer (run Segment white cells first)")
        return self.tracker.cells, self.tracker.nuclei

    def _set_status(self, text: str) -> None:
        self.status.value = text

    # -- which cells -----------------------------------------------------------------------

    def cell_ids(self, need: int = 1) -> list[int]:
        try:
            ids = list(dict.fromkeys(int(t) for t in self.ids.value.replace(",", " ").split()))
        except ValueError:
            raise InputError(f"cell ids are whole numbers, e.g. '3, 7', not {self.ids.value!r}") from None
        if len(ids) < need:
            raise InputError(
                "give two cell ids (select a cell, Ctrl+click another)"
                if need > 1
                else "select a cell first (click a row of the table or pick a label)"
            )
        return ids

    def _on_selected(self, _event=None) -> None:
        label = self.tracker.cells.selected_label
        self.ids.value = str(label) if label else ""
        self._show_reviewed()

    def _on_click(self, layer, event) -> None:
        if event.type != "mouse_press" or "Control" not in event.modifiers:
            return
        label = layer.get_value(
            event.position,
            view_direction=event.view_direction,
            dims_displayed=event.dims_displayed,
            world=True,
        )
        if label:
            ids = self.ids.value.strip()
            self.ids.value = f"{ids}, {label}" if ids else str(label)

    # -- edits -----------------------------------------------------------------------------

    def _apply(self, what: str, op, consume=None):
        """Run ``op(cells, nuclei) -> core.edit.Edited`` and write the result into the layers."""
        try:
            cells_layer, nuclei_layer = self._layers()
            result = op(np.asarray(cells_layer.data), np.asarray(nuclei_layer.data))
        except ValueError as err:  # InputError, or an edit that cannot be done: nothing changed
            self.status.value = str(err)
            show_error(str(err))
            return None
        write_changes(cells_layer, result.cells)
        write_changes(nuclei_layer, result.nuclei)
        kept = bool(result.ids) and bool((result.cells == result.ids[0]).any())
        if kept:
            cells_layer.selected_label = result.ids[0]
        self.ids.value = str(result.ids[0]) if kept else ""
        self.status.value = f"{what}: cell {', '.join(map(str, result.ids))}"
        if consume is not None:
            drawing.clear_drawing(consume)
        self.tracker.schedule()
        return result

    def delete(self, _value=None):
        from ..core.edit import Edited, delete_cell

        def op(cells, nuclei):
            ids = self.cell_ids()
            for cell_id in ids:
                cells, nuclei, _ = delete_cell(cells, nuclei, cell_id)
            return Edited(cells, nuclei, ids)

        return self._apply("deleted", op)

    def merge(self, _value=None):
        from ..core.edit import merge_cells

        return self._apply("merged into", lambda c, n: merge_cells(c, n, self.cell_ids(need=2)))

    def split(self, _value=None):
        from ..core.edit import cut_cell, split_cell

        layer, cells_layer = self.drawing.value, self.tracker.cells

        def op(cells, nuclei):
            if isinstance(layer, Points):
                seeds = drawing.drawn_points(layer, cells_layer)
                cell_id = drawing.cell_at(cells, seeds[0])
                if not cell_id:
                    raise InputError("put the first point inside the cell to split")
                return split_cell(cells, nuclei, cell_id, seeds)
            line = drawing.drawn_line(layer, cells_layer)
            cell_id = self.cell_ids()[0] if self.ids.value.strip() else drawing.crossed_cell(cells, line)
            return cut_cell(cells, nuclei, cell_id, line)

        return self._apply("split", op, consume=layer)

    def new_cell(self, _value=None):
        from ..core.edit import new_cell

        layer, cells_layer = self.drawing.value, self.tracker.cells
        return self._apply(
            "new", lambda c, n: new_cell(c, n, drawing.drawn_mask(layer, cells_layer)), consume=layer
        )

    def set_nucleus(self, _value=None):
        from ..core.edit import set_nucleus

        layer, cells_layer, mode = self.drawing.value, self.tracker.cells, self.nucleus_mode.value

        def op(cells, nuclei):
            mask = drawing.drawn_mask(layer, cells_layer)
            cell_id = self.cell_ids()[0] if self.ids.value.strip() else drawing.cell_under(cells, mask)
            return set_nucleus(cells, nuclei, cell_id, mask, mode)

        return self._apply(f"nucleus ({mode})", op, consume=layer)

    def add_drawing(self, kind: str):
        """Add (or pick) the layer ``"<image> edit <kind>"`` to draw in, and make it active."""
        try:
            cells, _ = self._layers()
        except InputError as err:
            show_error(str(err))
            return None
        layer = drawing.drawing_layer(self._viewer, cells, image_name(cells), kind)
        self.drawing.reset_choices()
        self.drawing.value = layer
        return layer

    def _on_reviewer(self, _value=None) -> None:
        name = self.reviewer.value.strip()
        cells = self.tracker.cells
        if cells is not None and name:
            cells.metadata = {**cells.metadata, "reviewer": name}

    def _review(self, change, needs_name: bool = True) -> bool:
        """Apply ``change(table, ids[, reviewer])`` (a function of core.verification) to the
        layer's table; False (and a message) when refused."""
        try:
            cells, _ = self._layers()
            table = features_of(cells)
            if table is None:
                raise InputError(f"{cells.name} has no measurements yet")
            ids = self.cell_ids()
            who = self.reviewer.value.strip()
            if needs_name and not who:
                raise InputError("type your name in 'reviewer' first: every type set records who set it")
            set_features(cells, change(table, ids, who) if needs_name else change(table, ids))
        except ValueError as err:
            self.status.value = str(err)
            show_error(str(err))
            return False
        self.status.value = ""
        return True

    def set_type(self, _value=None) -> bool:
        """Give the cells in 'cell ids' the chosen type, as the gallery does (a review decision)."""
        from ..core.verification import set_type

        kind = self.cell_type.value
        if kind is None:
            self.status.value = "pick a type first"
            show_error("pick a type first")
            return False
        done = self._review(lambda table, ids, who: set_type(table, ids, kind, who))
        self._show_reviewed()
        return done

    def _on_reviewed(self, value: bool) -> None:
        from ..core.verification import confirm, reopen

        if self._syncing:
            return
        if not (self._review(confirm) if value else self._review(reopen, needs_name=False)):
            self._show_reviewed()  # refused: the box shows the cells' state again

    def _show_reviewed(self) -> None:
        """The 'reviewed' box: whether the first cell in 'cell ids' is reviewed."""
        table = None if self.tracker.cells is None else features_of(self.tracker.cells)
        try:
            first = self.cell_ids()[0]
        except InputError:
            first = None
        row = None if table is None or "reviewed" not in table else table.loc[table["label"] == first]
        self._syncing = True
        try:
            self.reviewed.value = bool(row is not None and len(row) and row["reviewed"].iloc[0])
        finally:
            self._syncing = False

    # -- saving ----------------------------------------------------------------------------

    def save(self, folder) -> str:
        """Save the image and the corrected labels into ``folder``; returns the pair's stem (an
        earlier pair's when the folder holds this one already: nothing is written then)."""
        from ._save import save_training_data

        cells, _ = self._layers()
        edited = self.tracker.edited_now()
        stem, new = save_training_data(self._viewer, cells, folder, edited, self.visible_only.value)
        if new:
            message = f"saved {stem} to {folder} ({len(edited)} cells edited)"
        else:
            message = f"already saved as {stem} in {folder}, unchanged since: not saved again"
        self.status.value = message
        show_info(message)
        return stem

    def _ask_save(self, _value=None) -> None:
        folder = self.folder.value
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self.native, "Training folder")
            if not folder:
                return
            self.folder.value = folder
        try:
            self.save(folder)
        except (ValueError, OSError) as err:
            show_error(f"not saved: {err}")
