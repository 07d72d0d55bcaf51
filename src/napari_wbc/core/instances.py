"""Instance targets and results: class maps <-> per-cell masks with boxes.

Instance models (LeukocyteMask, YOLACT-CIS) train on per-cell targets and return
per-cell detections; the app needs label images. This module converts both ways:

* ``targets_from_classes``: a class map (0 background, 1 cytoplasm, 2 nucleus) or a cell
  instance image -> boxes, cell masks and nucleus masks, one row per white cell;
* ``labels_from_detections``: scored cell/nucleus masks -> cell and nucleus label images
  (higher scores painted last lose no pixels to lower ones; nuclei stay inside their cell).
"""

from __future__ import annotations

import numpy as np


def targets_from_classes(
    classes: np.ndarray, cells: np.ndarray | None = None, min_area: int = 16
) -> dict[str, np.ndarray]:
    """Per-cell targets from a class map (and optionally its cell instance image).

    Without ``cells`` the white cells are the connected components of ``classes > 0``.
    Returns ``boxes`` (N, 4) float32 as x0, y0, x1, y1 with exclusive ends (pixel edges),
    ``cells`` and ``nuclei`` (N, H, W) bool; components under ``min_area`` px are dropped.
    """
    from scipy import ndimage

    classes = np.asarray(classes)
    if cells is None:
        cells, _ = ndimage.label(classes > 0)
    ids = [i for i in np.unique(cells) if i != 0]
    boxes, cell_masks, nucleus_masks = [], [], []
    slices = ndimage.find_objects(cells.astype(np.int64))
    for i in ids:
        sl = slices[i - 1]
        mask = cells == i
        if sl is None or mask.sum() < min_area:
            continue
        ys, xs = sl
        boxes.append([xs.start, ys.start, xs.stop, ys.stop])
        cell_masks.append(mask)
        nucleus_masks.append(mask & (classes == 2))
    h, w = classes.shape
    if not boxes:
        return {
            "boxes": np.zeros((0, 4), np.float32),
            "cells": np.zeros((0, h, w), bool),
            "nuclei": np.zeros((0, h, w), bool),
        }
    return {
        "boxes": np.asarray(boxes, np.float32),
        "cells": np.stack(cell_masks),
        "nuclei": np.stack(nucleus_masks),
    }


def labels_from_detections(
    scores: np.ndarray,
    cells: np.ndarray,
    nuclei: np.ndarray,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    min_area: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cell and nucleus label images (uint32) from scored soft masks (N, H, W).

    Detections are painted from the highest score down, each only onto pixels no better
    detection took; ids are 1.. in score order; a nucleus pixel is kept only inside its cell.
    """
    cell_labels, nucleus_labels, _ = paint_detections(
        scores, cells, nuclei, score_threshold, mask_threshold, min_area
    )
    return cell_labels, nucleus_labels


def paint_detections(
    scores: np.ndarray,
    cells: np.ndarray,
    nuclei: np.ndarray,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    min_area: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As :func:`labels_from_detections`, plus the score of each painted id (id i: [i - 1])."""
    h, w = cells.shape[1:] if cells.ndim == 3 else (0, 0)
    cell_labels = np.zeros((h, w), np.uint32)
    nucleus_labels = np.zeros((h, w), np.uint32)
    next_id, kept = 1, []
    for k in np.argsort(-np.asarray(scores), kind="stable"):
        if scores[k] < score_threshold:
            continue
        mask = (cells[k] >= mask_threshold) & (cell_labels == 0)
        if mask.sum() <= max(min_area, 0):
            continue
        cell_labels[mask] = next_id
        nucleus_labels[mask & (nuclei[k] >= mask_threshold)] = next_id
        kept.append(float(scores[k]))
        next_id += 1
    return cell_labels, nucleus_labels, np.asarray(kept, np.float32)
