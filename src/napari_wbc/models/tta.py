"""Flip averaging: a semantic network's class probabilities averaged over the four flips
of its input (none, left-right, up-down, both), a common test-time augmentation.

It costs four network passes and gives smoother, slightly more accurate class maps
(docs/benchmarks.md has the figures). The wrapper returns log-probabilities, so the
softmax every caller applies gives back the averaged probabilities and nothing else in
the pipeline (fields, slides, evaluation) needs to know.
"""

from __future__ import annotations

import torch

FLIPS = ((), (3,), (2,), (2, 3))  # dims of a (B, C, H, W) tensor


class FlipAverage(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.pad_multiple = int(getattr(net, "pad_multiple", 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for dims in FLIPS:  # one pass at a time: a slide's batch of tiles stays as big as it was
            out = self.net(x.flip(dims) if dims else x)
            prob = torch.softmax(out.float(), 1)
            prob = prob.flip(dims) if dims else prob
            total = prob if total is None else total + prob
        return torch.log(total / len(FLIPS)).clamp_min(-80.0)
