"""The work folder of a whole-slide run: where its work in progress lives, and how it is laid out.

:class:`WorkFolder` is the one place that names the files; :mod:`.wholeslide` writes them,
:mod:`.slide_output` assembles and publishes the results from them, :mod:`.distributed`
reads the plan and the Segment widget's live preview the class map.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class WorkFolder:
    """A slide's work folder, ``out/.<name>.work``, that a stopped run resumes from:

    - ``plan.json``: the run's settings (shape, tiles, halo, scale, model...); a run with
      other settings starts over;
    - ``scale.json``: the network's scale for the slide, measured once (auto scale);
    - ``classes.zarr``: the class map (0 glass, 1 cytoplasm, 2 nucleus), one chunk per tile;
    - ``classified/<i>``: a marker per tile whose class map is stored, "network" or
      "skipped" (no nuclei: the class map left empty);
    - ``cells/<i>.npz``: a tile's cells (labels, first pixels, cell table);
    - ``cells.zarr``, ``nuclei.zarr``: the slide's labels with global ids, while the
      results are written;
    - ``publish/``: the results being written, with ``publish/READY`` once they are all
      there, until they are renamed into ``out``.
    """

    MARKERS, CELLS = "classified", "cells"  # the sub-folders

    def __init__(self, out: str | Path, name: str):
        self.path = Path(out) / f".{name}.work"

    @property
    def plan_file(self) -> Path:
        return self.path / "plan.json"

    def plan(self) -> dict | None:
        """The run's settings; None before a run has written them."""
        return json.loads(self.plan_file.read_text()) if self.plan_file.exists() else None

    @property
    def scale_file(self) -> Path:
        return self.path / "scale.json"

    @property
    def classes(self) -> Path:
        """The class map's zarr store."""
        return self.path / "classes.zarr"

    def labels(self, kind: str) -> Path:
        """The zarr store of the slide's ``kind`` ("cells" or "nuclei") labels."""
        return self.path / f"{kind}.zarr"

    @property
    def staging(self) -> Path:
        return self.path / "publish"

    @property
    def ready(self) -> Path:
        """The mark of a complete set of staged results."""
        return self.staging / "READY"

    def create(self) -> None:
        """Make the folder and its sub-folders (kept when they are there)."""
        for sub in (self.MARKERS, self.CELLS):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def mark(self, i: int, how: str) -> None:
        """Mark tile ``i`` classified: ``how`` is "network" or "skipped"."""
        self._marker(i).write_text(how)

    def how_classified(self, i: int) -> str | None:
        """Tile ``i``'s mark; None before it is classified, "" while another process marks it."""
        try:
            return self._marker(i).read_text()
        except FileNotFoundError:
            return None

    def is_classified(self, i: int) -> bool:
        return self._marker(i).exists()

    def classified_tiles(self) -> list[int]:
        """The tiles with a marker, in no order."""
        markers = self.path / self.MARKERS
        return [int(m) for m in os.listdir(markers) if m.isdigit()] if markers.is_dir() else []

    def cells(self, i: int) -> Path:
        """Tile ``i``'s cell record."""
        return self.path / self.CELLS / f"{i}.npz"

    def _marker(self, i: int) -> Path:
        return self.path / self.MARKERS / str(i)
