"""How an image is segmented: one :class:`Options` for a field and for a whole slide.

:func:`.inference.segment` (a field) and :func:`.wholeslide.segment_slide` (a slide, in
tiles) take the same options; each uses those that concern it and ignores the others. A
caller that changes one makes a copy: ``dataclasses.replace(options, device="cuda")``.
This module imports nothing heavy (no torch, no Qt).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MAX_THREADS = 8  # cell-separating threads by default: beyond this the GIL is the limit
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Options:
    """How an image is segmented, the same for a field and a slide; "fields:" and "slides:"
    mark what only :func:`.inference.segment` or :func:`.wholeslide.segment_slide` uses.

    - ``pixel_size``: um/px, for measurements in um; None: unknown (fields), the file's own (slides).
    - ``auto_scale``: the white cells' width sets the network's scale; off: the pixel size's scale.
    - ``device``: the torch device that runs the networks ("cpu", "cuda", "mps"...).
    - ``precision``: the segmentation network's arithmetic: "fp32", "bf16" (bfloat16 autocast:
      1.9x on a CPU with AVX512-BF16; on the bccd test fields a median 0.014% of class-map
      pixels change, Dice cell -0.14 points), or "auto": bf16 on a CUDA GPU, fp32 elsewhere
      (the CPU path is the reference).
    - ``single_cell``: fields: a single-cell crop; only its centre cell is kept, as id 1.
    - ``max_megapixels``: fields: the most pixels the network may see at once (InputError over it).
    - ``tile``: slides: tile side or (height, width) in slide px; None: ``WORK_TILE`` working px.
    - ``halo``: slides: margin around a tile (slide px); None: the widest white cell + clean-up margin.
    - ``batch_size``: slides: tiles per network call.
    - ``skip_empty``: slides: skip tiles with no nucleus-sized purple region near them at low resolution.
    - ``threads``: slides: threads that separate, type and measure the cells of classified tiles
      while the network goes on; 0: after the network, in this thread; None: one per core but
      one, at most ``MAX_THREADS``. The results do not depend on it.
    """

    pixel_size: float | None = None
    auto_scale: bool = True
    device: str = "cpu"
    precision: str = "auto"
    single_cell: bool = False
    max_megapixels: float | None = None
    tile: int | tuple[int, int] | None = None
    halo: int | None = None
    batch_size: int = 1
    skip_empty: bool = True
    threads: int | None = None

    def cell_threads(self) -> int:
        """How many threads separate cells (``threads``, or one per core but one)."""
        if self.threads is not None:
            return max(0, int(self.threads))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(MAX_THREADS, cores - 1))
