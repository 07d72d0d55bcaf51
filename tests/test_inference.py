import numpy as np
import pytest

from napari_wbc.core.dataset import list_pairs, load_pair
from napari_wbc.core.inference import (
    AUTO_SCALE_RANGE,
    AUTO_SCALE_TARGET,
    EXPOSURE_TARGET,
    exposure_gain,
    predict_probabilities,
    run,
    segment,
    typical_cell_width,
    working_scale,
)
from napari_wbc.core.options import Options
from napari_wbc.models import ModelSpec, load_model


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_typical_cell_width_ignores_fragments_and_blobs_without_nucleus():
    classes = np.zeros((400, 400), np.uint8)
    classes[_disc(classes.shape, 100, 100, 80)] = 1
    classes[_disc(classes.shape, 100, 100, 30)] = 2
    classes[_disc(classes.shape, 300, 300, 60)] = 1  # no nucleus: not a white cell
    classes[_disc(classes.shape, 300, 80, 8)] = 2  # a small fragment
    assert typical_cell_width(classes) == pytest.approx(160, rel=0.02)
    assert typical_cell_width(np.zeros((10, 10), np.uint8)) is None


def test_typical_cell_width_of_two_touching_cells_is_one_cells_width():
    """Two 120 px cells in contact (as in bccd field 00034) are two cells 120 px wide, not
    one blob of 170 px that would send the auto-scale to half size."""
    classes = np.zeros((300, 400), np.uint8)
    for cx in (120, 230):  # discs overlap by 10 px
        classes[_disc(classes.shape, 150, cx, 60)] = 1
        classes[_disc(classes.shape, 150, cx, 25)] = 2
    assert typical_cell_width(classes) == pytest.approx(120, rel=0.05)


def test_exposure_gain_only_for_fields_darker_than_training():
    field = np.full((50, 50, 3), 216, np.uint8)  # a bccd-like background
    field[10:30, 10:30] = (120, 60, 150)  # a cell
    assert exposure_gain(field) == 1.0
    dim = (field * 0.6).astype(np.uint8)  # background 129
    assert exposure_gain(dim) == pytest.approx(EXPOSURE_TARGET / 129)
    assert exposure_gain(np.zeros((8, 8, 3), np.uint8)) == 1.0  # nothing to go by
    assert exposure_gain(np.full((8, 8, 3), 20, np.uint8)) == 4.0  # capped


def test_under_exposed_field_is_brightened_and_segmented_alike(datasets, trained_model):
    net, spec = load_model(trained_model)
    image, _ = load_pair(list_pairs(datasets / "zheng_d1", "test")[0])
    plain = run(segment(image, net, spec))
    messages = []
    dim = run(segment((image * 0.6).astype(np.uint8), net, spec), lambda *step: messages.append(step[2]))
    assert any("under-exposed field: brightened" in m for m in messages)
    same = ((plain.classes > 0) == (dim.classes > 0)).mean()
    assert same > 0.97 and dim.cells.max() == plain.cells.max() == 1


def test_working_scale():
    spec = ModelSpec("mifnet", pixel_size=0.1)
    assert working_scale(spec, 0.25) == pytest.approx(2.5)
    assert working_scale(spec, None) == 1.0
    assert working_scale(ModelSpec("mifnet"), 0.25) == 1.0


def test_the_cells_not_the_pixel_size_set_the_networks_scale():
    from napari_wbc.core.inference import scale_for_cells

    spec = ModelSpec("mifnet", pixel_size=0.1)
    for px in (None, 0.07, 0.25):  # the pixel size only matters when no white cell was found
        assert scale_for_cells(100.0, spec, px) == 1.0
        assert scale_for_cells(210.0, spec, px) == pytest.approx(AUTO_SCALE_TARGET / 210)
        assert scale_for_cells(42.0, spec, px) == pytest.approx(AUTO_SCALE_TARGET / 42)
    assert scale_for_cells(None, spec, 0.25) == pytest.approx(2.5)
    assert scale_for_cells(None, spec, None) == 1.0


def test_probabilities_sum_to_one_at_any_size(trained_model):
    net, spec = load_model(trained_model)
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    prob = predict_probabilities(net, spec, image, scale=1.7)
    assert prob.shape == (3, 37, 53)
    assert np.allclose(prob.sum(0), 1, atol=1e-4)


def test_auto_scale_on_large_cells(datasets, trained_model):
    """zheng_d2 crops show cells ~175 px wide: the second pass brings them to the target."""
    net, spec = load_model(trained_model)
    image, _ = load_pair(list_pairs(datasets / "zheng_d2", "test")[0])
    steps = []
    gen = segment(image, net, spec)
    result = run(gen, lambda *step: steps.append(step))
    assert result.scale < AUTO_SCALE_TARGET / AUTO_SCALE_RANGE[1] + 0.05
    assert any("segmenting again" in message for _, _, message in steps)
    assert result.cells.shape == image.shape[:2] and result.cells.max() >= 1
    fixed = run(segment(image, net, spec, Options(auto_scale=False)))
    assert fixed.scale == 1.0
    # the result class map is the instances' own: nucleus inside cells, nothing outside
    assert np.array_equal(result.classes > 0, result.cells > 0)
    assert np.array_equal(result.classes == 2, result.nuclei > 0)


def test_cell_type_is_the_majority_of_its_nucleus_with_mean_probability():
    from napari_wbc.core.inference import assign_types, collapse_types

    cells = np.zeros((4, 6), np.uint32)
    cells[:, :3], cells[:, 3:] = 1, 2
    nuclei = cells.copy()
    prob = np.zeros((2, 4, 6), np.float32)  # two types
    prob[0, :, :3] = 0.8  # cell 1: type a everywhere...
    prob[1, :, :3] = 0.2
    prob[1, 0, :3] = 0.9  # ...except its first row (3 of 12 pixels)
    prob[0, 0, :3] = 0.1
    prob[1, :, 3:] = 1.0  # cell 2: type b
    types = assign_types(cells, nuclei, prob, ["a", "b"])
    assert types[1][0] == "a" and types[1][1] == pytest.approx((9 * 0.8 + 3 * 0.1) / 12)
    assert types[2] == ("b", 1.0)
    full = np.stack([np.full((4, 6), 0.1), np.full((4, 6), 0.2), prob[0] * 0.7, prob[1] * 0.7])
    assert np.allclose(collapse_types(full)[2], 0.7 * prob.sum(0))


def test_bfloat16_where_asked_or_on_a_cuda_gpu():
    from napari_wbc.core.inference import bfloat16

    assert not bfloat16("auto", "cpu") and not bfloat16("auto", "mps")
    assert bfloat16("auto", "cuda") and bfloat16("auto", "cuda:1")
    assert bfloat16("bf16", "cpu") and not bfloat16("fp32", "cuda")
    with pytest.raises(ValueError, match="precision"):
        bfloat16("fp16", "cuda")


def test_bfloat16_gives_the_cells_float32_gives(datasets, trained_model):
    """The GPU's default arithmetic, on the CPU: the same cells, outlines within 1%."""
    net, spec = load_model(trained_model)
    image, _ = load_pair(list_pairs(datasets / "bccd", "test")[0])
    fp32, bf16 = (run(segment(image, net, spec, Options(precision=p))) for p in ("fp32", "bf16"))
    assert bf16.scale == pytest.approx(fp32.scale, rel=0.01)  # the cells measured as wide
    assert set(np.unique(fp32.cells)) == set(np.unique(bf16.cells)) and fp32.cells.max() >= 1
    for label in range(1, int(fp32.cells.max()) + 1):
        a, b = fp32.cells == label, bf16.cells == label
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.99
    assert np.mean(fp32.classes != bf16.classes) < 3e-3
