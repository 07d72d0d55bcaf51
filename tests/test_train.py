import json

import numpy as np
import pytest

from napari_wbc.core.dataset import list_pairs, load_pair
from napari_wbc.core.train import TrainConfig, segmentation_loss, train
from napari_wbc.models import load_model


def test_dataset_layout(tiny_dataset):
    pairs = list_pairs(tiny_dataset)
    assert [(p.stem, p.split) for p in pairs] == [("001", "train"), ("002", "train"), ("003", "val")]
    image, label = load_pair(pairs[0])
    assert image.dtype == np.uint8 and image.shape[2] == 3 and set(np.unique(label)) <= {0, 1, 2}


def test_train_saves_weights_and_resumes(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(batch_size=2, patch=64, max_steps=4, val_every=2)
    calls = []
    history = train(
        [tiny_dataset],
        out,
        config,
        progress=lambda s, t, i: calls.append(s),
        cancelled=lambda: len(calls) >= 3,
    )
    assert history["steps"] == 3 and calls == [1, 2, 3]
    assert (out / "checkpoint.pt").exists() and (out / "model.safetensors").exists()
    assert json.loads((out / "history.json").read_text())["val"][0]["step"] == 2
    history = train([tiny_dataset], out, config, resume=True)
    assert history["steps"] == 4  # resumed at step 3, not from scratch
    net, spec = load_model(weights=out)
    assert spec.name == "mifnet" and spec.pixel_size == pytest.approx(0.1)


def test_loss_prefers_the_truth():
    import torch

    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 2
    good = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 10
    assert segmentation_loss(good, target) < segmentation_loss(-good, target)


def test_paper_recipe_fills_what_the_user_leaves_unset():
    from napari_wbc.core.train import TrainConfig, recipe

    lm = recipe(TrainConfig(model="leukocytemask"))
    assert (lm.optimizer, lm.lr, lm.weight_decay, lm.momentum, lm.batch_size) == ("sgd", 1e-3, 2e-4, 0.9, 2)
    mine = recipe(TrainConfig(model="wcsegnet", lr=5e-4, augment={"blur_p": 0.5}))
    assert mine.lr == 5e-4 and mine.optimizer == "adam"
    assert mine.augment["rotation"] == 40.0 and mine.augment["blur_p"] == 0.5


def test_typed_targets_and_the_datasets_cell_types(datasets):
    from napari_wbc.core.dataset import image_cell_types
    from napari_wbc.core.train import UNKNOWN_TYPE_NUCLEUS, typed_target

    names = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]
    label = np.array([[0, 1, 2]])
    assert typed_target(label, "monocyte", names).tolist() == [[0, 1, 4]]
    assert typed_target(label, None, names).tolist() == [[0, 1, UNKNOWN_TYPE_NUCLEUS]]
    zheng = image_cell_types(datasets / "zheng_d1")  # class_labels.csv: "1,2" -> lymphocyte
    assert zheng["001"] == "lymphocyte" and zheng["002"] == "neutrophil" and len(zheng) == 300
    bccd = image_cell_types(datasets / "bccd")
    assert bccd["BloodImage_00000"] == "neutrophil"
    assert bccd["BloodImage_00065"] == "neutrophil"  # "NEUTROPHIL, NEUTROPHIL"
    # a field whose cells are of two types is left out: the file does not say which is which
    assert "BloodImage_00010" not in bccd  # "NEUTROPHIL, EOSINOPHIL"


def test_balanced_sampling_draws_each_data_folder_equally(datasets, monkeypatch):
    """Three images of one folder and one of another: with ``balance`` the lone image of
    the second folder gives half the patches; without it, a quarter."""
    import napari_wbc.core.train as train_module
    from napari_wbc.core.augment import AugmentConfig

    pairs = list_pairs(datasets / "zheng_d1", "train")[:3] + list_pairs(datasets / "zheng_d2", "train")[:1]
    # the patch says which image it came from
    monkeypatch.setattr(
        train_module, "augment", lambda image, label, *a: (np.array([image.shape[0]]), label[:1, :1])
    )
    for balance, share in ((True, 0.5), (False, 0.25)):
        sampler = train_module.PatchSampler(pairs, AugmentConfig(size=32), seed=1, balance=balance)
        d2_height = sampler.items[3][0].shape[0]
        assert all(item[0].shape[0] != d2_height for item in sampler.items[:3])
        drawn = np.concatenate([sampler.batch(8)[0][:, 0] for _ in range(500)])
        assert abs(np.mean(drawn == d2_height) - share) < 0.03


def test_augmentation_overrides_from_the_command_line(tmp_path, capsys):
    from napari_wbc.cli import main
    from napari_wbc.core.augment import parse_overrides

    assert parse_overrides(
        ["rotation=40", "scale=0.8,1.2", "rotate=false", "stain-p=0.5", "stain_scale=0.4"]
    ) == {"rotation": 40.0, "scale": (0.8, 1.2), "rotate": False, "stain_p": 0.5, "stain_scale": 0.4}
    for bad, message in (
        ("spin=3", "KEY one of"),
        ("rotation=lots", "not a float"),
        ("scale=2", "two numbers"),
        ("size=64", "--patch"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_overrides([bad])
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--augment", "spin=3"])
    assert code == 2 and "spin=3" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing started


def test_the_train_command_stops_at_its_time_limit_with_weights(tiny_dataset, tmp_path):
    """`napari-wbc train --time-limit MINUTES` ends the run in time (here at once) and still
    writes weights and the history, as a run cut short from the Train widget does."""
    from napari_wbc.cli import main

    out = tmp_path / "run"
    args = ["train", "--model", "mifnet", "--data", str(tiny_dataset), "--out", str(out)]
    args += ["--max-steps", "50", "--batch-size", "2", "--patch", "64", "--time-limit", "0"]
    assert main([*args, "--workers", "0", "--device", "cpu"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert history["steps"] == 0 and history["cancelled"] is True
    assert (out / "model.safetensors").exists()
