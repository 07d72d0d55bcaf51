"""Synthetic whole slides for the benchmarks, made of real bccd pixels and written tile by tile.

A slide is a background on a lattice of bccd quarter fields (240 x 320 px): bare glass, or
a "red-cell carpet" of quarters of bccd *train* fields that hold no white cell (red cells,
platelets, plasma); over it, whole bccd fields (each with its white cells) are placed at
chosen positions. Nothing is ever held whole: ``region`` makes any block on demand and
``write`` streams the slide into a pyramidal OME-TIFF (``core.pyramid``), so a 50,000 x
50,000 px slide is written in the memory of a few tiles. The slides say 0.1 um/px, the
shipped network's working pixel size: no resampling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
GLASS = (236, 232, 238)  # plasma-tinted glass, as core.slide.build_mosaic_slide
QUARTER = (240, 320)
PIXEL_SIZE = 0.1


def split_stems(split: str, datasets: Path = DATASETS) -> list[str]:
    rows = (line.split(",") for line in (datasets / "bccd" / "split.csv").read_text().split()[1:])
    return sorted(stem for stem, s in rows if s == split)


def bccd_fields(split: str = "test", n: int | None = None, datasets: Path = DATASETS):
    """(image, white-cell mask) of bccd fields of a split, in stem order."""
    from PIL import Image

    from napari_wbc.core.io import read_image

    out = []
    for stem in split_stems(split, datasets)[:n]:
        image = read_image(datasets / "bccd" / "images" / f"{stem}.jpg").data
        out.append((image, np.array(Image.open(datasets / "bccd" / "labels" / f"{stem}.png")) > 0))
    return out


def _voc_boxes(path: Path) -> list[tuple[str, tuple[int, int, int, int]]]:
    boxes = []
    for obj in re.findall(r"<object>(.*?)</object>", path.read_text(), re.S):
        name = re.search(r"<name>(.*?)</name>", obj).group(1).strip()
        coords = [
            int(float(re.search(f"<{k}>(.*?)</{k}>", obj).group(1))) for k in ("xmin", "ymin", "xmax", "ymax")
        ]
        boxes.append((name, tuple(coords)))
    return boxes


def red_cell_quarters(split: str = "train", margin: int = 30, datasets: Path = DATASETS):
    """Quarters of bccd fields with no white cell within ``margin`` px, and red cells per quarter.

    A quarter qualifies when neither the white-cell mask nor a VOC "WBC" box comes within
    ``margin`` px of it. Red cells are counted by the centres of the VOC "RBC" boxes.
    """
    from PIL import Image
    from scipy import ndimage

    from napari_wbc.core.io import read_image

    qh, qw = QUARTER
    quarters, rbc = [], []
    for stem in split_stems(split, datasets):
        xml = datasets / "bccd" / "annotations_voc" / f"{stem}.xml"
        if not xml.exists():
            continue
        image = read_image(datasets / "bccd" / "images" / f"{stem}.jpg").data
        if image.shape[:2] != (2 * qh, 2 * qw):
            continue
        labels = np.array(Image.open(datasets / "bccd" / "labels" / f"{stem}.png"))
        white = ndimage.binary_dilation(labels > 0, iterations=margin)
        boxes = _voc_boxes(xml)
        for name, (x0, y0, x1, y1) in boxes:
            if name.upper() == "WBC":
                white[max(0, y0 - margin) : y1 + margin, max(0, x0 - margin) : x1 + margin] = True
        centres = [((b[1] + b[3]) / 2, (b[0] + b[2]) / 2) for name, b in boxes if name.upper() == "RBC"]
        for y in (0, qh):
            for x in (0, qw):
                if white[y : y + qh, x : x + qw].any():
                    continue
                quarters.append(np.ascontiguousarray(image[y : y + qh, x : x + qw]))
                rbc.append(sum(y <= cy < y + qh and x <= cx < x + qw for cy, cx in centres))
    return quarters, np.array(rbc)


@dataclass
class SyntheticSlide:
    """A lazily made slide: ``carpet`` (lattice of QUARTER cells, True = red cells) under ``fields``."""

    shape: tuple[int, int]
    fields: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # (y, x, RGB image)
    carpet: np.ndarray | None = None  # (rows, cols) bool over the QUARTER lattice
    quarters: list[np.ndarray] = field(default_factory=list)
    choice: np.ndarray | None = None  # (rows, cols) index into quarters
    flips: np.ndarray | None = None  # (rows, cols) 0..3: none, up-down, left-right, both

    def region(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        out[:] = GLASS
        if self.carpet is not None:
            qh, qw = QUARTER
            for i in range(y0 // qh, min(self.carpet.shape[0], (y1 - 1) // qh + 1)):
                for j in range(x0 // qw, min(self.carpet.shape[1], (x1 - 1) // qw + 1)):
                    if not self.carpet[i, j]:
                        continue
                    q = self.quarters[self.choice[i, j]]
                    f = self.flips[i, j]
                    q = q[:: -1 if f & 1 else 1, :: -1 if f & 2 else 1]
                    self._paste(out, y0, x0, y1, x1, i * qh, j * qw, q)
        for fy, fx, image in self.fields:
            self._paste(out, y0, x0, y1, x1, fy, fx, image)
        return out

    @staticmethod
    def _paste(out, y0, x0, y1, x1, fy, fx, image) -> None:
        a, b = max(y0, fy), min(y1, fy + image.shape[0])
        c, d = max(x0, fx), min(x1, fx + image.shape[1])
        if a < b and c < d:
            out[a - y0 : b - y0, c - x0 : d - x0] = image[a - fy : b - fy, c - fx : d - fx]

    def write(self, path: str | Path, tile: int = 256) -> Path:
        from napari_wbc.core.pyramid import write_pyramid_tiff

        return write_pyramid_tiff(
            path,
            self.region,
            self.shape,
            np.uint8,
            channels=3,
            tile=tile,
            pixel_size=PIXEL_SIZE,
            downsample="mean",
        )


def tile_centred_slide(
    size: int, images: list[np.ndarray], tile: int = 1024, per_side: int = 3
) -> SyntheticSlide:
    """Bare glass with ``per_side``**2 fields, each centred in a tile core of a ``tile`` px grid.

    The fields sit in the same place relative to their tile whatever the slide's size, so
    slides of any size hold the same cells and make the network do the same work.
    """
    n = -(-size // tile)
    index = [int(round((k + 0.5) * n / per_side - 0.5)) for k in range(per_side)]
    fields = []
    for a, r in enumerate(index):
        for b, c in enumerate(index):
            image = images[(a * per_side + b) % len(images)]
            h, w = image.shape[:2]
            fields.append((r * tile + (tile - h) // 2, c * tile + (tile - w) // 2, image))
    return SyntheticSlide((size, size), fields)


def smear_edge_slide(
    size: int,
    quarters: list[np.ndarray],
    rbc: np.ndarray,
    fields: list,
    rbc_per_wbc: float = 700.0,
    carpet_fraction: float = 0.64,
    seed: int = 0,
):
    """A patch of a smear: an ellipse of red-cell monolayer on glass, white cells at blood's density.

    The ellipse covers ``carpet_fraction`` of the patch; the rest is bare glass (the end of
    the smear and the glass around it). White-cell fields (``fields``: (image, mask)) are
    placed at random lattice positions inside it, one field per ``rbc_per_wbc`` red cells of
    the carpet (normal blood: 4-11 x 10^9/L white cells, 4-6 x 10^12/L red cells, about 1
    in 500-1000). Returns the slide and the white-cell pixels it holds.
    """
    rng = np.random.default_rng(seed)
    qh, qw = QUARTER
    rows, cols = -(-size // qh), -(-size // qw)
    cy, cx = (np.arange(rows)[:, None] + 0.5) * qh, (np.arange(cols)[None, :] + 0.5) * qw
    r = np.sqrt(carpet_fraction / np.pi) * size
    carpet = ((cy - size / 2) ** 2 + (cx - size / 2) ** 2) < r * r
    choice = rng.integers(0, len(quarters), (rows, cols))
    flips = rng.integers(0, 4, (rows, cols))
    red_cells = float(rbc[choice[carpet]].sum())
    n_fields = max(1, int(round(red_cells / rbc_per_wbc)))
    placed, taken = [], np.zeros_like(carpet)
    spots = [(i, j) for i in range(rows - 1) for j in range(cols - 1) if carpet[i : i + 2, j : j + 2].all()]
    for k in rng.permutation(len(spots)):
        i, j = spots[k]
        if taken[max(0, i - 1) : i + 3, max(0, j - 1) : j + 3].any():
            continue
        taken[i : i + 2, j : j + 2] = True
        image, mask = fields[len(placed) % len(fields)]
        placed.append((i * qh, j * qw, image, mask))
        if len(placed) == n_fields:
            break
    slide = SyntheticSlide(
        (size, size), [(y, x, im) for y, x, im, _ in placed], carpet, quarters, choice, flips
    )
    info = {
        "carpet_fraction": round(float(carpet.mean()), 3),
        "red_cells": int(red_cells),
        "wbc_fields": len(placed),
        "placed": [(y, x, m) for y, x, _, m in placed],
    }
    return slide, info
