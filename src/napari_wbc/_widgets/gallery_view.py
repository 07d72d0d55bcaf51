"""The Cell gallery's view: the cells as thumbnails in rows, grouped by type under headers.

:class:`GalleryView` (a list view: thumbnails flowing left to right, keys 1-5, U, X and Enter
as commands), :class:`CellModel` (per group a header row, then its cells in gallery order,
:func:`gallery_order`), :class:`CellDelegate` (draws a header, or a thumbnail with its review
status border and mark, its id and confidence) and :class:`ThumbnailLoader` (thumbnails,
:func:`napari_wbc.core.thumbnails.thumbnails`, made when first painted, in batches off the GUI
thread, kept in a bounded cache). Only the visible items are painted, so thousands of cells
stay fast. :class:`~napari_wbc._widgets.gallery.GalleryWidget` puts them together.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import pandas as pd
from napari.qt.threading import thread_worker
from qtpy.QtCore import QAbstractListModel, QEvent, QModelIndex, QObject, QRect, QSize, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QFont, QImage, QPainter, QPen
from qtpy.QtWidgets import QAbstractItemView, QListView, QSizePolicy, QStyle, QStyledItemDelegate

from ..core.dataset import CELL_TYPES, NOT_WBC, UNIDENTIFIED
from ..core.verification import STATUS_COLOURS  # a thumbnail's border; the report's frames

log = logging.getLogger(__name__)

GROUPS = (*CELL_TYPES, UNIDENTIFIED, NOT_WBC)  # in the order shown
TITLES = {**{kind: kind for kind in CELL_TYPES}, UNIDENTIFIED: "unidentified", NOT_WBC: "not a white cell"}
# the keys that type the selected cells; Enter confirms
KEY_TYPES = {
    **{getattr(Qt.Key, f"Key_{i}"): kind for i, kind in enumerate(CELL_TYPES, start=1)},
    Qt.Key.Key_U: UNIDENTIFIED,
    Qt.Key.Key_X: NOT_WBC,
}
CONFIRM = "confirm"
CONFIRM_KEYS = (Qt.Key.Key_Return, Qt.Key.Key_Enter)
STATUS_MARKS = {"suggested": "", "confirmed": "✓", "reclassified": "↻", "excluded": "✗"}
SELECTED_COLOUR = "#3d9df5"
THUMB = 96  # px, the side of a thumbnail (the same physical scale at every size)
PAD = 4  # px around a thumbnail, inside its item (the status border is drawn there)
CAPTION = 16  # px of text under a thumbnail
HEADER_HEIGHT = 26
BATCH = 64  # thumbnails made per background job (about one screenful)
CACHE = 4000  # thumbnails kept (96 x 96 RGB: 27 kB each)

LABEL_ROLE = Qt.ItemDataRole.UserRole  # a cell item's id (None on a header)
GROUP_ROLE = Qt.ItemDataRole.UserRole + 1  # the group an item belongs to
STATUS_ROLE = Qt.ItemDataRole.UserRole + 2  # a cell's review status
CAPTION_ROLE = Qt.ItemDataRole.UserRole + 3  # the text under a thumbnail
COUNT_ROLE = Qt.ItemDataRole.UserRole + 4  # a header's count


def group_of(cell_type) -> str:
    """The gallery group of a ``cell_type`` value (an untyped cell is unidentified)."""
    if cell_type in CELL_TYPES or cell_type == NOT_WBC:
        return cell_type
    return UNIDENTIFIED


def gallery_order(table: pd.DataFrame) -> pd.DataFrame:
    """The table's cells in gallery order: by group, then least sure first, then by id."""
    group = table["cell_type"].map(group_of) if "cell_type" in table else pd.Series(UNIDENTIFIED, table.index)
    confidence = table["type_confidence"] if "type_confidence" in table else pd.Series(np.nan, table.index)
    order = pd.DataFrame(
        {
            "label": table["label"].astype(int),
            "group": group,
            "rank": group.map(GROUPS.index),
            "confidence": pd.to_numeric(confidence, errors="coerce").fillna(-1.0),
        }
    )
    return order.sort_values(["rank", "confidence", "label"], kind="stable")


@thread_worker(ignore_errors=True)  # errors are shown by the loader
def _thumbnail_job(image, cells, nuclei, labels, options):
    from ..core.thumbnails import thumbnails

    return thumbnails(image, cells, nuclei, labels, **options)


def _qimage(array: np.ndarray) -> QImage:
    array = np.ascontiguousarray(array[..., :3], dtype=np.uint8)
    h, w = array.shape[:2]
    return QImage(array.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class ThumbnailLoader(QObject):
    """Thumbnails made on request, in batches off the GUI thread, kept in a bounded cache.

    ``get`` answers at once: the thumbnail, or None (and it is queued). Only queued cells that
    are still on screen when a job starts (``is_visible``) are made; ``ready`` gives the ids
    whose thumbnails arrived.
    """

    ready = Signal(list)
    failed = Signal(str)

    def __init__(self, parent, is_visible):
        super().__init__(parent)
        self._is_visible = is_visible
        self._cache: OrderedDict[int, QImage] = OrderedDict()
        self._pending: OrderedDict[int, None] = OrderedDict()
        self._source = None  # (image, cells, nuclei, options)
        self._generation = 0  # results of jobs started before a clear() are dropped
        self.worker = None
        self._timer = QTimer(self, singleShot=True, interval=0)
        self._timer.timeout.connect(self._start)

    def set_source(self, image, cells, nuclei, options: dict) -> None:
        self.clear()
        self._source = None if image is None else (image, cells, nuclei, options)

    def clear(self) -> None:
        """Forget every thumbnail (the pixels changed)."""
        self._cache.clear()
        self._pending.clear()
        self._generation += 1

    @property
    def source(self):
        """(image, cells, nuclei, options) the thumbnails are made from; None without an image."""
        return self._source

    @property
    def busy(self) -> bool:
        return self.worker is not None or bool(self._pending)

    def cached(self, label: int) -> QImage | None:
        """The thumbnail if it was made (nothing is queued)."""
        return self._cache.get(label)

    def get(self, label: int) -> QImage | None:
        image = self._cache.get(label)
        if image is not None:
            self._cache.move_to_end(label)
            return image
        if self._source is not None:
            self._pending[label] = None
            self._pending.move_to_end(label)
            self._timer.start()
        return None

    def _start(self) -> None:
        if self.worker is not None or self._source is None:
            return
        labels = [label for label in reversed(self._pending) if self._is_visible(label)][:BATCH]
        self._pending.clear()  # the others are asked for again when they are painted
        if not labels:
            return
        generation = self._generation
        image, cells, nuclei, options = self._source
        worker = _thumbnail_job(image, cells, nuclei, labels, options)
        worker.returned.connect(lambda out: self._arrived(generation, labels, out))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    def _arrived(self, generation: int, labels: list[int], arrays) -> None:
        if generation != self._generation:
            return
        for label, array in zip(labels, arrays, strict=True):
            self._cache[label] = _qimage(np.asarray(array))
        while len(self._cache) > CACHE:
            self._cache.popitem(last=False)
        self.ready.emit(labels)

    def _on_error(self, err: Exception) -> None:
        log.error("thumbnails failed", exc_info=err)
        self._source = None  # do not try again and again
        self.failed.emit(f"could not make the thumbnails: {err}")

    def _on_finished(self) -> None:
        self.worker = None
        if self._pending:
            self._timer.start()


class CellModel(QAbstractListModel):
    """The gallery's items: per group a header row, then its cells (in gallery order)."""

    INFO = ("review_status", "cell_type", "suggested_type", "type_confidence", "reviewed_by", "reviewed_at")

    def __init__(self, thumbs: ThumbnailLoader, parent=None):
        super().__init__(parent)
        self._thumbs = thumbs
        self._rows: list[tuple[str, int | None]] = []  # (group, label); label None on a header
        self._row_of: dict[int, int] = {}
        self._counts: dict[str, int] = {}
        self._info: dict[str, dict] = {}  # column -> label -> value, for what the items show

    def set_table(self, table: pd.DataFrame | None) -> None:
        """Show ``table``'s cells; when no cell changed place (a confirmation), the items are
        only repainted, not laid out again (thousands of cells)."""
        rows: list[tuple[str, int | None]] = []
        counts: dict[str, int] = {}
        if table is not None and len(table):
            order = gallery_order(table)
            for group, labels in zip(order["group"].tolist(), order["label"].tolist(), strict=True):
                if group not in counts:
                    counts[group] = 0
                    rows.append((group, None))
                counts[group] += 1
                rows.append((group, int(labels)))
        labels = table["label"].astype(int).tolist() if table is not None else []
        info = {
            column: dict(zip(labels, table[column].tolist(), strict=True))
            for column in (*self.INFO, "touches_border")
            if table is not None and column in table
        }
        if rows == self._rows and counts == self._counts:
            self._info = info
            if rows:
                self.dataChanged.emit(self.index(0), self.index(len(rows) - 1))
            return
        self.beginResetModel()
        self._rows, self._counts, self._info = rows, counts, info
        self._row_of = {label: row for row, (_, label) in enumerate(rows) if label is not None}
        self.endResetModel()

    # -- queries ---------------------------------------------------------------------------

    def groups(self) -> dict[str, list[int]]:
        """Group -> its cell ids, in the order shown."""
        out: dict[str, list[int]] = {}
        for group, label in self._rows:
            if label is not None:
                out.setdefault(group, []).append(label)
        return out

    def header_text(self, group: str) -> str | None:
        row = next((i for i, (g, label) in enumerate(self._rows) if g == group and label is None), None)
        return None if row is None else self.data(self.index(row), Qt.ItemDataRole.DisplayRole)

    def cell_order(self) -> list[int]:
        return [label for _, label in self._rows if label is not None]

    def index_of(self, label: int) -> QModelIndex:
        row = self._row_of.get(int(label))
        return QModelIndex() if row is None else self.index(row)

    def label_at(self, row: int) -> int | None:
        return self._rows[row][1] if 0 <= row < len(self._rows) else None

    def is_header(self, row: int) -> bool:
        return self._rows[row][1] is None

    # -- Qt model --------------------------------------------------------------------------

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: B008 (Qt's signature)
        return 0 if parent.isValid() else len(self._rows)

    def flags(self, index):
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        if self._rows[index.row()][1] is None:  # a header: shown, never selected
            return Qt.ItemFlag.ItemIsEnabled
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        group, label = self._rows[index.row()]
        if role == GROUP_ROLE:
            return group
        if role == LABEL_ROLE:
            return label
        if label is None:  # a header
            n = self._counts.get(group, 0)
            if role == Qt.ItemDataRole.DisplayRole:
                if group == NOT_WBC:
                    return f"{TITLES[group]} (excluded from the count): {n}"
                return f"{TITLES[group]}: {n}"
            if role == COUNT_ROLE:
                return n
            return None
        if role == Qt.ItemDataRole.DecorationRole:
            return self._thumbs.get(label)
        if role == STATUS_ROLE:
            return str(self._value("review_status", label) or "suggested")
        if role in (Qt.ItemDataRole.DisplayRole, CAPTION_ROLE):
            return f"{label}{self._sure(label)}"
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(label)
        return None

    def _value(self, column: str, label: int):
        value = self._info.get(column, {}).get(label)
        return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value

    def _sure(self, label: int) -> str:
        confidence = self._value("type_confidence", label)
        return "" if confidence is None else f" {100 * float(confidence):.0f}%"

    def _tooltip(self, label: int) -> str:
        kind, suggested = self._value("cell_type", label), self._value("suggested_type", label)
        status, by, at = (self._value(c, label) for c in ("review_status", "reviewed_by", "reviewed_at"))
        lines = [f"cell {label}: {TITLES[group_of(kind)]}"]
        if self._sure(label):
            lines.append(f"classifier's confidence{self._sure(label)}")
        if suggested and suggested != kind:
            lines.append(f"suggested: {TITLES[group_of(suggested)]}")
        status = status or "suggested"
        lines.append(f"{status} by {by}" + (f" at {at}" if at else "") if by else status)
        if self._value("touches_border", label):
            lines.append("touches the image border")
        return "\n".join(lines)

    def refresh_labels(self, labels) -> None:
        """Repaint these cells (their thumbnails arrived)."""
        rows = [self._row_of[label] for label in labels if label in self._row_of]
        if rows:
            self.dataChanged.emit(
                self.index(min(rows)), self.index(max(rows)), [Qt.ItemDataRole.DecorationRole]
            )


class CellDelegate(QStyledItemDelegate):
    """Draws a header (group name and count across the view) or a cell's thumbnail, its status
    border and mark, and its id and confidence."""

    def __init__(self, view: QListView):
        super().__init__(view)
        self._view = view

    def sizeHint(self, option, index) -> QSize:
        if self._view.model().is_header(index.row()):  # a header: a whole row of the view
            width = self._view.viewport().width() - 2 * self._view.spacing() - 2
            return QSize(max(width, self._view.thumb + 2 * PAD), HEADER_HEIGHT)
        return self._view.item_size

    def paint(self, painter: QPainter, option, index) -> None:
        painter.save()
        try:
            if index.data(LABEL_ROLE) is None:
                self._paint_header(painter, option, index)
            else:
                self._paint_cell(painter, option, index)
        finally:
            painter.restore()

    def _paint_header(self, painter, option, index) -> None:
        rect = option.rect.adjusted(0, 3, 0, -1)
        text = option.palette.text().color()
        shade = QColor(text)
        shade.setAlpha(40)  # a band in the theme's text colour: readable on dark and light themes
        painter.fillRect(rect, shade)
        font = QFont(option.font)
        font.setBold(True)
        painter.setFont(font)
        painter.setPen(text)
        painter.drawText(
            rect.adjusted(6, 0, -6, 0),
            Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
            index.data(Qt.ItemDataRole.DisplayRole),
        )

    def _paint_cell(self, painter, option, index) -> None:
        rect = option.rect
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        if selected:
            painter.fillRect(rect, QColor(SELECTED_COLOUR))
        side = self._view.thumb
        thumb = QRect(rect.x() + PAD, rect.y() + PAD, side, side)
        image = index.data(Qt.ItemDataRole.DecorationRole)
        if image is None:  # being made
            painter.fillRect(thumb, QColor("#3a3a3a"))
            painter.setPen(QColor("#bbbbbb"))
            painter.drawText(thumb, Qt.AlignmentFlag.AlignCenter, "…")
        else:
            painter.drawImage(thumb, image)
        status = index.data(STATUS_ROLE)
        colour = QColor(STATUS_COLOURS.get(status, STATUS_COLOURS["suggested"]))
        pen = QPen(colour, 3)
        pen.setJoinStyle(Qt.PenJoinStyle.MiterJoin)
        painter.setPen(pen)
        painter.drawRect(thumb.adjusted(-1, -1, 0, 0))
        mark = STATUS_MARKS.get(status, "")
        font = QFont(option.font)
        if mark:
            badge = QRect(thumb.x(), thumb.y(), 18, 18)
            painter.fillRect(badge, colour)
            font.setBold(True)
            painter.setFont(font)
            painter.setPen(QColor("white"))
            painter.drawText(badge, Qt.AlignmentFlag.AlignCenter, mark)
        font.setBold(False)
        font.setPointSizeF(max(7.0, font.pointSizeF() - 1))
        painter.setFont(font)
        text_colour = option.palette.highlightedText() if selected else option.palette.text()
        painter.setPen(text_colour.color())
        caption = QRect(rect.x() + PAD, thumb.bottom() + 2, side, CAPTION)
        painter.drawText(caption, Qt.AlignmentFlag.AlignCenter, index.data(CAPTION_ROLE))
        if option.state & QStyle.StateFlag.State_HasFocus:
            painter.setPen(QPen(option.palette.text().color(), 1, Qt.PenStyle.DotLine))
            painter.drawRect(rect.adjusted(0, 0, -1, -1))


class GalleryView(QListView):
    """Thumbnails flowing left to right in rows; keys 1-5, U, X type the selection, Enter confirms."""

    command = Signal(str)  # a cell type, or CONFIRM

    def __init__(self, parent=None):
        super().__init__(parent)
        self.set_thumb_size(THUMB)
        self.setViewMode(QListView.ViewMode.ListMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(True)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(False)
        self.setSpacing(2)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.verticalScrollBar().setSingleStep(24)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setMouseTracking(False)
        self.setItemDelegate(CellDelegate(self))
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_thumb_size(self, side: int) -> None:
        self.thumb = int(side)
        self.item_size = QSize(self.thumb + 2 * PAD, self.thumb + 2 * PAD + CAPTION)
        self.scheduleDelayedItemsLayout()

    def _command_of(self, event) -> str | None:
        shortcut = event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
        if shortcut != Qt.KeyboardModifier.NoModifier:
            return None
        if event.key() in CONFIRM_KEYS:
            return CONFIRM
        return KEY_TYPES.get(event.key())

    def event(self, event) -> bool:
        # the gallery's keys win over napari's shortcuts while the gallery has the focus
        if event.type() == QEvent.Type.ShortcutOverride and self._command_of(event) is not None:
            event.accept()
            return True
        return super().event(event)

    def keyPressEvent(self, event) -> None:
        command = self._command_of(event)
        if command is None:
            super().keyPressEvent(event)
            return
        event.accept()
        self.command.emit(command)

    def moveCursor(self, action, modifiers) -> QModelIndex:
        """Arrows go from cell to cell over the headers: left/right in gallery order, up/down to
        the cell above/below, across a header to the nearest cell of the next group."""
        actions = QAbstractItemView.CursorAction
        current = self.currentIndex()
        row = current.row() if current.isValid() else -1
        step = {
            actions.MoveLeft: -1,
            actions.MovePrevious: -1,
            actions.MoveRight: 1,
            actions.MoveNext: 1,
        }.get(action)
        if action == actions.MoveHome:
            return self._cell_from(0, 1)
        if action == actions.MoveEnd:
            return self._cell_from(self.model().rowCount() - 1, -1)
        if step is None:  # up, down, page up, page down: where Qt's geometry says
            step = 1 if action in (actions.MoveDown, actions.MovePageDown) else -1
            moved = super().moveCursor(action, modifiers)
            if moved.isValid() and moved.row() != row:
                if not self.model().is_header(moved.row()):
                    return moved
                row = moved.row()  # a header: on to the first cell past it
        found = self._cell_from(row + step, step)
        return found if found.isValid() else current

    def _cell_from(self, row: int, step: int) -> QModelIndex:
        """The first cell from ``row`` on, going ``step`` (+1 or -1)."""
        model = self.model()
        while 0 <= row < model.rowCount():
            if not model.is_header(row):
                return model.index(row)
            row += step
        return QModelIndex()

    def visible_labels(self) -> list[int]:
        """The cells on screen (rows flow top to bottom, so two binary searches find them)."""
        model, height = self.model(), self.viewport().height()

        def first(past) -> int:
            lo, hi = 0, model.rowCount()
            while lo < hi:
                mid = (lo + hi) // 2
                if past(self.visualRect(model.index(mid))):
                    lo = mid + 1
                else:
                    hi = mid
            return lo

        start = first(lambda rect: rect.bottom() < 0)
        stop = first(lambda rect: rect.top() < height)
        labels = (model.label_at(row) for row in range(start, stop))
        return [label for label in labels if label is not None]

    def is_visible(self, label: int) -> bool:
        index = self.model().index_of(label)
        return index.isValid() and self.visualRect(index).intersects(self.viewport().rect())
