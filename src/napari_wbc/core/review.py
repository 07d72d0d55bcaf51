"""Review a segmentation against a reference: TP/FP/FN colours, the six metrics, cell matching.

A reference is any labels: a 0/1/2 class map (0 background, 1 cytoplasm, 2 nucleus, the
layout of ``../shared/datasets``), or a (cells, nuclei) pair of instance maps with
nucleus id = cell id, as napari-wbc writes them and as a user corrects them.

Pixel colours follow the MIF-Net figures: true-positive cytoplasm yellow, true-positive
nucleus blue, false positive green, false negative red, agreement on background
transparent. The figures do not say how to colour a pixel that is cytoplasm in one map
and nucleus in the other; here the classes are read as nested regions (the nucleus lies
inside the cell), so a pixel is green where the prediction claims *more* than the
reference (``pred > ref``) and red where it claims *less* (``pred < ref``). Predicted
nucleus on reference cytoplasm is therefore green (a false-positive nucleus pixel) and
predicted cytoplasm on reference nucleus red (a missed nucleus pixel): green is exactly
the union of the false positives of the cell and the nucleus scores, red the union of
their false negatives.

Cells are matched one-to-one by IoU >= 0.5 (the optimal assignment among those pairs;
above 0.5 a cell can overlap at most one partner that much, so it is also the greedy
one). Each row of the match table is a predicted cell (``label`` = its id) or a missed
reference cell (``label`` = <NA> in a nullable Int64 column), so a left join on ``label``
with the measurement table adds the review columns to every predicted cell and leaves
missed cells out; they carry ``ref_label`` and the reference centroid to go to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .metrics import METRICS, class_map_metrics

AGREE, TP_CYTOPLASM, TP_NUCLEUS, FP, FN = 0, 1, 2, 3, 4
COLORS = {  # code -> RGB, exactly as in the MIF-Net figures
    TP_CYTOPLASM: (255, 255, 0),
    TP_NUCLEUS: (0, 0, 255),
    FP: (0, 255, 0),
    FN: (255, 0, 0),
}
LEGEND = {
    TP_CYTOPLASM: "true positive cytoplasm",
    TP_NUCLEUS: "true positive nucleus",
    FP: "false positive (predicted, not in the reference)",
    FN: "false negative (in the reference, missed)",
}
# code[pred, ref]: equal classes give agreement / TP; otherwise FP where pred > ref, FN where pred < ref
_CODES = np.array([[AGREE, FN, FN], [FP, TP_CYTOPLASM, FN], [FP, FP, TP_NUCLEUS]], np.uint8)
MIN_IOU = 0.5
REVIEW_COLUMNS = ["ref_label", "status", "iou", "ncr_pred", "ncr_ref", "ref_centroid_y", "ref_centroid_x"]


def napari_color_dict() -> dict:
    """Code -> RGBA in 0..1 for ``DirectLabelColormap(color_dict=...)``; background transparent."""
    colors = {code: (r / 255, g / 255, b / 255, 1.0) for code, (r, g, b) in COLORS.items()}
    return {None: (0.0, 0.0, 0.0, 0.0), AGREE: (0.0, 0.0, 0.0, 0.0), **colors}


def legend_text() -> str:
    """One line per colour, for a legend beside the review layer."""
    names = {TP_CYTOPLASM: "yellow", TP_NUCLEUS: "blue", FP: "green", FN: "red"}
    return "\n".join(f"{names[c]}: {LEGEND[c]}" for c in COLORS)


def _check_classes(classes: np.ndarray, what: str) -> np.ndarray:
    classes = np.asarray(classes)
    if classes.ndim != 2:
        raise ValueError(f"{what}: expected a 2D class map, got shape {classes.shape}")
    if classes.size and (classes.min() < 0 or classes.max() > 2):
        raise ValueError(f"{what}: a class map holds 0, 1 and 2 only, found {classes.min()}..{classes.max()}")
    return classes.astype(np.uint8)


def classes_from_instances(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """0/1/2 class map of instance maps: 2 wherever a nucleus is, 1 in the rest of the cells."""
    cells, nuclei = np.asarray(cells), np.asarray(nuclei)
    if cells.shape != nuclei.shape:
        raise ValueError(f"cells {cells.shape} and nuclei {nuclei.shape} differ in shape")
    classes = (cells > 0).astype(np.uint8)
    classes[nuclei > 0] = 2
    return classes


def instances_from_class_map(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cells, nuclei) of a 0/1/2 map, one cell per 8-connected white region, faithfully.

    Unlike :func:`postprocess.instances_from_classes` nothing is dropped or split, so
    ``classes_from_instances(*instances_from_class_map(c)) == c``: right for references.
    """
    from scipy import ndimage

    classes = _check_classes(classes, "class map")
    cells = ndimage.label(classes > 0, structure=np.ones((3, 3)))[0].astype(np.uint32)
    nuclei = np.where(classes == 2, cells, 0).astype(np.uint32)
    return cells, nuclei


@dataclass
class LabelSet:
    """One segmentation in both forms: the class map and its instances."""

    classes: np.ndarray  # (H, W) uint8 0/1/2
    cells: np.ndarray  # (H, W) uint32
    nuclei: np.ndarray  # (H, W) uint32, nucleus id = cell id


def as_labels(labels) -> LabelSet:
    """A :class:`LabelSet` from a class map (2D array) or a (cells, nuclei) pair."""
    if isinstance(labels, LabelSet):
        return labels
    if isinstance(labels, (tuple, list)) and len(labels) == 2:
        cells, nuclei = (np.asarray(a) for a in labels)
        return LabelSet(
            classes_from_instances(cells, nuclei), cells.astype(np.uint32), nuclei.astype(np.uint32)
        )
    classes = _check_classes(labels, "labels")
    return LabelSet(classes, *instances_from_class_map(classes))


def review_map(pred_classes: np.ndarray, ref_classes: np.ndarray) -> np.ndarray:
    """(H, W) uint8 codes: 0 agree background, 1 TP cytoplasm, 2 TP nucleus, 3 FP, 4 FN."""
    pred = _check_classes(pred_classes, "prediction")
    ref = _check_classes(ref_classes, "reference")
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    return _CODES[pred, ref]


def review_rgb(codes: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """The codes in their exact colours.

    Without ``image``: (H, W, 4) RGBA, agreement on background transparent (0, 0, 0, 0).
    With an RGB uint8 ``image``: (H, W, 3), the image where the maps agree on background
    and the exact colours elsewhere (no blending, so the colours stay countable).
    """
    codes = np.asarray(codes)
    lut = np.zeros((256, 4), np.uint8)
    for code, rgb in COLORS.items():
        lut[code] = (*rgb, 255)
    rgba = lut[codes]
    if image is None:
        return rgba
    image = np.asarray(image)
    if image.shape[:2] != codes.shape:
        raise ValueError(f"image {image.shape[:2]} and review map {codes.shape} differ in shape")
    return np.where((codes == AGREE)[..., None], image[..., :3], rgba[..., :3]).astype(np.uint8)


def code_counts(codes: np.ndarray) -> dict[str, int]:
    """Pixels per colour: tp_cytoplasm, tp_nucleus, fp, fn."""
    n = np.bincount(np.asarray(codes).ravel(), minlength=5)
    return {"tp_cytoplasm_px": int(n[1]), "tp_nucleus_px": int(n[2]), "fp_px": int(n[3]), "fn_px": int(n[4])}


def _overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    both = (a > 0) & (b > 0)
    key = a[both].astype(np.int64) * (int(b.max()) + 1) + b[both]
    pairs, inter = np.unique(key, return_counts=True)
    return pairs // (int(b.max()) + 1), pairs % (int(b.max()) + 1), inter


def match_cells(pred_cells, pred_nuclei, ref_cells, ref_nuclei, min_iou: float = MIN_IOU) -> pd.DataFrame:
    """One row per predicted cell (matched or extra), then one per missed reference cell.

    Columns: ``label`` (predicted id, <NA> for a missed cell), ``ref_label`` (<NA> for an
    extra cell), ``status`` (matched/extra/missed), ``iou`` (with the matched partner; for
    an unmatched cell its best IoU with any cell of the other map, 0 if none overlaps),
    ``ncr_pred``, ``ncr_ref`` (nucleus / cytoplasm area) and the reference centroid.
    """
    from scipy.optimize import linear_sum_assignment

    from .measure import measure_cells

    if not 0 < min_iou <= 1:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    pred_cells, ref_cells = np.asarray(pred_cells), np.asarray(ref_cells)
    if pred_cells.shape != ref_cells.shape:
        raise ValueError(f"prediction {pred_cells.shape} and reference {ref_cells.shape} differ in shape")
    mp = measure_cells(pred_cells, pred_nuclei).set_index("label")
    mr = measure_cells(ref_cells, ref_nuclei).set_index("label")
    area_p = np.bincount(pred_cells.ravel(), minlength=int(pred_cells.max()) + 1)
    area_r = np.bincount(ref_cells.ravel(), minlength=int(ref_cells.max()) + 1)
    p, r, inter = _overlaps(pred_cells, ref_cells)
    iou = inter / (area_p[p] + area_r[r] - inter)
    best_p = pd.Series(iou).groupby(p).max().to_dict()
    best_r = pd.Series(iou).groupby(r).max().to_dict()

    ok = iou >= min_iou
    rows_p, rows_r = np.unique(p[ok]), np.unique(r[ok])
    match: dict[int, tuple[int, float]] = {}
    if ok.any():
        weight = np.zeros((len(rows_p), len(rows_r)))
        weight[np.searchsorted(rows_p, p[ok]), np.searchsorted(rows_r, r[ok])] = iou[ok]
        for i, j in zip(*linear_sum_assignment(weight, maximize=True), strict=True):
            if weight[i, j] >= min_iou:
                match[int(rows_p[i])] = (int(rows_r[j]), float(weight[i, j]))
    matched_ref = {ref for ref, _ in match.values()}

    def ref_part(ref):
        if ref is None:
            return {"ncr_ref": np.nan, "ref_centroid_y": np.nan, "ref_centroid_x": np.nan}
        row = mr.loc[ref]
        return {
            "ncr_ref": row["ncr"],
            "ref_centroid_y": row["centroid_y"],
            "ref_centroid_x": row["centroid_x"],
        }

    rows = []
    for label in mp.index:
        ref, score = match.get(int(label), (None, best_p.get(int(label), 0.0)))
        rows.append(
            {
                "label": int(label),
                "ref_label": ref,
                "status": "extra" if ref is None else "matched",
                "iou": float(score),
                "ncr_pred": mp.loc[label, "ncr"],
                **ref_part(ref),
            }
        )
    for ref in mr.index:
        if int(ref) not in matched_ref:
            rows.append(
                {
                    "label": None,
                    "ref_label": int(ref),
                    "status": "missed",
                    "iou": float(best_r.get(int(ref), 0.0)),
                    "ncr_pred": np.nan,
                    **ref_part(ref),
                }
            )
    table = pd.DataFrame(rows, columns=["label", *REVIEW_COLUMNS]).astype(
        {c: float for c in REVIEW_COLUMNS[2:]} | {"status": object}
    )
    for col in ("label", "ref_label"):
        table[col] = pd.array([None if pd.isna(v) else int(v) for v in table[col]], dtype="Int64")
    return table


def join_measurements(measurements: pd.DataFrame, matches: pd.DataFrame) -> pd.DataFrame:
    """The measurement table (one row per predicted cell) with the review columns added.

    Review columns already there (from an earlier review) are replaced; missed reference
    cells have no predicted cell and so no row.
    """
    base = measurements.drop(columns=[c for c in REVIEW_COLUMNS if c in measurements])
    found = matches[matches["label"].notna()].astype({"label": "int64"})
    return base.merge(found, on="label", how="left")


@dataclass
class ReviewResult:
    codes: np.ndarray  # (H, W) uint8, see review_map
    metrics: dict[str, dict[str, float]]  # region -> the six metrics (metrics.class_map_metrics)
    cells: pd.DataFrame  # match_cells

    def counts(self) -> dict[str, int]:
        status = self.cells["status"].value_counts()
        n = {s: int(status.get(s, 0)) for s in ("matched", "missed", "extra")}
        return {"pred_cells": n["matched"] + n["extra"], "ref_cells": n["matched"] + n["missed"], **n}

    def summary(self) -> dict[str, float]:
        """Counts, mean IoU of matched cells, pixels per colour and the 18 metrics, flat."""
        matched = self.cells[self.cells["status"] == "matched"]
        flat = {f"{region}_{m}": float(scores[m]) for region, scores in self.metrics.items() for m in METRICS}
        return {
            **self.counts(),
            "mean_iou_matched": float(matched["iou"].mean()) if len(matched) else np.nan,
            **code_counts(self.codes),
            **flat,
        }

    def metrics_table(self) -> pd.DataFrame:
        """Regions as rows, the six metrics as columns."""
        return pd.DataFrame(
            [{"region": region, **scores} for region, scores in self.metrics.items()],
            columns=["region", *METRICS],
        )


def review(pred, ref, min_iou: float = MIN_IOU) -> ReviewResult:
    """Review ``pred`` against ``ref``; each a class map, a (cells, nuclei) pair or a LabelSet."""
    pred, ref = as_labels(pred), as_labels(ref)
    codes = review_map(pred.classes, ref.classes)
    metrics = class_map_metrics(pred.classes, ref.classes)
    cells = match_cells(pred.cells, pred.nuclei, ref.cells, ref.nuclei, min_iou)
    return ReviewResult(codes, metrics, cells)
