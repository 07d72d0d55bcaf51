"""Plain-torch detection ops on hand-made cases with exact expected values."""

import math

import pytest
import torch

from napari_wbc.models.ops import (
    anchors_for_grid,
    batched_nms,
    box_iou,
    decode_boxes,
    encode_boxes,
    match,
    nms,
    roi_align,
    sample_balanced,
)


def test_box_iou_of_known_boxes():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [1, 1, 11, 11], [20, 20, 30, 30], [10, 0, 20, 10]])
    expected = torch.tensor([[1.0, 50 / 150, 81 / 119, 0, 0], [0.5, 25 / 125, 36 / 114, 0, 0]])
    assert box_iou(a, b).shape == (2, 5)
    torch.testing.assert_close(box_iou(a, b), expected)
    assert box_iou(a, b[:0]).shape == (2, 0)


def test_encode_known_delta_and_round_trip():
    ref = torch.tensor([[0.0, 0, 10, 10]])  # centre (5, 5), 10 x 10
    box = torch.tensor([[2.0, 2, 12, 22]])  # centre (7, 12), 10 x 20
    torch.testing.assert_close(encode_boxes(ref, box), torch.tensor([[0.2, 0.7, 0.0, math.log(2)]]))
    w = (10.0, 10.0, 5.0, 5.0)
    torch.testing.assert_close(encode_boxes(ref, box, w), torch.tensor([[2.0, 7.0, 0.0, 5 * math.log(2)]]))
    g = torch.Generator().manual_seed(0)
    refs = torch.rand(20, 2, generator=g) * 50
    refs = torch.cat([refs, refs + 1 + torch.rand(20, 2, generator=g) * 30], 1)
    boxes = torch.rand(20, 2, generator=g) * 50
    boxes = torch.cat([boxes, boxes + 1 + torch.rand(20, 2, generator=g) * 30], 1)
    for weights in [(1.0, 1.0, 1.0, 1.0), w]:
        back = decode_boxes(refs, encode_boxes(refs, boxes, weights), weights)
        torch.testing.assert_close(back, boxes, rtol=0, atol=1e-4)


def test_decode_clamps_the_size_deltas():
    ref = torch.tensor([[0.0, 0, 16, 16]])
    out = decode_boxes(ref, torch.tensor([[0.0, 0, 100, 100]]))
    torch.testing.assert_close(out, torch.tensor([[8 - 500.0, 8 - 500, 8 + 500, 8 + 500]]))


# A (0) .9, B (1) .8 overlaps A by 81/119, C (2) .7 apart, D (3) .95 overlaps A by exactly 0.5
BOXES = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]])
SCORES = torch.tensor([0.9, 0.8, 0.7, 0.95])


def test_nms_keeps_the_known_boxes_in_score_order():
    # D first; A is kept (IoU 0.5 is not > 0.5); B is suppressed by A; C is apart
    assert nms(BOXES, SCORES, 0.5).tolist() == [3, 0, 2]
    assert nms(BOXES, SCORES, 0.49).tolist() == [3, 1, 2]  # D suppresses A, so nothing suppresses B
    assert nms(BOXES, SCORES, 0.7).tolist() == [3, 0, 1, 2]
    assert nms(BOXES[:0], SCORES[:0], 0.5).tolist() == []


def test_batched_nms_groups_do_not_suppress_each_other():
    groups = torch.tensor([0, 1, 0, 1])  # A and B in different groups
    assert batched_nms(BOXES, SCORES, groups, 0.5).tolist() == [3, 0, 1, 2]
    assert batched_nms(BOXES, SCORES, torch.zeros(4, dtype=torch.long), 0.5).tolist() == [3, 0, 2]


def _ramp(h=8, w=8):
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    return torch.stack([x + 10 * y, 2 * x - y + 3])[None]  # (1, 2, h, w), linear in x and y


def test_roi_align_on_a_linear_ramp_is_exact():
    feat = _ramp()
    # aligned: box 1..5 px -> 0.5..4.5 in pixel-centre coordinates, bins centred on 1.5 and 3.5
    out = roi_align(feat, torch.tensor([[0.0, 1, 1, 5, 5]]), 2, 1.0, 2, aligned=True)
    xc = torch.tensor([1.5, 3.5])
    yc = torch.tensor([1.5, 3.5])
    expected = torch.stack([xc[None, :] + 10 * yc[:, None], 2 * xc[None, :] - yc[:, None] + 3])[None]
    torch.testing.assert_close(out, expected)
    # the same box on a half-resolution grid (spatial_scale 0.5), two images, rois in any order
    feats = torch.cat([torch.zeros_like(feat), feat])
    rois = torch.tensor([[1.0, 2, 2, 10, 10], [0, 2, 2, 10, 10]])
    out = roi_align(feats, rois, (2, 2), 0.5, 2, aligned=True)
    torch.testing.assert_close(out[0:1], expected)
    torch.testing.assert_close(out[1], torch.zeros(2, 2, 2))
    # not aligned: bins of 1..5 centred on 2 and 4; a 1 x 3 output: x bins 1..5 in thirds
    out = roi_align(feat, torch.tensor([[0.0, 1, 1, 5, 5]]), (1, 3), 1.0, 3, aligned=False)
    xc = 1 + 4 * (torch.arange(3) + 0.5) / 3
    torch.testing.assert_close(out[0, 0, 0], xc + 10 * 3.0)
    torch.testing.assert_close(out[0, 1, 0], 2 * xc - 3.0 + 3)


def test_roi_align_on_a_constant_map_and_outside_samples():
    feat = torch.full((1, 3, 4, 4), 3.0)
    out = roi_align(feat, torch.tensor([[0.0, 0.3, 0.7, 3.2, 2.9]]), 5, 1.0)
    torch.testing.assert_close(out, torch.full((1, 3, 5, 5), 3.0))
    # x bins -4..0 and 0..4 (not aligned): samples at x = -3 (beyond -1: zero) and -1 (clamped to 0)
    out = roi_align(feat, torch.tensor([[0.0, -4, 0, 4, 4]]), (1, 2), 1.0, 2, aligned=False)
    torch.testing.assert_close(out[0, 0], torch.tensor([[1.5, 3.0]]))
    assert roi_align(feat, torch.zeros(0, 5), 7, 1.0).shape == (0, 3, 7, 7)


def test_roi_align_gradient_is_a_weighted_average():
    feat = torch.rand(2, 4, 9, 9, requires_grad=True)
    rois = torch.tensor([[1.0, 1, 2, 7, 6], [0, 0.5, 0.5, 8, 8], [1, 3, 3, 4, 4]])
    roi_align(feat, rois, 3, 1.0).sum().backward()
    # every output averages bilinear weights that sum to one: the gradient sums to the output count
    assert feat.grad.sum().item() == pytest.approx(3 * 4 * 9)
    assert feat.grad[0].sum().item() == pytest.approx(4 * 9)


def test_anchors_for_a_2x2_grid():
    a = anchors_for_grid((2, 2), 16, (32,), (1.0,))
    expected = torch.tensor([[-8.0, -8, 24, 24], [8, -8, 40, 24], [-8, 8, 24, 40], [8, 8, 40, 40]])
    torch.testing.assert_close(a, expected)
    a = anchors_for_grid((2, 2), 16, (16, 32), (0.25, 1.0, 4.0)).reshape(2, 2, 6, 4)
    centres = (a[..., :2] + a[..., 2:]) / 2
    torch.testing.assert_close(centres[1, 0], torch.tensor([[8.0, 24]] * 6))
    sizes = a[0, 0, :, 2:] - a[0, 0, :, :2]  # (w, h): ratio = h / w, area = size**2
    expected = torch.tensor([[32.0, 8], [16, 16], [8, 32], [64, 16], [32, 32], [16, 64]])
    torch.testing.assert_close(sizes, expected)


def test_match_labels_with_the_low_quality_rule_and_without_gt():
    anchors = torch.tensor(
        [
            [0.0, 0, 10, 10],  # IoU 1 with g0: positive
            [0, 0, 10, 8],  # 0.8 with g0: positive
            [5, 0, 15, 10],  # 1/3 with g0: ignored
            [100, 100, 110, 110],  # nothing: negative
            [30, 30, 40, 40],  # 0.25 with g1, its best anchor: positive only by the low-quality rule
            [30, 30, 38, 40],  # 0.2 with g1: negative
            [40, 40, 50, 50],  # 0.25 with g1 too (a tie for best): positive by the rule
        ]
    )
    gt = torch.tensor([[0.0, 0, 10, 10], [30, 30, 50, 50]])
    labels, index = match(anchors, gt, 0.7, 0.3)
    assert labels.tolist() == [1, 1, -1, 0, 1, 0, 1]
    assert index[labels == 1].tolist() == [0, 0, 1, 1]
    labels, _ = match(anchors, gt, 0.7, 0.3, allow_low_quality=False)
    assert labels.tolist() == [1, 1, -1, 0, 0, 0, 0]
    labels, index = match(anchors, gt[:0], 0.7, 0.3)
    assert labels.tolist() == [0] * 7 and index.tolist() == [0] * 7


def test_sample_balanced():
    labels = torch.tensor([1, 0, -1, 0, 1, 0, 0, 1, 0, 0, -1, 0, 0, 0, 0])
    pos, neg = sample_balanced(labels, 8, 0.5, torch.Generator().manual_seed(1))
    assert sorted(pos.tolist()) == [0, 4, 7] and len(neg) == 5
    assert (labels[neg] == 0).all() and len(set(neg.tolist())) == 5
    pos, neg = sample_balanced(labels, 4, 0.5, torch.Generator().manual_seed(1))
    assert len(pos) == 2 and len(neg) == 2 and (labels[pos] == 1).all()
    again = sample_balanced(labels, 4, 0.5, torch.Generator().manual_seed(1))
    assert again[0].tolist() == pos.tolist() and again[1].tolist() == neg.tolist()
    pos, neg = sample_balanced(torch.zeros(5, dtype=torch.long), 8, 0.25)
    assert len(pos) == 0 and sorted(neg.tolist()) == [0, 1, 2, 3, 4]
