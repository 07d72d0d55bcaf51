"""WBC-Net (Lu et al. 2021, Applied Soft Computing): UNet++ with a ResNet-34 encoder.

Built from Section 3 of the paper (its Figs. 1, 3 and 4 are not in our copy, so the wiring
below follows the text and UNet++, Zhou et al. 2018, which it extends):

* encoder (the "context-aware feature encoder"): X0,0 is a convolutional block (two 3x3
  convolutions with BN and ReLU, 32 filters) at full resolution, then the ResNet-34 stages
  of basic residual blocks (two 3x3 convolutions each, identity or 1x1 projection shortcut):
  X1,0 = max pooling + 3 blocks of 64, X2,0 = 4 blocks of 128, X3,0 = 6 blocks of 256,
  X4,0 = 3 blocks of 512, the first block of stages 2-4 with stride 2. This is the
  "reshaped ResNet34": its 7x7 stride-2 stem is replaced by X0,0 so that the top row
  of the nest works at the input resolution; widths 32..512 are UNet++'s;
* decoder nodes X_{i,j} (j >= 1, i + j <= 4): a convolutional block of the row's width on
  the concatenation of the same row's earlier nodes and the deconvolved (2x2 transpose
  convolution, stride 2) node X_{i+1,j-1} below;
* mixed skip pathways (Section 3.2): besides the nested link X_{i,j-1} -> X_{i,j}, each node
  also receives the node two steps back, X_{i,j-2} -> X_{i,j} (the paper's X0,0 -> X0,2 and
  X0,1 -> X0,3; we apply the same rule on every row and to X0,2 -> X0,4). ``skips="dense"``
  gives UNet++'s full dense links (every earlier node of the row), ``skips="nested"`` only
  X_{i,j-1} (the paper's ablation without mixed skips, Table 3);
* deep supervision (Section 3.3): a 1x1 convolution on each of X0,0 .. X0,4 gives five
  outputs; training supervises all five (train-mode forward returns the list) and inference
  averages their probabilities. Eval-mode forward returns the log of the averaged
  probabilities, i.e. logits whose softmax is the paper's averaged output.

Classes: the paper's head is whole cell vs rest (sigmoid, one channel). Ours predicts
``num_classes`` = 3 (background, cytoplasm, nucleus) with a softmax by default; ``paper_head=True``
builds the paper's one-channel whole-cell head, and then eval forward returns two-class logits
[rest, cell] so the core can still take the argmax.

Loss (Eqs. 3-6): binary cross-entropy plus Tversky (alpha 0.3, beta 0.7), averaged over the
five deep-supervision outputs. For the multi-class head both terms are taken one-vs-rest on
every foreground class and on the whole cell (the union of the foreground classes), and
averaged over these regions; for ``paper_head`` it is the paper's loss on the cell channel.
BCE is the mean over pixels (Eq. 4 sums them; the mean only rescales it).

The paper gives no parameter count, optimiser, learning rate or batch size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .losses import tversky_loss

KIND = "semantic"
# working px an output pixel sees on each side (measured: 247 up/left, 261 down/right, by
# tests/test_tiling_models.py), rounded up to pad_multiple: the context a slide tile needs
RECEPTIVE_REACH = 272
PAPER = "Lu et al. 2021, Applied Soft Computing"
PAPER_PARAMETERS = None  # the paper gives no count
# The paper gives only the augmentation (Section 4.2: rotation, zoom, horizontal flip) and an
# 80/20 split. Optimiser and learning rate are UNet++'s (Zhou et al. 2018: Adam, 3e-4); the
# batch size is ours. The extra augmentations of core.augment are switched off; zoom is the
# core's cell-size range and the flip is always on there.
TRAINING = {
    "optimizer": "adam",
    "lr": 3e-4,
    "weight_decay": 0.0,
    "batch_size": 8,
    "patch": 192,
    "augment": {
        "rotate": True,
        "elastic_p": 0.0,
        "stain_p": 0.0,
        "blur_p": 0.0,
        "noise_p": 0.0,
        "gray_p": 0.0,
    },
}
PAPER_AUGMENT = {"rotation": True, "zoom": True, "horizontal_flip": True}  # ranges not given

WIDTHS = (32, 64, 128, 256, 512)
RESNET34_BLOCKS = (3, 4, 6, 3)
TVERSKY_ALPHA, TVERSKY_BETA = 0.3, 0.7


class _ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by BN and ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class _BasicBlock(nn.Module):
    """ResNet-34 building block: x + F(x) with F two 3x3 convolutions (Eq. 2)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    rest = (_BasicBlock(cout, cout) for _ in range(blocks - 1))
    return nn.Sequential(_BasicBlock(cin, cout, stride), *rest)


def _sources(j: int, skips: str) -> list[int]:
    """Columns of the same row that feed node X_{i,j} (besides the upsampled X_{i+1,j-1})."""
    if skips == "dense":
        return list(range(j))
    if skips == "nested":
        return [j - 1]
    if skips == "mixed":
        return [j - 1] + ([j - 2] if j >= 2 else [])
    raise ValueError(f"skips must be 'mixed', 'dense' or 'nested', not {skips!r}")


class WBCNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        paper_head: bool = False,
        skips: str = "mixed",
        deep_supervision: bool = True,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = 2 if paper_head else num_classes
        self.paper_head = paper_head
        self.skips = skips
        self.deep_supervision = deep_supervision
        self.pad_multiple = 16  # four halvings: max pooling, then three stride-2 stages
        w = WIDTHS
        self.x00 = _ConvBlock(in_channels, w[0])
        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            [_stage(w[i], w[i + 1], RESNET34_BLOCKS[i], 1 if i == 0 else 2) for i in range(4)]
        )
        self.up = nn.ModuleDict()
        self.nodes = nn.ModuleDict()
        for j in range(1, 5):
            for i in range(5 - j):
                key = f"{i}_{j}"
                self.up[key] = nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2)
                self.nodes[key] = _ConvBlock(w[i] * (len(_sources(j, skips)) + 1), w[i])
        out = 1 if paper_head else num_classes
        self.heads = nn.ModuleList(nn.Conv2d(w[0], out, 1) for _ in range(5 if deep_supervision else 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The top row X0,0 .. X0,4."""
        nodes = {(0, 0): self.x00(x)}
        y = self.pool(nodes[0, 0])
        for i, stage in enumerate(self.encoder, start=1):
            y = nodes[i, 0] = stage(y)
        for j in range(1, 5):
            for i in range(5 - j):
                key = f"{i}_{j}"
                inputs = [nodes[i, k] for k in _sources(j, self.skips)]
                inputs.append(self.up[key](nodes[i + 1, j - 1]))
                nodes[i, j] = self.nodes[key](torch.cat(inputs, 1))
        return [nodes[0, j] for j in range(5)]

    def forward(self, x: torch.Tensor):
        top = self.features(x)
        if not self.deep_supervision:
            top = top[-1:]
        outputs = [head(f) for head, f in zip(self.heads, top, strict=True)]
        if self.training:
            return outputs
        return average_outputs(outputs)


def average_outputs(outputs: list[torch.Tensor]) -> torch.Tensor:
    """Logits whose softmax is the mean probability of the outputs (one-channel: sigmoid).

    A one-channel (paper) head gives two-class logits [log P(rest), log P(cell)].
    """
    log_n = math.log(len(outputs))
    stacked = torch.stack([o.float() for o in outputs])  # (K, B, C, H, W)
    if stacked.shape[2] == 1:
        cell = torch.logsumexp(F.logsigmoid(stacked), 0) - log_n
        rest = torch.logsumexp(F.logsigmoid(-stacked), 0) - log_n
        return torch.cat([rest, cell], 1)
    return torch.logsumexp(stacked.log_softmax(2), 0) - log_n


def _regions(num_classes: int) -> list[list[int]]:
    """Each foreground class, then the whole cell (all foreground classes) if that is different."""
    regions = [[c] for c in range(1, num_classes)]
    if num_classes > 2:
        regions.append(list(range(1, num_classes)))
    return regions


def _output_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    logits = logits.float()
    if logits.shape[1] == 1:  # the paper's whole-cell head
        cell = (target > 0).float()[:, None]
        bce = F.binary_cross_entropy_with_logits(logits, cell)
        return bce + tversky_loss(torch.sigmoid(logits), cell, alpha, beta)
    num_classes = logits.shape[1]
    logp = logits.log_softmax(1)
    log_in, log_out, inside = [], [], []
    for region in _regions(num_classes):
        rest = [c for c in range(num_classes) if c not in region]
        log_in.append(torch.logsumexp(logp[:, region], 1))
        log_out.append(torch.logsumexp(logp[:, rest], 1))
        inside.append(torch.isin(target, torch.tensor(region, device=target.device)))
    log_in, log_out = torch.stack(log_in, 1), torch.stack(log_out, 1)
    g = torch.stack(inside, 1).float()
    bce = -(g * log_in + (1 - g) * log_out).mean()
    return bce + tversky_loss(log_in.exp(), g, alpha, beta)


def loss(
    outputs, target: torch.Tensor, alpha: float = TVERSKY_ALPHA, beta: float = TVERSKY_BETA
) -> torch.Tensor:
    """BCE + Tversky, averaged over the deep-supervision outputs (a tensor counts as one)."""
    if isinstance(outputs, torch.Tensor):
        outputs = [outputs]
    return sum(_output_loss(o, target, alpha, beta) for o in outputs) / len(outputs)


def build(in_channels: int = 3, num_classes: int = 3, **cfg) -> WBCNet:
    return WBCNet(in_channels=in_channels, num_classes=num_classes, **cfg)
