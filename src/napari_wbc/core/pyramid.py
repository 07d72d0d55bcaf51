"""Write pyramidal (multi-resolution) tiled OME-TIFF files tile by tile, in bounded memory.

Level 0 comes from a function that makes any tile; each coarser level is halved from the
one before, through a chunked zarr store on disk, so no level is ever held whole. Levels
are SubIFDs of the first page (tifffile, QuPath, napari readers see one multiscale image).
The file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

Region = Callable[[int, int, int, int], "np.ndarray | None"]


def level_shapes(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """Level shapes, halving (rounded up) until the image fits in one tile."""
    shapes = [tuple(int(s) for s in shape)]
    while max(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def halve(block: np.ndarray, mode: str) -> np.ndarray:
    """Half-resolution block: 2x2 mean for images, every other pixel for labels."""
    if mode == "nearest":
        return block[::2, ::2]
    h, w = block.shape[:2]
    if h % 2 or w % 2:
        pad = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (block.ndim - 2)
        block = np.pad(block, pad, mode="edge")
    h, w = block.shape[:2]
    mean = block.reshape(h // 2, 2, w // 2, 2, *block.shape[2:]).mean((1, 3), dtype=np.float32)
    return mean.round().astype(block.dtype)


def write_pyramid_tiff(
    path: str | Path,
    region: Region,
    shape: tuple[int, int],
    dtype,
    channels: int = 0,
    tile: int = 256,
    pixel_size: float | None = None,
    downsample: str = "mean",
    compression: str = "zlib",
) -> Path:
    """Write ``region(y0, x0, y1, x1)`` (level-0 blocks; None = all zero) as a pyramidal OME-TIFF.

    ``channels`` 0 for a single plane (labels), 3 for RGB. ``downsample`` "mean" for images,
    "nearest" for labels (ids stay ids).
    """
    import tifffile
    import zarr

    path = Path(path)
    dtype = np.dtype(dtype)
    shapes = level_shapes(shape, tile)
    extra = (channels,) if channels else ()
    tmp = path.with_name(f".{path.name}.tmp")
    kwargs = {"photometric": "rgb" if channels == 3 else "minisblack", "compression": compression}
    metadata = {"axes": "YXS" if channels else "YX"}
    if pixel_size:
        metadata.update(
            PhysicalSizeX=pixel_size, PhysicalSizeXUnit="µm", PhysicalSizeY=pixel_size, PhysicalSizeYUnit="µm"
        )
    with tempfile.TemporaryDirectory(prefix=".pyramid-", dir=path.parent) as work:
        stores = [None] + [
            zarr.create_array(
                store=os.path.join(work, str(k)),
                shape=s + extra,
                chunks=(tile, tile) + extra,
                dtype=dtype,
                fill_value=0,
            )
            for k, s in enumerate(shapes[1:], start=1)
        ]

        def tiles(k: int):
            h, w = shapes[k]
            for y in range(0, h, tile):
                for x in range(0, w, tile):
                    y1, x1 = min(h, y + tile), min(w, x + tile)
                    if k == 0:
                        block = region(y, x, y1, x1)
                    else:
                        block = stores[k][y:y1, x:x1]
                        block = block if block.any() else None
                    if block is not None and k + 1 < len(shapes):
                        half = halve(block, downsample)
                        stores[k + 1][y // 2 : y // 2 + half.shape[0], x // 2 : x // 2 + half.shape[1]] = half
                    if block is None and y == x == 0:  # tifffile learns the tiles' type from the first
                        block = np.zeros((y1, x1) + extra, dtype)
                    yield block

        try:
            # ome=True: tifffile >= 2026.5 prefers kind="ome", which older versions lack
            with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
                for k, (h, w) in enumerate(shapes):
                    res = {}
                    if pixel_size:
                        px = pixel_size * 2**k
                        res = {"resolution": (1e4 / px, 1e4 / px), "resolutionunit": "CENTIMETER"}
                    tif.write(
                        tiles(k),
                        shape=(h, w) + extra,
                        dtype=dtype,
                        tile=(tile, tile),
                        subifds=len(shapes) - 1 if k == 0 else None,
                        subfiletype=1 if k else 0,
                        metadata=metadata if k == 0 else None,
                        **res,
                        **kwargs,
                    )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path
