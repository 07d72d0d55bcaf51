"""COCO-style instance average precision on label images.

``average_precision`` follows pycocotools' segmentation evaluation, restricted to what label
images need (one category, no crowd regions, no area ranges):

* mask IoU between every predicted and every reference instance of an image;
* for each IoU threshold 0.50, 0.55, ..., 0.95, the predictions of an image are taken by
  descending score and each is matched to the unmatched reference instance of highest IoU
  at or above the threshold (a reference is matched at most once); at most
  ``max_detections`` (COCO: 100) predictions per image, the highest scored;
* the detections of all images are pooled and sorted by score (stable), precision is made
  monotone (non-increasing in recall) and read at the 101 recall points 0, 0.01, ..., 1
  (0 past the highest recall reached); AP at a threshold is their mean;
* AP is the mean over the ten thresholds, AP50 and AP75 the values at 0.50 and 0.75.

Figures are in percent. Without any reference instance AP is undefined: NaN (COCO: -1).
"""

from __future__ import annotations

import numpy as np

IOU_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def mask_ious(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted ids, reference ids, IoU matrix (n_pred, n_ref)) of two label images."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    p, g = pred.ravel(), ref.ravel()
    pids, gids = np.unique(p[p > 0]), np.unique(g[g > 0])
    # index 0 = background, i + 1 = i-th instance
    pi = np.where(p > 0, np.searchsorted(pids, p) + 1, 0)
    gi = np.where(g > 0, np.searchsorted(gids, g) + 1, 0)
    n, m = len(pids) + 1, len(gids) + 1
    joint = np.bincount(pi * m + gi, minlength=n * m).reshape(n, m)
    inter = joint[1:, 1:].astype(np.float64)
    union = joint[1:].sum(1)[:, None] + joint[:, 1:].sum(0)[None, :] - inter
    ious = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return pids, gids, ious


def _match(ious: np.ndarray, threshold: float) -> np.ndarray:
    """Whether each prediction (rows, by descending score) is a true positive at ``threshold``."""
    taken = np.zeros(ious.shape[1], bool)
    tp = np.zeros(ious.shape[0], bool)
    for d in range(ious.shape[0]):
        candidates = np.where(taken, -1.0, ious[d])
        if candidates.size == 0:
            continue
        best = int(candidates.argmax())
        if candidates[best] >= threshold:
            taken[best] = True
            tp[d] = True
    return tp


def _precision_at_recall_points(tp: np.ndarray, n_ref: int) -> np.ndarray:
    """The 101 interpolated precisions of detections sorted by score (pycocotools' rule)."""
    tps = np.cumsum(tp, dtype=np.float64)
    fps = np.cumsum(~tp, dtype=np.float64)
    recall = tps / n_ref
    precision = tps / np.maximum(tps + fps, np.finfo(np.float64).eps)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    out = np.zeros(len(RECALL_POINTS))
    valid = idx < len(precision)
    out[valid] = precision[idx[valid]]
    return out


def average_precision(predictions, references, max_detections: int = 100) -> dict[str, float]:
    """COCO AP, AP50 and AP75 (percent) of predicted instance label images.

    ``predictions``: one ``(labels, scores)`` per image, ``labels`` an (H, W) int label image
    and ``scores`` a dict instance id -> confidence (every id in ``labels`` must have one);
    ``references``: one (H, W) int instance label image per image (0 = background).
    """
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scores_all, tp_all = [], [[] for _ in IOU_THRESHOLDS]
    n_ref = 0
    for (labels, scores), ref in zip(predictions, references, strict=True):
        pids, gids, ious = mask_ious(labels, ref)
        n_ref += len(gids)
        s = np.array([float(scores[int(i)]) for i in pids], dtype=np.float64)
        order = np.argsort(-s, kind="mergesort")[:max_detections]
        s, ious = s[order], ious[order]
        scores_all.append(s)
        for k, t in enumerate(IOU_THRESHOLDS):
            tp_all[k].append(_match(ious, t))
    if n_ref == 0:
        nan = float("nan")
        return {"AP": nan, "AP50": nan, "AP75": nan}
    scores = np.concatenate(scores_all) if scores_all else np.zeros(0)
    order = np.argsort(-scores, kind="mergesort")
    per_threshold = np.array(
        [
            _precision_at_recall_points(np.concatenate(tp)[order], n_ref).mean() if len(order) else 0.0
            for tp in tp_all
        ]
    )
    return {
        "AP": 100 * float(per_threshold.mean()),
        "AP50": 100 * float(per_threshold[0]),
        "AP75": 100 * float(per_threshold[5]),
    }
