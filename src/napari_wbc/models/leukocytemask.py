"""LeukocyteMask (Fan et al. 2019, J. Biophotonics): Mask R-CNN on a WBC-oriented ResNet-50 FPN.

Detect each white cell, then segment it inside its box (Sections 2.1-2.2 of the paper):

* bottom-up ResNet-50 with the paper's changes: conv1 (7x7) replaced by two 3x3 convolutions
  (64 channels; the first has stride 2, as conv1 had), conv3_x reduced to 2 and conv4_x to 3
  bottleneck blocks (conv2_x 3 and conv5_x 3 as in ResNet-50); the stride of a stage is on its
  first 3x3 convolution;
* FPN: 1x1 lateral connections, nearest x2 top-down upsampling, 3x3 output convolutions,
  256 channels, P2..P5; P6 is P5 subsampled by 2 (a stride-2 1x1 max pool);
* RPN: one 3x3 convolution to a 2048-channel vector (as the paper states; Mask R-CNN uses
  256-512), ReLU, sibling 1x1 convolutions giving 2 scores (softmax) and 4 box deltas per
  anchor; 3 ratios {2:1, 1:1, 1:2} x 5 levels (one size per level, 32..512 px on P2..P6, as
  Mask R-CNN) = 15 anchors; positives IoU >= 0.7, negatives < 0.3 (each box's best anchor is
  positive too), 256 anchors per image, half positive at most; proposals by NMS (0.7);
* RoIAlign on P2..P5 by the FPN level rule (k = 4 + log2(sqrt(wh) / 224)), 7x7 for the
  localization branch (2 FC 1024, then background/WBC scores and box deltas) and 14x14 for
  the mask branch (4 3x3 convolutions, a 2x2 deconvolution to 28x28, 1x1 prediction);
  detections: class score >= threshold, NMS 0.5, at most 100 per image;
* Mask R-CNN training: 512 RoIs per image, a quarter positive (IoU >= 0.5), cross-entropy and
  smooth L1 losses, per-pixel BCE (Eq. 4) on the positive RoIs.

The mask branch predicts two soft masks per RoI: the whole cell (the paper's) and its nucleus
(our addition, with its own BCE term). Soft masks are thresholded at 0.5 downstream, as the
paper does.

Normalisation: the paper trains with batch 2; batch statistics of 2 images are too noisy for
BatchNorm, and frozen BatchNorm statistics need ImageNet pre-training, which we do not have
(we train from scratch). The backbone therefore uses GroupNorm (32 groups), which does not
depend on the batch size; FPN and heads have no normalisation, as in Mask R-CNN.
Inputs must have sides that are multiples of 64 (the stride of P6). With the default
configuration the network has 44,252,634 trainable parameters; the paper gives no count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import anchors_for_grid, batched_nms, decode_boxes, encode_boxes, match, roi_align, sample_balanced

KIND = "instance"
PAPER = "Fan et al. 2019, J. Biophotonics"
PAPER_PARAMETERS = None
TRAINING = {
    "optimizer": "sgd",
    "lr": 1e-3,
    "weight_decay": 2e-4,
    "momentum": 0.9,
    "batch_size": 2,
    "patch": 256,
    # flips (always on), rotation -180..180, elastic transform, Gaussian blur, gamma (in the
    # colour jitter); the paper gives no probabilities, these are ours
    "augment": {"rotate": True, "elastic_p": 0.5, "blur_p": 0.3},
}

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # box coding of the localization branch (Fast R-CNN)
STRIDES = (4, 8, 16, 32, 64)  # P2..P6


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c)


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            _gn(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            _gn(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False),
            _gn(cout),
        )
        nn.init.zeros_(self.body[-1].weight)  # each residual block starts as the identity
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _gn(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class WBCResNet(nn.Module):
    """Bottom-up pathway: C2..C5 at strides 4, 8, 16, 32."""

    def __init__(self, in_channels: int = 3, blocks=(3, 2, 3, 3)):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 2, 1, bias=False),
            _gn(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, 1, 1, bias=False),
            _gn(64),
            nn.ReLU(inplace=True),
        )
        stages, cin = [], 64
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            layers = [nn.MaxPool2d(3, 2, 1)] if i == 0 else []
            for j in range(n):
                layers.append(_Bottleneck(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = 4 * width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)  # conv2_x .. conv5_x

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.conv1(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class FPN(nn.Module):
    """Top-down pathway with lateral connections: P2..P5, and P6 = P5 subsampled by 2."""

    def __init__(self, in_channels=(256, 512, 1024, 2048), channels: int = 256):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        top = self.lateral[-1](feats[-1])
        merged = [top]
        for lateral, f in zip(self.lateral[-2::-1], feats[-2::-1], strict=True):
            top = lateral(f) + F.interpolate(top, size=f.shape[-2:], mode="nearest")
            merged.insert(0, top)
        p = [conv(m) for conv, m in zip(self.output, merged, strict=True)]
        return p + [F.max_pool2d(p[-1], 1, 2)]


def _level_of(boxes: Tensor) -> Tensor:
    """FPN's rule (Lin et al. 2017, Eq. 1): index 0..3 of P2..P5 for each RoI."""
    size = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6).sqrt()
    return (torch.floor(4 + torch.log2(size / 224)).clamp(2, 5) - 2).long()


def _interp_matrix(pos: Tensor, m: int) -> Tensor:
    """(N, L, m) linear-interpolation weights of positions (N, L) on a grid of m cells;
    rows of positions outside [-0.5, m - 0.5] are zero."""
    inside = ((pos >= -0.5) & (pos <= m - 0.5)).to(pos.dtype)
    p = pos.clamp(0, m - 1)
    lo = p.floor().clamp(max=max(m - 2, 0)).long()
    frac = (p - lo).clamp(0, 1)
    w = pos.new_zeros(*pos.shape, m)
    w.scatter_add_(2, lo[..., None], (1 - frac)[..., None])
    w.scatter_add_(2, (lo + 1).clamp(max=m - 1)[..., None], frac[..., None])
    return w * inside[..., None]


def paste_masks(masks: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """(N, C, m, m) masks resized bilinearly into their boxes of an (height, width) image."""
    n, _, m, _ = masks.shape
    ys = torch.arange(height, device=masks.device, dtype=masks.dtype) + 0.5
    xs = torch.arange(width, device=masks.device, dtype=masks.dtype) + 0.5
    bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)
    bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
    wy = _interp_matrix((ys[None] - boxes[:, 1:2]) / bh[:, None] * m - 0.5, m)  # (N, H, m)
    wx = _interp_matrix((xs[None] - boxes[:, 0:1]) / bw[:, None] * m - 0.5, m)  # (N, W, m)
    return torch.einsum("nhi,ncij,nwj->nchw", wy, masks, wx)


class LeukocyteMask(nn.Module):
    pad_multiple = 64

    def __init__(
        self,
        in_channels: int = 3,
        rpn_channels: int = 2048,
        anchor_sizes=(32, 64, 128, 256, 512),
        anchor_ratios=(0.5, 1.0, 2.0),
        rpn_batch: int = 256,
        roi_batch: int = 512,
        pre_nms: tuple[int, int] = (2000, 1000),
        post_nms: tuple[int, int] = (1000, 1000),
        max_detections: int = 100,
        detection_nms: float = 0.5,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.anchor_sizes, self.anchor_ratios = tuple(anchor_sizes), tuple(anchor_ratios)
        self.rpn_batch, self.roi_batch = rpn_batch, roi_batch
        self.pre_nms, self.post_nms = pre_nms, post_nms  # (training, inference) per image
        self.max_detections, self.detection_nms = max_detections, detection_nms
        a = len(anchor_ratios)
        self.backbone = WBCResNet(in_channels)
        self.fpn = FPN()
        self.rpn_conv = nn.Conv2d(256, rpn_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(rpn_channels, 2 * a, 1)
        self.rpn_box = nn.Conv2d(rpn_channels, 4 * a, 1)
        self.box_head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * 7 * 7, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, 1024),
            nn.ReLU(inplace=True),
        )
        self.cls_score = nn.Linear(1024, 2)  # background, WBC
        self.box_delta = nn.Linear(1024, 4)  # box refinement of the WBC class
        convs = []
        for _ in range(4):
            convs += [nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True)]
        self.mask_head = nn.Sequential(*convs, nn.ConvTranspose2d(256, 256, 2, 2), nn.ReLU(inplace=True))
        self.mask_pred = nn.Conv2d(256, 2, 1)  # cell, nucleus
        self._init()

    def _init(self):
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m, std in (
            (self.rpn_conv, 0.01),
            (self.rpn_cls, 0.01),
            (self.rpn_box, 0.01),
            (self.cls_score, 0.01),
            (self.box_delta, 0.001),
            (self.mask_pred, 0.001),
        ):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)

    # ---- dense part: features and RPN ------------------------------------------------------
    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        """P2..P6, per-level RPN scores (B, h*w*3, 2), deltas (B, h*w*3, 4) and anchors (h*w*3, 4)."""
        feats = self.fpn(self.backbone(x))
        scores, deltas, anchors = [], [], []
        for p, stride, size in zip(feats, STRIDES, self.anchor_sizes, strict=True):
            b, _, h, w = p.shape
            t = F.relu(self.rpn_conv(p))
            scores.append(self.rpn_cls(t).view(b, -1, 2, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 2))
            deltas.append(self.rpn_box(t).view(b, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
            anchors.append(anchors_for_grid((h, w), stride, (size,), self.anchor_ratios).to(x.device))
        return {"features": feats, "scores": scores, "deltas": deltas, "anchors": anchors}

    def _proposals(self, out: dict, image_hw: tuple[int, int]) -> list[Tensor]:
        """Per image: the top RPN boxes of each level, clipped, after NMS (0.7) across levels."""
        pre, post = self.pre_nms[not self.training], self.post_nms[not self.training]
        h, w = image_hw
        result = []
        for i in range(out["scores"][0].shape[0]):
            boxes, scores, levels = [], [], []
            for lvl, (s, d, a) in enumerate(zip(out["scores"], out["deltas"], out["anchors"], strict=True)):
                logit = (s[i, :, 1] - s[i, :, 0]).detach()
                top = logit.topk(min(pre, logit.numel())).indices
                b = decode_boxes(a[top], d[i, top].detach())
                boxes.append(
                    torch.stack(
                        [b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)],
                        1,
                    )
                )
                scores.append(logit[top])
                levels.append(torch.full_like(top, lvl))
            boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
            ok = ((boxes[:, 2] - boxes[:, 0]) > 1e-3) & ((boxes[:, 3] - boxes[:, 1]) > 1e-3)
            boxes, scores, levels = boxes[ok], scores[ok], levels[ok]
            keep = batched_nms(boxes, scores, levels, 0.7)[:post]  # sorted by score
            result.append(boxes[keep])
        return result

    # ---- RoI part ----------------------------------------------------------------------------
    def _pool(self, feats: list[Tensor], rois: Tensor, size: int) -> Tensor:
        """RoIAlign of each RoI (K, 5) on its FPN level among P2..P5."""
        level = _level_of(rois[:, 1:])
        pieces, order = [], []
        for k in range(4):
            idx = torch.nonzero(level == k).flatten()
            pieces.append(roi_align(feats[k], rois[idx], size, 1.0 / STRIDES[k], 2, aligned=True))
            order.append(idx)
        return torch.cat(pieces)[torch.argsort(torch.cat(order))]

    def _masks(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        return self.mask_pred(self.mask_head(self._pool(feats, rois, 14)))  # (K, 2, 28, 28) logits

    # ---- training --------------------------------------------------------------------------
    def loss(self, x: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        """Multi-task loss (paper Eqs. 3-5): RPN, localization branch and the two masks."""
        out = self(x)
        feats = out["features"]
        anchors = torch.cat(out["anchors"])
        scores, deltas = torch.cat(out["scores"], 1), torch.cat(out["deltas"], 1)
        gts = [t["boxes"].to(x.device, torch.float32).reshape(-1, 4) for t in targets]

        # RPN (Eq. 3): sampled anchors, softmax log loss; smooth L1 on the positives
        cls_idx, cls_lab, reg_pred, reg_tgt = [], [], [], []
        for i, gt in enumerate(gts):
            labels, matched = match(anchors, gt, 0.7, 0.3)
            pos, neg = sample_balanced(labels, self.rpn_batch, 0.5)
            idx = torch.cat([pos, neg])
            cls_idx.append(scores[i, idx])
            cls_lab.append(labels[idx])
            if pos.numel():
                reg_pred.append(deltas[i, pos])
                reg_tgt.append(encode_boxes(anchors[pos], gt[matched[pos]]))
        n = max(sum(len(c) for c in cls_lab), 1)
        losses = {"rpn_cls": F.cross_entropy(torch.cat(cls_idx), torch.cat(cls_lab))}
        losses["rpn_box"] = (
            (F.smooth_l1_loss(torch.cat(reg_pred), torch.cat(reg_tgt), beta=1 / 9, reduction="sum") / n)
            if reg_pred
            else deltas.sum() * 0
        )

        # localization branch: sampled proposals (plus the ground truth boxes)
        proposals = self._proposals(out, x.shape[-2:])
        rois, labels_all, box_tgt, mask_rois, mask_tgt = [], [], [], [], []
        for i, (props, gt, t) in enumerate(zip(proposals, gts, targets, strict=True)):
            props = torch.cat([props, gt])
            labels, matched = match(props, gt, 0.5, 0.5, allow_low_quality=False)
            pos, neg = sample_balanced(labels, self.roi_batch, 0.25)
            chosen = torch.cat([pos, neg])
            rois.append(torch.cat([torch.full_like(props[chosen, :1], i), props[chosen]], 1))
            labels_all.append((torch.arange(len(chosen), device=x.device) < len(pos)).long())
            box_tgt.append(encode_boxes(props[pos], gt[matched[pos]], BOX_WEIGHTS))
            # mask targets: the matched cell and nucleus masks, RoIAligned to 28x28, >= 0.5
            if pos.numel():
                gm = torch.stack([t["cells"], t["nuclei"]], 1).to(x.device, torch.float32)
                crop = torch.cat([matched[pos, None].to(props.dtype), props[pos]], 1)
                mask_tgt.append(roi_align(gm, crop, 28, 1.0, 2, aligned=True) >= 0.5)
                mask_rois.append(rois[-1][: len(pos)])
        rois, labels_all, box_tgt = torch.cat(rois), torch.cat(labels_all), torch.cat(box_tgt)
        hidden = self.box_head(self._pool(feats, rois, 7))
        losses["cls"] = F.cross_entropy(self.cls_score(hidden), labels_all)
        pred = self.box_delta(hidden)[labels_all == 1]
        losses["box"] = F.smooth_l1_loss(pred, box_tgt, beta=1.0, reduction="sum") / max(len(rois), 1)

        # mask branch (Eq. 4): mean per-pixel BCE of the cell and the nucleus mask
        mask_rois = torch.cat(mask_rois) if mask_rois else rois[:0]
        logits = self._masks(feats, mask_rois)
        tgt = torch.cat(mask_tgt).float() if mask_tgt else torch.zeros_like(logits)
        for c, name in enumerate(("mask_cell", "mask_nucleus")):
            bce = F.binary_cross_entropy_with_logits(logits[:, c], tgt[:, c], reduction="sum")
            losses[name] = bce / max(logits[:, c].numel(), 1)
        return losses

    # ---- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def detect(self, x: Tensor, score_threshold: float = 0.05) -> list[dict[str, Tensor]]:
        """Scored WBC boxes with soft cell and nucleus masks pasted at the input size."""
        h, w = x.shape[-2:]
        out = self(x)
        feats = out["features"]
        proposals = self._proposals(out, (h, w))
        rois = torch.cat([torch.cat([torch.full_like(p[:, :1], i), p], 1) for i, p in enumerate(proposals)])
        hidden = self.box_head(self._pool(feats, rois, 7))
        scores = F.softmax(self.cls_score(hidden), 1)[:, 1]
        boxes = decode_boxes(rois[:, 1:], self.box_delta(hidden), BOX_WEIGHTS)
        boxes = torch.stack(
            [
                boxes[:, 0].clamp(0, w),
                boxes[:, 1].clamp(0, h),
                boxes[:, 2].clamp(0, w),
                boxes[:, 3].clamp(0, h),
            ],
            1,
        )
        results = []
        for i in range(x.shape[0]):
            ok = (rois[:, 0] == i) & (scores >= score_threshold)
            ok &= ((boxes[:, 2] - boxes[:, 0]) > 1e-3) & ((boxes[:, 3] - boxes[:, 1]) > 1e-3)
            b, s = boxes[ok], scores[ok]
            keep = batched_nms(b, s, torch.zeros_like(s, dtype=torch.long), self.detection_nms)
            b, s = b[keep][: self.max_detections], s[keep][: self.max_detections]
            masks = torch.sigmoid(self._masks(feats, torch.cat([torch.full_like(b[:, :1], i), b], 1)))
            pasted = paste_masks(masks, b, h, w)
            results.append(
                {
                    "boxes": b.float(),
                    "scores": s.float(),
                    "cells": pasted[:, 0].float(),
                    "nuclei": pasted[:, 1].float(),
                }
            )
        return results


def build(in_channels: int = 3, num_classes: int = 3, **cfg) -> LeukocyteMask:
    """``num_classes`` is accepted for the common interface; the detector's classes are fixed
    (background, WBC), each detection carrying a cell and a nucleus mask."""
    return LeukocyteMask(in_channels=in_channels, **cfg)
