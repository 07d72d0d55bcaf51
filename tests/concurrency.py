"""Several processes doing one thing at once, for the tests of concurrent savers."""

from __future__ import annotations

import multiprocessing


def run_together(
    target, folder, workers: int, rounds: int, method: str = "fork", timeout: float = 120
) -> list:
    """Start ``workers`` processes of ``target(folder, index, rounds, start, results)``, released
    together by the barrier ``start``; each puts one list on ``results``. Returns those lists
    joined, after checking that every process ended cleanly."""
    ctx = multiprocessing.get_context(method)
    start, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=target, args=(folder, i, rounds, start, results)) for i in range(workers)]
    for p in procs:
        p.start()
    done = [item for _ in procs for item in results.get(timeout=timeout)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return done
