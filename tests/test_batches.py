"""The training batch pipeline (core/batches.py): batch k depends on the seed and k only."""

import itertools
import multiprocessing
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_wbc.core.augment import AugmentConfig
from napari_wbc.core.batches import batch_loader
from napari_wbc.core.dataset import list_pairs
from napari_wbc.core.train import PatchBatches, PatchSampler, TrainConfig, train

NORMALISE = SimpleNamespace(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def draw(datasets):
    """Batches of 3 augmented 48 px patches of two zheng_d1 fields, with instance targets."""
    sampler = PatchSampler(list_pairs(datasets / "zheng_d1", "train")[:2], AugmentConfig(size=48))
    return PatchBatches(sampler, 3, NORMALISE, instance=True)


def _take(draw, seed, start=0, workers=0, n=4) -> list:
    loader = batch_loader(draw, seed, start, workers)
    batches = list(itertools.islice(loader, n))
    loader.close()
    return batches


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return torch.equal(a, b)


def test_the_same_seed_gives_the_same_batches_with_any_worker_count(draw):
    here = _take(draw, seed=3)
    assert here[0]["x"].shape == (3, 3, 48, 48) and here[0]["x"].dtype == torch.float32
    assert here[0]["y"].shape == (3, 48, 48) and len(here[0]["targets"]) == 3
    assert _same(here, _take(draw, seed=3))  # again, in this process
    assert _same(here, _take(draw, seed=3, workers=1))
    assert _same(here, _take(draw, seed=3, workers=2))  # steps dealt out over two processes
    assert not multiprocessing.active_children()  # closing the loader stopped its workers


def test_another_seed_gives_other_batches(draw):
    assert not _same(_take(draw, seed=3, n=2), _take(draw, seed=4, n=2))
    a, b = _take(draw, seed=3, n=2)
    assert not torch.equal(a["x"], b["x"])  # nor are two steps alike


def test_resuming_at_step_k_gives_the_batches_of_a_run_from_zero(draw):
    whole = _take(draw, seed=5, n=5)
    assert _same(whole[3:], _take(draw, seed=5, start=3, n=2))
    assert _same(whole[3:], _take(draw, seed=5, start=3, workers=2, n=2))


def test_training_with_a_worker_writes_weights_and_a_resumed_run_repeats_it(tiny_dataset, tmp_path):
    """Four MIF-Net steps with a worker process, and the same four with none, stopped after
    two and resumed: bit for bit the same weights (same batches, torch's random state kept)."""
    from safetensors.torch import load_file

    config = TrainConfig(batch_size=2, patch=48, max_steps=4, val_every=2, workers=1)
    history = train([tiny_dataset], tmp_path / "a", config)
    assert history["steps"] == 4 and (tmp_path / "a" / "model.safetensors").exists()
    assert not multiprocessing.active_children()

    calls = []
    config = TrainConfig(batch_size=2, patch=48, max_steps=4, val_every=2, workers=0)
    train(
        [tiny_dataset],
        tmp_path / "b",
        config,
        progress=lambda s, t, i: calls.append(s),
        cancelled=lambda: len(calls) >= 2,
    )
    assert calls == [1, 2]
    assert train([tiny_dataset], tmp_path / "b", config, resume=True)["steps"] == 4
    a, b = (
        load_file(str(tmp_path / "a" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert np.isfinite(history["loss"][-1][1])
