"""Segment whole slides on a dask.distributed cluster: the tiles of every slide spread over its workers.

Each slide is cut into ``n`` shards (every n-th tile, as ``segment_slide(shard=(i, n))``)
and goes through four steps, each a set of tasks that the client submits once the step
before has finished on every shard:

1. ``plan``: one task sets up the slide's work folder (``out/.<name>.work``) and counts its tiles;
2. ``classified``: one task per shard runs the network on its tiles (the class map);
3. ``cells``: one task per shard separates the cells of its tiles from the stored class map;
4. ``results``: one task writes the label TIFFs and the tables.

No task ever waits for another, so any number of slides share any number of workers
without deadlock, and the shards of all slides are in the queue at once (earlier slides
first). The work lives in the output folder, so it must be one folder that every worker
sees (a shared filesystem); a stopped or failed run resumes from it. The results are those
of the single-process run (:func:`.wholeslide.segment_slide`), file for file: tiles, shards
and their order do not change them. Workers load the model themselves, by name or weights
folder, once per worker process. A slide that fails is reported and the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .inference import Progress
from .io import InputError
from .options import Options
from .slide import slide_name
from .wholeslide import SlideResult
from .work_folder import WorkFolder

log = logging.getLogger(__name__)

STEPS = ("plan", "classified", "cells", "results")


@dataclass
class SlideOutcome:
    """What became of one slide: its result, or the error that stopped it."""

    path: Path
    name: str
    result: SlideResult | None = None
    error: str | None = None


@dataclass
class _Job:
    index: int
    path: Path
    name: str
    shards: int = 1
    step: str = "plan"
    tasks: int = 1  # tasks this slide will run in all, as far as known
    finished: int = 0
    running: set = field(default_factory=set)
    result: SlideResult | None = None
    error: str | None = None


def _task(step: str, path: str, out: str, shard: tuple[int, int], settings: dict):
    """One step of one shard of one slide, on a worker; never waits for other shards."""
    from ..models import load_model
    from .celltypes import load_classifier
    from .device import pick_device
    from .slide import open_slide
    from .tiling import TileGrid
    from .wholeslide import segment_slide

    options = settings["options"]
    device = pick_device(options.device)
    options = replace(options, device=device)
    net, spec = load_model(
        settings["model"],
        settings["weights"],
        device,  # cached per process
        settings.get("flip_average", False),
    )
    classifier = load_classifier(settings.get("typing", "classifier"), device)
    with open_slide(path) as slide:
        gen = segment_slide(slide, out, net, spec, options, shard=shard, until=step, classifier=classifier)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                value = stop.value
                break
        if step == "plan":
            plan = WorkFolder(out, slide.name).plan()
            grid = TileGrid(tuple(plan["shape"]), tuple(plan["tile"]), plan["halo"])
            return {"name": slide.name, "tiles": len(grid), "device": device}
    return value


def _describe(err: BaseException, path: Path) -> str:
    if isinstance(err, InputError):
        return str(err) if path.name in str(err) else f"{path.name}: {err}"
    return f"{path.name}: {type(err).__name__}: {err}"


def total_threads(client) -> int:
    """Worker threads of the cluster, waiting up to a minute for the first worker to join."""
    threads = sum(client.nthreads().values())
    if not threads:
        try:
            client.wait_for_workers(1, timeout=60)
        except TimeoutError as err:
            raise InputError(
                "no workers joined the dask scheduler within a minute; start them with "
                "`dask worker SCHEDULER_ADDRESS`"
            ) from err
        threads = sum(client.nthreads().values())
    return max(1, threads)


def segment_slides(
    slides: Sequence[str | Path],
    out: str | Path,
    client,
    options: Options | None = None,
    *,
    model: str | None = None,
    weights: str | Path | None = None,
    shards: int | None = None,
    flip_average: bool = False,
    typing: str = "classifier",
) -> Generator[Progress, None, list[SlideOutcome]]:
    """Segment ``slides`` into ``out`` on the cluster behind ``client``; yields per finished task.

    Yields ``(done, total, message)`` as each task finishes (``total`` grows as slides are
    planned and shrinks when one fails) and returns a :class:`SlideOutcome` per slide, in
    the order given. ``shards`` per slide default to the cluster's worker threads (at most
    one per tile). ``options`` (:class:`.options.Options`, default: device "auto") as for
    :func:`.wholeslide.segment_slide`; its device is resolved on each worker ("auto": its GPU
    if it has one). Each task separates cells in its own thread: the cluster's workers are
    the parallelism.
    """
    options = Options(device="auto") if options is None else options
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shards = shards or total_threads(client)
    settings = {
        "model": model,
        "weights": None if weights is None else str(Path(weights).resolve()),
        "options": replace(options, threads=0),  # device: resolved on the worker
        "flip_average": flip_average,
        "typing": typing,
    }
    token = uuid.uuid4().hex[:8]
    jobs, names = [], {}
    for index, path in enumerate(Path(p).resolve() for p in slides):
        job = _Job(index, path, slide_name(path))
        if job.name in names:
            job.error = (
                f"{path.name}: another slide of this run, {names[job.name].name}, has the name "
                f"{job.name!r}: its results would overwrite these; rename one"
            )
            job.tasks = 0
        names.setdefault(job.name, path)
        jobs.append(job)

    from distributed import as_completed

    queue = as_completed()
    owner: dict[str, tuple[_Job, str]] = {}

    def submit(job: _Job, step: str, indices) -> None:
        job.step = step
        for i in indices:
            key = f"napari-wbc-{step}-{job.name}-{i}of{job.shards}-{token}"
            future = client.submit(
                _task, step, str(job.path), str(out), (i, job.shards), settings, key=key, priority=-job.index
            )
            owner[future.key] = (job, step)
            job.running.add(future)
            queue.add(future)

    for job in jobs:
        if job.error is None:
            submit(job, "plan", [0])

    def total() -> int:
        return sum(j.tasks for j in jobs)

    done = 0
    try:
        for future in queue:
            job, step = owner.pop(future.key)
            job.running.discard(future)
            if job.error is not None or future.status == "cancelled":
                continue
            done += 1
            job.finished += 1
            if future.status == "error":
                job.error = _describe(future.exception(), job.path)
                for other in job.running:
                    other.cancel()
                job.running.clear()
                job.tasks = job.finished
                yield done, total(), f"error: {job.error}"
                continue
            value = future.result()
            message = f"{job.name}: {step}"
            if step == "plan":
                job.name = value["name"]
                job.shards = max(1, min(shards, value["tiles"]))
                # one task writes a one-shard slide; otherwise two rounds of shards and the writer
                job.tasks = 1 + (1 if job.shards == 1 else 2 * job.shards + 1)
                message = f"{job.name}: {value['tiles']} tiles in {job.shards} shards on {value['device']}"
                if job.shards == 1:
                    submit(job, "results", [0])
                else:
                    submit(job, "classified", range(job.shards))
            elif step == "results":
                job.result = value
                message = f"{job.name}: done, {value.counts.get('white_cells', 0)} white cells"
            elif not job.running:  # every shard has finished this step: the next one
                if step == "classified":
                    submit(job, "cells", range(job.shards))
                else:
                    submit(job, "results", [0])
            yield done, total(), message
    finally:  # stopped early (interrupted, or the consumer closed us): leave nothing running
        leftover = [f for j in jobs for f in j.running]
        if leftover:
            client.cancel(leftover)
    return [SlideOutcome(j.path, j.name, j.result, j.error) for j in jobs]


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None, quiet: bool = False):
    """A dask Client for ``scheduler`` (an address, or the JSON file that ``dask scheduler
    --scheduler-file`` writes), or for a local cluster of ``workers`` processes.

    Local workers run one task each (``threads_per_worker=1``); torch in each uses one
    thread, as dask sets for its worker processes. ``quiet`` keeps the local cluster's
    log (a failed task's traceback, workers stopping) off the terminal: failures are
    reported by :func:`segment_slides`.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        where = {"scheduler_file": scheduler} if scheduler.endswith(".json") else {"address": scheduler}
        try:
            client = Client(**where, timeout="30s")
        except (OSError, TimeoutError) as err:
            raise InputError(f"cannot reach the dask scheduler at {scheduler}: {err}") from err
        with client:
            yield client
        return
    level = logging.CRITICAL if quiet else logging.WARNING
    with (
        LocalCluster(
            n_workers=workers or 1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=level,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
