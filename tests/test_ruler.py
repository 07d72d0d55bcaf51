"""The field's ruler: its red cells' diameter, on drawn fields of known size and on real bccd
fields against their red-cell boxes."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.transform import resize

from napari_wbc.core.celltype_data import red_cell_box_sides
from napari_wbc.core.dataset import list_pairs, load_pair
from napari_wbc.core.ruler import red_cell_diameter


def drawn_field(diameter: float, n: int, shape=(480, 640), seed: int = 0) -> np.ndarray:
    """Pink discs with pale centres on bright glass, touching and overlapping at random."""
    rng = np.random.default_rng(seed)
    image = np.full((*shape, 3), (235, 232, 240), np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = diameter / 2 * rng.uniform(0.93, 1.07)
        d = np.hypot(yy - cy, xx - cx)
        image[d <= r] = (200, 140, 150)
        image[d <= 0.35 * r] = (215, 170, 178)  # the pale centre
    return np.clip(ndimage.gaussian_filter(image, (1, 1, 0)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("diameter", [20.0, 45.0, 90.0])
def test_drawn_red_cells_are_measured_at_their_size(diameter):
    n = int(0.5 * 480 * 640 / (np.pi * diameter**2 / 4))  # half the glass covered
    got = red_cell_diameter(drawn_field(diameter, n))
    assert got == pytest.approx(diameter, rel=0.12)


def test_a_field_without_red_cells_has_no_ruler():
    glass = np.full((300, 300, 3), 235, np.uint8)
    glass[100:200, 100:200] = (120, 60, 150)  # one white cell, left out as segmented
    exclude = np.zeros((300, 300), bool)
    exclude[100:200, 100:200] = True
    assert red_cell_diameter(glass, exclude) is None
    assert red_cell_diameter(np.full((300, 300, 3), 235, np.uint8)) is None


def test_bccd_fields_against_their_red_cell_boxes(datasets):
    """On real fields, near the red cells' boxes (drawn loosely around each cell), and half as
    big at half the magnification."""
    root = datasets / "bccd"
    ratios, halves = [], []
    for pair in list_pairs(root, "test")[:12]:
        image, label = load_pair(pair)
        h, w = label.shape
        boxes = red_cell_box_sides(root, pair.stem, label.shape)
        got = red_cell_diameter(image, label > 0)
        if len(boxes) < 4 or got is None:
            continue
        ratios.append(got / np.median(boxes))
        small = resize(image, (h // 2, w // 2), preserve_range=True, anti_aliasing=True).astype(np.uint8)
        halves.append(red_cell_diameter(small, resize(label > 0, (h // 2, w // 2), order=0)) / got)
    assert len(ratios) >= 9
    assert 0.8 < np.median(ratios) < 1.05
    assert np.median(halves) == pytest.approx(0.5, rel=0.1)
