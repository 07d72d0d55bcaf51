"""Every semantic model tiles exactly, not just MIF-Net.

A slide tile is run with ``RECEPTIVE_REACH`` working px of context and starts on a multiple
of the network's ``pad_multiple``; then its class map equals one pass over the whole image.
Here the reach of each semantic architecture is measured (structurally: all weights
positive, an impulse at every phase of the network's grid; the widths are narrowed, which
does not change where an output pixel looks), and a slide of real bccd pixels is run in
tiles through each network (random weights, narrowed) and compared with the untiled run.
"""

import numpy as np
import pytest
import torch

from napari_wbc.core.inference import collapse_types, network_pass, run, to_tensor
from napari_wbc.core.io import read_image
from napari_wbc.core.options import Options
from napari_wbc.core.slide import Slide
from napari_wbc.core.tiling import TileGrid, network_context
from napari_wbc.core.wholeslide import segment_slide
from napari_wbc.core.work_folder import WorkFolder
from napari_wbc.models import ModelSpec, create_model, pad_multiple
from napari_wbc.models.registry import list_models, model_module

SEMANTIC = list_models("semantic")
# narrower layers than the shipped ones: the same receptive field at a fraction of the cost
NARROW = {
    "mifnet": {},
    "wbcnet": {"WIDTHS": (4, 4, 4, 4, 4)},
    "wcsegnet": {"WIDTHS": (4, 4, 4, 4), "BOTTLENECK": 4},
}


@pytest.fixture
def narrow(monkeypatch):
    def build(name: str) -> torch.nn.Module:
        module = model_module(name)
        for key, value in NARROW[name].items():
            monkeypatch.setattr(module, key, value)
        torch.manual_seed(0)
        return create_model(name).eval()

    return build


def measured_reach(net: torch.nn.Module, side: int) -> tuple[int, int]:
    """(up/left, down/right) px that an impulse at any phase of the grid changes the output."""
    net = net.double()
    align = pad_multiple(net)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                # positive everywhere, and unequal output channels (a softmax of equal logits
                # would hide the change)
                out_dim = 1 if isinstance(m, torch.nn.ConvTranspose2d) else 0
                scale = torch.arange(1, m.weight.shape[out_dim] + 1, dtype=torch.float64)
                shape = [1] * m.weight.ndim
                shape[out_dim] = -1
                m.weight.copy_(scale.reshape(shape).expand_as(m.weight) / m.weight.shape[out_dim])
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.zero_(), m.running_var.fill_(1.0), m.weight.fill_(0.1), m.bias.zero_()
        base = net(torch.zeros(1, 3, side, side, dtype=torch.float64))
        before = after = 0
        for p in range(align):
            x = torch.zeros(1, 3, side, side, dtype=torch.float64)
            c = side // 2 + p
            x[0, :, c, c] = 1.0
            ys, xs = np.nonzero(((net(x) - base).abs().amax(1) > 0)[0].numpy())
            before = max(before, c - ys.min(), c - xs.min())
            after = max(after, ys.max() - c, xs.max() - c)
    assert 0 < before < side // 2 and after < side // 2 - align, "the image is too small to see the reach"
    return int(before), int(after)


@pytest.mark.parametrize("name", SEMANTIC)
def test_receptive_reach_is_measured(name, narrow):
    net = narrow(name)
    declared = model_module(name).RECEPTIVE_REACH
    align = pad_multiple(net)
    side = 2 * (declared + 2 * align)
    reach = measured_reach(net, side)
    # the context covers the reach, and is the reach rounded up to the network's grid
    assert max(reach) <= declared < max(reach) + align
    assert declared % align == 0
    assert network_context(ModelSpec(name)) == declared


@pytest.fixture(scope="module")
def mosaic(datasets):
    """2 x 2 bccd test fields (1280 x 960 px): real smear pixels, cells near the seams."""
    from napari_wbc.core.dataset import list_pairs

    pairs = list_pairs(datasets / "bccd", "test")[:4]
    rows = [np.concatenate([read_image(p.image).data for p in pairs[i : i + 2]], 1) for i in (0, 2)]
    return np.ascontiguousarray(np.concatenate(rows, 0)[..., :3])


class Balanced(torch.nn.Module):
    """A network plus a constant per class, chosen so that background, cytoplasm and nucleus
    (all nucleus channels together) each win on part of the image: an untrained network
    would call nearly every pixel one class. Constants do not change where a pixel looks."""

    def __init__(self, net: torch.nn.Module, image: np.ndarray, spec: ModelSpec):
        super().__init__()
        self.net, self.pad_multiple = net, pad_multiple(net)
        with torch.no_grad():
            logits = net(to_tensor(net, spec, [image]))[0].double()
        three = torch.stack([logits[0], logits[1], torch.logsumexp(logits[2:], 0)])
        median = three.flatten(1).median(1).values
        offset = torch.cat([-median[:2], -median[2].expand(len(logits) - 2)])
        self.offset = offset.float()[None, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.offset


def tiled_classes(net, spec: ModelSpec, image: np.ndarray, out) -> np.ndarray:
    """The class map a slide run stores, tile by tile (tiles of 288 x 352: not on the
    network's grid, 16 of them over the mosaic, four-tile corners inside it)."""
    import zarr

    run(
        segment_slide(
            Slide.from_array(image, None, spec.name),
            out,
            net,
            spec,
            Options(tile=(288, 352), skip_empty=False, auto_scale=False),
            keep_work=True,
            until="classified",
        )
    )
    return zarr.open_array(str(WorkFolder(out, spec.name).classes), mode="r")[:]


def sure_differences(tiled: np.ndarray, whole: np.ndarray, prob: np.ndarray) -> int:
    """Pixels whose class differs where the whole-image pass was not a near tie (rounding in
    another order of summation may flip a tie of 1e-7; missing context changes far more)."""
    p = np.sort(collapse_types(prob), 0)
    return int(((tiled != whole) & (p[-1] - p[-2] > 1e-5)).sum())


@pytest.mark.slow
@pytest.mark.parametrize("name", SEMANTIC)
def test_every_semantic_model_tiles_exactly(name, narrow, mosaic, tmp_path):
    """With its measured reach as context a tiled run gives the class map of one pass; with
    none, not (so the test can tell)."""
    torch.set_num_threads(1)  # one way of summing, as in a tile and in the whole image
    spec = ModelSpec(name)
    net = Balanced(narrow(name), mosaic, spec)
    whole, prob = network_pass(net, spec, mosaic)
    shares = np.bincount(whole.ravel(), minlength=3) / whole.size
    assert (shares > 0.05).all(), f"{name}: a near-constant class map tests little ({shares})"
    assert len(TileGrid(mosaic.shape[:2], (288, 352), 0)) == 16

    tiled = tiled_classes(net, spec, mosaic, tmp_path / "reach")
    assert sure_differences(tiled, whole, prob) == 0
    assert (tiled != whole).mean() < 1e-5

    blind = ModelSpec(name, extra={"context": 0})
    assert sure_differences(tiled_classes(net, blind, mosaic, tmp_path / "none"), whole, prob) > 100


@pytest.mark.parametrize("name", [m for m in list_models() if m not in SEMANTIC])
def test_models_without_a_receptive_reach_are_refused_for_slides(name, tmp_path):
    from napari_wbc.core.io import InputError

    spec = ModelSpec(name)
    assert spec.context is None
    glass = Slide.from_array(np.full((64, 64, 3), 230, np.uint8))
    with pytest.raises(InputError, match=r"with a semantic model \(mifnet, wbcnet, wcsegnet\)"):
        run(segment_slide(glass, tmp_path, None, spec))
