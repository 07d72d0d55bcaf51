"""Throughput of the training batch pipeline (core/batches.py) and of training end to end.

1. Samples per second the pipeline draws (augmented, normalised, as tensors) for MIF-Net's
   recipe (batch 8 x 192 px, the default augmentation) with 0, 1, 2 worker processes,
   nothing training meanwhile: what the pipeline can feed a network that never waits.
2. Training steps per second of MIF-Net on the CPU through ``core.train.train``, with 0
   and 1 workers: what the network gets when pipeline and network share the CPU.

The first batch (worker start) and the first step are left out of the figures.

Usage: python bench/train_throughput.py [--data DIR...] [--batches 12] [--steps 12]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def mifnet_batches(pairs):
    """MIF-Net's recipe as the trainer draws it: 8 augmented 192 px patches, normalised."""
    from napari_wbc.core.augment import AugmentConfig
    from napari_wbc.core.train import PatchBatches, PatchSampler, TrainConfig, recipe
    from napari_wbc.models import ModelSpec

    config = recipe(TrainConfig(model="mifnet"))
    sampler = PatchSampler(pairs, AugmentConfig(size=config.patch, **config.augment), balance=True)
    return PatchBatches(sampler, config.batch_size, ModelSpec("mifnet"), instance=False)


def draw_rate(draw, workers: int, batches: int) -> float:
    """Samples per second drawn by ``workers`` processes (0: this one)."""
    from napari_wbc.core.batches import batch_loader

    loader = batch_loader(draw, seed=0, workers=workers)
    next(loader)  # workers start
    t0 = time.perf_counter()
    for _ in itertools.islice(loader, batches):
        pass
    seconds = time.perf_counter() - t0
    loader.close()
    return batches * draw.size / seconds


def step_rate(data, workers: int, steps: int) -> float:
    """Training steps per second of MIF-Net (8 x 192 px) on the CPU, steps 2..steps (stopped
    before the final validation)."""
    from napari_wbc.core.train import TrainConfig, train

    times = []
    config = TrainConfig(model="mifnet", max_steps=steps + 1, val_every=10**9, workers=workers)
    with tempfile.TemporaryDirectory() as out:
        train(
            data,
            out,
            config,
            progress=lambda s, t, i: times.append(time.perf_counter()),
            cancelled=lambda: len(times) >= steps,
        )
    return (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    import torch

    from napari_wbc.core.dataset import list_pairs

    p = argparse.ArgumentParser()
    p.add_argument("--data", nargs="+", default=[str(DATA / d) for d in ("zheng_d1", "zheng_d2", "bccd")])
    p.add_argument("--batches", type=int, default=12, help="batches timed per worker count")
    p.add_argument("--steps", type=int, default=12, help="training steps per worker count")
    args = p.parse_args()
    pairs = [q for d in args.data for q in list_pairs(d, "train")]
    print(
        f"{len(pairs)} training images of {', '.join(Path(d).name for d in args.data)}; "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads"
    )
    print("| what | workers 0 | workers 1 | workers 2 |")
    print("|---|---|---|---|")
    draw = mifnet_batches(pairs)
    rates = [draw_rate(draw, w, args.batches) for w in (0, 1, 2)]
    print("| samples/s drawn (8 x 192 px, MIF-Net recipe) | " + " | ".join(f"{r:.1f}" for r in rates) + " |")
    steps = [step_rate(args.data, w, args.steps) for w in (0, 1)]
    print("| MIF-Net training steps/s, CPU | " + " | ".join(f"{r:.3f}" for r in steps) + " | - |")


if __name__ == "__main__":
    main()
