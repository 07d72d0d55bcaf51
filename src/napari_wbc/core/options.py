"""How an image is segmented: one :class:`Options` for a field and for a whole slide.

:func:`.inference.segment` (a field) and :func:`.wholeslide.segment_slide` (a slide, in
tiles) take the same options; each uses those that concern it and ignores the others. A
caller that changes one makes a copy: ``dataclasses.replace(options, device="cuda")``.
This module imports nothing heavy (no torch, no Qt).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    """How an image is segmented, the same for a field and a slide; "fields:" and "slides:"
    mark what only :func:`.inference.segment` or :func:`.wholeslide.segment_slide` uses.

    - ``pixel_size``: um/px, for measurements in um; None: unknown (fields), the file's own (slides).
    - ``auto_scale``: the white cells' width sets the network's scale; off: the pixel size's scale.
    - ``device``: the torch device that runs the networks ("cpu", "cuda", "mps"...).
    - ``single_cell``: fields: a single-cell crop; only its centre cell is kept, as id 1.
    - ``max_megapixels``: fields: the most pixels the network may see at once (InputError over it).
    - ``tile``: slides: tile side or (height, width) in slide px; None: ``WORK_TILE`` working px.
    - ``halo``: slides: margin around a tile (slide px); None: the widest white cell + clean-up margin.
    - ``batch_size``: slides: tiles per network call.
    - ``skip_empty``: slides: skip tiles with no nucleus-sized purple region near them at low resolution.
    """

    pixel_size: float | None = None
    auto_scale: bool = True
    device: str = "cpu"
    single_cell: bool = False
    max_megapixels: float | None = None
    tile: int | tuple[int, int] | None = None
    halo: int | None = None
    batch_size: int = 1
    skip_empty: bool = True
