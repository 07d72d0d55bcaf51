"""The cell-type classifier: one crop per segmented cell -> five white-cell types or "not a
white cell".

Not one of the five papers' networks: those segment (WCSegNet also types nuclei pixel by
pixel). This small residual CNN looks at each cell the segmenter found, whatever model found
it, as an analyser's pre-classification does (CellaVision DM96, Sysmex DI-60).

Input (``core.celltypes.cell_crops``): a square crop centred on the cell, 1.5x the cell's
larger side, resampled to ``CROP`` px, as 5 channels: the RGB image normalised like every
model's input, and the masks of this cell and of its nucleus (neighbours are not masked, so
the network knows which object it is asked about). The crop is scaled to the cell, so the
network judges shape, nucleus and granule texture and colour; the cell's size comes in as
two more numbers (``core.celltypes.size_cue``): its width in the field's own red-cell
diameters (``core.ruler``: about 7.5 um in every smear), as a log, and whether the field
has that ruler at all (a crop of one cell on clean glass has not).

Output: logits over ``CLASSES``: neutrophil, lymphocyte, monocyte, eosinophil, basophil
(the datasets' coding 1..5) and ``not_wbc`` (platelets and clumps, red cells and their
overlaps, stain debris, glare, frame edges).

Architecture: a strided 3x3 stem (24 channels, 32 px) and four residual stages (32, 64,
128, 192 channels), each halving the side (two 3x3 convolutions with batch norm, a 1x1
strided shortcut), global average pooling, the size cue appended, dropout and a linear
layer: 0.88 M parameters, 15 MFLOPs per 64 px crop, so that it trains on two CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.dataset import CELL_TYPES, NOT_WBC

KIND = "classifier"
PAPER = None  # our own design
PAPER_PARAMETERS = None
CLASSES = (*CELL_TYPES, NOT_WBC)
CROP = 64  # input side, px
CONTEXT = 1.5  # crop side / the cell's larger side
STEM, WIDTHS = 24, (32, 64, 128, 192)
SIZE_INPUTS = 2  # log(width / red-cell diameter), and 1 if the field has that ruler
TRAINING = {
    "optimizer": "adam",
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "batch_size": 64,
    "patch": CROP,
    # crops are scaled to the cell, so the zoom range is small; any rotation, every colour
    # augmentation of core.augment (stain, lamp, camera, blur, noise, grayscale). The stain
    # jitter on 30% of the crops, not 90%: on the val crops 88/87% of white cells against
    # 85/81/81% (seeds), and as good or better under changed stains, dim light and grayscale
    # (session 13, docs/benchmarks.md)
    "augment": {
        "scale": (0.85, 1.18),
        "rotation": 180.0,
        "shift": 0.06,
        "elastic_p": 0.2,
        "stain_p": 0.3,
        "stain_scale": 0.35,
        "blur_p": 0.3,
        "noise_p": 0.3,
        "gray_p": 0.05,
    },
}


class _Stage(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, 2, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


class CellTypeNet(nn.Module):
    pad_multiple = 16

    def __init__(self, in_channels: int = 5, num_classes: int = len(CLASSES), dropout: float = 0.3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, STEM, 3, 2, 1, bias=False), nn.BatchNorm2d(STEM), nn.ReLU(inplace=True)
        )
        widths = (STEM, *WIDTHS)
        self.stages = nn.Sequential(*(_Stage(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(WIDTHS[-1] + SIZE_INPUTS, num_classes)

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, classes) for crops ``x`` (B, 5, CROP, CROP) and size cues ``size``
        (B, 2); None: no ruler."""
        f = self.stages(self.stem(x)).mean((2, 3))
        if size is None:
            size = torch.zeros(len(x), SIZE_INPUTS, device=x.device, dtype=f.dtype)
        f = torch.cat([f, size.to(f.dtype).reshape(len(x), SIZE_INPUTS)], 1)
        return self.head(self.drop(f))


def build(in_channels: int = 5, num_classes: int = len(CLASSES), **cfg) -> CellTypeNet:
    return CellTypeNet(in_channels, num_classes, **cfg)
