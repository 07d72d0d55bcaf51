"""``napari-wbc demo``: the sample smear, segmented, in napari (or on disk without a display).

With a display, napari opens on the bundled two-cell field, docks the Segment widget and
the measurement table and starts the segmentation, so cells, nuclei and the table
appear by themselves. Headless (``--headless``, or Linux without ``$DISPLAY`` /
``$WAYLAND_DISPLAY``), the bundled samples are segmented into ``out`` with the same engine
as ``napari-wbc segment``; the CLI passes ``print`` as ``say``, so the result line goes to stdout.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ._sample_data import SAMPLES, sample_path

log = logging.getLogger(__name__)

PLUGIN = "napari-wbc"
SEGMENT_WIDGET = "Segment white cells"  # display names in napari.yaml
MEASURE_WIDGET = "Cell measurements"


def has_display() -> bool:
    """False on Linux without an X or Wayland display (napari could not open a window)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def segment_samples(out: str | Path = "demo-output") -> tuple[int, str]:
    """Segment every bundled sample into ``out``: (number of failures, what was written)."""
    from .core.batch import segment_files

    out = Path(out)
    files = [sample_path(key) for key in SAMPLES]
    failures = segment_files(files, out, overwrite=True)  # the demo replaces its own outputs
    done = len(files) - failures
    return failures, (
        f"segmented {done} of {len(files)} sample fields; cells, nuclei (TIFF) and "
        f"measurements (CSV) are in {out.resolve()}, counts in {out.resolve() / 'summary.csv'}"
    )


def start_demo(viewer, sample: str = "two_cells"):
    """Open ``sample``, dock the Segment widget and the table, start segmenting.

    Returns the Segment widget; its ``worker`` is the running job (None if it could not
    start, e.g. without trained weights: a notification then says why).
    """
    layers = viewer.open_sample(PLUGIN, sample)
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, SEGMENT_WIDGET)
    viewer.window.add_plugin_dock_widget(PLUGIN, MEASURE_WIDGET)
    segment.image.reset_choices()
    segment.image.value = layers[0]
    segment.run()
    return segment


def run_demo(headless: bool = False, out: str = "demo-output", say=log.info) -> int:
    """Entry point of ``napari-wbc demo``; returns the exit status. ``say`` reports to the user."""
    if headless or not has_display():
        if not headless:
            say("no display found: segmenting the samples headless instead")
        failures, message = segment_samples(out)
        say(message)
        return 1 if failures else 0
    import napari

    viewer = napari.Viewer(title="napari WBC demo")
    start_demo(viewer)
    napari.run()
    return 0
