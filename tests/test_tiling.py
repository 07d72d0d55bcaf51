"""Tiled segmentation equals untiled segmentation: network context, resampling, stitching, ids.

Cheap checks (no trained network) cover the geometry and the stitching on synthetic class
maps; the real model runs on bccd fields and on a mosaic slide built from them.
"""

import threading
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_wbc.core.inference import run, segment
from napari_wbc.core.io import InputError, read_image
from napari_wbc.core.options import Options
from napari_wbc.core.postprocess import instances_from_classes
from napari_wbc.core.slide import Slide, build_mosaic_slide, open_slide
from napari_wbc.core.slide_output import global_ids
from napari_wbc.core.tiling import (
    LOOK_CELL_PX,
    MIN_NUCLEUS,
    TileGrid,
    WorkGrid,
    canonical_labels,
    cells_in_tile,
    nucleus_size,
)
from napari_wbc.core.wholeslide import look_nucleus_size, segment_slide, slide_exposure_gain
from napari_wbc.core.work_folder import WorkFolder
from napari_wbc.models import load_model

FIXED = Options(auto_scale=False)  # the network's working pixel size, as tiles see it
TILED = replace(FIXED, tile=(240, 320), halo=100, skip_empty=False)  # a bccd field in 4 tiles


def test_tile_grid_partitions_the_slide():
    grid = TileGrid((1000, 700), (300, 256), 50)
    assert (grid.rows, grid.cols, len(grid)) == (4, 3, 12)
    cover = np.zeros((1000, 700), int)
    for i in range(len(grid)):
        y0, x0, y1, x1 = grid.core(i)
        cover[y0:y1, x0:x1] += 1
        assert grid.index(y0, x0) == i and grid.index(y1 - 1, x1 - 1) == i
    assert (cover == 1).all()
    assert grid.expand(grid.core(0), 50) == (0, 0, 350, 306)


@pytest.mark.parametrize("scale", [1.0, 1.25, 0.8, 2.5])
def test_resampling_does_not_depend_on_the_window(scale):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (203, 317, 3), dtype=np.uint8)
    work = WorkGrid(image.shape[:2], scale, context=32)
    whole_window = (0, 0, *work.work_shape)
    whole = work.to_work(image, (0, 0, *image.shape[:2]), whole_window).astype(np.float32)
    prob = rng.random((3, *work.work_shape)).astype(np.float32)
    whole_classes = work.to_slide(prob, whole_window, (0, 0, *image.shape[:2]))
    for box in [(0, 0, 64, 64), (70, 100, 150, 317), (150, 250, 203, 317), (37, 41, 38, 42)]:
        window = work.window(box)
        assert window[0] % 8 == 0 and window[1] % 8 == 0
        assert window[2] % 8 == 0 or window[2] == work.work_shape[0]
        source = work.source(window)
        part = work.to_work(image[source[0] : source[2], source[1] : source[3]], source, window)
        assert np.array_equal(part, whole[window[0] : window[2], window[1] : window[3]])
        classes = work.to_slide(prob[:, window[0] : window[2], window[1] : window[3]], window, box)
        assert np.array_equal(classes, whole_classes[box[0] : box[2], box[1] : box[3]])


def synthetic_classes(shape, n, seed) -> np.ndarray:
    """Overlapping cells with nuclei, nucleus specks, pinholes and a ring: a hard class map."""
    rng = np.random.default_rng(seed)
    classes = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(n):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.uniform(25, 70)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        classes[(d2 <= r * r) & (classes == 0)] = 1
        classes[d2 <= (r / 2) ** 2] = 2
    noise = rng.random(shape)
    classes[noise < 0.002] = 2
    classes[(noise > 0.998) & (classes > 0)] = 0
    d2 = (yy - shape[0] // 3) ** 2 + (xx - shape[1] // 2) ** 2
    classes[(d2 < 90**2) & (d2 > 70**2)] = 1
    return classes


def stitch(classes, tile, halo, diameter=None):
    """Cells of every tile, with global ids, painted into one image (no overlaps allowed)."""
    grid = TileGrid(classes.shape, tile, halo)
    records = [
        cells_in_tile(lambda b: classes[b[0] : b[2], b[1] : b[3]], grid, i, cell_diameter=diameter)
        for i in range(len(grid))
    ]
    cells, nuclei = np.zeros(classes.shape, np.uint32), np.zeros(classes.shape, np.uint32)
    for record, ids in zip(records, global_ids([r.first for r in records]), strict=True):
        if len(ids):
            lut = np.concatenate([[0], ids]).astype(np.uint32)
            y, x = record.origin
            h, w = record.cells.shape
            painted = record.cells > 0
            assert not cells[y : y + h, x : x + w][painted].any(), "a cell was made twice"
            cells[y : y + h, x : x + w][painted] = lut[record.cells[painted]]
            nuclei[y : y + h, x : x + w][record.nuclei > 0] = lut[record.nuclei[record.nuclei > 0]]
    return cells, nuclei


@pytest.mark.parametrize("diameter", [None, 60.0])
def test_stitching_matches_the_whole_class_map(diameter):
    classes = synthetic_classes((560, 720), 35, seed=int(diameter or 0))
    cells, nuclei = instances_from_classes(classes, cell_diameter=diameter)
    expected = canonical_labels(cells)
    assert expected.max() >= 12
    # seams through clusters of touching cells; a halo of 0 makes every cut object grow its window
    for tile, halo in [((256, 256), 150), ((201, 333), 40), ((150, 500), 0)]:
        got, got_nuclei = stitch(classes, tile, halo, diameter)
        assert np.array_equal(got, expected), (tile, halo)
        assert np.array_equal(got_nuclei, np.where(nuclei > 0, expected, 0)), (tile, halo)


GLASS = (236, 232, 238)


def smear(discs, side=600, background=GLASS):
    """A 0.1 um/px smear (a typical 10 um white cell is 100 px): (y, x, diameter um, RGB) discs."""
    image = np.empty((side, side, 3), np.uint8)
    image[:] = background
    yy, xx = np.mgrid[:side, :side]
    for y, x, um, colour in discs:
        image[(yy - y) ** 2 + (xx - x) ** 2 <= (5 * um) ** 2] = colour
    return image


def smallest_nucleus_size(image, cell_width):
    """The engine's look at the whole image: one level or a pyramid, two block phases."""
    h, w = image.shape[:2]
    half = int(max(1.0, cell_width / LOOK_CELL_PX) / 2)
    return min(
        look_nucleus_size(slide, (o, o, h, w), cell_width)
        for slide in (Slide.from_array(image), Slide.pyramid_of(image))
        for o in (0, half)
    )


NUCLEUS = (120, 80, 190)  # a Wright/Giemsa-stained nucleus or platelet


def test_skip_needs_a_nucleus_sized_purple_region():
    def size(discs, **kw):
        return smallest_nucleus_size(smear(discs, **kw), 100.0)

    assert size([]) == 0  # glass
    assert nucleus_size(np.zeros((40, 40, 3), np.uint8), 8.0) == 0  # black slide border
    for um in (2.0, 2.5, 3.0):  # a platelet
        assert size([(300, 300, um, NUCLEUS)]) < MIN_NUCLEUS, um
    # platelets scattered more than a cell apart
    assert (
        size([(150 + 150 * i, 150 + 150 * j, 2.5, NUCLEUS) for i in range(3) for j in range(3)]) < MIN_NUCLEUS
    )
    # a carpet of red cells (7.5 um), bccd's lavender pink and a salmon pink, on glass or plasma
    carpet = [(y, x) for y in range(40, 600, 80) for x in range(40, 600, 80)]
    for colour in ((184, 162, 169), (225, 160, 155)):
        assert size([(y, x, 7.5, colour) for y, x in carpet]) < MIN_NUCLEUS
        assert size([(y, x, 7.5, colour) for y, x in carpet], background=(192, 188, 185)) < MIN_NUCLEUS
    # a nucleus kept: a small lymphocyte's, or three 2.5 um lobes of a neutrophil 3 um apart
    for um in (4.5, 5.0, 7.0):
        assert size([(300, 300, um, NUCLEUS)]) >= MIN_NUCLEUS, um
    assert size([(300, 285, 2.5, NUCLEUS), (300, 315, 2.5, NUCLEUS), (326, 300, 2.5, NUCLEUS)]) >= MIN_NUCLEUS
    # ... and among red cells, and with its lobes among them
    cell = [(y, x, 7.5, (184, 162, 169)) for y, x in carpet if abs(y - 300) > 60 or abs(x - 300) > 60]
    assert size([*cell, (300, 300, 4.5, NUCLEUS)]) >= MIN_NUCLEUS


@pytest.mark.parametrize("name", ["zheng_d1", "zheng_d2", "bccd"])
def test_every_white_cell_of_the_test_fields_keeps_its_tile(datasets, name):
    """Each test field, looked at as the engine would look at it as a slide (its cells' scale,
    one level or a pyramid), and each of its white cells alone on the field's glass colour."""
    from PIL import Image
    from scipy import ndimage

    from napari_wbc.core.inference import scale_for_cells, typical_cell_width
    from napari_wbc.core.postprocess import DEFAULT_CELL_DIAMETER_PX

    rows = (line.split(",") for line in (datasets / name / "split.csv").read_text().split()[1:])
    stems = sorted(stem for stem, split in rows if split == "test")
    low = []
    for stem in stems:
        labels = np.array(Image.open(datasets / name / "labels" / f"{stem}.png"))
        if not (labels > 0).any():
            continue
        (path,) = (datasets / name / "images").glob(f"{stem}.*")
        image = read_image(path).data[..., :3]
        cell_width = DEFAULT_CELL_DIAMETER_PX / scale_for_cells(typical_cell_width(labels), None, None)
        low.append((smallest_nucleus_size(image, cell_width), stem))
        flat = image.reshape(-1, 3).astype(np.float32)
        glass = flat[np.argpartition(flat.sum(1), -len(flat) // 50)[-len(flat) // 50 :]].mean(0)
        objects, _ = ndimage.label(labels > 0)
        for k, box in enumerate(ndimage.find_objects(objects), 1):
            mask = objects[box] == k
            if mask.sum() < 50:
                continue
            pad = max(mask.shape)
            alone = np.empty((mask.shape[0] + 2 * pad, mask.shape[1] + 2 * pad, 3), np.uint8)
            alone[:] = glass.round()
            alone[pad : pad + mask.shape[0], pad : pad + mask.shape[1]][mask] = image[box][mask]
            low.append((smallest_nucleus_size(alone, cell_width), f"{stem} cell {k}"))
    assert len(low) > len(stems)
    assert min(low) >= (MIN_NUCLEUS, ""), min(low)


@pytest.fixture(scope="module")
def model(trained_model):
    return load_model(trained_model)


@pytest.fixture(scope="module")
def field(datasets, model):
    """A bccd field (two white cells) and its untiled segmentation, ids in raster order."""
    image = read_image(datasets / "bccd" / "images" / "BloodImage_00242.jpg").data
    ref = run(segment(image, *model, FIXED))
    return image, canonical_labels(ref.cells), np.where(ref.nuclei > 0, canonical_labels(ref.cells), 0)


def read_result(result):
    cells, nuclei = tifffile.imread(result.cells), tifffile.imread(result.nuclei)
    assert np.array_equal(nuclei[nuclei > 0], cells[nuclei > 0]), "a nucleus outside its cell"
    return cells, nuclei


def test_bccd_field_tiled_equals_untiled(field, model, tmp_path):
    image, cells, nuclei = field
    assert cells.max() >= 2
    slide = Slide.from_array(image, None, "field")  # no pixel size: the network's own scale
    result = run(segment_slide(slide, tmp_path, *model, TILED))
    got_cells, got_nuclei = read_result(result)
    assert np.array_equal(got_cells, cells)
    assert np.array_equal(got_nuclei, nuclei)
    assert result.scale == 1.0 and result.tiles == 4
    table = pd.read_csv(result.table)
    assert table["label"].tolist() == list(range(1, cells.max() + 1))
    summary = pd.read_csv(result.summary)
    assert summary.loc[0, "white_cells"] == cells.max()
    assert not WorkFolder(tmp_path, "field").path.exists()


def test_slide_keeps_the_cell_types_of_the_field(field, model, tmp_path):
    """Cells typed on a slide, tile by tile from the slide's pixels, get the types the same
    pixels get as a field. The size cue's ruler (the red cells' diameter) is measured in each
    tile and its margin rather than in the whole field, so the confidences may differ a little."""
    from napari_wbc.core.celltypes import load_classifier

    image, cells, _ = field
    classifier = load_classifier("classifier")
    ref = run(segment(image, *model, FIXED, classifier=classifier))
    slide = Slide.from_array(image, None, "field")
    result = run(segment_slide(slide, tmp_path, *model, TILED, classifier=classifier))
    table = pd.read_csv(result.table)
    canonical = canonical_labels(ref.cells)
    old = {k: int(ref.cells[canonical == k][0]) for k in table["label"]}
    assert table["cell_type"].tolist() == [ref.types[old[k]][0] for k in table["label"]]
    np.testing.assert_allclose(
        table["type_confidence"], [ref.types[old[k]][1] for k in table["label"]], atol=0.01
    )
    probs = table[[c for c in table.columns if c.startswith("p_")]]
    assert probs.shape[1] == 6 and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    summary = pd.read_csv(result.summary)
    counted = [t for t in table["cell_type"] if t != "not_wbc"]
    assert summary.loc[0, "white_cells"] == len(counted)
    for kind in set(counted):
        assert summary.loc[0, f"n_{kind}"] == counted.count(kind)


def test_a_cells_ncr_and_areas_do_not_depend_on_pixel_size_or_tiling(field, model, tmp_path):
    """The same cell through every path a user may take: the field with no pixel size, with
    0.1 and with 0.07 um/px, and tiled on a pyramidal slide (inside a glass border) read at
    0.1 um/px: the network sees it at the scale its own width sets, so its outline, areas
    and NCR agree (they used to differ by up to 13%). Compared: the cells wholly inside the
    field (one cut by the field's edge meets glass on the slide instead, another picture)."""
    from napari_wbc.core.measure import measure_cells

    image = field[0]
    tables = []
    for px in (None, 0.1, 0.07):
        result = run(segment(image, *model, Options(pixel_size=px)))
        tables.append(measure_cells(result.cells, result.nuclei))
    border = 64
    path = build_mosaic_slide(
        tmp_path / "slide.ome.tif", [image], grid=(1, 1), border=border, pixel_size=0.1, tile=128
    )
    slide = pd.read_csv(run(segment_slide(path, tmp_path / "out", *model, Options(tile=256))).table)
    slide[["centroid_y", "centroid_x"]] -= border
    tables.append(slide)
    for table in tables[1:3]:  # with any pixel size, the very same cells
        pd.testing.assert_frame_equal(table, tables[0])
    complete = tables[0][~tables[0]["touches_border"]]
    assert len(complete) >= 1
    for table in tables[1:]:
        for _, same in complete.iterrows():
            d = np.hypot(table["centroid_y"] - same["centroid_y"], table["centroid_x"] - same["centroid_x"])
            row = table.loc[d.idxmin()]
            assert d.min() < 3
            for column in ("ncr", "cell_area_px", "nucleus_area_px"):
                assert row[column] == pytest.approx(same[column], rel=0.03), column


def test_under_exposed_slide_is_brightened_as_a_field_is(field, model, tmp_path):
    image = (field[0] * 0.6).astype(np.uint8)
    ref = run(segment(image, *model, FIXED))
    messages = []
    result = run(
        segment_slide(
            Slide.from_array(image, None, "dim"),
            tmp_path,
            *model,
            replace(TILED, skip_empty=True),
        ),
        lambda *step: messages.append(step[2]),
    )
    assert any("under-exposed slide: tiles brightened" in m for m in messages)
    cells, _ = read_result(result)
    assert cells.max() == ref.cells.max() >= 2
    assert np.array_equal(cells, canonical_labels(ref.cells))


def test_slide_exposure_gain_samples_a_large_slide():
    glass = np.full((2100, 2100, 3), 216, np.uint8)
    assert slide_exposure_gain(Slide.from_array(glass)) == 1.0
    dim = Slide.from_array((glass * 0.6).astype(np.uint8))  # too large to read whole: sampled
    assert slide_exposure_gain(dim) == pytest.approx(225 / 129)


class CountingNet:
    def __init__(self, net):
        self.net, self.calls = net, 0

    def __call__(self, x):
        self.calls += 1
        return self.net(x)


def test_batches_workers_and_resume_give_the_same_ids(field, model, tmp_path):
    image, cells, _ = field
    net, spec = model
    slide = Slide.from_array(image, None, "field")
    serial = replace(TILED, batch_size=3, threads=0)  # cells separated after the network
    batched = run(segment_slide(slide, tmp_path / "batch", net, spec, serial))
    assert np.array_equal(read_result(batched)[0], cells)
    # the time by stage (threads add up; a thread's wait for tiles is not counted)
    assert set(batched.seconds) == {"scale", "read", "network", "cells", "results"}
    assert min(batched.seconds.values()) >= 0 and batched.seconds["network"] > 0

    # two workers sharing one output folder, interleaved; the first writes the results
    workers = [
        segment_slide(slide, tmp_path / "shards", net, spec, TILED, shard=(i, 2), poll=0) for i in range(2)
    ]
    results = [None, None]
    while any(w is not None for w in workers):
        for i, w in enumerate(workers):
            if w is not None:
                try:
                    next(w)
                except StopIteration as stop:
                    results[i], workers[i] = stop.value, None
    assert results[1] is None
    assert np.array_equal(read_result(results[0])[0], cells)

    # stop after two tiles, then resume: only the other two go through the network
    counting = CountingNet(net)
    gen = segment_slide(slide, tmp_path / "resume", counting, spec, TILED)
    next(gen), next(gen)
    gen.close()
    assert counting.calls == 2
    counting.calls = 0
    resumed = run(segment_slide(slide, tmp_path / "resume", counting, spec, TILED))
    assert counting.calls == 2
    assert np.array_equal(read_result(resumed)[0], cells)


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory, datasets, model):
    """Two bccd fields either side of a field of empty glass, and its untiled segmentation."""
    names = ("BloodImage_00034", "BloodImage_00242")
    fields = [read_image(datasets / "bccd" / "images" / f"{n}.jpg").data for n in names]
    glass = np.full_like(fields[0], (236, 232, 238))
    path = build_mosaic_slide(
        tmp_path_factory.mktemp("mosaic") / "mosaic.ome.tif",
        [fields[0], glass, fields[1]],
        grid=(1, 3),
        border=64,
        pixel_size=0.1,
    )
    with open_slide(path) as slide:
        image = slide.read(0, 0, *slide.shape)
    ref = run(segment(image, *model, FIXED))
    cells = canonical_labels(ref.cells)
    return path, cells, np.where(ref.nuclei > 0, cells, 0)


def deep_point(cells, label):
    """A pixel well inside a cell."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(cells == label)
    return np.unravel_index(np.argmax(dist), dist.shape)


def test_mosaic_tiled_equals_untiled_across_seams_and_corners(mosaic, model, tmp_path):
    path, cells, nuclei = mosaic
    n = int(cells.max())
    assert n >= 4
    sizes = np.bincount(cells.ravel())[1:]
    big, second = (int(i) + 1 for i in np.argsort(sizes)[::-1][:2])
    corner = deep_point(cells, big)
    # cells separated after the network (0 threads) or beside it (2, 3), the same either way
    configs = [
        (tuple(int(v) for v in corner), None, 1, 0),  # a four-tile corner inside the biggest cell
        (tuple(int(v) for v in deep_point(cells, second)), 48, 1, 3),  # small halo: cut cells grow
        ((304, 320), 64, 2, 2),  # two tiles and their halos lie in the glass
    ]
    skipped = 0
    for tile, halo, batch, threads in configs:
        options = replace(FIXED, tile=tile, halo=halo, batch_size=batch, threads=threads)
        result = run(segment_slide(path, tmp_path / f"{tile}", *model, options))
        got_cells, got_nuclei = read_result(result)
        assert np.array_equal(got_cells, cells), (tile, halo)
        assert np.array_equal(got_nuclei, nuclei), (tile, halo)
        grid = TileGrid(cells.shape, tile, 0)
        cut = [
            lab
            for lab in range(1, n + 1)
            if len({grid.index(y, x) for y, x in zip(*np.nonzero(cells == lab), strict=True)}) > 1
        ]
        assert cut, f"no cell straddles a seam with tiles of {tile}"
        skipped += result.skipped
        table = pd.read_csv(result.table)
        assert table["label"].tolist() == list(range(1, n + 1))
        assert np.allclose(table["centroid_x_um"], table["centroid_x"] * 0.1)
        assert (result.counts["white_cells"], result.counts["complete_cells"]) == (n, n)
    four = {
        TileGrid(cells.shape, configs[0][0], 0).index(y, x)
        for y, x in zip(*np.nonzero(cells == big), strict=True)
    }
    assert len(four) == 4
    assert skipped > 0, "no tile of empty glass was skipped"


def test_tiles_read_ahead_in_order_and_errors_reach_the_caller():
    from napari_wbc.core.pipeline import ahead

    assert list(ahead(iter(range(10)), depth=2)) == list(range(10))

    def failing():
        yield 1
        raise InputError("slide.tif: tile 2 is damaged")

    got = []
    with pytest.raises(InputError, match="tile 2"):
        for item in ahead(failing()):
            got.append(item)
    assert got == [1]

    made = []

    def endless():
        while True:
            made.append(len(made))
            yield made[-1]

    made_ahead = ahead(endless(), depth=2)
    assert next(made_ahead) == 0
    made_ahead.close()  # the thread stops: it makes at most the items the queue holds, and one more
    n = len(made)
    time.sleep(0.3)
    assert len(made) == n <= 4


def test_a_failing_cell_thread_stops_the_run_with_its_error(field, model, tmp_path, monkeypatch):
    import napari_wbc.core.wholeslide as wholeslide

    image, _, _ = field
    slide = Slide.from_array(image, None, "field")
    real = wholeslide.cells_in_tile

    def cells_in_tile(read, grid, index, **kw):
        if index == 1:
            raise OSError("disk full")
        return real(read, grid, index, **kw)

    monkeypatch.setattr(wholeslide, "cells_in_tile", cells_in_tile)
    with pytest.raises(OSError, match="disk full"):
        run(segment_slide(slide, tmp_path / "out", *model, replace(TILED, threads=2)))
    ours = [t.name for t in threading.enumerate() if t.name.startswith(("cells", "tiles ahead"))]
    assert not ours  # no thread left waiting for tiles
    monkeypatch.setattr(wholeslide, "cells_in_tile", real)
    result = run(segment_slide(slide, tmp_path / "out", *model, replace(TILED, threads=2)))
    assert np.array_equal(read_result(result)[0], field[1])


def test_cli_routes_slides_to_the_tiled_engine(field, model, tmp_path):
    """A one-field slide through the CLI gets the cells the field gets: both are resampled to
    the scale their cells' width sets (the slide in windows, the field whole, so the outlines
    differ by resampling only)."""
    from napari_wbc.cli import main

    image = field[0]
    cells = canonical_labels(run(segment(image, *model)).cells)
    path = build_mosaic_slide(tmp_path / "one.ome.tif", [image], grid=(1, 1), tile=128, pixel_size=0.1)
    out = tmp_path / "out"
    assert main(["segment", str(path), "--out", str(out), "--tile", "320", "--device", "cpu"]) == 0
    with tifffile.TiffFile(tmp_path / "out" / "one_cells.tif") as tif:
        levels = tif.series[0].levels
        assert len(levels) == 3  # 640, 320, 160 px
        got = levels[0].asarray()
    assert got.max() == cells.max()
    assert 2 * ((got > 0) & (cells > 0)).sum() / ((got > 0).sum() + (cells > 0).sum()) > 0.98
    assert len(pd.read_csv(tmp_path / "out" / "one_cells.csv")) == cells.max()


def test_a_plain_image_over_the_slide_threshold_is_tiled(field, model, tmp_path, monkeypatch):
    """A PNG (not a slide format) over ``SLIDE_PIXELS`` goes through the tiled engine, so its
    memory is bounded by the tile: slide outputs with the cells the field gets whole."""
    from PIL import Image

    import napari_wbc.core.slide as slide_module
    from napari_wbc.cli import main
    from napari_wbc.core.slide import is_slide

    image = field[0]
    path = tmp_path / "wide.png"
    Image.fromarray(image).save(path)
    assert not is_slide(path)  # 0.3 MP: a field
    monkeypatch.setattr(slide_module, "SLIDE_PIXELS", 0.2e6)
    assert is_slide(path)
    cells = canonical_labels(run(segment(image, *model)).cells)
    out = tmp_path / "out"
    assert main(["segment", str(path), "--out", str(out), "--tile", "320", "--device", "cpu"]) == 0
    with tifffile.TiffFile(out / "wide_cells.tif") as tif:
        assert len(tif.series[0].levels) > 1  # a label pyramid, as for a slide
        got = tif.series[0].levels[0].asarray()
    assert len(pd.read_csv(out / "wide_cells.csv")) == cells.max()
    assert got.max() == cells.max() >= 2
    assert 2 * ((got > 0) & (cells > 0)).sum() / ((got > 0).sum() + (cells > 0).sum()) > 0.98


@pytest.mark.slow
def test_a_large_png_is_segmented_within_3_gb(field, tmp_path):
    """A 4000 x 3000 PNG (12 MP: whole, the network would need about 16 GB) in a process that
    may not map more than 3 GB: tiled, it segments, and finds the field's two cells."""
    import resource
    import subprocess
    import sys

    from PIL import Image

    glass = np.empty((3000, 4000, 3), np.uint8)
    glass[:] = (232, 226, 228)
    glass[1200:1680, 2100:2740] = field[0]
    Image.fromarray(glass).save(tmp_path / "big.png", compress_level=1)
    limit = 3 * 2**30

    def address_space_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    args = [sys.executable, "-m", "napari_wbc.cli", "segment", str(tmp_path / "big.png")]
    args += ["--out", str(tmp_path / "out"), "--device", "cpu"]
    done = subprocess.run(args, preexec_fn=address_space_limit, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "out" / "big_cells.csv")) == 2  # as in bccd's reference labels
