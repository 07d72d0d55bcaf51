"""Run a segmentation network on a smear image.

``segment`` is a generator: it yields progress as ``(done, total, message)`` and returns a
:class:`Segmentation` (class map, cell and nucleus instances, cell types where the model
gives them). The CLI drains it with a terminal progress bar, the widget in a
``thread_worker`` with a napari progress bar; a consumer that stops iterating cancels the
run between steps.

Two kinds of model feed the same result (docs/model-interface.md): semantic models give a
class per pixel, which :func:`~.postprocess.instances_from_classes` splits into cells;
instance models give scored masks per cell, painted by score. A semantic model whose
classes include ``nucleus:<type>`` also types each cell by a majority vote over its nucleus.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from .options import PRECISIONS, Options
from .postprocess import DEFAULT_CELL_DIAMETER_PX, centre_cell, instances_from_classes

Progress = tuple[int, int, str]

# without a pixel size, white cells wider or narrower than this (px) are brought to the
# target width; the network was trained on cells 60-200 px wide and is best in between
AUTO_SCALE_RANGE = (60.0, 125.0)
AUTO_SCALE_TARGET = 105.0
# the bright background (glass, plasma) of the training fields: the 98th percentile of the
# brightest channel lies at 197-255 (bccd ~216, zheng 238-255); an under-exposed field
# whose background is darker than EXPOSURE_FLOOR is brightened to EXPOSURE_TARGET
EXPOSURE_FLOOR = 190.0
EXPOSURE_TARGET = 225.0


@dataclass
class Segmentation:
    classes: np.ndarray  # (H, W) uint8 of the result: 0 background, 1 cytoplasm, 2 nucleus
    cells: np.ndarray  # (H, W) uint32 cell instances
    nuclei: np.ndarray  # (H, W) uint32, nucleus pixels carry their cell's id
    scale: float  # factor the image was resampled by for the network
    network: np.ndarray | None = None  # (H, W) uint8 argmax of the network, before clean-up
    types: dict[int, tuple[str, float]] | None = None  # cell id -> (type, confidence)
    scores: dict[int, float] | None = None  # cell id -> confidence that it is a white cell
    type_probs: dict[int, dict[str, float]] | None = None  # cell id -> classifier's class -> probability


TYPE_PREFIX = "nucleus:"


def type_names(spec) -> list[str]:
    """The cell types a model tells apart (its ``nucleus:<type>`` classes), in class order."""
    return [c[len(TYPE_PREFIX) :] for c in spec.classes if c.startswith(TYPE_PREFIX)]


def collapse_types(prob: np.ndarray) -> np.ndarray:
    """(3, ...) background/cytoplasm/nucleus probabilities from (C, ...) with C >= 3 channels,
    the nucleus being the sum of every nucleus channel (one per cell type)."""
    if prob.shape[0] == 3:
        return prob
    return np.concatenate([prob[:2], prob[2:].sum(0, keepdims=True)])


def assign_types(
    cells: np.ndarray, nuclei: np.ndarray, type_prob: np.ndarray, names: list[str]
) -> dict[int, tuple[str, float]]:
    """Each cell's type: the majority of its nucleus pixels' most likely type, and as its
    confidence the mean probability of that type there (types renormalised to sum to 1)."""
    p = type_prob / np.maximum(type_prob.sum(0, keepdims=True), 1e-8)
    best = p.argmax(0)
    out = {}
    for cell in np.unique(nuclei[nuclei > 0]):
        inside = nuclei == cell
        k = int(np.bincount(best[inside], minlength=len(names)).argmax())
        out[int(cell)] = (names[k], float(p[k][inside].mean()))
    return out


def working_scale(spec, pixel_size: float | None) -> float:
    """Resampling factor from the image's pixel size to the network's working pixel size."""
    if pixel_size is None or spec.pixel_size is None:
        return 1.0
    return float(pixel_size) / float(spec.pixel_size)


def scale_for_cells(width: float | None, spec, pixel_size: float | None) -> float:
    """The network's scale for an image whose white cells are ``width`` px wide (None: none
    found): 1 within ``AUTO_SCALE_RANGE``, else the factor that brings them to
    ``AUTO_SCALE_TARGET``; without cells, the pixel size's :func:`working_scale`."""
    if width is None:
        return working_scale(spec, pixel_size)
    lo, hi = AUTO_SCALE_RANGE
    return 1.0 if lo <= width <= hi else AUTO_SCALE_TARGET / width


def exposure_gain(image: np.ndarray) -> float:
    """Factor that brings an under-exposed field's background up to the training range
    (1.0 for a field that is already in it)."""
    background = float(np.percentile(image.max(axis=2), 98))
    if background >= EXPOSURE_FLOOR or background <= 0:
        return 1.0
    return min(EXPOSURE_TARGET / background, 4.0)


def brighten(image: np.ndarray, gain: float) -> np.ndarray:
    """The image times ``gain`` (:func:`exposure_gain`), clipped; the image itself at 1."""
    if gain == 1.0:
        return image
    return np.clip(np.rint(image.astype(np.float32) * gain), 0, 255).astype(np.uint8)


def _resize(array: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    from skimage.transform import resize

    return resize(
        array, shape, order=order, preserve_range=True, anti_aliasing=order > 0 and shape[0] < array.shape[0]
    ).astype(array.dtype)


def _rescaled(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    if abs(scale - 1.0) <= 1e-3:
        return image
    return _resize(image, (max(8, round(h * scale)), max(8, round(w * scale))), 1)


def predict_probabilities(
    net,
    spec,
    image: np.ndarray,
    device: str = "cpu",
    scale: float = 1.0,
    keep_types: bool = False,
    precision: str = "auto",
) -> np.ndarray:
    """(C, H, W) float32 class probabilities for an (H, W, 3) uint8 image.

    C is 3 (background, cytoplasm, nucleus) unless ``keep_types``, which keeps a typing
    model's one nucleus channel per cell type. ``precision``: see :func:`predict_batch`.
    """
    h, w = image.shape[:2]
    prob = predict_batch(net, spec, [_rescaled(image, scale)], device, keep_types, precision)[0]
    if prob.shape[1:] != (h, w):
        prob = np.stack([_resize(p, (h, w), 1) for p in prob])
    return prob


def to_tensor(net, spec, images: list[np.ndarray], device: str = "cpu"):
    """Equally shaped (h, w, 3) uint8 images as one normalised (B, 3, H, W) tensor, padded
    (reflect) to multiples of the network's ``pad_multiple``."""
    import torch

    from ..models import pad_multiple

    m = pad_multiple(net)
    xs = []
    for image in images:
        x = (image.astype(np.float32) / 255.0 - np.float32(spec.mean)) / np.float32(spec.std)
        ph, pw = (-x.shape[0]) % m, (-x.shape[1]) % m
        mode = "reflect" if min(x.shape[:2]) > max(ph, pw) else "edge"
        xs.append(np.pad(x, ((0, ph), (0, pw), (0, 0)), mode=mode))
    return torch.from_numpy(np.ascontiguousarray(np.stack(xs).transpose(0, 3, 1, 2))).to(device)


def bfloat16(precision: str, device: str) -> bool:
    """Whether the network runs in bfloat16: ``precision`` "bf16", or "auto" on a CUDA GPU
    (float32 elsewhere: the CPU path is the reference)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    return precision == "bf16" or (precision == "auto" and str(device).startswith("cuda"))


def predict_batch(
    net,
    spec,
    images: list[np.ndarray],
    device: str = "cpu",
    keep_types: bool = False,
    precision: str = "auto",
) -> list[np.ndarray]:
    """(C, h, w) float32 probabilities for equally shaped (h, w, 3) uint8 images, in one pass.

    Normalised as the model was trained, padded to the network's multiple, cropped back;
    C = 3 unless ``keep_types`` (see :func:`predict_probabilities`). The batch goes in
    channels-last (as :func:`napari_wbc.models.load_model` lays out a semantic network), in
    bfloat16 autocast where :func:`bfloat16` says so (``precision``).
    """
    import torch

    t = to_tensor(net, spec, images, device).contiguous(memory_format=torch.channels_last)
    kind = torch.device(device).type
    with torch.inference_mode(), torch.autocast(kind, torch.bfloat16, enabled=bfloat16(precision, device)):
        out = net(t).float()
        refuse_non_finite(out, spec)
        prob = torch.softmax(out, 1).cpu().numpy()
    h, w = images[0].shape[:2]
    return [p[:, :h, :w] if keep_types else collapse_types(p[:, :h, :w]) for p in prob]


def refuse_non_finite(output, spec) -> None:
    """A clear error for NaN or infinite network outputs (broken weights, or float16
    overflowing on a GPU), which would otherwise pass for a field without cells."""
    import torch

    if not torch.isfinite(output).all():
        from ..models import BrokenWeightsError

        raise BrokenWeightsError(
            f"the {spec.name} network gave NaN or infinite numbers on this image: its weights are "
            "damaged or overflow on this device; run it on the CPU, or train it anew with `napari-wbc train`"
        )


def detect_cells(
    net, spec, image: np.ndarray, device: str = "cpu", scale: float = 1.0, score_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell and nucleus label images (uint32, image size) from an instance model, and the
    detection score of each cell id (id i: [i - 1])."""
    import torch

    from .instances import paint_detections

    h, w = image.shape[:2]
    work = _rescaled(image, scale)
    with torch.inference_mode():
        det = net.detect(to_tensor(net, spec, [work], device), score_threshold=score_threshold)[0]
    for key in ("scores", "cells", "nuclei"):
        refuse_non_finite(det[key], spec)
    wh, ww = work.shape[:2]
    cells, nuclei, scores = paint_detections(
        det["scores"].float().cpu().numpy(),
        det["cells"][:, :wh, :ww].float().cpu().numpy(),
        det["nuclei"][:, :wh, :ww].float().cpu().numpy(),
        score_threshold=score_threshold,
    )
    if (wh, ww) != (h, w):
        cells, nuclei = _resize(cells, (h, w), 0), _resize(nuclei, (h, w), 0)
    return cells, nuclei, scores


def _classes(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    return np.where(nuclei > 0, 2, np.where(cells > 0, 1, 0)).astype(np.uint8)


def network_pass(
    net, spec, image: np.ndarray, device: str = "cpu", scale: float = 1.0, precision: str = "auto"
):
    """The network on one field, for any kind of model: ``(classes, raw)``, the (H, W) uint8
    class map (0 background, 1 cytoplasm, 2 nucleus) and what the instance step needs:
    (cells, nuclei, scores) from an instance model, (C, H, W) probabilities (one nucleus
    channel per type for a typing model) from a semantic one (``precision``: see
    :func:`predict_batch`)."""
    if spec.kind == "instance":
        cells, nuclei, scores = detect_cells(net, spec, image, device, scale)
        return _classes(cells, nuclei), (cells, nuclei, scores)
    prob = predict_probabilities(net, spec, image, device, scale, keep_types=True, precision=precision)
    return collapse_types(prob).argmax(0).astype(np.uint8), prob


def network_classes(
    net, spec, image: np.ndarray, device: str = "cpu", scale: float = 1.0, precision: str = "auto"
) -> np.ndarray:
    """The class map straight from the network (what validation and auto-scale look at)."""
    return network_pass(net, spec, image, device, scale, precision)[0]


def segment(
    image: np.ndarray,
    net,
    spec,
    options: Options | None = None,
    *,
    classifier=None,
) -> Generator[Progress, None, Segmentation]:
    """Segment one RGB uint8 field: network, then instances. Yields progress, returns result.

    ``options`` (:class:`~.options.Options`; None: the defaults) says how: the device, the
    pixel size, auto-scale, a single-cell crop, the most megapixels; the slide-only ones
    (tiles, halo, batch size, skipping empty tiles) do not apply to a field.

    With ``options.auto_scale`` (the default) the cells themselves set the scale the network
    sees: a first pass at the image's own scale measures how wide the white cells are; when
    they lie outside the width the network sees best (``AUTO_SCALE_RANGE``), the image is
    resampled so that they are ``AUTO_SCALE_TARGET`` px wide and segmented again, which
    handles fields from other magnifications. The pixel size does not change this (it only
    converts px to um in the measurements), so a cell's outline, areas and NCR are the same
    whether a pixel size is given or not, and whichever (:func:`scale_for_cells`); only when
    the first pass finds no white cell does the pixel size choose the scale. Without
    ``auto_scale`` the image is resampled to the network's working pixel size. An
    under-exposed field (background darker than any training field's) is brightened for the
    network first (``exposure_gain``).

    ``options.single_cell``: the image is a single-cell crop (a CellaVision-style gallery
    image, as in the Zheng sets), so only the cell at its centre is kept, as id 1; neighbours
    cut by the crop's edge are dropped.

    ``options.max_megapixels``: before each pass, an image that would be bigger at that
    pass's scale raises an InputError that says why (cells this small, or this pixel size)
    and what to do, instead of running out of memory.

    ``classifier``: (net, spec) of a cell classifier (:func:`.celltypes.load_classifier`);
    it types every cell (and tells which objects are no white cell), in place of a typing
    model's own types.
    """
    options = Options() if options is None else options
    device, pixel_size, auto_scale = options.device, options.pixel_size, options.auto_scale
    max_megapixels = options.max_megapixels
    names = type_names(spec) if classifier is None else []
    scale = 1.0 if auto_scale else working_scale(spec, pixel_size)
    gain = exposure_gain(image)
    if gain != 1.0:
        image = brighten(image, gain)
        yield 0, 4, f"under-exposed field: brightened {gain:.2f}x for the network"
    yield 0, 4, "running the network"
    if max_megapixels is not None:
        _check_working_size(image, scale, max_megapixels, pixel_size=None if auto_scale else pixel_size)
    network, raw = network_pass(net, spec, image, device, scale, options.precision)
    if auto_scale:
        width = typical_cell_width(network)
        scale = scale_for_cells(width, spec, pixel_size)
        if max_megapixels is not None:
            _check_working_size(image, scale, max_megapixels, width, pixel_size, no_cells=width is None)
        if scale != 1.0:
            yield (
                1,
                4,
                (f"white cells are ~{width:.0f} px wide" if width else "no white cell at this scale")
                + f": segmenting again at {scale:.2f}x",
            )
            network, raw = network_pass(net, spec, image, device, scale, options.precision)
    yield 2, 4, "separating cells"
    types = None
    if isinstance(raw, tuple):  # an instance model's cells
        cells, nuclei, kept = raw
        scores = {i + 1: float(v) for i, v in enumerate(kept) if (cells == i + 1).any()}
    else:
        # a typical 10 um white cell in image pixels, when the scale is known or was measured
        diameter = None if scale == 1.0 else DEFAULT_CELL_DIAMETER_PX / scale
        cells, nuclei = instances_from_classes(network, cell_diameter=diameter)
        if names:
            types = assign_types(cells, nuclei, raw[2:], names)
        scores = cell_scores(cells, 1.0 - raw[0])
    if options.single_cell:
        found = len(np.unique(cells[cells > 0]))
        cells, nuclei, types, scores = _centre_cell_only(cells, nuclei, types, scores)
        if found > 1:
            yield 3, 4, f"single-cell crop: kept the centre cell of the {found} found"
    probs = None
    if classifier is not None:
        from .celltypes import classify_cells

        yield 3, 4, "typing cells"
        types, probs = classify_cells(*classifier, image, cells, nuclei, device)
    yield 4, 4, "done"
    return Segmentation(_classes(cells, nuclei), cells, nuclei, scale, network, types, scores, probs)


def _check_working_size(
    image: np.ndarray,
    scale: float,
    max_megapixels: float,
    width: float | None = None,
    pixel_size: float | None = None,
    no_cells: bool = False,
) -> None:
    """An InputError when ``image`` resampled by ``scale`` is over ``max_megapixels``. What set
    the scale says what to do: the white cells' ``width`` (px; a low magnification), else the
    ``pixel_size`` (perhaps a wrong one; ``no_cells``: the first pass found no cell), else
    nothing (the image is that big)."""
    from .io import GB_PER_MEGAPIXEL, InputError

    h, w = (max(8, round(n * scale)) for n in image.shape[:2])
    megapixels = h * w / 1e6
    if megapixels <= max_megapixels:
        return
    if width:
        why = f"its white cells are only ~{width:.0f} px wide (a low magnification), so"
        fix = "crop the field, or segment it in tiles as a whole slide (save it as a pyramidal TIFF)"
    elif pixel_size and scale != 1.0:
        why = f"its pixel size ({pixel_size:g} um/px) means"
        if no_cells:
            why = "no white cell was found at its own scale, and " + why
        fix = "if that pixel size is wrong, give the right one with --pixel-size"
    else:
        why = "at its own scale"
        fix = "crop it, or segment it in tiles as a whole slide (save it as a pyramidal TIFF)"
    raise InputError(
        f"{why} the network would see it at {scale:.2f}x, {w}x{h} px ({megapixels:.0f} MP), over the "
        f"limit of {max_megapixels:g} MP; {fix}, or raise --max-megapixels if this machine has "
        f"~{megapixels * GB_PER_MEGAPIXEL:.0f} GB free"
    )


def _centre_cell_only(cells, nuclei, types, scores):
    """Cells, nuclei, types and scores reduced to the crop's centre cell, renumbered 1."""
    keep = centre_cell(cells)
    cells_out = (cells == keep).astype(np.uint32) if keep else np.zeros_like(cells)
    nuclei_out = ((nuclei == keep) & (nuclei > 0)).astype(np.uint32)

    def only(d):
        return None if d is None else ({1: d[keep]} if keep in d else {})

    return cells_out, nuclei_out, only(types), only(scores)


def cell_scores(cells: np.ndarray, foreground: np.ndarray) -> dict[int, float]:
    """Each cell's mean white-cell probability: its confidence, for ranking (AP)."""
    from scipy import ndimage

    ids = np.unique(cells[cells > 0])
    return {int(i): float(v) for i, v in zip(ids, ndimage.mean(foreground, cells, ids), strict=True)}


def typical_cell_width(network_classes: np.ndarray) -> float | None:
    """Median equivalent diameter (px) of the larger white cells with a nucleus.

    Touching cells are split first (each blob at its own scale), so two cells in contact
    do not pass for one cell twice as wide.
    """
    from scipy import ndimage

    from .postprocess import split_touching

    blobs = split_touching(network_classes > 0, None)
    n = int(blobs.max())
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
