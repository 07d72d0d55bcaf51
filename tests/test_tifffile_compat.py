"""tifffile before and after 2026.5: series axes and shapes squeezed by us, one zarr array per level.

tifffile 2026.5 removed ``TiffPageSeries.get_axes``/``get_shape`` and the zarr store's ``squeeze``
and changed the multiscale store's layout; Python 3.12 users get such a version. These tests run
with whatever tifffile is installed (2026.3 in .venv, the newest in .venv312).
"""

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_wbc.core.io import squeezed
from napari_wbc.core.pyramid import write_pyramid_tiff
from napari_wbc.core.slide import _Level, level_arrays, open_slide

pytestmark = pytest.mark.io

SRC = Path(__file__).resolve().parents[1] / "src"


def _noise(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_no_tifffile_api_that_2026_5_removed_is_used():
    """The old API still exists in .venv's tifffile, so only reading the source catches a use of it."""
    removed = re.compile(r"\.get_axes\(|\.get_shape\(|\.get_coords\(|aszarr\([^)]*squeeze")
    uses = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if removed.search(line)
    ]
    assert uses == []


def test_axes_of_length_one_are_squeezed_whatever_the_series_kind(tmp_path):
    image = _noise(64, 80, 3)
    cases = {
        # a 'shaped' series: newer tifffile no longer squeezes these by default
        "shaped.tif": dict(data=image[None], photometric="rgb"),
        "ome.ome.tif": dict(data=image[None], photometric="rgb", metadata={"axes": "TYXS"}),
        "planar.tif": dict(data=np.moveaxis(image, -1, 0)[None], photometric="rgb", planarconfig="separate"),
    }
    for name, kwargs in cases.items():
        tifffile.imwrite(tmp_path / name, **kwargs)
        with tifffile.TiffFile(tmp_path / name) as tif:
            axes, shape = squeezed(tif.series[0])
        assert axes in ("YXS", "SYX") and sorted(shape) == [3, 64, 80], (name, axes, shape)
        with open_slide(tmp_path / name) as slide:
            assert slide.shape == (64, 80)
            assert np.array_equal(slide.read(0, 0, 64, 80), image), name
    tifffile.imwrite(tmp_path / "line.tif", np.zeros((1, 50), np.uint8))
    with tifffile.TiffFile(tmp_path / "line.tif") as tif:  # Y and X stay, even of length 1
        assert squeezed(tif.series[0]) == ("YX", (1, 50))


def test_each_pyramid_level_is_one_zarr_array(tmp_path):
    image = _noise(600, 500, 3)
    path = write_pyramid_tiff(
        tmp_path / "p.ome.tif", lambda y0, x0, y1, x1: image[y0:y1, x0:x1], (600, 500), np.uint8, 3, tile=128
    )
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        arrays, closers = level_arrays(series)
        try:
            assert [tuple(a.shape) for a in arrays] == [
                (600, 500, 3),
                (300, 250, 3),
                (150, 125, 3),
                (75, 63, 3),
            ]
            assert [level.axes for level in series.levels] == ["YXS"] * 4
            assert np.array_equal(np.asarray(arrays[0][100:200, 50:70]), image[100:200, 50:70])
            level = _Level(arrays[3], series.levels[3].axes, path.name)
            assert np.array_equal(level.read(0, 0, 75, 63), series.levels[3].asarray())
        finally:
            for close in closers:
                close()
