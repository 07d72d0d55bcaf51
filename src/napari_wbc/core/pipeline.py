"""The slide engine's stages side by side: tiles read ahead of the network (:func:`ahead`),
cells separated by threads as soon as the tiles they touch are classified
(:class:`ClassifiedTiles`), and the time each stage is busy (:class:`Busy`)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from .tiling import TileGrid


class Busy:
    """Seconds spent per stage, added up over threads (``with busy("network"): ...``)."""

    def __init__(self):
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds

    @contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t)

    def seconds(self) -> dict[str, float]:
        with self._lock:
            return {k: round(v, 3) for k, v in self._seconds.items()}


class Stopped(Exception):
    """The run stopped (an error, or its generator closed) while a thread waited for tiles."""


class ClassifiedTiles:
    """The tiles whose class maps are stored; :meth:`read` of the class map over a box waits
    until every tile under it is, so that cells are separated while the network classifies
    the tiles after them. Reads reach beyond a tile's halo only for objects crossing it,
    and wait for those tiles too."""

    def __init__(self, store, grid: TileGrid, classified: Iterable[int], busy: Busy):
        self.store, self.grid, self.busy = store, grid, busy
        self._done = set(classified)
        self._stopped = False
        self._changed = threading.Condition()

    def add(self, *tiles: int) -> None:
        with self._changed:
            self._done.update(tiles)
            self._changed.notify_all()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def wait(self, *tiles: int) -> float:
        """Wait until ``tiles`` are classified; the seconds waited. Raises :class:`Stopped`
        if the run stops first."""
        need = set(tiles)
        t = time.perf_counter()
        with self._changed:
            self._changed.wait_for(lambda: self._stopped or need <= self._done)
            if not need <= self._done:
                raise Stopped
        return time.perf_counter() - t

    def read(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """The class map over a slide box, once every tile under it is classified."""
        (ty, tx), cols = self.grid.tile, self.grid.cols
        rows = range(box[0] // ty, (box[2] - 1) // ty + 1)
        waited = self.wait(*(r * cols + c for r in rows for c in range(box[1] // tx, (box[3] - 1) // tx + 1)))
        self.busy.add("cells", -waited)  # a tile's cells are timed with their reads: waiting is not work
        return self.store[box[0] : box[2], box[1] : box[3]]


def ahead(items: Iterator, depth: int = 2) -> Iterator:
    """The items of ``items``, made by a thread up to ``depth`` ahead of the caller (its
    errors are raised here; closing the iterator stops the thread)."""
    made: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def make() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        made.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            made.put((end, None))
        except BaseException as err:  # raised in the caller's thread
            made.put((end, err))

    thread = threading.Thread(target=make, name="tiles ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, err = made.get()
            if err is not None:
                raise err
            if item is end:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let it finish the tile in hand and see the stop
            try:
                made.get(timeout=0.1)
            except queue.Empty:
                pass
