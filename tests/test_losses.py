import pytest
import torch

from napari_wbc.models.losses import tversky_loss


def _t(values):
    """A (1, 1, 1, N) tensor: one image, one channel, one row of pixels."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, -1)


def test_perfect_prediction_costs_nothing():
    g = _t([1, 1, 0, 0, 1])
    assert tversky_loss(g.clone(), g).item() == 0.0
    assert tversky_loss(g.clone(), g, smooth=0.0).item() == 0.0


def test_partial_prediction_by_hand():
    # TP = 0.8 + 0.6 = 1.4, FP = 0.2, FN = 0.2 + 0.4 = 0.6
    # T = (1.4 + 1) / (1.4 + 0.3 * 0.2 + 0.7 * 0.6 + 1) = 2.4 / 2.88 = 5/6
    loss = tversky_loss(_t([0.8, 0.6, 0.2, 0.0]), _t([1, 1, 0, 0]))
    assert loss.item() == pytest.approx(1 / 6, abs=1e-6)
    # without smoothing: T = 1.4 / 1.88
    loss = tversky_loss(_t([0.8, 0.6, 0.2, 0.0]), _t([1, 1, 0, 0]), smooth=0.0)
    assert loss.item() == pytest.approx(1 - 1.4 / 1.88, abs=1e-6)


def test_false_positives_cost_alpha_false_negatives_beta():
    fp = tversky_loss(_t([1, 1]), _t([1, 0]), smooth=0.0)  # TP 1, FP 1: T = 1 / 1.3
    fn = tversky_loss(_t([1, 0]), _t([1, 1]), smooth=0.0)  # TP 1, FN 1: T = 1 / 1.7
    assert fp.item() == pytest.approx(0.3 / 1.3, abs=1e-6)
    assert fn.item() == pytest.approx(0.7 / 1.7, abs=1e-6)
    assert fn > fp
    # swapping alpha and beta swaps the costs
    assert tversky_loss(_t([1, 1]), _t([1, 0]), 0.7, 0.3, 0.0).item() == pytest.approx(fn.item())


def test_alpha_beta_one_half_is_dice():
    p, g = _t([0.9, 0.5, 0.3, 0.1]), _t([1, 1, 0, 0])
    tp, fp, fn = 1.4, 0.4, 0.6
    dice = 2 * tp / (2 * tp + fp + fn)
    assert tversky_loss(p, g, 0.5, 0.5, 0.0).item() == pytest.approx(1 - dice, abs=1e-6)


def test_channels_are_averaged_and_pixels_pooled_over_the_batch():
    # channel 0 perfect, channel 1 the FN case above (1 - 1/1.7), split over two images
    prob = torch.tensor([[[[1.0]], [[1.0]]], [[[0.0]], [[0.0]]]])  # (2, 2, 1, 1)
    target = torch.tensor([[[[1.0]], [[1.0]]], [[[0.0]], [[1.0]]]])
    loss = tversky_loss(prob, target, smooth=0.0)
    assert loss.item() == pytest.approx((0 + 0.7 / 1.7) / 2, abs=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        tversky_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))
