"""YOLACT-CIS: Fast NMS, the DCT basis, DDAM, Ghost modules, detect/loss contract, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_wbc.models import create_model
from napari_wbc.models.ops import nms
from napari_wbc.models.registry import model_kind
from napari_wbc.models.yolact_cis import (
    DDAM,
    KIND,
    PAPER_PARAMETERS,
    STRIDES,
    TRAINING,
    GhostModule,
    GhostResNet,
    build,
    dct_basis,
    fast_nms,
    parameter_breakdown,
)

# our exact count; the paper says 17.59 M (see the module docstring for the difference)
PARAMETERS = 17_866_620
BREAKDOWN = {
    "backbone": 8_153_504,
    "dffn": 6_228_992,
    "ddam": 41_450,
    "protonet": 2_368_544,
    "head": 1_074_130,
}
SLIM = {"blocks": (1, 1, 1, 1), "width": 16, "channels": 64, "prototypes": 8}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("yolact_cis").eval()


def _discs(size: int = 128):
    """A normalised smear-like image with two dark discs (cells) with darker nuclei."""
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size, 3), 0.85, np.float32)
    cells, nuclei, boxes = [], [], []
    for cy, cx, r in ((40, 42, 18), (88, 84, 22)):
        d = (yy - cy) ** 2 + (xx - cx) ** 2
        cell, nucleus = d < r * r, d < (r / 2) ** 2
        img[cell] = (0.6, 0.4, 0.7)
        img[nucleus] = (0.3, 0.1, 0.4)
        ys, xs = np.nonzero(cell)
        cells.append(cell)
        nuclei.append(nucleus)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    x = torch.from_numpy(((img - 0.5) / 0.25).transpose(2, 0, 1)[None].copy())
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "cells": torch.from_numpy(np.stack(cells)),
        "nuclei": torch.from_numpy(np.stack(nuclei)),
    }
    return x, target


def _empty(size: int = 128):
    return {
        "boxes": torch.zeros(0, 4),
        "cells": torch.zeros(0, size, size, dtype=torch.bool),
        "nuclei": torch.zeros(0, size, size, dtype=torch.bool),
    }


# ------------------------------------------------------------------ Fast NMS


def test_fast_nms_keeps_known_boxes_and_differs_from_greedy():
    # A (0.9) overlaps B (0.8) with IoU 2/3; B overlaps C (0.7) with IoU 2/3; A and C: 3/7; D apart
    boxes = torch.tensor(
        [
            [4.0, 0, 14, 10],  # 0: C
            [0.0, 0, 10, 10],  # 1: A
            [50.0, 50, 60, 60],  # 2: D
            [2.0, 0, 12, 10],
        ]
    )  # 3: B
    scores = torch.tensor([0.7, 0.9, 0.95, 0.8])
    assert fast_nms(boxes, scores, 0.5, 200).tolist() == [2, 1]
    # greedy NMS keeps C: its only suppressor B was itself suppressed by A
    assert nms(boxes, scores, 0.5).tolist() == [2, 1, 0]
    # a looser threshold keeps everything; top_k keeps only the best candidates
    assert fast_nms(boxes, scores, 0.7, 200).tolist() == [2, 1, 3, 0]
    assert fast_nms(boxes, scores, 0.7, 2).tolist() == [2, 1]
    assert fast_nms(torch.zeros(0, 4), torch.zeros(0), 0.5, 200).numel() == 0


# ------------------------------------------------------------------ DCT and DDAM


def test_dct_basis_values_and_orthogonality():
    b = dct_basis(4, 4, ((0, 0), (0, 1), (1, 0)))
    assert b.shape == (3, 4, 4) and b.dtype == torch.float32
    assert torch.equal(b[0], torch.ones(4, 4))
    c = [
        math.cos(math.pi / 8),
        math.cos(3 * math.pi / 8),
        math.cos(5 * math.pi / 8),
        math.cos(7 * math.pi / 8),
    ]  # 0.92388, 0.38268, -0.38268, -0.92388
    expected = torch.tensor(c).expand(4, 4)  # (0, 1): varies along the columns (x) only
    assert torch.allclose(b[1], expected, atol=1e-6)
    assert torch.allclose(b[2], expected.T, atol=1e-6)  # (1, 0): along the rows (y)
    gram = b.reshape(3, -1) @ b.reshape(3, -1).T
    assert torch.allclose(gram, torch.diag(torch.tensor([16.0, 8.0, 8.0])), atol=1e-5)
    assert dct_basis(3, 5, ((2, 3),)).shape == (1, 3, 5)


def test_ddam_channel_attention_on_a_constant_input():
    ddam = DDAM(channels=32, reduction=16)  # hidden width 2
    with torch.no_grad():
        ddam.mlp[0].weight.fill_(1 / 32)
        ddam.mlp[2].weight.fill_(1.0)
        ddam.spatial.weight.zero_()
    for value, (h, w) in ((1.0, (6, 5)), (3.0, (1, 1)), (0.5, (16, 16))):
        x = torch.full((2, 32, h, w), value)
        # Y00 = value (the mean), Y01 = Y10 = 0: M_F = sigmoid(2 * value) for every channel
        expected = value * torch.sigmoid(torch.tensor(2 * value))
        assert torch.allclose(ddam.channel_attention(x), expected.expand_as(x), atol=1e-6)
        # the spatial attention with a zero 7x7 kernel halves it
        assert torch.allclose(ddam(x), (0.5 * expected).expand_as(x), atol=1e-6)


def test_ddam_sees_the_first_cosine_components():
    ddam = DDAM(channels=32, reduction=16)
    x = dct_basis(8, 8, ((0, 1),))[None].expand(1, 32, 8, 8).contiguous()  # Y00 = 0, Y01 = 1/2
    with torch.no_grad():
        ddam.mlp[0].weight.fill_(1 / 32)
        ddam.mlp[2].weight.fill_(1.0)
    weights = ddam.channel_attention(x) / x
    assert torch.allclose(weights, torch.sigmoid(torch.tensor(1.0)).expand_as(x), atol=1e-5)


# ------------------------------------------------------------------ Ghost backbone


def test_ghost_module_channels():
    g = GhostModule(16, 24, kernel=3, stride=2, ratio=4)
    assert g.primary[0].out_channels == 6 and g.cheap[0].out_channels == 18
    assert g.cheap[0].groups == 6  # the cheap operation is depthwise
    assert g(torch.zeros(1, 16, 20, 20)).shape == (1, 24, 10, 10)
    odd = GhostModule(8, 10, ratio=4)  # ceil(10 / 4) = 3 primary + 9 cheap, cut to 10
    assert odd(torch.zeros(1, 8, 5, 5)).shape == (1, 10, 5, 5)


def test_ghost_resnet_matches_table_2():
    # Table 2: Ghost-ResNet backbone 8.16 M at S = 4 and 13.28 M at S = 2
    for ratio, millions in ((4, 8.16), (2, 13.28)):
        count = sum(p.numel() for p in GhostResNet(ratio=ratio).parameters())
        assert abs(count / 1e6 - millions) < 0.02
    feats = GhostResNet(blocks=(1, 1, 1, 1), width=16)(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 128, 8, 12), (1, 256, 4, 6), (1, 512, 2, 3)]


# ------------------------------------------------------------------ the network


def test_module_constants_and_registry(net):
    assert KIND == "instance" and model_kind("yolact_cis") == "instance"
    assert PAPER_PARAMETERS == 17_590_000
    assert TRAINING["optimizer"] == "sgd" and TRAINING["lr"] == 1e-3
    assert TRAINING["batch_size"] == 16 and TRAINING["patch"] == 512
    assert net.pad_multiple == 128 == STRIDES[-1]
    with pytest.raises(ValueError, match="num_classes"):
        build(num_classes=2)


def test_parameter_count(net):
    assert parameter_breakdown(net) == BREAKDOWN
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == PARAMETERS
    assert abs(PARAMETERS - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.02


def test_forward_output_shapes():
    net = build(**SLIM).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 128, 256))
    anchors = sum((128 // s) * (256 // s) for s in STRIDES) * 3
    assert out["boxes"].shape == (1, anchors, 4) and out["conf"].shape == (1, anchors, 2)
    assert out["coefs"].shape == (1, anchors, 16) and out["protos"].shape == (1, 8, 32, 64)
    assert out["anchors"].shape == (anchors, 4)
    # nothing above the threshold: empty results of the right shapes
    (none,) = net.detect(torch.zeros(1, 3, 128, 256), score_threshold=1.0)
    assert none["boxes"].shape == (0, 4) and none["scores"].shape == (0,)
    assert none["cells"].shape == none["nuclei"].shape == (0, 128, 256)


def test_detect_output_shapes(net):
    torch.manual_seed(1)
    (det,) = net.detect(torch.randn(1, 3, 128, 128), score_threshold=0.05)
    n = len(det["scores"])
    assert 0 < n <= 100
    assert det["boxes"].shape == (n, 4) and det["cells"].shape == det["nuclei"].shape == (n, 128, 128)
    assert all(v.dtype == torch.float32 for v in det.values())
    assert torch.all(det["scores"][:-1] >= det["scores"][1:]) and torch.all(det["scores"] > 0.05)
    assert det["cells"].min() >= 0 and det["cells"].max() <= 1
    assert det["boxes"].min() >= 0 and det["boxes"].max() <= 128
    # masks are cropped to their box: nothing left of the first box
    x0 = int(math.floor(det["boxes"][0, 0]))
    assert det["cells"][0, :, :x0].sum() == 0 and det["nuclei"][0, :, :x0].sum() == 0


def test_loss_is_finite_with_and_without_cells():
    torch.manual_seed(0)
    net = build(**SLIM).train()
    x, target = _discs()
    losses = net.loss(torch.cat([x, x]), [target, _empty()])
    assert set(losses) == {"box", "conf", "mask_cell", "mask_nucleus"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    empty = net.loss(x, [_empty()])
    assert empty["box"] == 0 and empty["mask_cell"] == 0 and empty["mask_nucleus"] == 0
    assert torch.isfinite(empty["conf"]) and empty["conf"] > 0  # hard negatives still teach "no cell"


def test_full_network_loss_is_finite():
    torch.manual_seed(0)
    x, target = _discs()
    with torch.no_grad():
        losses = create_model("yolact_cis").train().loss(x, [target])
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_thirty_steps_lower_the_loss():
    # the same architecture, slimmed (1 bottleneck per stage, 64 channels) so that it runs in seconds
    torch.manual_seed(0)
    net = build(**SLIM).train()
    x, target = _discs()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    totals = []
    for _ in range(30):
        loss = sum(net.loss(x, [target]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(loss.item())
    assert np.mean(totals[-5:]) < 0.8 * np.mean(totals[:5])
