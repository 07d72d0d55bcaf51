"""Every registered architecture, through the interface the core uses (docs/model-interface.md):
forward shapes, one training step lowering the loss on a tiny batch, bit-exact save/load,
and the whole segment pipeline giving cells and nuclei with shared ids."""

import numpy as np
import pytest
import torch

from napari_wbc.core.inference import run, segment, type_names
from napari_wbc.core.options import Options
from napari_wbc.core.train import model_loss, typed_target
from napari_wbc.models import ModelSpec, create_model, list_models, load_model, save_model
from napari_wbc.models.registry import model_kind, model_module

SIZE = 128


def _spec(name: str) -> ModelSpec:
    module = model_module(name)
    classes = tuple(getattr(module, "CLASSES", ModelSpec.classes))
    cfg = {"num_classes": len(classes)} if hasattr(module, "CLASSES") else {}
    return ModelSpec(name, cfg, classes=classes)


def _tiny_batch(spec: ModelSpec):
    """Two cells (dark nucleus in a paler disc) on a pink background, and the class map."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    label = np.zeros((SIZE, SIZE), np.int64)
    image = np.full((SIZE, SIZE, 3), (0.9, 0.75, 0.78), np.float32)
    for cy, cx in ((40, 40), (85, 90)):
        r = np.hypot(yy - cy, xx - cx)
        label[r < 22] = 1
        label[r < 10] = 2
    image[label == 1] = (0.75, 0.6, 0.8)
    image[label == 2] = (0.35, 0.2, 0.55)
    x = torch.from_numpy(((image - 0.5) / 0.25).transpose(2, 0, 1)[None].copy())
    if type_names(spec):
        label = typed_target(label, "neutrophil", type_names(spec))
    return x, label[None], (image * 255).astype(np.uint8)


def test_registry_lists_the_five_networks():
    assert set(list_models()) == {"mifnet", "wbcnet", "wcsegnet", "leukocytemask", "yolact_cis"}


@pytest.mark.parametrize("name", list_models())
def test_forward_shapes(name):
    spec = _spec(name)
    net = create_model(name, **spec.cfg).eval()
    assert SIZE % net.pad_multiple == 0
    x, _, _ = _tiny_batch(spec)
    with torch.no_grad():
        if model_kind(name) == "instance":
            (det,) = net.detect(x)
            n = len(det["scores"])
            assert det["boxes"].shape == (n, 4)
            assert det["cells"].shape == det["nuclei"].shape == (n, SIZE, SIZE)
            assert torch.all(det["scores"][:-1] >= det["scores"][1:])
        else:
            assert net(x).shape == (1, len(spec.classes), SIZE, SIZE)


@pytest.mark.parametrize("name", list_models())
def test_a_few_training_steps_lower_the_loss(name):
    torch.manual_seed(0)
    spec = _spec(name)
    module = model_module(name)
    net = create_model(name, **spec.cfg).train()
    x, label, _ = _tiny_batch(spec)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    losses = []
    for _ in range(6):
        loss = model_loss(net, module, x, label)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-2:]) < losses[0]


@pytest.mark.parametrize("name", list_models())
def test_save_load_round_trip_is_bit_exact(name, tmp_path):
    torch.manual_seed(1)
    spec = _spec(name)
    net = create_model(name, **spec.cfg).eval()
    save_model(net, spec, tmp_path / name)
    loaded, loaded_spec = load_model(weights=tmp_path / name)
    assert loaded_spec.classes == spec.classes
    a, b = net.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", list_models())
def test_segment_gives_cells_and_nuclei_with_shared_ids(name):
    torch.manual_seed(2)
    spec = _spec(name)
    net = create_model(name, **spec.cfg).eval()
    _, _, image = _tiny_batch(spec)
    result = run(segment(image, net, spec, Options(auto_scale=False)))
    assert result.cells.shape == result.nuclei.shape == (SIZE, SIZE)
    inside = result.nuclei > 0
    assert np.array_equal(result.nuclei[inside], result.cells[inside])
    assert set(result.scores or {}) == set(np.unique(result.cells[result.cells > 0]).tolist())
    assert (result.types is not None) == bool(type_names(spec))
