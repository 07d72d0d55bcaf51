import numpy as np
import pytest
import torch

from napari_wbc.models import (
    MissingWeightsError,
    ModelSpec,
    create_model,
    list_models,
    load_model,
    resolve_weights,
    save_model,
)
from napari_wbc.models.mifnet import PAPER_PARAMETERS


def test_mifnet_has_the_papers_parameter_count():
    net = create_model("mifnet")
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == PAPER_PARAMETERS == 2_679_593


def test_forward_shape():
    net = create_model("mifnet").eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 64, 96)).shape == (2, 3, 64, 96)


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(KeyError, match="mifnet"):
        create_model("unet3000")
    assert "mifnet" in list_models()


def test_save_load_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    net = create_model("mifnet").eval()
    save_model(net, ModelSpec("mifnet", pixel_size=0.1), tmp_path / "w")
    loaded, spec = load_model(weights=tmp_path / "w")
    assert spec.name == "mifnet" and spec.pixel_size == 0.1
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))


def test_missing_weights_say_how_to_train(tmp_path):
    with pytest.raises(MissingWeightsError, match="napari-wbc train"):
        resolve_weights(weights=tmp_path)
    with pytest.raises(MissingWeightsError, match="napari-wbc train --model nothing"):
        resolve_weights("nothing")


def test_shipped_default_weights_load():
    net, spec = load_model()
    assert spec.name == "mifnet" and spec.classes == ("background", "cytoplasm", "nucleus")
    assert not net.training


def test_flip_average_is_the_mean_of_the_four_flips_and_flip_equivariant():
    """softmax of the wrapper's output is the mean of the network's probabilities over the
    four flips, so a flipped input gives exactly the flipped output (the plain network
    does not)."""
    from napari_wbc.models.tta import FlipAverage

    net, _ = load_model()
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 3, 64, 96)).astype(np.float32))
    with torch.inference_mode():
        prob = torch.softmax(FlipAverage(net)(x), 1)
        mean = (
            sum(
                torch.softmax(net(x.flip(d) if d else x), 1).flip(d) if d else torch.softmax(net(x), 1)
                for d in ((), (3,), (2,), (2, 3))
            )
            / 4
        )
        torch.testing.assert_close(prob, mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(
            torch.softmax(FlipAverage(net)(x.flip(3)), 1), prob.flip(3), atol=1e-6, rtol=1e-5
        )
        assert (torch.softmax(net(x.flip(3)), 1) - torch.softmax(net(x), 1).flip(3)).abs().max() > 1e-3


def test_flip_average_is_refused_for_instance_models(tmp_path):
    from napari_wbc.core.io import InputError

    save_model(create_model("yolact_cis"), ModelSpec("yolact_cis"), tmp_path / "w")
    with pytest.raises(InputError, match="without flip averaging"):
        load_model(weights=tmp_path / "w", flip_average=True)
