"""Training batches drawn in worker processes while the network trains: one pipeline for
every trainer (segmentation networks in :mod:`.train`, the cell-type classifier in
:mod:`.train_classifier`).

A trainer gives a ``draw(rng)`` callable that returns one whole batch (numpy arrays, or
dicts and lists of them) drawn with the numpy generator it is handed; :func:`batch_loader`
runs it in ``workers`` processes of torch's DataLoader (``batch_size=None``) and yields the
batches in step order, as tensors, pinned when the device is CUDA, the next ones prefetched
while the network works on the current one. ``workers=0`` draws in the training process.

What it promises: the batch of step ``k`` is drawn with a generator seeded by
``(seed, k)``, so it depends on the seed, the step and what ``draw`` draws from, nothing
else: the same seed gives the same batches with any worker count (worker ``i`` of ``n``
draws steps ``start + i``, ``start + i + n``, ...), and a run resumed at step ``k`` gets the
batches an uninterrupted run gets from step ``k`` on. Each batch comes with its step, which
is checked against the order the trainer receives them in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

PREFETCH = 2  # batches each worker draws ahead


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator batch ``step`` of a run seeded ``seed`` is drawn with."""
    return np.random.default_rng([seed, step])


class Batches(IterableDataset):
    """Endless ``(step, draw(step_rng(seed, step)))`` from step ``start`` on, the steps
    dealt out over the DataLoader's workers in its round-robin order."""

    def __init__(self, draw: Callable[[np.random.Generator], Any], seed: int, start: int = 0):
        self.draw, self.seed, self.start = draw, int(seed), int(start)

    def __iter__(self):
        info = get_worker_info()
        index, count = (0, 1) if info is None else (info.id, info.num_workers)
        step = self.start + index
        while True:
            yield step, self.draw(step_rng(self.seed, step))
            step += count


def batch_loader(
    draw: Callable[[np.random.Generator], Any],
    seed: int,
    start: int = 0,
    workers: int = 1,
    device: str = "cpu",
    prefetch: int = PREFETCH,
) -> Iterator[Any]:
    """The batches of steps ``start``, ``start + 1``, ... (endless), drawn by ``workers``
    processes (0: here, when asked for), numpy arrays turned into tensors. Close it (or let
    it go) to stop the workers."""
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, not {workers}")
    loader = DataLoader(
        Batches(draw, seed, start),
        batch_size=None,
        num_workers=workers,
        pin_memory=str(device).startswith("cuda"),
        persistent_workers=workers > 0,
        prefetch_factor=prefetch if workers > 0 else None,
    )
    for expected, (step, batch) in enumerate(loader, start):
        if int(step) != expected:  # the DataLoader's order is the steps' order
            raise RuntimeError(f"batch of step {int(step)} arrived for step {expected}")
        yield batch
