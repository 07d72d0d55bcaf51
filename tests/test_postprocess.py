import numpy as np
import pytest

from napari_wbc.core.postprocess import centre_cell, instances_from_classes


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _scene():
    shape = (160, 300)
    classes = np.zeros(shape, np.uint8)
    # two touching white cells, each with a round nucleus
    for cx in (50, 100):
        classes[_disc(shape, 60, cx, 32)] = 1
    for cx in (50, 100):
        classes[_disc(shape, 60, cx, 13)] = 2
    # a neutrophil: one cell, three separate nucleus lobes
    classes[_disc(shape, 70, 220, 36)] = 1
    for cy, cx in ((55, 205), (80, 210), (70, 238)):
        classes[_disc(shape, cy, cx, 8)] = 2
    # stain debris called cytoplasm, without nucleus
    classes[_disc(shape, 135, 150, 22)] = 1
    # a platelet, stained like a nucleus: 16 px across, too small for a white cell
    classes[_disc(shape, 20, 160, 8)] = 2
    return classes


def test_touching_cells_split_and_nuclei_owned():
    classes = _scene()
    cells, nuclei = instances_from_classes(classes)
    assert cells.dtype == np.uint32 and nuclei.dtype == np.uint32
    assert sorted(np.unique(cells))[1:] == [1, 2, 3]
    # the two touching cells are different instances, split near x = 57
    left, right = cells[60, 50], cells[60, 100]
    assert left and right and left != right
    # the three lobes belong to one cell
    lobe_ids = {cells[55, 205], cells[80, 210], cells[70, 238]}
    assert len(lobe_ids) == 1 and 0 not in lobe_ids
    # every nucleus pixel carries the id of the cell it lies in
    assert np.array_equal(nuclei[nuclei > 0], cells[nuclei > 0])
    assert np.array_equal(nuclei > 0, (classes == 2) & (cells > 0))
    # debris and the platelet are not cells
    assert cells[135, 150] == 0 and cells[20, 160] == 0


def test_scale_aware_minimum_size():
    classes = np.zeros((100, 100), np.uint8)
    classes[_disc((100, 100), 50, 50, 30)] = 1
    classes[_disc((100, 100), 50, 50, 12)] = 2
    # 60 px across: a 6 um lymphocyte at the working scale (0.1 um/px) ...
    kept, _ = instances_from_classes(classes)
    assert kept.max() == 1
    # ... but only 3 um, platelet-sized, at 0.05 um/px (a 10 um cell is 200 px there)
    dropped, _ = instances_from_classes(classes, cell_diameter=200)
    assert dropped.max() == 0


def test_nothing_in_nothing_out():
    cells, nuclei = instances_from_classes(np.zeros((32, 32), np.uint8))
    assert cells.max() == 0 and nuclei.max() == 0


def test_centre_cell_is_the_one_under_or_nearest_the_centre():
    cells = np.zeros((11, 21), np.uint32)
    cells[3:8, 8:13] = 2  # covers the centre (5, 10)
    cells[0:11, 0:3] = 1  # a larger neighbour cut by the left edge
    assert centre_cell(cells) == 2
    cells[cells == 2] = 0
    cells[6:9, 14:17] = 3  # nearest pixel (6, 14): 4.1 px from the centre; cell 1's is 7.5 px
    assert centre_cell(cells) == 3
    assert centre_cell(np.zeros((4, 4), np.uint32)) == 0


# --- object-local post-processing == today's whole-image version (issue #13) -----------------
# tests/postprocess_reference.py holds the whole-image code verbatim; every comparison below is
# bitwise (same ids, same dtype), not up to relabelling.


def _reference():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import postprocess_reference

    return postprocess_reference


def _assert_same(classes, cell_diameter=None, split=True):
    from scipy import ndimage

    from napari_wbc.core.postprocess import instances_and_objects, split_touching

    ref = _reference()
    want = ref.instances_from_classes(classes, cell_diameter=cell_diameter)
    got = instances_and_objects(classes, cell_diameter=cell_diameter)
    for w, g in zip(want, got, strict=False):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert np.array_equal(g, w)
    objects, _ = ndimage.label(ndimage.binary_fill_holes(classes > 0))
    assert got[2].dtype == objects.dtype and np.array_equal(got[2], objects)
    if not split:
        return got
    fast = instances_from_classes(classes, cell_diameter=cell_diameter)
    assert all(np.array_equal(f, w) for f, w in zip(fast, want, strict=True))
    radius = None if cell_diameter is None else cell_diameter / 2
    assert np.array_equal(split_touching(classes > 0, radius), ref.split_touching(classes > 0, radius))
    return got


def _hard_cases():
    """Each hard case once: touching cells, a pinhole, a speck, the image border, an object in
    another's hole, no nucleus, a platelet, a ring of diagonal steps."""
    shape = (230, 400)
    classes = np.zeros(shape, np.uint8)
    for cx in (50, 105):  # two touching round cells: two cells
        classes[_disc(shape, 60, cx, 32)] = 1
        classes[_disc(shape, 60, cx, 13)] = 2
    classes[_disc(shape, 60, 190, 34)] = 1  # a nucleus with a pinhole and a speck beside it
    classes[_disc(shape, 60, 190, 16)] = 2
    classes[59:61, 189:191] = 1  # pinhole: nucleus
    classes[40:42, 215:217] = 2  # speck in the cytoplasm: not nucleus
    classes[_disc(shape, 0, 300, 40)] = 1  # cut by the top edge of the image
    classes[_disc(shape, 0, 300, 15)] = 2
    classes[_disc(shape, 160, 60, 45)] = 1  # a ring cell, an object in its hole joins it
    classes[_disc(shape, 160, 60, 30)] = 0
    classes[_disc(shape, 160, 60, 12)] = 2
    classes[_disc(shape, 150, 160, 30)] = 1  # debris: no nucleus
    classes[_disc(shape, 200, 220, 7)] = 2  # a platelet
    yy, xx = np.mgrid[: shape[0], : shape[1]]  # a ring of diagonal steps (8-, not 4-connected)
    classes[np.abs(yy - 170) + np.abs(xx - 330) == 36] = 1
    classes[_disc(shape, 170, 330, 10)] = 2
    classes[_disc(shape, 229, 399, 50)] = 1  # the bottom-right corner
    classes[_disc(shape, 229, 399, 15)] = 2
    return classes


def test_hard_cases_equal_the_whole_image_version():
    classes = _hard_cases()
    cells, nuclei, objects = _assert_same(classes)
    two = cells[60, 50], cells[60, 105]
    assert all(two) and two[0] != two[1]  # split
    assert nuclei[60, 190] == cells[60, 190] > 0  # the pinhole is nucleus
    assert cells[41, 216] > 0 and nuclei[41, 216] == 0  # the speck is not
    assert cells[0, 300] > 0 and cells[229, 399] > 0  # at the image edge
    assert cells[160, 60] == cells[160, 100] > 0 and objects[160, 60] == objects[160, 100]
    assert cells[150, 160] == 0 and cells[200, 220] == 0  # no nucleus; a platelet
    assert cells[170, 330] > 0 and cells[170, 310] == cells[170, 330]  # the diagonal ring is filled
    for diameter in (40.0, 60.0, 100.0, 140.0):
        _assert_same(classes, diameter)


def test_random_scenes_equal_the_whole_image_version():
    rng = np.random.default_rng(7)
    for _ in range(40):
        h, w = rng.integers(40, 140, 2)
        classes = np.zeros((h, w), np.uint8)
        for _ in range(rng.integers(1, 9)):
            cy, cx, r = rng.integers(-10, h + 10), rng.integers(-10, w + 10), rng.integers(3, 30)
            classes[_disc((h, w), cy, cx, r)] = 1
            classes[_disc((h, w), cy, cx, rng.integers(1, max(2, r)))] = 2
        noisy = rng.random((h, w)) < rng.choice([0.0, 0.01, 0.05, 0.15])
        classes[noisy] = rng.integers(0, 3, (h, w))[noisy]
        _assert_same(classes, rng.choice([None, 8.0, 12.0, 20.0, 40.0]))


def test_nucleus_clean_up_on_a_crop_equals_the_whole_image():
    """A crop cut through pinholes and specks widens until the result is certain: random
    nucleus patterns against remove_small_holes/remove_small_objects over the whole image
    (a plain crop of FIELD_MARGIN px differs in ~3% of these)."""
    from skimage.morphology import remove_small_holes, remove_small_objects

    from napari_wbc.core.postprocess import clean_nucleus

    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = rng.integers(30, 160, 2)
        z = int(rng.integers(1, 4))
        coarse = (h // z + 1, w // z + 1)
        pattern = np.where(rng.random(coarse) < rng.uniform(0.3, 0.7), 2, rng.integers(0, 2, coarse))
        classes = np.kron(pattern.astype(np.uint8), np.ones((z, z), np.uint8))[:h, :w]
        speck = int(rng.integers(4, 60))
        whole = remove_small_objects(remove_small_holes(classes == 2, max_size=speck), max_size=speck)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        box = (slice(y0, min(h, y0 + rng.integers(1, 30))), slice(x0, min(w, x0 + rng.integers(1, 30))))
        comp = rng.random((box[0].stop - y0, box[1].stop - x0)) < 0.5
        assert np.array_equal(clean_nucleus(classes, box, comp, speck)[comp], whole[box][comp])


def _label_maps(datasets, name, count=None):
    import csv

    from PIL import Image

    with open(datasets / name / "split.csv") as f:
        stems = [r["stem"] for r in csv.DictReader(f) if r["split"] == "test"]
    for stem in stems[:count]:
        yield np.asarray(Image.open(datasets / name / "labels" / f"{stem}.png"))


@pytest.mark.parametrize("name", ["zheng_d1", "zheng_d2", "bccd"])
def test_dataset_fields_equal_the_whole_image_version(datasets, name):
    n = 0
    for classes in _label_maps(datasets, name):
        assert set(np.unique(classes)) <= {0, 1, 2}
        _assert_same(classes, split=False)
        n += 1
    assert n >= 20


def test_touching_fields_mosaic_equals_the_whole_image_version(datasets):
    """3x3 bccd label maps side by side: cells on the image border and across the seams."""
    maps = list(_label_maps(datasets, "bccd", 9))
    mosaic = np.block([[maps[3 * r + c] for c in range(3)] for r in range(3)])
    for diameter in (None, 100.0):
        cells, _, _ = _assert_same(mosaic, diameter)
        assert cells.max() >= 9


def test_tiling_uses_the_same_margin():
    from napari_wbc.core import postprocess, tiling

    assert tiling.finish_margin is postprocess.finish_margin
    for diameter in (None, 20.0, 50.0, 100.0, 300.0):
        assert tiling.finish_margin(diameter) >= postprocess.FIELD_MARGIN
