"""Measurement table: a view over the cells layer's ``features`` (one row per cell).

The labels layer owns the numbers; this widget only shows them, with the white-cell
count above (the table asks for little height: its header and three rows, and takes what
the other docks leave). Selection is synced both ways: clicking a row selects that cell in the
layer and centres the camera on it; selecting a label in the layer selects its row. The
table follows the cells layer picked in its combo box, the active layer when that is a
cells layer, and the layer's ``features`` events: when the cells and columns are the ones
shown (a type set or reviewed in the Cell gallery or the Correct widget) only the items whose
value changed are updated, in place, keeping the sort order and the selection; else (a new
segmentation run, cells edited) the table is rebuilt. Export CSV
writes the features without the pandas index (and without napari's ``index`` column,
which only repeats ``label``), through a temporary file, so a failed write never leaves
half a file.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, Label, PushButton
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QFileDialog, QSizePolicy, QTableWidget, QTableWidgetItem

from ..core.columns import COMPLETE, explain, plain_name
from ..core.io import InputError
from ._layers import side_by_side

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

LABEL_ROLE = Qt.ItemDataRole.UserRole  # on a table item: its cell id
COLUMN_ROLE = Qt.ItemDataRole.UserRole  # on a header item: the column's name in the table and CSV
NAPARI_ONLY_COLUMNS = ("index",)  # napari's label -> row key, equal to `label`
TABLE_MIN_ROWS = 3  # the table needs no more height than its header and these; it takes what is left
SORT_ONCE_ABOVE = 100  # more changed items than this: sorted once after, not as each one changes


# after the cell id: the review's verdict (sort by IoU for the cells to fix), the user's marks, the NCR
FIRST_COLUMNS = ("label", "status", "iou", "cell_type", "reviewed", "edited", "ncr", "nucleus_cell_ratio")


def display_order(columns) -> list[str]:
    """Review and user columns, then the NCR, after the cell id; centroids last (for the export)."""
    first = [c for c in FIRST_COLUMNS if c in columns]
    last = [c for c in columns if c.startswith("centroid_")]
    return first + [c for c in columns if c not in first and c not in last] + last


def _is_cells_layer(layer) -> bool:
    return isinstance(layer, Labels) and "label" in layer.features.columns


def _cell_text(value):
    """What a table cell shows: numbers stay numbers (so sorting is numeric), rounded."""
    if value is None or value is pd.NA:  # e.g. no reference cell for an extra cell
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return "–" if math.isnan(value) else round(float(value), 3)
    return str(value)


def _differing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The positions where two object arrays of the same length differ (missing equals missing)."""
    both_missing = pd.isna(a) & pd.isna(b)
    try:
        differ = np.asarray(a != b, dtype=bool)
    except (TypeError, ValueError):  # pd.NA has no truth value: compare what the items show
        differ = np.array([_cell_text(x) != _cell_text(y) for x, y in zip(a, b, strict=True)], dtype=bool)
    return np.flatnonzero(differ & ~both_missing)


def _summary(table: pd.DataFrame) -> str:
    """The line above the table: the count and differential, or the number of cells."""
    from ..core.measure import count_summary, describe_counts

    return describe_counts(count_summary(table)) if "touches_border" in table else f"{len(table)} cells"


class MeasureWidget(Container):
    """Per-cell measurements of a cells layer, with counts, selection sync and CSV export."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=False)
        self._viewer = viewer
        self._layer: Labels | None = None
        self._syncing = False  # True while the widget itself changes the selection
        self._shown: pd.DataFrame | None = None  # what the table shows, columns in display order
        self.layer = ComboBox(
            label="cells layer",
            choices=self._cell_layers,
            tooltip="labels layer whose per-cell measurements are shown",
        )
        self.summary = Label(value="no cells layer yet: run Segment white cells")
        self.summary.native.setWordWrap(True)
        self.summary.tooltip = (
            "white cells counted (objects the classifier calls no white cell are "
            "left out), then the differential: count and percent per type; " + COMPLETE
        )
        self.export_button = PushButton(text="Export CSV…", tooltip="save this table as a CSV file")
        # one row for the layer and the export: the table gets the height
        self.append(side_by_side(self.layer, self.export_button, labels=True))
        self.append(self.summary)
        self.margins = (4, 4, 4, 4)
        self.table = QTableWidget()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        row_height = self.table.fontMetrics().height() + 6
        self.table.verticalHeader().setDefaultSectionSize(row_height)
        header = row_height + 6  # its own height is known once styled and filled; a little more than a row
        self.table.setMinimumHeight(header + TABLE_MIN_ROWS * row_height + 2 * self.table.frameWidth())
        self.table.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.native.layout().addWidget(self.table)

        self.layer.changed.connect(self._bind)
        self.export_button.changed.connect(self._ask_export)
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.reordered, events.renamed):
            emitter.connect(self._refresh_layers)
        viewer.layers.selection.events.active.connect(self._follow_active)
        self._bind(self.layer.value)

    # -- which layer -----------------------------------------------------------------------

    def _cell_layers(self, _widget=None) -> list[tuple[str, Labels]]:
        return [(layer.name, layer) for layer in self._viewer.layers if _is_cells_layer(layer)]

    def _refresh_layers(self, _event=None) -> None:
        self.layer.reset_choices()
        if self._layer is not None and self._layer not in list(self._viewer.layers):
            self._bind(self.layer.value)

    def _follow_active(self, event=None) -> None:
        active = self._viewer.layers.selection.active
        # == rather than `is`: napari may hand plugins a new proxy for the same layer
        if _is_cells_layer(active) and active != self._layer:
            self.show_layer(active)

    def show_layer(self, layer: Labels) -> None:
        """Show the measurements of ``layer`` (a labels layer with a ``label`` feature)."""
        self.layer.reset_choices()
        self.layer.value = layer
        if self._layer != layer:  # the combo box already held it: bind anyway
            self._bind(layer)

    def _bind(self, layer) -> None:
        if self._layer is not None:
            self._layer.events.features.disconnect(self._on_features)
            self._layer.events.selected_label.disconnect(self._on_label_selected)
        self._layer = layer
        if layer is not None:
            layer.events.features.connect(self._on_features)
            layer.events.selected_label.connect(self._on_label_selected)
        self.refresh()

    # -- table -----------------------------------------------------------------------------

    @property
    def features(self) -> pd.DataFrame | None:
        """The shown layer's measurements, without napari's own columns."""
        if self._layer is None:
            return None
        table = self._layer.features
        return table.drop(columns=[c for c in NAPARI_ONLY_COLUMNS if c in table.columns])

    def _on_features(self, _event=None) -> None:
        if not self.update_changed():
            self.refresh()

    def update_changed(self) -> bool:
        """Show the layer's features by changing only the items whose value changed (a type
        set, a cell reviewed), in place: the sort order holds (a changed item in the sorted
        column moves to its place) and so does the selection. False, changing nothing, when the
        features are not of the cells and columns shown (a new segmentation): rebuild then."""
        table, old = self.features, self._shown
        if table is None or old is None or "label" not in table.columns:
            return False
        columns = display_order(table.columns)
        if columns != list(old.columns) or not np.array_equal(
            table["label"].to_numpy(), old["label"].to_numpy()
        ):
            return False
        table = table[columns].reset_index(drop=True)
        changes = []  # (position in the table, column, what the item shows now)
        for col, name in enumerate(columns):
            if old[name].equals(table[name]):
                continue
            before, now = old[name].to_numpy(dtype=object), table[name].to_numpy(dtype=object)
            for i in _differing(before, now):
                value = _cell_text(now[i])
                if value != _cell_text(before[i]):
                    changes.append((int(i), col, value))
        if changes:
            row_of = {self.table.item(r, 0).data(LABEL_ROLE): r for r in range(self.table.rowCount())}
            labels = table["label"].to_numpy()
            items = [(self.table.item(row_of[int(labels[i])], col), value) for i, col, value in changes]
            sort_once = len(items) > SORT_ONCE_ABOVE and self.table.isSortingEnabled()
            self._syncing = True
            try:
                if sort_once:
                    self.table.setSortingEnabled(False)
                for item, value in items:  # a changed item in the sorted column moves to its place
                    item.setData(Qt.ItemDataRole.DisplayRole, value)
                if sort_once:
                    self.table.setSortingEnabled(True)  # sorts by the header's column and order
            finally:
                self._syncing = False
            self._fit_columns(changes)
        self._shown = table.copy()
        self.summary.value = _summary(table)
        return True

    def _fit_columns(self, changes: list[tuple[int, int, object]]) -> None:
        """Widen the columns whose changed values would not fit (they only ever widen here)."""
        from qtpy.QtWidgets import QStyle

        metrics = self.table.fontMetrics()
        margin = 2 * (self.table.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin) + 1)
        widest: dict[int, int] = {}
        for _, col, value in changes:
            widest[col] = max(widest.get(col, 0), metrics.horizontalAdvance(str(value)) + margin)
        for col, width in widest.items():
            if width > self.table.columnWidth(col):
                self.table.resizeColumnToContents(col)

    def refresh(self) -> None:
        """Rebuild the table and the count from the layer's features."""
        table = self.features
        self._shown = None
        self._syncing = True
        try:
            self.table.setSortingEnabled(False)
            self.table.clear()
            if table is None or "label" not in table.columns:
                self.table.setRowCount(0)
                self.table.setColumnCount(0)
                self.summary.value = (
                    "no cells layer yet: run Segment white cells"
                    if table is None
                    else f"{self._layer.name} has no cell measurements"
                )
                return
            columns = display_order(table.columns)
            table = table[columns]
            self.table.setColumnCount(len(columns))
            self.table.setRowCount(len(table))
            for col, name in enumerate(columns):  # plain names, explained on hover; the key kept
                header = QTableWidgetItem(plain_name(name))
                header.setToolTip(explain(name))
                header.setData(COLUMN_ROLE, name)
                self.table.setHorizontalHeaderItem(col, header)
            for row, (label, values) in enumerate(
                zip(table["label"], table.itertuples(index=False), strict=True)
            ):
                for col, value in enumerate(values):
                    item = QTableWidgetItem()
                    item.setData(Qt.ItemDataRole.DisplayRole, _cell_text(value))
                    item.setData(LABEL_ROLE, int(label))
                    self.table.setItem(row, col, item)
            self.table.setSortingEnabled(True)
            self.table.resizeColumnsToContents()
            self.summary.value = _summary(table)
            self._shown = table.reset_index(drop=True).copy()
        finally:
            self._syncing = False
        self._on_label_selected()

    def row_of(self, label: int) -> int | None:
        """Table row (as currently sorted) that shows cell ``label``."""
        for row in range(self.table.rowCount()):
            item = self.table.item(row, 0)
            if item is not None and item.data(LABEL_ROLE) == label:
                return row
        return None

    def selected_cell(self) -> int | None:
        """The cell id of the selected row, if any."""
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return self.table.item(rows[0].row(), 0).data(LABEL_ROLE)

    # -- selection sync --------------------------------------------------------------------

    def _on_row_selected(self) -> None:
        if self._syncing or self._layer is None:
            return
        label = self.selected_cell()
        if label is None:
            return
        self._syncing = True
        try:
            self._layer.selected_label = label
        finally:
            self._syncing = False
        self.centre_on(label)

    def centre_on(self, label: int) -> None:
        """Move the camera (not the zoom) to the centroid of cell ``label``."""
        table = self._layer.features
        row = table.loc[table["label"] == label]
        if row.empty:
            return
        centroid = (float(row["centroid_y"].iloc[0]), float(row["centroid_x"].iloc[0]))
        world = self._layer.data_to_world(centroid)
        self._viewer.scene.camera.center = tuple(float(v) for v in world)

    def _on_label_selected(self, _event=None) -> None:
        if self._syncing or self._layer is None:
            return
        row = self.row_of(self._layer.selected_label)
        self._syncing = True
        try:
            if row is None:
                self.table.clearSelection()
            else:
                self.table.selectRow(row)
                self.table.scrollToItem(self.table.item(row, 0))
        finally:
            self._syncing = False

    # -- export ----------------------------------------------------------------------------

    def export_csv(self, path: str | Path) -> Path:
        """Write the measurements to ``path`` (replacing it) and return the path."""
        from ..core.batch import write_csv

        table = self.features
        if table is None:
            raise InputError("there is no cells layer to export; run Segment white cells first")
        path = Path(path)
        write_csv(path, table)
        log.info("wrote %d rows to %s", len(table), path)
        return path

    def _ask_export(self, _value=None) -> None:
        if self._layer is None:
            show_error("there is no cells layer to export; run Segment white cells first")
            return
        source = (self._layer.metadata or {}).get("source")
        start = f"{self._layer.name}.csv"
        if source:  # beside the image
            start = str(Path(source).with_name(start))
        # the dialog asks before replacing an existing file
        path, _ = QFileDialog.getSaveFileName(
            self.native, "Export cell measurements", start, "CSV files (*.csv)"
        )
        if not path:
            return
        try:
            written = self.export_csv(path)
        except (OSError, InputError) as err:
            show_error(f"could not write {path}: {err}")
            return
        show_info(f"wrote {len(self.features)} cells to {written}")
