"""A small live plot of training loss and validation Dice (QPainter; no plotting library)."""

from __future__ import annotations

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

LOSS_COLOR = QColor("#4fc3f7")
VAL_COLOR = QColor("#ffb74d")


class LossPlot(QWidget):
    """Loss per step (left axis, 0..max) and validation Dice per validation (right axis, 0..1)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.loss: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.total = 1
        self.setMinimumHeight(150)

    def clear(self, total: int = 1) -> None:
        self.loss, self.val, self.total = [], [], max(1, int(total))
        self.update()

    def add(self, step: int, loss: float | None = None, dice: float | None = None) -> None:
        if loss is not None:
            self.loss.append((step, float(loss)))
        if dice is not None:
            self.val.append((step, float(dice)))
        self.update()

    def _line(self, painter, box: QRectF, points, top: float, color: QColor) -> None:
        if not points:
            return
        painter.setPen(QPen(color, 1.5))
        poly = QPolygonF(
            [
                QPointF(
                    box.left() + box.width() * s / self.total, box.bottom() - box.height() * min(v, top) / top
                )
                for s, v in points
            ]
        )
        if len(points) == 1:
            painter.drawEllipse(poly[0], 2.5, 2.5)
        else:
            painter.drawPolyline(poly)

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        box = QRectF(self.rect()).adjusted(40, 18, -40, -18)
        text = self.palette().windowText().color()
        painter.setPen(QPen(text, 1))
        painter.drawRect(box)
        top = max((v for _, v in self.loss), default=1.0) or 1.0
        painter.drawText(QRectF(0, box.top() - 6, 36, 14), Qt.AlignmentFlag.AlignRight, f"{top:.2g}")
        painter.drawText(QRectF(0, box.bottom() - 8, 36, 14), Qt.AlignmentFlag.AlignRight, "0")
        painter.drawText(QRectF(box.right() + 4, box.top() - 6, 36, 14), Qt.AlignmentFlag.AlignLeft, "1")
        painter.drawText(
            QRectF(box.left(), box.bottom() + 2, box.width(), 14),
            Qt.AlignmentFlag.AlignRight,
            f"step {self.total}",
        )
        self._line(painter, box, self.loss, top, LOSS_COLOR)
        self._line(painter, box, self.val, 1.0, VAL_COLOR)
        legend = [
            (LOSS_COLOR, "loss" + (f" {self.loss[-1][1]:.3f}" if self.loss else "")),
            (VAL_COLOR, "val Dice" + (f" {self.val[-1][1]:.3f}" if self.val else "")),
        ]
        x = box.left()
        for color, label in legend:
            painter.setPen(QPen(color, 1))
            painter.drawText(QRectF(x, 0, 140, 16), Qt.AlignmentFlag.AlignLeft, label)
            x += 140
        painter.end()
