"""Losses shared by the model modules.

``tversky_loss`` is the Tversky term of WBC-Net (Lu et al. 2021, Eqs. 5-6): per channel c

    T_c = (sum p g + s) / (sum p g + alpha * sum p (1 - g) + beta * sum (1 - p) g + s)

summed over every pixel of the batch, and the loss is ``1 - T_c``. ``alpha`` weighs the false
positives and ``beta`` the false negatives (the paper: 0.3 and 0.7, so a missed cell pixel
costs more than a spurious one).
"""

from __future__ import annotations

import torch


def tversky_loss(
    prob: torch.Tensor,
    target_onehot: torch.Tensor,
    alpha: float = 0.3,
    beta: float = 0.7,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Mean over channels of ``1 - T_c`` for ``prob`` and ``target_onehot`` of shape (B, C, ...).

    With one channel this is the paper's Eq. 5 exactly; with several, the mean (not the sum
    of Eq. 5) keeps the loss in [0, 1] whatever the number of channels.
    """
    if prob.shape != target_onehot.shape:
        raise ValueError(f"prob {tuple(prob.shape)} and target {tuple(target_onehot.shape)} differ")
    prob = prob.float()
    target = target_onehot.to(prob.dtype)
    dims = [0, *range(2, prob.ndim)]  # every pixel of every image, per channel
    tp = (prob * target).sum(dims)
    fp = (prob * (1 - target)).sum(dims)
    fn = ((1 - prob) * target).sum(dims)
    index = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return (1 - index).mean()
