"""Fine-tuning on one corrected image makes the model better on that image."""

import numpy as np
import torch

from napari_wbc.core.dataset import list_pairs, load_pair, save_training_pair
from napari_wbc.core.inference import predict_probabilities
from napari_wbc.core.metrics import class_map_metrics
from napari_wbc.core.review import instances_from_class_map
from napari_wbc.core.train import TrainConfig, segmentation_loss, train
from napari_wbc.models import load_model, resolve_weights, sha256


def _loss_and_dice(weights, image, truth):
    net, spec = load_model(weights=weights)
    prob = predict_probabilities(net, spec, image)
    logits = torch.from_numpy(np.log(np.clip(prob, 1e-6, 1)))[None]
    loss = float(segmentation_loss(logits, torch.from_numpy(truth.astype(np.int64))[None]))
    return loss, class_map_metrics(prob.argmax(0), truth)["cell"]["dice"]


def test_fine_tune_on_one_corrected_image(tmp_path, datasets, trained_model):
    base = resolve_weights(trained_model)
    base_sha = sha256(base / "model.safetensors")
    pair = list_pairs(datasets / "bccd", "train")[3]
    image, truth = load_pair(pair)
    cells, nuclei = instances_from_class_map(truth)  # the reviewer's corrected labels
    folder = tmp_path / "corrected"
    save_training_pair(folder, image, cells, nuclei, provenance={"source": str(pair.image)})
    config = TrainConfig(batch_size=4, patch=128, max_steps=12, lr=2e-4, val_every=100, seed=1)
    history = train([folder], tmp_path / "tuned", config, init_weights=base)
    assert history["steps"] == 12
    before = _loss_and_dice(base, image, truth)
    after = _loss_and_dice(tmp_path / "tuned", image, truth)
    assert after[0] < before[0]  # loss on the corrected image
    assert after[1] > before[1]  # whole-cell Dice on it
    assert sha256(base / "model.safetensors") == base_sha  # the base weights are untouched
