import numpy as np

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
