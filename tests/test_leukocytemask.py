"""LeukocyteMask: shapes, parameter count, losses (also without cells) and a short fit."""

import numpy as np
import pytest
import torch

from napari_wbc.core.instances import targets_from_classes
from napari_wbc.models import create_model
from napari_wbc.models.leukocytemask import KIND, build, paste_masks

PARAMETERS = 44_252_634  # our count (the paper gives none)
# lighter sampling for the CPU fit; the architecture is the paper's
LIGHT = {"rpn_channels": 256, "roi_batch": 16, "pre_nms": (200, 200), "post_nms": (50, 50)}


def _smear(size=128):
    """One light field with two dark cells (disc with a darker nucleus): image, targets."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.empty((size, size, 3), np.float32)
    image[:] = (235, 200, 205)
    classes = np.zeros((size, size), np.int64)
    for cy, cx, r in ((38, 40, 20), (88, 84, 24)):
        d = np.hypot(yy - cy, xx - cx)
        image[d < r] = (170, 140, 190)
        image[d < r / 2] = (90, 50, 130)
        classes[d < r] = 1
        classes[d < r / 2] = 2
    x = torch.from_numpy((image / 255 - 0.5) / 0.25).permute(2, 0, 1)[None]
    t = {k: torch.from_numpy(v) for k, v in targets_from_classes(classes).items()}
    return x, [t]


def test_parameter_count_and_registry():
    net = create_model("leukocytemask")
    n = sum(p.numel() for p in net.parameters() if p.requires_grad)
    print(f"LeukocyteMask: {n:,} trainable parameters")
    assert n == PARAMETERS
    assert KIND == "instance" and net.pad_multiple == 64


def test_forward_and_detect_shapes(one_thread):
    torch.manual_seed(0)
    net = build(**LIGHT, max_detections=3).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = net(x)
    sides = [128 // s for s in (4, 8, 16, 32, 64)]  # P2..P6
    assert [tuple(p.shape) for p in out["features"]] == [(1, 256, n, n) for n in sides]
    assert [tuple(s.shape) for s in out["scores"]] == [(1, 3 * n * n, 2) for n in sides]
    assert [tuple(d.shape) for d in out["deltas"]] == [(1, 3 * n * n, 4) for n in sides]
    assert [tuple(a.shape) for a in out["anchors"]] == [(3 * n * n, 4) for n in sides]
    (det,) = net.detect(x, score_threshold=0.0)
    n = len(det["scores"])
    assert 1 <= n <= 3
    assert det["boxes"].shape == (n, 4) and det["cells"].shape == det["nuclei"].shape == (n, 128, 128)
    assert all(v.dtype == torch.float32 for v in det.values())
    assert (det["scores"][:-1] >= det["scores"][1:]).all()
    assert ((det["cells"] >= 0) & (det["cells"] <= 1)).all()
    assert net.detect(x, score_threshold=1.1)[0]["cells"].shape == (0, 128, 128)


def test_paste_masks_fills_exactly_the_box():
    masks = torch.ones(1, 2, 28, 28)
    pasted = paste_masks(masks, torch.tensor([[10.0, 20, 30, 45]]), 64, 50)
    expected = torch.zeros(64, 50)
    expected[20:45, 10:30] = 1
    torch.testing.assert_close(pasted[0, 0], expected)
    # a left-to-right ramp keeps its order inside the box
    ramp = torch.linspace(0, 1, 28).expand(1, 1, 28, 28)
    row = paste_masks(ramp, torch.tensor([[0.0, 0, 56, 56]]), 56, 56)[0, 0, 10]
    assert (row[1:] >= row[:-1]).all() and row[0] == 0 and row[-1] == 1


def test_losses_are_finite_with_and_without_cells(one_thread):
    torch.manual_seed(0)
    net = build(**LIGHT).train()
    x, targets = _smear()
    empty = {
        "boxes": torch.zeros(0, 4),
        "cells": torch.zeros(0, 128, 128, dtype=torch.bool),
        "nuclei": torch.zeros(0, 128, 128, dtype=torch.bool),
    }
    losses = net.loss(torch.cat([x, x]), [empty, targets[0]])
    assert set(losses) == {"rpn_cls", "rpn_box", "cls", "box", "mask_cell", "mask_nucleus"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert losses["mask_cell"] > 0 and losses["mask_nucleus"] > 0 and losses["rpn_box"] > 0
    losses = net.loss(x, [empty])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["box"] == 0 and losses["mask_cell"] == 0
    sum(losses.values()).backward()  # only the negatives teach, but the graph is whole


@pytest.fixture
def one_thread():
    """One intra-op thread: a Mask R-CNN step on a shared 2-core CPU is much faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_few_steps_lower_the_loss(one_thread):
    torch.manual_seed(0)
    net = build(**LIGHT).train()
    x, targets = _smear()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    history = []
    for _ in range(30):
        total = sum(net.loss(x, targets).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert np.mean(history[-5:]) < 0.6 * np.mean(history[:3]), history
