import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import napari_wbc
from napari_wbc.cli import main
from napari_wbc.models import (
    PIXEL_SIZE_RANGE,
    SHIPPED,
    BrokenWeightsError,
    MissingWeightsError,
    ModelSpec,
    available_weights,
    broken_weights,
    create_model,
    list_models,
    load_model,
    resolve_weights,
    save_model,
)
from napari_wbc.models.mifnet import PAPER_PARAMETERS

SAMPLE = Path(napari_wbc.__file__).parent / "sample_data" / "BloodImage_00034.jpg"


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
    net.to(memory_format=torch.channels_last)  # as load_model lays out a semantic network
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


# broken weights folders: each gives a BrokenWeightsError that names the folder, and the CLI
# one line and exit code 2


def _truncate(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _config(**changes):
    def edit(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))

    return edit


def _tensors(change):
    def edit(folder):
        state = load_file(folder / "model.safetensors")
        change(state)
        save_file(state, folder / "model.safetensors")

    return edit


def _set(key, value):
    return _tensors(lambda state: state.__setitem__(key, value))


BROKEN = {
    "truncated": (_truncate, "truncated"),
    "empty": (lambda folder: (folder / "model.safetensors").write_bytes(b""), "truncated"),
    "garbage config": (lambda folder: (folder / "config.json").write_text("{garbage"), "unreadable"),
    "config not an object": (lambda folder: (folder / "config.json").write_text("[]"), "not a JSON object"),
    "unknown model": (_config(name="unet3000"), "unet3000"),
    "unknown argument": (_config(cfg={"width": 3}), "does not build"),
    "wrong shapes for cfg": (_config(cfg={"num_classes": 5}), r"does not fit a mifnet network: .* is \(3,"),
    "wrong shape": (_set("conv5.weight", torch.zeros(2, 32, 1, 1)), r"conv5.weight is \(2, 32, 1, 1\)"),
    "missing tensor": (_tensors(lambda state: state.pop("conv5.bias")), "missing, first conv5.bias"),
    "nan": (_set("conv5.bias", torch.tensor([0.0, float("nan"), 0.0])), "NaN or infinite"),
    "inf": (_set("bn5.weight", torch.full((3,), float("inf"))), "NaN or infinite"),
    "pixel size 0": (_config(pixel_size=0), '"pixel_size" of 0 um/px'),
    "pixel size text": (_config(pixel_size="0.1"), '"pixel_size"'),
    "pixel size 50": (_config(pixel_size=50), '"pixel_size" of 50 um/px'),
    "std 0": (_config(std=[0, 0, 0]), '"std"'),
    "mean not numbers": (_config(mean="grey"), '"mean"'),
}


@pytest.fixture
def shipped_copy(tmp_path):
    folder = tmp_path / "mifnet-copy"
    shutil.copytree(SHIPPED / "mifnet", folder)
    return folder


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_weights_are_a_clear_error(shipped_copy, kind, tmp_path, capsys):
    breaks, says = BROKEN[kind]
    breaks(shipped_copy)
    with pytest.raises(BrokenWeightsError, match=says) as err:
        load_model(weights=shipped_copy, device="cpu")
    assert str(shipped_copy) in str(err.value) and "napari-wbc train" in str(err.value)
    args = ["segment", str(SAMPLE), "--out", str(tmp_path / "out"), "--weights", str(shipped_copy)]
    assert main([*args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(shipped_copy) in err, err


def test_broken_classifier_weights_are_a_clear_error(tmp_path, capsys):
    folder = tmp_path / "celltype-copy"
    shutil.copytree(SHIPPED / "celltype", folder)
    _truncate(folder)
    args = ["segment", str(SAMPLE), "--out", str(tmp_path / "out"), "--classifier-weights", str(folder)]
    assert main([*args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated" in err and str(folder) in err, err


def test_non_finite_outputs_are_an_error_not_zero_cells(shipped_copy, tmp_path, capsys):
    from PIL import Image

    from napari_wbc.core.inference import run, segment

    # finite weights whose output overflows float32: the network gives inf and NaN
    _set("bn5.weight", torch.full((3,), 3e38))(shipped_copy)
    net, spec = load_model(weights=shipped_copy, device="cpu")
    with pytest.raises(BrokenWeightsError, match="NaN or infinite numbers"):
        run(segment(np.asarray(Image.open(SAMPLE).convert("RGB")), net, spec))
    args = ["segment", str(SAMPLE), "--out", str(tmp_path / "out"), "--weights", str(shipped_copy)]
    assert (
        main([*args, "--device", "cpu", "--typing", "none"]) == 2
    )  # the run stops: every file would fail alike
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NaN or infinite numbers" in err, err


def test_broken_user_weights_found_by_name_say_why(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_WBC_HOME", str(tmp_path))
    folder = tmp_path / "models" / "mine"
    shutil.copytree(SHIPPED / "mifnet", folder)
    (folder / "config.json").write_text("[]")
    assert "mine" not in available_weights()
    with pytest.raises(BrokenWeightsError, match="not a JSON object"):
        resolve_weights("mine")


def test_shipped_weights_say_reinstall_and_the_pixel_size_range_is_core_ios():
    from napari_wbc.core.io import PIXEL_SIZE_RANGE as CORE_RANGE

    assert "reinstall napari-wbc" in str(broken_weights(SHIPPED / "mifnet", "damaged"))
    assert PIXEL_SIZE_RANGE == CORE_RANGE
