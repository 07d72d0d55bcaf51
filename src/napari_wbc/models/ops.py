"""Detection operations in plain torch (no torchvision): boxes, NMS, RoIAlign, anchors, matching.

Boxes are ``x0, y0, x1, y1`` in continuous pixel coordinates (pixel ``i`` spans ``[i, i+1)``),
so a box's width is ``x1 - x0``. Shared by the instance models (LeukocyteMask, YOLACT-CIS).

* ``encode_boxes``/``decode_boxes``: the box coding of Faster R-CNN (Ren et al. 2015);
* ``roi_align``: RoIAlign of Mask R-CNN (He et al. 2017), same sampling as the reference
  implementation (a sample more than one pixel outside the map counts as 0, one less than a
  pixel outside is clamped to the border), computed with ``grid_sample``;
* ``match`` and ``sample_balanced``: the anchor/proposal labelling and sampling of RPN training.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every box of ``a`` (N, 4) with every box of ``b`` (M, 4)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def encode_boxes(reference: Tensor, boxes: Tensor, weights=(1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Deltas (dx, dy, dw, dh) that take each ``reference`` box to its ``boxes`` row."""
    wx, wy, ww, wh = weights
    rx, ry, rw, rh = _centre_size(reference)
    bx, by, bw, bh = _centre_size(boxes)
    return torch.stack(
        [wx * (bx - rx) / rw, wy * (by - ry) / rh, ww * torch.log(bw / rw), wh * torch.log(bh / rh)], dim=1
    )


def decode_boxes(
    reference: Tensor, deltas: Tensor, weights=(1.0, 1.0, 1.0, 1.0), max_ratio: float = math.log(1000 / 16)
) -> Tensor:
    """Inverse of ``encode_boxes``; dw, dh are clamped at ``max_ratio`` (no overflow in exp)."""
    wx, wy, ww, wh = weights
    rx, ry, rw, rh = _centre_size(reference.to(deltas.dtype))
    cx = deltas[:, 0] / wx * rw + rx
    cy = deltas[:, 1] / wy * rh + ry
    w = torch.exp((deltas[:, 2] / ww).clamp(max=max_ratio)) * rw
    h = torch.exp((deltas[:, 3] / wh).clamp(max=max_ratio)) * rh
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=1)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, by descending score.

    A box is dropped when its IoU with a kept, higher-scoring box exceeds ``iou_threshold``
    (equal scores: the lower index counts as higher).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    over = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not removed[i]:
            keep.append(i)
            removed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group (boxes of different groups never suppress each other)."""
    keep = [torch.nonzero(groups == g).flatten() for g in torch.unique(groups)]
    keep = [idx[nms(boxes[idx], scores[idx], iou_threshold)] for idx in keep]
    if not keep:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    keep = torch.cat(keep)
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size,
    spatial_scale: float,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> Tensor:
    """RoIAlign: (K, C, oh, ow) bin averages of bilinear samples of ``features`` (B, C, H, W).

    ``rois`` (K, 5) holds the batch index and x0, y0, x1, y1 in image pixels;
    ``spatial_scale`` maps them onto the feature map. Each bin averages
    ``sampling_ratio**2`` regularly spaced bilinear samples (a fixed ratio, >= 1). With
    ``aligned`` the box is shifted by -0.5 px so that sample coordinates refer to pixel
    centres. Differentiable with respect to ``features``.
    """
    oh, ow = _pair(output_size)
    g = int(sampling_ratio)
    if g < 1:
        raise ValueError("sampling_ratio must be >= 1")
    _, c, h, w = features.shape
    if rois.shape[0] == 0:
        return features.new_zeros((0, c, oh, ow))
    rois = rois.to(features.dtype)
    offset = 0.5 if aligned else 0.0
    x0 = rois[:, 1] * spatial_scale - offset
    y0 = rois[:, 2] * spatial_scale - offset
    rw = rois[:, 3] * spatial_scale - offset - x0
    rh = rois[:, 4] * spatial_scale - offset - y0
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    tx = (torch.arange(ow * g, device=features.device, dtype=features.dtype) + 0.5) / (ow * g)
    ty = (torch.arange(oh * g, device=features.device, dtype=features.dtype) + 0.5) / (oh * g)
    xs = x0[:, None] + rw[:, None] * tx  # (K, ow*g) sample columns
    ys = y0[:, None] + rh[:, None] * ty  # (K, oh*g) sample rows
    # a sample more than one pixel outside the map is zero: send it far outside (zero padding);
    # the others are clamped into [0, size-1], then mapped to grid_sample's [-1, 1] (align_corners=False)
    gx = torch.where((xs >= -1) & (xs <= w), (2 * xs.clamp(0, w - 1) + 1) / w - 1, -4.0)
    gy = torch.where((ys >= -1) & (ys <= h), (2 * ys.clamp(0, h - 1) + 1) / h - 1, -4.0)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (K, oh*g, ow*g, 2)
    batch = rois[:, 0].long()
    pieces, order = [], []
    for b in torch.unique(batch).tolist():
        idx = torch.nonzero(batch == b).flatten()
        sub = grid[idx].reshape(1, -1, ow * g, 2)  # the rois of image b stacked along the height
        out = F.grid_sample(
            features[b : b + 1], sub, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        out = F.avg_pool2d(out, g) if g > 1 else out  # (1, C, n*oh, ow): bin averages
        pieces.append(out.reshape(c, len(idx), oh, ow).transpose(0, 1))
        order.append(idx)
    if len(pieces) == 1:
        return pieces[0].contiguous()
    return torch.cat(pieces)[torch.argsort(torch.cat(order))]


def anchors_for_grid(feature_hw, stride: float, sizes, ratios) -> Tensor:
    """Anchors (h*w*A, 4) of a feature grid, ordered by row, column, then anchor.

    A = len(sizes) * len(ratios) (sizes outer, ratios inner); a ratio is height / width and
    keeps the area ``size**2``; every anchor is centred on ((x + 0.5) * stride, (y + 0.5) * stride).
    """
    fh, fw = _pair(feature_hw)
    shapes = []
    for s in sizes:
        for r in ratios:
            aw, ah = s / math.sqrt(r), s * math.sqrt(r)
            shapes.append([-aw / 2, -ah / 2, aw / 2, ah / 2])
    shapes = torch.tensor(shapes, dtype=torch.float32)
    cy, cx = torch.meshgrid(
        (torch.arange(fh, dtype=torch.float32) + 0.5) * stride,
        (torch.arange(fw, dtype=torch.float32) + 0.5) * stride,
        indexing="ij",
    )
    centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
    return (centres + shapes[None]).reshape(-1, 4)


def match(
    anchors_or_boxes: Tensor, gt_boxes: Tensor, high: float, low: float, allow_low_quality: bool = True
) -> tuple[Tensor, Tensor]:
    """Label each anchor (or proposal) against the ground truth boxes.

    Returns ``labels`` (1 positive: IoU >= high; 0 negative: IoU < low; -1 ignored) and the
    index of the best ground truth box of each. With ``allow_low_quality`` the anchor(s) with
    the highest (non-zero) IoU for each ground truth box are positive too. No ground truth:
    everything negative, index 0.
    """
    n = anchors_or_boxes.shape[0]
    device = anchors_or_boxes.device
    if gt_boxes.shape[0] == 0:
        return (
            torch.zeros(n, dtype=torch.long, device=device),
            torch.zeros(n, dtype=torch.long, device=device),
        )
    iou = box_iou(anchors_or_boxes, gt_boxes)  # (N, M)
    best, index = iou.max(dim=1)
    labels = torch.full((n,), -1, dtype=torch.long, device=device)
    labels[best < low] = 0
    labels[best >= high] = 1
    if allow_low_quality:
        best_per_gt = iou.max(dim=0).values
        hit = (iou == best_per_gt[None]) & (best_per_gt[None] > 0)
        labels[hit.any(dim=1)] = 1
    return labels, index


def sample_balanced(
    labels: Tensor, num: int, positive_fraction: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Random positives (label 1, at most ``num * positive_fraction``) and negatives (label 0)
    filling up to ``num`` in all; returns their indices (pos_idx, neg_idx)."""
    pos = torch.nonzero(labels == 1).flatten()
    neg = torch.nonzero(labels == 0).flatten()
    n_pos = min(int(num * positive_fraction), pos.numel())
    n_neg = min(num - n_pos, neg.numel())
    pick_pos = torch.randperm(pos.numel(), generator=generator)[:n_pos].to(labels.device)
    pick_neg = torch.randperm(neg.numel(), generator=generator)[:n_neg].to(labels.device)
    return pos[pick_pos], neg[pick_neg]
