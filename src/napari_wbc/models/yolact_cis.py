"""YOLACT-CIS (Luo et al. 2023, Front. Oncol.): YOLACT with a Ghost-ResNet backbone, DFFN and DDAM.

A one-stage instance segmenter (YOLACT, Bolya et al. 2019) rebuilt as the paper describes:

* backbone, Ghost-ResNet-50 (Sec. 2.2.1, Fig. 2): a ResNet-50 (3, 4, 6, 3 bottlenecks) whose
  bottleneck convolutions (1x1, 3x3, 1x1) are Ghost modules with ratio S = 4: a primary
  convolution makes ceil(C/4) channels and a depthwise 3x3 "cheap operation" makes the
  other 3/4 from them. The 7x7 stem and the 1x1 projection shortcuts stay ordinary
  convolutions: that reading reproduces Table 2's backbone sizes (S = 2: 13.27 M, paper
  13.28 M; S = 4: 8.154 M, paper 8.16 M; S = 6: 6.47 M, paper 6.44 M in the row it labels 8);
* DFFN (Sec. 2.2.2, Figs. 3-4): YOLACT's FPN on C3..C5 (1x1 laterals, bilinear 2x
  upsampling and addition, a 3x3 convolution on each of P3..P5), then PANet's extra
  bottom-up path: N3 = P3, N(k+1) = conv3x3(P(k+1) + conv3x3_stride2(N(k))) for N4, N5, and
  N6, N7 by stride-2 3x3 convolutions from N5 and N6; 256 channels throughout;
* DDAM (Sec. 2.2.3, Figs. 6-7), one after each of N3..N7: frequency channel attention
  M_F = sigmoid(MLP(Y00) + MLP(Y01) + MLP(Y10)) with one MLP (C -> C/16 -> C, shared by the
  three components), Y the 2D-DCT components (0,0), (0,1), (1,0) of each channel (Eq. 1,
  divided by H*W so that Y00 is the global average pooling and the attention does not depend
  on the tile size), then CBAM's spatial attention (channel mean and max, 7x7 convolution,
  sigmoid);
* protonet (YOLACT): three 3x3 convolutions on N3, 2x bilinear upsampling, a 3x3 and a 1x1
  convolution to k = 32 ReLU prototypes at stride 4. It takes N3 before the DDAM ("the DDAM
  is placed between the DFFN and mask coefficient network");
* prediction head (YOLACT), shared by the five levels: a 3x3 convolution, then 3x3
  convolutions to the box deltas, the class confidences (background, WBC) and tanh mask
  coefficients of three anchors per position (aspect ratios 1, 1/2, 2; sides 24, 48, 96,
  192, 384 px on N3..N7, YOLACT's);
* masks = sigmoid(prototypes x coefficients), cropped to the box; Fast NMS (YOLACT's).

**Our addition:** the paper's masks cover the whole cell. Here every anchor carries two sets
of k coefficients on the same prototypes, one for the cell and one for its nucleus (the
nucleus mask is cropped to the cell box), so one pass gives both label images.

Loss (YOLACT's): smooth-L1 on the encoded boxes of positive anchors (weight 1.5), softmax
cross-entropy with online hard negative mining at 3 negatives per positive (an image with no
cell mines 3, as if it had one positive, so that empty patches teach "no cell"), and per
positive (at most 100 per image) a BCE between the assembled mask and the ground truth at the
prototypes' resolution, cropped to the ground-truth box and divided by its area (weight
6.125), for the cell and, ours, for the nucleus; all divided by the number of positives.
YOLACT's auxiliary semantic-segmentation loss is left out (the paper does not mention it).
Anchors match at IoU >= 0.5, are negative below 0.4, and each cell's best anchor is positive.

Trainable parameters: 17,866,620 here against the paper's 17.59 M (+1.6 %): backbone 8,153,504
(Table 2: 8.16 M), DFFN 6,228,992 (of which the bottom-up path 2,360,320), five DDAMs 41,450,
protonet 2,368,544, head 1,074,130 (of which the nucleus coefficients, ours, 221,280). The
paper's figure is exactly YOLACT's 34.99 M minus ResNet-50 with its classifier (25.56 M,
Table 2) plus the Ghost backbone (8.16 M): 34.99 - 25.56 + 8.16 = 17.59, i.e. apparently a
backbone swap on paper, not a count of the DFFN and DDAM, and YOLACT's 34.99 M depends on its
own FPN variant and class count, which the paper does not give. `parameter_breakdown` lists
the parts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ops import anchors_for_grid, box_iou, decode_boxes, encode_boxes, match

KIND = "instance"
PAPER = "Luo et al. 2023, Frontiers in Oncology 13:1223353"
PAPER_PARAMETERS = 17_590_000  # "17.59 M" (Table 6); YOLACT with ResNet-50: 34.99 M
# Table 1: SGD, lr 1e-3, batch 16, 600 epochs, on 512x512 windows (stride 256) of ALL-IDB1;
# momentum and weight decay are YOLACT's (the paper gives none) and so is the augmentation
# ("conventional data augmentation", Discussion): no elastic warps.
TRAINING = {
    "optimizer": "sgd",
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "batch_size": 16,
    "patch": 512,
    "augment": {"elastic_p": 0.0},
}

GHOST_RATIO = 4  # S
DCT_COMPONENTS = ((0, 0), (0, 1), (1, 0))
REDUCTION = 16  # r
NUM_PROTOTYPES = 32  # k
FPN_CHANNELS = 256
STRIDES = (8, 16, 32, 64, 128)
ANCHOR_SIZES = (24, 48, 96, 192, 384)
ASPECT_RATIOS = (1.0, 0.5, 2.0)
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # SSD/YOLACT variances 0.1, 0.2
POS_IOU, NEG_IOU = 0.5, 0.4
NEG_POS_RATIO = 3
MASKS_TO_TRAIN = 100
BOX_ALPHA, CONF_ALPHA, MASK_ALPHA = 1.5, 1.0, 6.125
NMS_IOU, NMS_TOP_K, MAX_DETECTIONS = 0.5, 200, 100


# ----------------------------------------------------------------------------- functions


def dct_basis(h: int, w: int, components=DCT_COMPONENTS, device=None, dtype=torch.float32) -> torch.Tensor:
    """The (K, h, w) 2D-DCT basis images of Eq. 1 for components (u, v) = (row, column) frequency.

    ``basis[k, i, j] = cos(pi u (i + 1/2) / h) * cos(pi v (j + 1/2) / w)``: (0, 0) is all
    ones, (0, 1) a half cosine along the columns (x), (1, 0) along the rows (y).
    """
    i = torch.arange(h, dtype=torch.float64) + 0.5
    j = torch.arange(w, dtype=torch.float64) + 0.5
    out = [torch.outer(torch.cos(math.pi * u * i / h), torch.cos(math.pi * v * j / w)) for u, v in components]
    return torch.stack(out).to(device=device, dtype=dtype)


def fast_nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = NMS_IOU, top_k: int = NMS_TOP_K
) -> torch.Tensor:
    """YOLACT's Fast NMS: indices of the kept boxes, best score first.

    The ``top_k`` best boxes are sorted by score; box j is dropped when its IoU with any
    better-scored box i < j exceeds ``iou_threshold`` (column maximum of the upper-triangular
    IoU matrix), whether or not box i was itself dropped. Greedy NMS would let a box
    suppressed by a better one suppress nothing, so Fast NMS may drop a few more.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)[:top_k]
    iou = box_iou(boxes[order], boxes[order]).triu(diagonal=1)
    keep = iou.max(dim=0).values <= iou_threshold
    return order[keep]


def _crop_window(boxes: torch.Tensor, h: int, w: int, scale: float = 1.0) -> torch.Tensor:
    """(N, h, w) float 0/1: the pixels (of size ``scale`` input px) that overlap each box."""
    b = boxes / scale
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype)
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype)
    iny = (ys[None] + 1 > b[:, 1:2]) & (ys[None] < b[:, 3:4])
    inx = (xs[None] + 1 > b[:, 0:1]) & (xs[None] < b[:, 2:3])
    return (iny[:, :, None] & inx[:, None, :]).to(boxes.dtype)


# ----------------------------------------------------------------------------- backbone


class GhostModule(nn.Module):
    """Ghost module (Han et al. 2020): primary convolution to ceil(C/S) channels, then a
    depthwise 3x3 cheap operation to the remaining ones; the two are concatenated."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int = 1,
        ratio: int = GHOST_RATIO,
        dw_kernel: int = 3,
        relu: bool = True,
    ):
        super().__init__()
        self.cout = cout
        primary = math.ceil(cout / ratio)
        cheap = primary * (ratio - 1)
        act = [nn.ReLU(inplace=True)] if relu else []
        self.primary = nn.Sequential(
            nn.Conv2d(cin, primary, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(primary), *act
        )
        self.cheap = nn.Sequential(
            nn.Conv2d(primary, cheap, dw_kernel, 1, dw_kernel // 2, groups=primary, bias=False),
            nn.BatchNorm2d(cheap),
            *act,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[:, : self.cout]


class GhostBottleneck(nn.Module):
    """ResNet-50 bottleneck (1x1, 3x3 with the stride, 1x1 to 4x) with Ghost modules."""

    def __init__(self, cin: int, width: int, stride: int, ratio: int):
        super().__init__()
        cout = 4 * width
        self.body = nn.Sequential(
            GhostModule(cin, width, 1, 1, ratio),
            GhostModule(width, width, 3, stride, ratio),
            GhostModule(width, cout, 1, 1, ratio, relu=False),
        )
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.body(x) + identity)


class GhostResNet(nn.Module):
    """Ghost-ResNet-50 without the classifier: C3, C4, C5 at strides 8, 16, 32."""

    def __init__(self, in_channels: int = 3, ratio: int = GHOST_RATIO, blocks=(3, 4, 6, 3), width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        layers, cin = [], width
        widths = (width, 2 * width, 4 * width, 8 * width)
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            stage = []
            for b in range(n):
                stage.append(GhostBottleneck(cin, w, 2 if (b == 0 and i > 0) else 1, ratio))
                cin = 4 * w
            layers.append(nn.Sequential(*stage))
        self.layers = nn.ModuleList(layers)
        self.channels = tuple(4 * w for w in widths[1:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out[1:]


# ----------------------------------------------------------------------------- neck


class DFFN(nn.Module):
    """Dual-stream feature fusion: YOLACT's FPN (top-down) plus a bottom-up path; N3..N7."""

    def __init__(self, in_channels=(512, 1024, 2048), channels: int = FPN_CHANNELS):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        n = len(in_channels) - 1
        self.down = nn.ModuleList(nn.Conv2d(channels, channels, 3, 2, 1) for _ in range(n))
        self.fuse = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(n))
        self.extra = nn.ModuleList(nn.Conv2d(channels, channels, 3, 2, 1) for _ in range(2))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p = [None] * len(feats)
        top = None
        for k in range(len(feats) - 1, -1, -1):
            y = self.lateral[k](feats[k])
            if top is not None:
                y = y + F.interpolate(top, size=y.shape[-2:], mode="bilinear", align_corners=False)
            top = p[k] = y
        p = [F.relu(s(t)) for s, t in zip(self.smooth, p, strict=True)]
        n = [p[0]]
        for k in range(1, len(p)):
            m = F.relu(self.down[k - 1](n[-1]))
            n.append(F.relu(self.fuse[k - 1](p[k] + m)))
        for conv in self.extra:
            n.append(conv(n[-1]))
        return n


class DDAM(nn.Module):
    """Dual-domain attention: 2D-DCT channel attention (components (0,0), (0,1), (1,0), shared
    MLP with reduction r) followed by CBAM's spatial attention."""

    def __init__(
        self,
        channels: int = FPN_CHANNELS,
        reduction: int = REDUCTION,
        components=DCT_COMPONENTS,
        spatial_kernel: int = 7,
    ):
        super().__init__()
        self.components = tuple(components)
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
        )
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)
        self._basis: torch.Tensor | None = None

    def basis(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        b = self._basis
        if b is None or b.shape[-2:] != (h, w) or b.device != like.device or b.dtype != like.dtype:
            b = self._basis = dct_basis(h, w, self.components, like.device, like.dtype) / (h * w)
        return b

    def channel_attention(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bchw,khw->bkc", x, self.basis(*x.shape[-2:], x))  # (B, K, C)
        weights = torch.sigmoid(self.mlp(y).sum(1))
        return x * weights[:, :, None, None]

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_attention(self.channel_attention(x))


# ----------------------------------------------------------------------------- heads


class ProtoNet(nn.Module):
    def __init__(self, channels: int = FPN_CHANNELS, k: int = NUM_PROTOTYPES):
        super().__init__()
        self.before = nn.Sequential(
            *[
                m
                for _ in range(3)
                for m in (nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
            ]
        )
        self.after = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, k, 1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.before(x), scale_factor=2, mode="bilinear", align_corners=False)
        return self.after(x)


class PredictionHead(nn.Module):
    """Per anchor: box deltas (4), class logits, 2k mask coefficients (cell, then nucleus)."""

    def __init__(
        self,
        channels: int = FPN_CHANNELS,
        anchors: int = 3,
        classes: int = 2,
        k: int = NUM_PROTOTYPES,
        masks: int = 2,
    ):
        super().__init__()
        self.a, self.classes, self.coefs = anchors, classes, masks * k
        self.upfeature = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.box = nn.Conv2d(channels, anchors * 4, 3, padding=1)
        self.conf = nn.Conv2d(channels, anchors * classes, 3, padding=1)
        self.mask = nn.Conv2d(channels, anchors * self.coefs, 3, padding=1)

    @staticmethod
    def _flat(t: torch.Tensor, n: int) -> torch.Tensor:
        return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, n)  # (B, H*W*A, n), anchors fastest

    def forward(self, x: torch.Tensor):
        x = self.upfeature(x)
        return (
            self._flat(self.box(x), 4),
            self._flat(self.conf(x), self.classes),
            torch.tanh(self._flat(self.mask(x), self.coefs)),
        )


# ----------------------------------------------------------------------------- network


class YolactCIS(nn.Module):
    pad_multiple = 128  # N7 has stride 128

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        ghost_ratio: int = GHOST_RATIO,
        prototypes: int = NUM_PROTOTYPES,
        blocks=(3, 4, 6, 3),
        width: int = 64,
        channels: int = FPN_CHANNELS,
    ):
        super().__init__()
        if num_classes != 3:
            raise ValueError(
                "yolact_cis segments cells and nuclei: its label classes are "
                f"background, cytoplasm, nucleus (num_classes=3), not {num_classes}"
            )
        self.in_channels, self.num_classes, self.k = in_channels, num_classes, prototypes
        self.backbone = GhostResNet(in_channels, ghost_ratio, tuple(blocks), width)
        self.dffn = DFFN(self.backbone.channels, channels)
        self.ddam = nn.ModuleList(DDAM(channels) for _ in STRIDES)
        self.protonet = ProtoNet(channels, prototypes)
        self.head = PredictionHead(channels, len(ASPECT_RATIOS), 2, prototypes, 2)
        self._anchors: dict = {}

    def anchors(self, hw: tuple[int, int], device) -> torch.Tensor:
        """(A, 4) x0, y0, x1, y1 in input pixels for an input of size ``hw``, level by level."""
        key = (tuple(hw), str(device))
        if key not in self._anchors:
            per_level = [
                anchors_for_grid((math.ceil(hw[0] / s), math.ceil(hw[1] / s)), s, (size,), ASPECT_RATIOS)
                for s, size in zip(STRIDES, ANCHOR_SIZES, strict=True)
            ]
            self._anchors = {key: torch.cat(per_level).float().to(device)}
        return self._anchors[key]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw predictions: ``boxes`` deltas (B, A, 4), ``conf`` logits (B, A, 2), ``coefs``
        (B, A, 2k), ``protos`` (B, k, H/4, W/4) and ``anchors`` (A, 4)."""
        levels = self.dffn(self.backbone(x))
        protos = self.protonet(levels[0])
        outs = [self.head(att(n)) for att, n in zip(self.ddam, levels, strict=True)]
        boxes, conf, coefs = (torch.cat(t, 1) for t in zip(*outs, strict=True))
        return {
            "boxes": boxes,
            "conf": conf,
            "coefs": coefs,
            "protos": protos,
            "anchors": self.anchors(x.shape[-2:], x.device),
        }

    # ------------------------------------------------------------------ training

    def loss(self, x: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """YOLACT's losses: ``box`` (smooth L1), ``conf`` (OHEM cross-entropy), ``mask_cell`` and
        ``mask_nucleus`` (cropped, area-normalised BCE), each divided by the positives."""
        out = self.forward(x)
        anchors, protos = out["anchors"], out["protos"]
        hp, wp = protos.shape[-2:]
        scale = x.shape[-1] / wp
        k = self.k
        box_loss = conf_loss = x.new_zeros(())
        mask_loss = [x.new_zeros(()), x.new_zeros(())]
        total_pos = 0
        for b, t in enumerate(targets):
            gt = t["boxes"].to(anchors)
            labels, matched = match(anchors, gt, POS_IOU, NEG_IOU, True)
            pos = labels == 1
            num_pos = int(pos.sum())
            total_pos += num_pos
            # online hard negative mining among the negatives (IoU < 0.4; ignored ones excluded)
            ce = F.cross_entropy(out["conf"][b], pos.long(), reduction="none")
            mining = ce.detach().masked_fill(labels != 0, -1.0)
            num_neg = min(NEG_POS_RATIO * max(num_pos, 1), int((labels == 0).sum()))
            neg = torch.zeros_like(pos)
            neg[torch.argsort(mining, descending=True)[:num_neg]] = True
            conf_loss = conf_loss + ce[pos | neg].sum()
            if num_pos == 0:
                continue
            idx = matched[pos]
            deltas = encode_boxes(anchors[pos], gt[idx], BOX_WEIGHTS)
            box_loss = box_loss + F.smooth_l1_loss(out["boxes"][b][pos], deltas, reduction="sum")
            # masks: at most MASKS_TO_TRAIN positives, at the prototypes' resolution
            coefs = out["coefs"][b][pos]
            if num_pos > MASKS_TO_TRAIN:
                sel = torch.randperm(num_pos, device=idx.device)[:MASKS_TO_TRAIN]
                coefs, idx = coefs[sel], idx[sel]
            window = _crop_window(gt[idx], hp, wp, scale)
            area = window.sum((1, 2)).clamp(min=1.0)
            for j, key in enumerate(("cells", "nuclei")):
                gt_masks = F.interpolate(t[key].to(protos)[None], size=(hp, wp), mode="area")[0]
                target = (gt_masks[idx] > 0.5).to(protos)
                logits = torch.einsum("khw,nk->nhw", protos[b], coefs[:, j * k : (j + 1) * k])
                bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
                mask_loss[j] = mask_loss[j] + ((bce * window).sum((1, 2)) / area).sum()
        norm = max(total_pos, 1)
        return {
            "box": BOX_ALPHA * box_loss / norm,
            "conf": CONF_ALPHA * conf_loss / norm,
            "mask_cell": MASK_ALPHA * mask_loss[0] / norm,
            "mask_nucleus": MASK_ALPHA * mask_loss[1] / norm,
        }

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def detect(self, x: torch.Tensor, score_threshold: float = 0.05) -> list[dict[str, torch.Tensor]]:
        """Per image: ``boxes`` (N, 4), ``scores`` (N,), soft ``cells`` and ``nuclei`` (N, H, W)
        at the input size, best score first (Fast NMS, at most 100)."""
        out = self.forward(x)
        h, w = x.shape[-2:]
        k = self.k
        results = []
        for b in range(x.shape[0]):
            scores = torch.softmax(out["conf"][b].float(), -1)[:, 1]
            cand = torch.nonzero(scores > score_threshold).flatten()
            boxes = decode_boxes(
                out["anchors"][cand], out["boxes"][b][cand].float(), BOX_WEIGHTS, math.log(1000.0 / 16)
            )
            boxes = torch.stack(
                [
                    boxes[:, 0].clamp(0, w),
                    boxes[:, 1].clamp(0, h),
                    boxes[:, 2].clamp(0, w),
                    boxes[:, 3].clamp(0, h),
                ],
                1,
            )
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            cand, boxes = cand[ok], boxes[ok]
            keep = fast_nms(boxes, scores[cand], NMS_IOU, NMS_TOP_K)[:MAX_DETECTIONS]
            cand, boxes = cand[keep], boxes[keep]
            coefs = out["coefs"][b][cand].float()
            protos = out["protos"][b].float()
            masks = []
            for j in range(2):
                if len(cand) == 0:
                    masks.append(protos.new_zeros((0, h, w)))
                    continue
                logits = torch.einsum("khw,nk->nhw", protos, coefs[:, j * k : (j + 1) * k])
                up = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                masks.append(torch.sigmoid(up) * _crop_window(boxes, h, w))
            results.append(
                {
                    "boxes": boxes.float(),
                    "scores": scores[cand].float(),
                    "cells": masks[0],
                    "nuclei": masks[1],
                }
            )
        return results


def parameter_breakdown(net: YolactCIS) -> dict[str, int]:
    """Trainable parameters per part (backbone, dffn, ddam, protonet, head)."""
    return {
        name: sum(p.numel() for p in getattr(net, name).parameters() if p.requires_grad)
        for name in ("backbone", "dffn", "ddam", "protonet", "head")
    }


def build(in_channels: int = 3, num_classes: int = 3, **cfg) -> YolactCIS:
    """The paper's network; ``cfg`` may shrink it (``blocks``, ``width``, ``channels``,
    ``prototypes``, ``ghost_ratio``), which only the quick tests do."""
    return YolactCIS(in_channels=in_channels, num_classes=num_classes, **cfg)
