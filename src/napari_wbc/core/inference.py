"""Run a segmentation network on a smear image.

``segment`` is a generator: it yields progress as ``(done, total, message)`` and returns a
:class:`Segmentation` (class map, cell and nucleus instances). The CLI drains it with a
terminal progress bar, the widget in a ``thread_worker`` with a napari progress bar; a
consumer that stops iterating cancels the run between steps.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from .postprocess import DEFAULT_CELL_DIAMETER_PX, instances_from_classes

Progress = tuple[int, int, str]

# without a pixel size, white cells wider or narrower than this (px) are brought to the
# target width; the network was trained on cells 60-200 px wide and is best in between
AUTO_SCALE_RANGE = (60.0, 125.0)
AUTO_SCALE_TARGET = 105.0


@dataclass
class Segmentation:
    classes: np.ndarray  # (H, W) uint8 of the result: 0 background, 1 cytoplasm, 2 nucleus
    cells: np.ndarray  # (H, W) uint32 cell instances
    nuclei: np.ndarray  # (H, W) uint32, nucleus pixels carry their cell's id
    scale: float  # factor the image was resampled by for the network
    network: np.ndarray | None = None  # (H, W) uint8 argmax of the network, before clean-up


def working_scale(spec, pixel_size: float | None) -> float:
    """Resampling factor from the image's pixel size to the network's working pixel size."""
    if pixel_size is None or spec.pixel_size is None:
        return 1.0
    return float(pixel_size) / float(spec.pixel_size)


def _resize(array: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    from skimage.transform import resize

    return resize(array, shape, order=order, preserve_range=True, anti_aliasing=order > 0 and
                  shape[0] < array.shape[0]).astype(array.dtype)


def predict_probabilities(net, spec, image: np.ndarray, device: str = "cpu",
                          scale: float = 1.0) -> np.ndarray:
    """(C, H, W) float32 class probabilities for an (H, W, 3) uint8 image."""
    h, w = image.shape[:2]
    work = image
    if abs(scale - 1.0) > 1e-3:
        work = _resize(image, (max(8, round(h * scale)), max(8, round(w * scale))), 1)
    prob = predict_batch(net, spec, [work], device)[0]
    if prob.shape[1:] != (h, w):
        prob = np.stack([_resize(p, (h, w), 1) for p in prob])
    return prob


def predict_batch(net, spec, images: list[np.ndarray], device: str = "cpu") -> list[np.ndarray]:
    """(C, h, w) float32 probabilities for equally shaped (h, w, 3) uint8 images, in one pass.

    Normalised as the model was trained, padded (reflect) to multiples of 8, cropped back.
    """
    import torch

    xs = []
    for image in images:
        x = (image.astype(np.float32) / 255.0 - np.float32(spec.mean)) / np.float32(spec.std)
        ph, pw = (-x.shape[0]) % 8, (-x.shape[1]) % 8
        xs.append(np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(x.shape[:2]) > 8 else "edge"))
    t = torch.from_numpy(np.ascontiguousarray(np.stack(xs).transpose(0, 3, 1, 2))).to(device)
    with torch.inference_mode():
        prob = torch.softmax(net(t).float(), 1).cpu().numpy()
    h, w = images[0].shape[:2]
    return [p[:, :h, :w] for p in prob]


def segment(image: np.ndarray, net, spec, device: str = "cpu", pixel_size: float | None = None,
            auto_scale: bool = True) -> Generator[Progress, None, Segmentation]:
    """Segment one RGB uint8 field: network, then instances. Yields progress, returns result.

    With a pixel size the image is resampled to the network's working pixel size. Without
    one and with ``auto_scale``, a first pass measures how wide the white cells are; when
    they lie outside the width the network sees best (``AUTO_SCALE_RANGE``), the image is
    resampled so that they are ``AUTO_SCALE_TARGET`` px wide and segmented again, which
    handles fields from other magnifications.
    """
    scale = working_scale(spec, pixel_size)
    yield 0, 4, "running the network"
    prob = predict_probabilities(net, spec, image, device, scale)
    if pixel_size is None and auto_scale:
        width = typical_cell_width(prob.argmax(0))
        lo, hi = AUTO_SCALE_RANGE
        if width is not None and not lo <= width <= hi:
            scale = AUTO_SCALE_TARGET / width
            yield 1, 4, f"white cells are ~{width:.0f} px wide: segmenting again at {scale:.2f}x"
            prob = predict_probabilities(net, spec, image, device, scale)
    yield 2, 4, "separating cells"
    network = prob.argmax(0).astype(np.uint8)
    # a typical 10 um white cell in image pixels, when the scale is known or was measured
    diameter = None if scale == 1.0 else DEFAULT_CELL_DIAMETER_PX / scale
    cells, nuclei = instances_from_classes(network, cell_diameter=diameter)
    classes = np.where(nuclei > 0, 2, np.where(cells > 0, 1, 0)).astype(np.uint8)
    yield 4, 4, "done"
    return Segmentation(classes, cells, nuclei, scale, network)


def typical_cell_width(network_classes: np.ndarray) -> float | None:
    """Median equivalent diameter (px) of the larger white-cell blobs with a nucleus."""
    from scipy import ndimage

    blobs, n = ndimage.label(network_classes > 0)
    if n == 0:
        return None
    index = np.arange(1, n + 1)
    area = ndimage.sum_labels(np.ones_like(blobs), blobs, index)
    nucleus = ndimage.sum_labels(network_classes == 2, blobs, index)
    ok = (nucleus > 0.02 * area) & (area >= 0.3 * area.max()) & (area >= 200)
    if not ok.any():
        return None
    return float(np.median(np.sqrt(4 * area[ok] / np.pi)))


def run(gen: Generator, progress=None):
    """Drain a progress generator, calling ``progress(done, total, message)``; return its value."""
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(*step)
