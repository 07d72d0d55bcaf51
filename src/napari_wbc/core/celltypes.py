"""Cell types from the cell-type classifier (``models/celltype.py``), for the cells any
segmentation model found: crops, probabilities, the analyser's rules, the differential.

Each cell is cut out as a square 1.5x its larger side (``cell_crops``), with its own cell and
nucleus masks; the classifier gives a probability per class (the five types and
``not_wbc``). The rules (``decide``): an object whose most likely class is ``not_wbc`` is no
white cell (kept in the labels, left out of the count, so a reviewer can restore it); a
white cell whose type probability (over the five types) is below the classifier's
``unidentified_below`` (chosen on the val splits, in its config.json) is ``unidentified``,
as analysers do, rather than a confident wrong type.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .dataset import CELL_TYPES, NOT_WBC, TYPING, UNIDENTIFIED

CLASSIFIER = "celltype"  # the shipped classifier's name
DEFAULT_UNIDENTIFIED_BELOW = 0.5


def cell_crops(
    image: np.ndarray,
    cells: np.ndarray,
    nuclei: np.ndarray,
    ids=None,
    size: int = 64,
    context: float = 1.5,
    origin: tuple[int, int] = (0, 0),
):
    """Square crops around cells: ``(rgb, label, width)``.

    ``rgb`` (N, size, size, 3) uint8, ``label`` (N, size, size) uint8 with 1 for this cell's
    cytoplasm and 2 for its nucleus (neighbours 0), ``width`` (N,) the cell's equivalent
    diameter in image px. The crop is centred on the cell's box, ``context`` times its larger
    side; outside the image, the image is mirrored and the masks are 0. ``cells`` and
    ``nuclei`` may cover only part of ``image``, placed at ``origin`` (y, x) in it.
    """
    from scipy import ndimage
    from skimage.transform import resize

    cells = np.asarray(cells)
    boxes = ndimage.find_objects(cells.astype(np.int64))
    if ids is None:
        ids = [i for i, b in enumerate(boxes, start=1) if b is not None]
    n = len(ids)
    rgb = np.zeros((n, size, size, 3), np.uint8)
    label = np.zeros((n, size, size), np.uint8)
    width = np.zeros(n, np.float64)
    for k, cid in enumerate(ids):
        sl = boxes[cid - 1]
        own = cells[sl] == cid
        width[k] = np.sqrt(4 * own.sum() / np.pi)
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        side = max(8, int(round(context * max(y1 - y0, x1 - x0))))
        cy, cx = (y0 + y1) / 2 + origin[0], (x0 + x1) / 2 + origin[1]
        top, left = int(round(cy - side / 2)), int(round(cx - side / 2))
        window = _window(image, top, left, side, "symmetric")
        c = _window(cells, top - origin[0], left - origin[1], side, "zero")
        nu = _window(nuclei, top - origin[0], left - origin[1], side, "zero")
        sub = np.where(nu == cid, 2, np.where(c == cid, 1, 0)).astype(np.uint8)
        rgb[k] = (
            np.clip(
                resize(window, (size, size), order=1, preserve_range=True, anti_aliasing=side > size), 0, 255
            )
            .round()
            .astype(np.uint8)
        )
        label[k] = resize(sub, (size, size), order=0, preserve_range=True, anti_aliasing=False).astype(
            np.uint8
        )
    return rgb, label, width


def _window(array: np.ndarray, top: int, left: int, side: int, pad: str) -> np.ndarray:
    """``array[top:top+side, left:left+side]``, padded where it leaves the array."""
    h, w = array.shape[:2]
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(h, top + side), min(w, left + side)
    if y1 <= y0 or x1 <= x0:
        return np.zeros((side, side) + array.shape[2:], array.dtype)
    widths = [(y0 - top, top + side - y1), (x0 - left, left + side - x1)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array[y0:y1, x0:x1], widths, mode="constant" if pad == "zero" else pad)


def crops_to_tensor(rgb: np.ndarray, label: np.ndarray, spec, device: str = "cpu"):
    """(N, 5, S, S) float32 network input: normalised RGB, the cell mask, the nucleus mask.
    ``rgb`` may be uint8 (0..255) or float (0..1, as augmentation returns it)."""
    import torch

    x = rgb.astype(np.float32) / (255.0 if rgb.dtype == np.uint8 else 1.0)
    x = (x - np.float32(spec.mean)) / np.float32(spec.std)
    masks = np.stack([label > 0, label == 2], -1).astype(np.float32)
    x = np.concatenate([x, masks], -1).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def size_cue(width: np.ndarray, red_cell: float | None) -> np.ndarray:
    """The classifier's size input (N, 2) for cells ``width`` px wide in a field whose red
    cells are ``red_cell`` px across (:func:`.ruler.red_cell_diameter`): the log of the
    width in red-cell diameters, and 1; (0, 0) where the field has no ruler."""
    width = np.asarray(width, np.float64)
    out = np.zeros((len(width), 2), np.float32)
    if red_cell is not None and red_cell > 0:
        out[:, 0] = np.log(np.maximum(width, 1.0) / red_cell)
        out[:, 1] = 1.0
    return out


def field_ruler(image: np.ndarray, objects: np.ndarray, origin: tuple[int, int] = (0, 0)) -> float | None:
    """The red-cell diameter (px) of ``image``, the segmented ``objects`` (placed at
    ``origin`` in it) left out."""
    from .ruler import red_cell_diameter

    exclude = np.zeros(np.asarray(image).shape[:2], bool)
    h, w = objects.shape
    exclude[origin[0] : origin[0] + h, origin[1] : origin[1] + w] = objects > 0
    return red_cell_diameter(image, exclude)


def predict_crops(net, spec, rgb, label, sizes, device: str = "cpu", batch: int = 128) -> np.ndarray:
    """(N, classes) probabilities for crops from :func:`cell_crops`, averaged over the eight
    rotations and flips of each crop (a cell on a slide has no up or down)."""
    import torch

    from .inference import refuse_non_finite

    out = []
    with torch.inference_mode():
        for i in range(0, len(rgb), batch):
            x = crops_to_tensor(rgb[i : i + batch], label[i : i + batch], spec, device)
            s = torch.from_numpy(np.asarray(sizes[i : i + batch], np.float32)).to(device)
            views = [torch.rot90(v, k, (2, 3)) for v in (x, x.flip(3)) for k in range(4)]
            logits = net(torch.cat(views), s.repeat(len(views), 1)).float()
            refuse_non_finite(logits, spec)
            prob = torch.softmax(logits, 1).reshape(len(views), len(x), -1).mean(0)
            out.append(prob.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(spec.classes)), np.float32)


def decide(prob: np.ndarray, classes, unidentified_below: float) -> list[tuple[str, float]]:
    """(type, confidence) per row of probabilities: ``not_wbc`` when that is the most
    likely class (confidence its probability); else the most likely of the five types, its
    confidence renormalised over the five, ``unidentified`` when below ``unidentified_below``."""
    classes = list(classes)
    kinds = [classes.index(t) for t in CELL_TYPES]
    out = []
    for p in np.asarray(prob, np.float64):
        top = int(np.argmax(p))
        if classes[top] == NOT_WBC:
            out.append((NOT_WBC, float(p[top])))
            continue
        q = p[kinds] / max(p[kinds].sum(), 1e-12)
        k = int(np.argmax(q))
        out.append((CELL_TYPES[k] if q[k] >= unidentified_below else UNIDENTIFIED, float(q[k])))
    return out


def classify_cells(
    net,
    spec,
    image: np.ndarray,
    cells: np.ndarray,
    nuclei: np.ndarray,
    device: str = "cpu",
    origin: tuple[int, int] = (0, 0),
):
    """Types of every cell in ``cells``: ``(types, probs)`` with ``types`` cell id ->
    (type, confidence) after :func:`decide` and ``probs`` cell id -> {class: probability}.
    The size cue's ruler is measured in ``image`` (:func:`field_ruler`)."""
    from scipy import ndimage

    ids = [
        i
        for i, b in enumerate(ndimage.find_objects(np.asarray(cells).astype(np.int64)), start=1)
        if b is not None
    ]
    if not ids:
        return {}, {}
    size = int(spec.extra.get("crop", 64))
    context = float(spec.extra.get("context", 1.5))
    rgb, label, width = cell_crops(image, cells, nuclei, ids, size, context, origin)
    prob = predict_crops(net, spec, rgb, label, size_cue(width, field_ruler(image, cells, origin)), device)
    below = float(spec.extra.get("unidentified_below", DEFAULT_UNIDENTIFIED_BELOW))
    decided = decide(prob, spec.classes, below)
    types = dict(zip(ids, decided, strict=True))
    probs = {
        cid: {c: float(v) for c, v in zip(spec.classes, p, strict=True)}
        for cid, p in zip(ids, prob, strict=True)
    }
    return types, probs


def load_classifier(typing: str = "classifier", device: str = "cpu", weights=None):
    """The classifier (net, spec) for ``typing`` "classifier" (the shipped one, or
    ``weights``), else None ("model": the segmentation model's own typing; "none")."""
    if typing not in TYPING:
        raise ValueError(f"typing must be one of {TYPING}, not {typing!r}")
    if typing != "classifier":
        return None
    from ..models import load_model

    return load_model(CLASSIFIER if weights is None else None, weights, device)


def typing_name(typing: str, classifier, spec) -> str:
    """What typed the cells, for summaries: the classifier's name and threshold, the
    segmentation model's name, or "none"."""
    if classifier is not None:
        return f"{classifier[1].name} (unidentified below {classifier[1].extra.get('unidentified_below')})"
    return spec.name if typing == "model" else "none"


def share_interval(count: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` confidence interval (percent) of a type's share when ``count`` of
    ``total`` counted cells are of it: exact (Clopper-Pearson), as Ruemke's table gives
    it for manual differentials (5 of 100 cells: 1.6-11.3%). (nan, nan) when none are counted."""
    if total <= 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    ci = binomtest(int(count), int(total)).proportion_ci(level, method="exact")
    return 100.0 * ci.low, 100.0 * ci.high


def differential(table: pd.DataFrame) -> pd.DataFrame:
    """The differential count: rows the five types, then ``unidentified``; columns ``count``,
    ``percent`` (of the typed white cells, unidentified included, so they add to 100) and
    ``ci_low`` / ``ci_high``, its 95% confidence interval (:func:`share_interval`: how far
    the share of so few cells may be from the smear's). Objects typed ``not_wbc`` and cells
    without a type are left out; all counts are 0 when no cell carries a type."""
    rows = [*CELL_TYPES, UNIDENTIFIED]
    kinds = table["cell_type"][table["cell_type"] != NOT_WBC].dropna() if "cell_type" in table else []
    counts = pd.Series(kinds).value_counts().reindex(rows, fill_value=0).astype(int)
    total = int(counts.sum())
    percent = counts * 100.0 / total if total else counts * np.nan
    low, high = zip(*(share_interval(n, total) for n in counts), strict=True)
    return pd.DataFrame({"count": counts, "percent": percent, "ci_low": low, "ci_high": high}, index=rows)
