"""The six segmentation metrics of the papers (MIF-Net Eqs. 4-9).

``W`` is the reference, ``P`` the prediction, ``f`` the region scored (foreground) and
``b`` the rest. mIoU is the mean of the foreground and background IoU. Regions are the
whole cell (class > 0), the cytoplasm (class 1) and the nucleus (class 2) of a class map.
"""

from __future__ import annotations

import numpy as np

METRICS = ("precision", "dice", "miou", "me", "fpr", "fnr")
REGIONS = {"cell": (1, 2), "cytoplasm": (1,), "nucleus": (2,)}


def binary_metrics(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Precision, Dice, mIoU, ME, FPR, FNR of a boolean prediction against a boolean reference.

    An empty prediction of an empty reference is perfect (1 for precision, Dice and IoU,
    0 for the error rates).
    """
    p = np.asarray(pred, bool)
    w = np.asarray(ref, bool)
    tp = np.count_nonzero(p & w)
    fp = np.count_nonzero(p & ~w)
    fn = np.count_nonzero(~p & w)
    tn = p.size - tp - fp - fn

    def ratio(num, den, empty):
        return num / den if den else empty

    return {
        "precision": ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0),
        "dice": ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "miou": 0.5 * (ratio(tp, tp + fp + fn, 1.0) + ratio(tn, tn + fp + fn, 1.0)),
        "me": ratio(fp + fn, p.size, 0.0),
        "fpr": ratio(fp, fp + tn, 0.0),
        "fnr": ratio(fn, tp + fn, 0.0),
    }


def class_map_metrics(pred: np.ndarray, ref: np.ndarray) -> dict[str, dict[str, float]]:
    """The six metrics for the whole cell, the cytoplasm and the nucleus of two class maps."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    return {
        region: binary_metrics(np.isin(pred, classes), np.isin(ref, classes))
        for region, classes in REGIONS.items()
    }


def mean_metrics(per_image: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Average per-image metrics over images, region by region (as the papers report)."""
    if not per_image:
        return {}
    return {
        region: {m: float(np.mean([r[region][m] for r in per_image])) for m in METRICS}
        for region in per_image[0]
    }
