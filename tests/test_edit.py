"""Cell edits keep ids unique and nuclei inside their cells; measurements follow."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk

from napari_wbc.core import edit
from napari_wbc.core.measure import count_summary


def assert_valid(cells, nuclei):
    """Checked here without check_invariants: one object per id, nucleus id = cell id."""
    assert cells.dtype == nuclei.dtype == np.uint32
    for i in np.unique(cells[cells > 0]):
        assert ndimage.label(cells == i, structure=np.ones((3, 3)))[1] == 1, f"cell {i} is in pieces"
    inside = nuclei > 0
    assert np.array_equal(nuclei[inside], cells[inside]), "a nucleus outside its cell"
    assert edit.check_invariants(cells, nuclei) == []


@pytest.fixture
def scene():
    """Cell 1: two touching discs (a missed split) with a nucleus in each; cells 2 and 3 side
    by side (touching); cell 4 alone."""
    cells = np.zeros((80, 140), np.uint32)
    nuclei = np.zeros_like(cells)
    for centre in ((30, 30), (30, 58)):
        cells[disk(centre, 16, shape=cells.shape)] = 1
        nuclei[disk(centre, 6, shape=cells.shape)] = 1
    cells[5:25, 90:105] = 2
    nuclei[10:15, 95:100] = 2
    cells[5:25, 105:120] = 3
    nuclei[10:20, 110:115] = 3
    cells[50:70, 100:120] = 4
    nuclei[55:60, 105:110] = 4
    assert_valid(cells, nuclei)
    return cells, nuclei


def test_check_invariants_finds_each_kind_of_problem(scene):
    cells, nuclei = scene
    bad = nuclei.copy()
    bad[0, 0] = 9  # nucleus on background
    assert any("outside every cell" in p for p in edit.check_invariants(cells, bad))
    bad = nuclei.copy()
    bad[10, 92] = 3  # cell 3's nucleus in cell 2
    assert any("another cell's id" in p for p in edit.check_invariants(cells, bad))
    split = cells.copy()
    split[75:78, 0:3] = 4  # a second object with id 4
    assert any("[4]" in p for p in edit.check_invariants(split, nuclei))
    assert edit.check_invariants(split, nuclei, connected=False) == []
    assert edit.check_invariants(cells, nuclei[:10]) != []


def test_delete_removes_cell_and_nucleus_and_leaves_inputs(scene):
    cells, nuclei = scene
    before = cells.copy(), nuclei.copy()
    out = edit.delete_cell(cells, nuclei, 2)
    assert out.ids == [2]
    assert 2 not in out.cells and 2 not in out.nuclei
    assert np.array_equal(out.cells[cells != 2], cells[cells != 2])
    assert np.array_equal(cells, before[0]) and np.array_equal(nuclei, before[1])  # pure
    assert_valid(out.cells, out.nuclei)
    with pytest.raises(ValueError, match="no cell 8"):
        edit.delete_cell(cells, nuclei, 8)


def test_merge_touching_cells_into_the_smaller_id(scene):
    cells, nuclei = scene
    out = edit.merge_cells(cells, nuclei, [3, 2])
    assert out.ids == [2] and 3 not in out.cells and 3 not in out.nuclei
    assert np.count_nonzero(out.cells == 2) == np.count_nonzero(np.isin(cells, [2, 3]))
    assert np.count_nonzero(out.nuclei == 2) == np.count_nonzero(np.isin(nuclei, [2, 3]))
    assert_valid(out.cells, out.nuclei)
    with pytest.raises(ValueError, match="two different"):
        edit.merge_cells(cells, nuclei, [2, 2])


def test_merging_cells_that_do_not_touch_is_refused_and_says_how_far_apart(scene):
    cells, nuclei = scene
    before = cells.copy(), nuclei.copy()
    # cell 2 ends at row 24, cell 4 starts at row 50: 25 rows of background between them
    with pytest.raises(ValueError, match=r"cells 2, 4 do not touch \(a gap of 25 px\): not merged"):
        edit.merge_cells(cells, nuclei, [4, 2], inplace=True)
    assert np.array_equal(cells, before[0]) and np.array_equal(nuclei, before[1])  # nothing changed


def test_only_the_pieces_of_one_cell_merge_not_cells_that_merely_touch():
    """Two round cells side by side touch over a few pixels (8 here; 13 px between the two
    white cells of the sample field, 130 and 170 px wide); the halves of one cell share a border
    as long as the cell is wide."""
    cells = np.zeros((100, 180), np.uint32)
    cells[disk((50, 50), 40, shape=cells.shape)] = 1  # columns 11..89
    cells[disk((50, 130), 40, shape=cells.shape)] = 2  # columns 91..169
    cells[46:54, 90] = 1  # cell 1 reaches cell 2 along 8 rows
    nuclei = np.where(np.isin(cells, [1, 2]) & (np.arange(180) % 40 < 10), cells, 0).astype(np.uint32)
    before = cells.copy(), nuclei.copy()
    with pytest.raises(ValueError, match=r"cells 1 and 2 barely touch \(8 px of border in common"):
        edit.merge_cells(cells, nuclei, [1, 2], inplace=True)
    assert np.array_equal(cells, before[0]) and np.array_equal(nuclei, before[1])
    out = edit.merge_cells(cells, nuclei, [1, 2], min_contact=0)  # a caller may allow it
    assert set(np.unique(out.cells)) == {0, 1}

    halves = np.where((cells == 2) & (np.arange(180) >= 130), 3, cells).astype(np.uint32)
    out = edit.merge_cells(halves, edit.clip_nuclei(halves, nuclei), [2, 3])  # 79 px in common
    assert out.ids == [2] and np.array_equal(out.cells == 2, cells == 2)
    assert_valid(out.cells, out.nuclei)
    # three pieces: merged when each holds to the others, refused when one merely touches them
    with pytest.raises(ValueError, match=r"cells 1 and 2\+3 barely touch \(8 px"):
        edit.merge_cells(halves, edit.clip_nuclei(halves, nuclei), [3, 1, 2])


def test_split_by_two_clicks_cuts_at_the_waist(scene):
    cells, nuclei = scene
    out = edit.split_cell(cells, nuclei, 1, [(30, 58), (30.4, 29.6)])
    assert out.ids == [1, 5]  # the first click keeps the id, the other piece gets the next free id
    assert out.cells[30, 58] == 1 and out.cells[30, 30] == 5
    assert np.array_equal(out.cells > 0, cells > 0)  # no pixel lost or added
    a, b = np.count_nonzero(out.cells == 1), np.count_nonzero(out.cells == 5)
    assert abs(a - b) <= 0.05 * (a + b)  # symmetric discs, symmetric halves
    cut_cols = np.flatnonzero((out.cells == 5).any(0))
    assert cut_cols.max() in (43, 44, 45)  # the cut falls on the waist at x = 44
    assert np.count_nonzero(out.nuclei == 1) == np.count_nonzero(out.nuclei == 5) > 0
    assert_valid(out.cells, out.nuclei)
    with pytest.raises(ValueError, match="not inside cell 1"):
        edit.split_cell(cells, nuclei, 1, [(30, 30), (70, 5)])
    with pytest.raises(ValueError, match="two different points"):
        edit.split_cell(cells, nuclei, 1, [(30, 30), (30.2, 30.1)])


def test_split_of_a_round_cell_cuts_between_the_points_or_is_refused():
    """No waist to follow: the cut lies halfway between the points, never a sliver at one of them."""
    cells = np.zeros((80, 80), np.uint32)
    cells[disk((40, 40), 20, shape=cells.shape)] = 1  # 1245 px
    nuclei = np.where(np.hypot(*np.mgrid[-40:40, -40:40]) < 8, cells, 0).astype(np.uint32)
    # one point at the centre, one 3 px inside the edge: flooding from the centre gave the
    # second point a 9-px "cell"; halfway (x = 48.5) it gets the cap beyond, about a quarter
    out = edit.split_cell(cells, nuclei, 1, [(40, 40), (40, 57)])
    small = np.count_nonzero(out.cells == 2)
    assert 0.2 * 1245 < small < 0.3 * 1245
    assert set(np.flatnonzero((out.cells == 2).any(0))) == set(range(49, 60))  # x = 49 .. the edge
    assert_valid(out.cells, out.nuclei)
    # two points in the same half: as the cut lies halfway, the piece beyond is a sliver: refused
    before = cells.copy(), nuclei.copy()
    with pytest.raises(ValueError, match=r"piece at point 2 would be \d+ px, \d% of cell 1, too small"):
        edit.split_cell(cells, nuclei, 1, [(40, 50), (40, 58)], inplace=True)
    assert np.array_equal(cells, before[0]) and np.array_equal(nuclei, before[1])
    # a caller may allow it
    out = edit.split_cell(cells, nuclei, 1, [(40, 50), (40, 58)], min_fraction=0)
    assert 0 < np.count_nonzero(out.cells == 2) < 0.2 * 1245


@pytest.mark.parametrize("line", [[(0, 44), (79, 44)], [(5, 30), (55, 58)], [(0, 40), (30, 46), (79, 42)]])
def test_cut_along_a_line_gives_connected_pieces(scene, line):
    cells, nuclei = scene
    out = edit.cut_cell(cells, nuclei, 1, line)
    assert len(out.ids) == 2 and out.ids[0] == 1 and out.ids[1] == 5
    assert np.array_equal(out.cells > 0, cells > 0)
    assert np.count_nonzero(out.cells == 1) >= np.count_nonzero(out.cells == 5)  # largest keeps the id
    assert np.array_equal(out.cells[cells != 1], cells[cells != 1])
    assert_valid(out.cells, out.nuclei)


def test_a_line_that_does_not_cross_is_refused(scene):
    cells, nuclei = scene
    with pytest.raises(ValueError, match="edge to edge"):
        edit.cut_cell(cells, nuclei, 1, [(0, 44), (30, 44)])


def test_new_cell_takes_background_only_and_the_next_id(scene):
    cells, nuclei = scene
    mask = np.zeros(cells.shape, bool)
    mask[40:75, 80:110] = True  # overlaps cell 4
    nucleus = np.zeros(cells.shape, bool)
    nucleus[45:60, 85:105] = True  # partly inside cell 4: clipped away there
    out = edit.new_cell(cells, nuclei, mask, nucleus)
    assert out.ids == [5]
    assert np.array_equal(out.cells[cells == 4], cells[cells == 4])  # cell 4 keeps its pixels
    assert np.array_equal(out.cells == 5, mask & (cells == 0))
    assert np.array_equal(out.nuclei == 5, nucleus & (cells == 0))
    assert_valid(out.cells, out.nuclei)
    with pytest.raises(ValueError, match="no pixels on background"):
        edit.new_cell(cells, nuclei, cells == 4)
    far = np.zeros(cells.shape, bool)
    far[0:3, 0:3] = True
    with pytest.raises(ValueError, match="outside the new cell"):
        edit.new_cell(cells, nuclei, mask, far)


def test_new_cell_split_by_another_keeps_its_largest_piece(scene):
    cells, nuclei = scene
    band = np.zeros(cells.shape, bool)
    band[8:12, 80:140] = True  # crosses cells 2 and 3: background left of 2 (10 px wide) and right of 3
    out = edit.new_cell(cells, nuclei, band)
    assert np.count_nonzero(out.cells == 5) == 4 * 20  # columns 120..139
    assert_valid(out.cells, out.nuclei)


def test_set_nucleus_is_clipped_to_the_cell(scene):
    cells, nuclei = scene
    drawn = np.zeros(cells.shape, bool)
    drawn[0:30, 85:100] = True  # spills out of cell 2
    out = edit.set_nucleus(cells, nuclei, 2, drawn)
    assert np.array_equal(out.nuclei == 2, drawn & (cells == 2))
    assert_valid(out.cells, out.nuclei)
    added = edit.set_nucleus(cells, nuclei, 2, drawn, mode="add")
    assert np.array_equal(added.nuclei == 2, (drawn & (cells == 2)) | (nuclei == 2))
    removed = edit.set_nucleus(cells, nuclei, 3, cells > 0, mode="remove")
    assert 3 not in removed.nuclei and np.array_equal(removed.nuclei == 2, nuclei == 2)
    with pytest.raises(ValueError, match="outside cell 4"):
        edit.set_nucleus(cells, nuclei, 4, drawn)
    with pytest.raises(ValueError, match="mode"):
        edit.set_nucleus(cells, nuclei, 4, drawn, mode="paint")


def test_in_place_edits_change_and_return_the_inputs(scene):
    cells, nuclei = scene
    out = edit.delete_cell(cells, nuclei, 4, inplace=True)
    assert out.cells is cells and 4 not in cells
    with pytest.raises(TypeError):
        edit.delete_cell(cells.astype(np.int32), nuclei, 2, inplace=True)


def test_random_edit_sequences_keep_the_invariants(scene):
    rng = np.random.default_rng(0)
    cells, nuclei = scene
    for _ in range(40):
        ids = np.unique(cells[cells > 0])
        op = rng.integers(5)
        try:
            if op == 0 and len(ids) > 2:
                cells, nuclei, _ = edit.delete_cell(cells, nuclei, int(rng.choice(ids)))
            elif op == 1:
                target = int(rng.choice(ids))
                ys, xs = np.nonzero(cells == target)
                pick = rng.choice(len(ys), 2, replace=False)
                cells, nuclei, _ = edit.split_cell(
                    cells, nuclei, target, list(zip(ys[pick], xs[pick], strict=True))
                )
            elif op == 2:
                y, x = rng.integers(0, 80), rng.integers(0, 140)
                mask = np.zeros(cells.shape, bool)
                mask[disk((y, x), rng.integers(3, 12), shape=cells.shape)] = True
                cells, nuclei, _ = edit.new_cell(cells, nuclei, mask, mask)
            elif op == 3:
                a = int(rng.choice(ids))
                ring = ndimage.binary_dilation(cells == a, np.ones((3, 3))) & (cells != a) & (cells > 0)
                if ring.any():
                    cells, nuclei, _ = edit.merge_cells(cells, nuclei, [a, int(cells[ring][0])])
            else:
                target = int(rng.choice(ids))
                ys, xs = np.nonzero(cells == target)
                y0, x0 = ys.min(), xs.min()
                cells, nuclei, _ = edit.cut_cell(
                    cells, nuclei, target, [(y0 - 1, x0 - 1), (ys.max() + 1, xs.max() + 1)]
                )
        except ValueError:
            continue  # a refused edit (cell too small to cut, no background...) changes nothing
        assert_valid(cells, nuclei)
        assert len(np.unique(cells[cells > 0])) >= 1


def test_edited_cells_and_table_follow_the_edits(scene):
    from napari_wbc.core.verification import set_type

    cells, nuclei = scene
    table = edit.remeasure(None, cells, nuclei)
    assert table["label"].tolist() == [1, 2, 3, 4] and not table["reviewed"].any()
    assert "review_status" not in table and "type_confidence" not in table  # none to keep yet
    table = table.assign(cell_type=["monocyte", "neutrophil", "neutrophil", "neutrophil"])
    table = table.assign(type_confidence=[0.5, 0.9, 0.8, 0.7], p_neutrophil=[0.1, 0.9, 0.8, 0.7])
    table = set_type(table, [4], "lymphocyte", "Ann")  # reclassified
    table = set_type(table, [2], "neutrophil", "Ann")  # confirmed
    assert count_summary(table)["n_neutrophil"] == 2

    out = edit.split_cell(cells, nuclei, 1, [(30, 30), (30, 58)])
    out = edit.delete_cell(out.cells, out.nuclei, 3)
    assert edit.edited_cells(cells, nuclei, out.cells, out.nuclei) == [1, 3, 5]
    after = edit.remeasure(table, out.cells, out.nuclei, pixel_size=0.1)
    assert after["label"].tolist() == [1, 2, 4, 5]
    assert after["cell_type"].tolist() == ["monocyte", "neutrophil", "lymphocyte", None]
    assert after["reviewed"].tolist() == [False, True, True, False]
    # the cells whose ids remain keep their review and the classifier's output; the split's new
    # piece (5) is unreviewed, with no suggestion
    kept = [
        "suggested_type",
        "review_status",
        "reviewed_by",
        "reviewed_at",
        "type_confidence",
        "p_neutrophil",
    ]
    before = table.set_index("label")
    now = after.set_index("label")
    assert now.loc[[1, 2, 4], kept].equals(before.loc[[1, 2, 4], kept])
    assert list(now.loc[[2, 4], "review_status"]) == ["confirmed", "reclassified"]
    assert now.loc[5, "review_status"] == "suggested" and now.loc[5, "suggested_type"] == ""
    assert now.loc[5, "reviewed_by"] == now.loc[5, "reviewed_at"] == ""
    assert np.isnan(now.loc[5, "type_confidence"]) and np.isnan(now.loc[5, "p_neutrophil"])
    counts = count_summary(after)
    assert (counts["white_cells"], counts["complete_cells"], counts["excluded"]) == (4, 4, 0)
    # the differential is of the typed cells: the one without a type is not in it
    assert (counts["n_lymphocyte"], counts["n_neutrophil"], counts["n_monocyte"]) == (1, 1, 1)
    assert "cell_area_um2" in after


def test_a_pair_saved_again_unchanged_is_found_not_written(scene, tmp_path):
    """Saving a corrected field twice: the second save finds the first (same sha256 of the
    image, the instance maps and the table); any change makes it a new pair."""
    from napari_wbc.core.dataset import find_saved_pair, read_manifest, save_training_pair

    cells, nuclei = scene
    image = np.random.default_rng(1).integers(0, 255, (*cells.shape, 3), dtype=np.uint8)
    table = edit.remeasure(None, cells, nuclei)
    table.loc[table["label"] == 2, "cell_type"] = "neutrophil"
    root = tmp_path / "training"
    assert find_saved_pair(root, image, cells, nuclei, table=table) is None  # no folder yet
    first = save_training_pair(
        root, image, cells, nuclei, {"source": "smear.png", "pixel_size_um": 0.1}, table=table
    )
    assert first == "smear"
    assert find_saved_pair(root, image, cells, nuclei, table=table, pixel_size=0.1) == first
    changed_cell = cells.copy()
    changed_cell[30, 30] = 0  # one pixel less of cell 1
    changed_image = image.copy()
    changed_image[0, 0] = 255 - changed_image[0, 0]
    retyped = table.assign(cell_type=[None, "neutrophil", "monocyte", None])
    for what in (
        (image, changed_cell, edit.clip_nuclei(changed_cell, nuclei), {"table": table}),
        (changed_image, cells, nuclei, {"table": table}),
        (image, cells, nuclei, {"table": retyped}),  # a type set since
        (image, cells, nuclei, {}),  # without the table
        (image, cells, nuclei, {"table": table, "region": (0, 0, 40, 70)}),  # a part of it
    ):
        *maps, kwargs = what
        assert find_saved_pair(root, *maps, **kwargs, pixel_size=0.1) is None
    crop = (0, 0, 40, 70)
    part = save_training_pair(root, image, cells, nuclei, {"source": "smear.png"}, region=crop)
    assert find_saved_pair(root, image, cells, nuclei, region=crop) == part == "smear_y0_x0"
    assert [r["stem"] for r in read_manifest(root)] == ["smear", "smear_y0_x0"]
    (root / "images" / "smear.png").unlink()  # a pair removed from the folder is not there to find
    assert find_saved_pair(root, image, cells, nuclei, table=table, pixel_size=0.1) is None
