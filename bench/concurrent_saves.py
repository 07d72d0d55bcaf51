"""Several processes "save as training data" into one folder at once: crashes and mixed pairs.

Each saver writes pairs whose pixels say who wrote them (image value 10 * saver + round, a
cell whose size depends on saver and round), so a pair that holds another saver's image or
labels under the reported name is caught. Every run ends with the folder check.

    .venv/bin/python bench/concurrent_saves.py [--runs 30] [--savers 3] [--rounds 20]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np


def marked_pair(saver: int, n: int):
    shape = (24, 32)
    image = np.full((*shape, 3), 10 * saver + n % 10, np.uint8)
    cells = np.zeros(shape, np.uint32)
    nuclei = np.zeros(shape, np.uint32)
    cells[2 : 4 + saver, 2 : 4 + n % 20] = 1 + saver
    nuclei[2, 2] = 1 + saver
    return image, cells, nuclei


def save_many(root: Path, saver: int, rounds: int, start, results) -> None:
    from napari_wbc.core.dataset import save_training_pair

    start.wait()
    out = []
    for n in range(rounds):
        try:
            out.append((saver, n, save_training_pair(root, *marked_pair(saver, n), {"source": "smear.png"})))
        except Exception as err:  # counted: a save must never crash
            out.append((saver, n, None, f"{type(err).__name__}: {err}"))
    results.put(out)


def one_run(savers: int, rounds: int) -> dict:
    from napari_wbc.core import dataset

    root = Path(tempfile.mkdtemp(prefix="napari-wbc-saves-"))
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(savers), ctx.Queue()
    procs = [ctx.Process(target=save_many, args=(root, s, rounds, start, results)) for s in range(savers)]
    for p in procs:
        p.start()
    saved = [row for _ in procs for row in results.get(timeout=600)]
    for p in procs:
        p.join()
    pairs = {p.stem: p for p in dataset.list_pairs(root)}
    crashes = sum(row[2] is None for row in saved)
    mixed = 0
    for saver, n, stem, *_ in saved:
        if stem is None:
            continue
        image, cells, nuclei = marked_pair(saver, n)
        want = np.where(nuclei > 0, 2, np.where(cells > 0, 1, 0))
        try:
            got_image, got_label = dataset.load_pair(pairs[stem])
            mixed += not (np.array_equal(got_image, image) and np.array_equal(got_label, want))
        except (KeyError, OSError, ValueError):
            mixed += 1
    return {
        "saves": len(saved),
        "crashes": crashes,
        "mixed": mixed,
        # (versions before the folder check had only validate_training_folder)
        "problems": len(getattr(dataset, "check_training_folder", dataset.validate_training_folder)(root)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--savers", type=int, default=3)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    total = {"saves": 0, "crashes": 0, "mixed": 0, "problems": 0}
    t0 = time.perf_counter()
    for _ in range(args.runs):
        for key, value in one_run(args.savers, args.rounds).items():
            total[key] += value
    seconds = time.perf_counter() - t0
    print(
        f"{args.runs} runs x {args.savers} savers x {args.rounds} rounds in {seconds:.0f} s: "
        f"{total['saves']} saves, {total['crashes']} crashed, {total['mixed']} with another saver's "
        f"pixels, {total['problems']} problems found by check_training_folder"
    )


if __name__ == "__main__":
    main()
