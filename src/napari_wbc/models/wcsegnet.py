"""WCSegNet (Nasser et al. 2025, Ingénierie des Systèmes d'Information): a residual U-Net that
segments white-cell nuclei and types them per pixel.

Built from Section 2.3 of the paper (Figs. 3-4):

* Conv-Block (Fig. 4): 3x3 convolution + LeakyReLU, 3x3 convolution (no activation), the
  block's input added, LeakyReLU. Where the channel count changes the input goes through a
  1x1 convolution first (the paper does not say how it adds inputs of another width);
* encoder: two Conv-Blocks per level with 64, 128, 256 and 512 filters, each pair followed
  by 2x2 max pooling; dropout after the second 512 block (it also feeds the skip, as in
  the Keras U-Net the paper builds on);
* bottleneck: two Conv-Blocks of 1024;
* decoder: 2x2 upsampling (nearest, no weights, like Keras' UpSampling2D), concatenation
  with the encoder features of that level, two Conv-Blocks of 512, 256, 128, 64; the paper's
  "two dropout layers in the middle of the path" are placed after the 512 and 256 stages;
* head: 3x3 convolution (64) + batch normalisation + LeakyReLU + dropout, then a 1x1
  convolution to the classes; softmax (applied by the loss and by the core).

The paper does not give the LeakyReLU slope ("typically 0.01 to 0.1": we use 0.1), the
dropout rate (we use U-Net's 0.5) or a parameter count.

Classes: the paper has 4 (background and the nuclei of neutrophils, basophils and
lymphocytes). Ours are the project's typing classes (docs/model-interface.md), 7 in all:
background, cytoplasm and a nucleus class per white-cell type (``CLASSES``).

Target encoding for ``loss`` (int64, (B, H, W)):

    0 background, 1 cytoplasm, 2..6 nucleus of a known type (the class index:
    2 neutrophil, 3 lymphocyte, 4 monocyte, 5 eosinophil, 6 basophil),
    7 (= ``UNKNOWN_NUCLEUS``) nucleus of unknown type.

A 0/1/2 class map from a data set without cell types must have its nuclei recoded to 7
(``core.train.typed_target`` does), else they would be taken for neutrophils.

Loss: categorical cross-entropy (the paper's) split in two. On every pixel, the cross-entropy
of the three-way split background / cytoplasm / nucleus, the nucleus probability being the
sum of the five type probabilities (a logsumexp of their log-probabilities); on the nucleus
pixels of known type only, the cross-entropy over the five type channels. With typed nuclei
only, the sum of the two equals the plain seven-class cross-entropy on nucleus pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.dataset import CELL_TYPES

KIND = "semantic"
# working px an output pixel sees on each side (measured: 200 both ways, by
# tests/test_tiling_models.py), rounded up to pad_multiple: the context a slide tile needs
RECEPTIVE_REACH = 208
PAPER = "Nasser et al. 2025, Ingénierie des Systèmes d'Information"
PAPER_PARAMETERS = None  # the paper gives no count
CLASSES = ("background", "cytoplasm", *(f"nucleus:{t}" for t in CELL_TYPES))
UNKNOWN_NUCLEUS = len(CLASSES)  # 7: target value of a nucleus pixel of unknown type
# Section 2.4: Adam ("stochastic gradient descent" with mini-batches), lr 1e-4, batch 16, on
# 120x120 images (we train on 128 px patches: sides must be multiples of 16). The paper's
# augmentation (Section 2.2, Keras' ImageDataGenerator: PAPER_AUGMENT) maps onto core.augment
# as rotation +-40 deg, shear 0.2, shift 0.2 and the random horizontal flip; the zoom is the
# core's cell-size range (not +-20 %), and its elastic, stain, blur and noise steps are off.
TRAINING = {
    "optimizer": "adam",
    "lr": 1e-4,
    "weight_decay": 0.0,
    "batch_size": 16,
    "patch": 128,
    "augment": {
        "rotate": True,
        "rotation": 40.0,
        "shear": 0.2,
        "shift": 0.2,
        "elastic_p": 0.0,
        "stain_p": 0.0,
        "blur_p": 0.0,
        "noise_p": 0.0,
        "gray_p": 0.0,
    },
}
PAPER_AUGMENT = {
    "rotation_range": 40,
    "width_shift_range": 0.2,
    "height_shift_range": 0.2,
    "shear_range": 0.2,
    "zoom_range": 0.2,
    "horizontal_flip": True,
}

WIDTHS = (64, 128, 256, 512)
BOTTLENECK = 1024


class ConvBlock(nn.Module):
    """The paper's residual Conv-Block (Fig. 4)."""

    def __init__(self, cin: int, cout: int, slope: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.act(self.conv1(x)))
        return self.act(y + self.shortcut(x))


def _pair(cin: int, cout: int, slope: float) -> nn.Sequential:
    return nn.Sequential(ConvBlock(cin, cout, slope), ConvBlock(cout, cout, slope))


class WCSegNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = len(CLASSES),
        dropout: float = 0.5,
        negative_slope: float = 0.1,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.pad_multiple = 16  # four 2x2 poolings
        s = negative_slope
        chans = (in_channels, *WIDTHS)
        self.down = nn.ModuleList(_pair(chans[k], chans[k + 1], s) for k in range(4))
        self.pool = nn.MaxPool2d(2)
        self.drop_enc = nn.Dropout(dropout)
        self.bottleneck = _pair(WIDTHS[-1], BOTTLENECK, s)
        below = (BOTTLENECK, *WIDTHS[::-1])  # 1024, 512, 256, 128, 64
        self.up = nn.ModuleList(_pair(below[k] + below[k + 1], below[k + 1], s) for k in range(4))
        self.drop_dec = nn.ModuleList(nn.Dropout(dropout) if k < 2 else nn.Identity() for k in range(4))
        self.head = nn.Sequential(
            nn.Conv2d(WIDTHS[0], WIDTHS[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(WIDTHS[0]),
            nn.LeakyReLU(s),
            nn.Dropout(dropout),
            nn.Conv2d(WIDTHS[0], num_classes, 1),
        )
        # the nucleus is split over the type channels: each starts log(types) lower, so that
        # background, cytoplasm and nucleus start equally likely (RetinaNet's prior init).
        # With equal biases an untrained net calls every pixel nucleus (5/7) and, with the
        # paper's learning rate, its class map stayed all nucleus for the first 40 steps of
        # fitting two fields (tests/test_overfit.py)
        with torch.no_grad():
            self.head[-1].bias[2:] -= math.log(max(num_classes - 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, stage in enumerate(self.down):
            x = stage(x)
            if k == 3:
                x = self.drop_enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for stage, drop, skip in zip(self.up, self.drop_dec, skips[::-1], strict=True):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = drop(stage(torch.cat([x, skip], 1)))
        return self.head(x)


def loss(outputs, target: torch.Tensor) -> torch.Tensor:
    """Split cross-entropy on every pixel + type cross-entropy on nucleus pixels of known type.

    ``outputs`` (B, C, H, W) logits (or a one-element list), C = 2 + number of types;
    ``target`` (B, H, W): 0 background, 1 cytoplasm, 2..C-1 typed nucleus, C unknown-type nucleus.
    """
    logits = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    logits = logits.float()
    num_classes = logits.shape[1]
    logp = logits.log_softmax(1)
    split = torch.stack([logp[:, 0], logp[:, 1], torch.logsumexp(logp[:, 2:], 1)], 1)
    split_target = target.clamp(max=2)
    split_loss = F.nll_loss(split, split_target)
    known = (target >= 2) & (target < num_classes)
    if not known.any():
        return split_loss
    type_logp = logits[:, 2:].log_softmax(1).permute(0, 2, 3, 1)[known]  # (N, types)
    type_loss = F.nll_loss(type_logp, target[known] - 2)
    return split_loss + type_loss


def build(in_channels: int = 3, num_classes: int = len(CLASSES), **cfg) -> WCSegNet:
    return WCSegNet(in_channels=in_channels, num_classes=num_classes, **cfg)
