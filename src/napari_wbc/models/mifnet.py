"""MIF-Net (Akram et al. 2022, IEEE Access): multi-scale information fusion network.

Built layer by layer from Table 1 of the paper (2,679,593 trainable parameters):

* encoder: four stages of two 3x3 convolutions (Conv+ReLU, then BN, as Table 1 lists
  them); stages 2-4 start with a stride-2 convolution instead of pooling;
* IIF-1..4 (internal information fusion, Eq. 1): the outputs of the two convolutions of
  each stage are added, and the sum feeds the next stage;
* the splitter is Conv1_1; the boundary information propagation (BIP) takes it through
  1x1 strided convolutions with stride 4, 2 and 1 (S_Conv_1..3);
* EIF-1..3 (external information fusion, Eqs. 2-3): a transpose convolution upsamples
  the fused features and the BIP output of the same scale is added, then ReLU and BN;
* Conv5: 1x1 convolution to the classes (background, cytoplasm, nucleus) and BN_Conv5.

Table 1's parameter counts fix the kernel sizes: T_conv1 is 3x3 (295,040 parameters),
T_conv2 and T_conv3 are 2x2, S_Conv_1..3 and Conv5 are 1x1. Inputs must have sides that
are multiples of 8 (three stride-2 steps); `core.inference` pads to that.
"""

from __future__ import annotations

import torch
from torch import nn

KIND = "semantic"
# working px an output pixel sees on each side (measured: 27 up/left, 30 down/right, by
# tests/test_tiling_models.py), rounded up to pad_multiple: the context a slide tile needs
RECEPTIVE_REACH = 32
PAPER = "Akram et al. 2022, IEEE Access"
PAPER_PARAMETERS = 2_679_593
# Adam, lr 1e-3, L2 5e-4, early stop on validation with patience 20 (Section IV)
TRAINING = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 5e-4, "batch_size": 8, "patch": 192}


class _ConvReluBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(cout),
        )


class _Stage(nn.Module):
    """Two convolutions whose outputs are added (one IIF)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _ConvReluBN(cin, cout, stride)
        self.conv2 = _ConvReluBN(cout, cout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.conv1(x)
        return a, a + self.conv2(a)


class MIFNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 3):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stage1 = _Stage(in_channels, 64, 1)  # Conv1_1 is the splitter
        self.stage2 = _Stage(64, 128, 2)
        self.stage3 = _Stage(128, 256, 2)
        self.stage4 = _Stage(256, 256, 2)
        # boundary information propagation from the splitter
        self.s_conv1 = nn.Conv2d(64, 128, 1, stride=4)
        self.s_conv2 = nn.Conv2d(64, 64, 1, stride=2)
        self.s_conv3 = nn.Conv2d(64, 32, 1, stride=1)
        self.t_conv1 = nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1)
        self.t_conv2 = nn.ConvTranspose2d(128, 64, 2, stride=2)
        self.t_conv3 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.bn1t = nn.BatchNorm2d(128)
        self.bn2t = nn.BatchNorm2d(64)
        self.bn3t = nn.BatchNorm2d(32)
        self.conv5 = nn.Conv2d(32, num_classes, 1)
        self.bn5 = nn.BatchNorm2d(num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.pad_multiple = 8  # three stride-2 steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        splitter, f1 = self.stage1(x)
        _, f2 = self.stage2(f1)
        _, f3 = self.stage3(f2)
        _, f4 = self.stage4(f3)
        e1 = self.bn1t(self.relu(self.t_conv1(f4) + self.s_conv1(splitter)))
        e2 = self.bn2t(self.relu(self.t_conv2(e1) + self.s_conv2(splitter)))
        e3 = self.bn3t(self.relu(self.t_conv3(e2) + self.s_conv3(splitter)))
        return self.bn5(self.conv5(e3))


def build(in_channels: int = 3, num_classes: int = 3) -> MIFNet:
    return MIFNet(in_channels=in_channels, num_classes=num_classes)
