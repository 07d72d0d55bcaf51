"""How well cells are typed: accuracy, per-class precision and recall, the confusion matrix
(as a table and a PNG) and the unidentified rate.

Every reference cell of known type counts once. Its prediction is a type, ``unidentified``,
``not_wbc`` (the classifier took it for no white cell) or ``missed`` (the segmenter found
no cell matching it): all but the right type count as wrong, so segmentation errors show
in the figures of the whole pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import CELL_TYPES, NOT_WBC, UNIDENTIFIED

MISSED = "missed"
PREDICTED = (*CELL_TYPES, UNIDENTIFIED, NOT_WBC, MISSED)


def type_report(truth: list[str], predicted: list[str]) -> dict:
    """Figures for pairs of (reference type, prediction); see the module docstring."""
    truth, predicted = list(truth), list(predicted)
    confusion = np.zeros((len(CELL_TYPES), len(PREDICTED)), int)
    for t, p in zip(truth, predicted, strict=True):
        confusion[CELL_TYPES.index(t), PREDICTED.index(p)] += 1
    n = int(confusion.sum())
    right = np.diag(confusion[:, : len(CELL_TYPES)])
    identified = confusion[:, : len(CELL_TYPES)].sum()
    per_class = {}
    for k, kind in enumerate(CELL_TYPES):
        row, column = confusion[k].sum(), confusion[:, k].sum()
        per_class[kind] = {
            "cells": int(row),
            "recall": float(right[k] / row) if row else None,
            "precision": float(right[k] / column) if column else None,
        }
    return {
        "cells": n,
        "accuracy": float(right.sum() / n) if n else None,
        "accuracy_identified": float(right.sum() / identified) if identified else None,
        "unidentified_rate": float(confusion[:, PREDICTED.index(UNIDENTIFIED)].sum() / n) if n else None,
        "not_wbc_rate": float(confusion[:, PREDICTED.index(NOT_WBC)].sum() / n) if n else None,
        "per_class": per_class,
        "columns": list(PREDICTED),
        "confusion": confusion.tolist(),
    }


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def format_type_report(report: dict, title: str) -> str:
    """The report as Markdown: a line of figures, per-class recall/precision, the confusion."""
    if not report.get("cells"):
        return f"{title}: no cells of known type"
    lines = [
        f"{title}: accuracy {_pct(report['accuracy'])}% of {report['cells']} cells "
        f"({_pct(report['accuracy_identified'])}% of those given a type), unidentified "
        f"{_pct(report['unidentified_rate'])}%, taken for no white cell {_pct(report['not_wbc_rate'])}%",
        "",
        "| reference \\ predicted | " + " | ".join(report["columns"]) + " | recall % | precision % |",
        "|---" * (len(report["columns"]) + 3) + "|",
    ]
    for kind, row in zip(CELL_TYPES, report["confusion"], strict=True):
        c = report["per_class"][kind]
        lines.append(
            f"| {kind} ({c['cells']}) | "
            + " | ".join(map(str, row))
            + f" | {_pct(c['recall'])} | {_pct(c['precision'])} |"
        )
    wrong = report.get("wrong_cells")
    if wrong:
        lines += [
            "",
            f"Typed wrong ({len(wrong)}): "
            + "; ".join(
                f"{w['field']} {w['reference']} -> {w['typed']}"
                + (f" ({w['confidence']:.2f})" if w.get("confidence") is not None else "")
                for w in wrong
            ),
        ]
    return "\n".join(lines)


def confusion_png(report: dict, path: str | Path, title: str = "") -> Path:
    """The confusion matrix as a PNG: rows reference types, columns predictions, each cell
    shaded by its share of the row, with the count written in it."""
    from PIL import Image, ImageDraw

    rows, cols = CELL_TYPES, report["columns"]
    m = np.asarray(report["confusion"], float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    cell, left, top = 78, 110, 60
    image = Image.new("RGB", (left + cell * len(cols) + 10, top + cell * len(rows) + 30), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill="black")
    for j, name in enumerate(cols):
        draw.text((left + j * cell + 4, top - 18), name, fill="black")
    for i, name in enumerate(rows):
        draw.text((8, top + i * cell + cell // 2 - 6), f"{name} ({int(m[i].sum())})", fill="black")
        for j in range(len(cols)):
            v = share[i, j]
            good = j == i
            shade = (
                (int(255 * (1 - v)), 255, int(255 * (1 - v)))
                if good
                else (255, int(255 * (1 - v)), int(255 * (1 - v)))
            )
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell - 2, top + (i + 1) * cell - 2)
            draw.rectangle(box, fill=shade, outline=(200, 200, 200))
            draw.text((box[0] + cell // 2 - 8, box[1] + cell // 2 - 6), str(int(m[i, j])), fill="black")
    draw.text(
        (10, image.height - 20),
        "rows: reference type; columns: prediction; green: right, red: wrong",
        fill="black",
    )
    path = Path(path)
    image.save(path)
    return path


def wrong_cells_png(wrong: list[dict], pictures: list[np.ndarray], path: str | Path, title: str = "") -> Path:
    """The wrongly typed cells side by side, as a reviewer would look at them: each
    picture captioned with its field, the reference type and what the pipeline said."""
    from PIL import Image, ImageDraw

    side, caption, per_row = 128, 30, 6
    rows = -(-len(pictures) // per_row)
    image = Image.new("RGB", (per_row * (side + 6) + 6, 28 + rows * (side + caption + 6)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((6, 8), title, fill="black")
    for k, (w, picture) in enumerate(zip(wrong, pictures, strict=True)):
        x, y = 6 + (k % per_row) * (side + 6), 28 + (k // per_row) * (side + caption + 6)
        image.paste(Image.fromarray(np.asarray(picture, np.uint8)).resize((side, side)), (x, y))
        p = "" if w.get("confidence") is None else f" {w['confidence']:.2f}"
        draw.text((x, y + side + 2), f"{w['field']}: {w['reference'][:5]}", fill="black")
        draw.text((x, y + side + 15), f"-> {w['typed'][:5]}{p}", fill=(180, 0, 0))
    path = Path(path)
    image.save(path)
    return path
