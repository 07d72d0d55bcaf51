"""Training examples for the cell-type classifier, from dataset folders.

Per image of a split, the default segmenter runs as a user would run it; then:

* every reference cell of a known type (``class_labels.csv`` / ``wbc_class_labels.csv``;
  bccd fields whose cells are of two types are left out) is a positive, with the
  reference's masks, and so is the segmented cell that matches it (IoU >= 0.5), with the
  segmenter's masks, so the classifier learns from the outlines it will be given;
* in fully annotated fields (a dataset with ``annotations_voc/``: every white cell has a
  box), every segmented object that matches no reference cell and lies in no WBC box is a
  negative (``not_wbc``), and so are the VOC platelet boxes and a few red-cell boxes, with
  masks made as a segmenter would make them (nucleus = the stained pixels);
* with ``artefacts``, every other such field is segmented once more with a dark field-stop
  frame and glare spots painted in (``add_artefacts``), and what the segmenter then finds
  in them is learned as well: matched cells as positives, the rest as negatives.

Type corrections folders (:mod:`.corrections`: the cells a reviewer typed, with their crops
and masks) are a second source (:func:`correction_examples`): every cell in force is an
example of the type the reviewer gave it, with its field's ruler (the red cells' diameter).

Each example is stored as a crop ``BIG_CONTEXT`` times the cell's side (at the classifier's
resolution or finer, :func:`big_side`, for augmentation) and as the crop the classifier sees
at inference (its ``CROP``, ``CONTEXT``). What the segmenter found in each image is kept as
well (:func:`cached_examples`), so that examples at another crop are cut in seconds.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..models.celltype import CLASSES
from .celltypes import cell_crops, field_ruler, size_cue
from .dataset import NOT_WBC, image_cell_types, list_pairs, load_pair

log = logging.getLogger(__name__)
BIG_CONTEXT = 2.2


def big_side(crop: int, context: float) -> int:
    """Side (px) of the augmentation crop, ``BIG_CONTEXT`` times the cell: at least the
    classifier's own resolution (``crop`` px for ``context`` times the cell), a multiple of 8."""
    return int(np.ceil(crop * BIG_CONTEXT / context / 8) * 8)


def voc_boxes(root: Path, stem: str) -> dict[str, list[tuple[int, int, int, int]]]:
    """Pascal VOC boxes (y0, x0, y1, x1) by object name, where the dataset has them."""
    path = Path(root) / "annotations_voc" / f"{stem}.xml"
    out: dict[str, list] = {}
    if not path.exists():
        return out
    for obj in ET.parse(path).getroot().iter("object"):
        b = obj.find("bndbox")
        if b is None:
            continue
        try:
            x0, y0, x1, y1 = (int(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            continue
        out.setdefault(obj.findtext("name") or "", []).append((y0, x0, y1, x1))
    return out


def red_cell_box_sides(root: Path, stem: str, shape: tuple[int, int]) -> list[int]:
    """The shorter side (px) of each VOC red-cell box of a field of ``shape`` that the frame
    does not cut: what the field's annotation says of its red cells' diameter."""
    h, w = shape
    return [
        min(y1 - y0, x1 - x0)
        for y0, x0, y1, x1 in voc_boxes(root, stem).get("RBC", [])
        if y0 > 2 and x0 > 2 and y1 < h - 2 and x1 < w - 2
    ]


def add_artefacts(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dark field-stop frame at the image edges and a few glare spots, as seen on fields
    from other microscopes."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    r = np.hypot(yy - h / 2 + rng.uniform(-0.1, 0.1) * h, xx - w / 2 + rng.uniform(-0.1, 0.1) * w)
    edge = rng.uniform(0.42, 0.55) * np.hypot(h, w)
    frame = 1 / (1 + np.exp((r - edge) / rng.uniform(3, 12)))
    dark = rng.uniform(0.0, 0.25)  # what is left of the light outside the field stop
    out = image.astype(np.float32) * (dark + (1 - dark) * frame)[..., None]
    for _ in range(rng.integers(1, 4)):
        cy, cx, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, 20)
        spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        out += spot[..., None] * rng.uniform(80, 200) * rng.uniform(0.85, 1.0, 3)
    return np.clip(out, 0, 255).astype(np.uint8)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every label of ``a`` (rows, id-1) with every label of ``b`` (columns)."""
    na, nb = int(a.max()), int(b.max())
    if na == 0 or nb == 0:
        return np.zeros((na, nb))
    inter = np.bincount(a.ravel().astype(np.int64) * (nb + 1) + b.ravel(), minlength=(na + 1) * (nb + 1))
    inter = inter.reshape(na + 1, nb + 1)[1:, 1:].astype(np.float64)
    area_a = np.bincount(a.ravel(), minlength=na + 1)[1:, None]
    area_b = np.bincount(b.ravel(), minlength=nb + 1)[None, 1:]
    return inter / np.maximum(area_a + area_b - inter, 1)


def _box_masks(image: np.ndarray, box, kind: str):
    """Cell and nucleus masks (full size, id 1) for a VOC box, as a segmenter would outline
    the object: an ellipse for the cell, its stained pixels for the nucleus."""
    h, w = image.shape[:2]
    y0, x0, y1, x1 = max(0, box[0]), max(0, box[1]), min(h, box[2]), min(w, box[3])
    if y1 - y0 < 4 or x1 - x0 < 4:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1]
    ry, rx = (y1 - y0) / 2, (x1 - x0) / 2
    inside = ((yy - y0 - ry) / ry) ** 2 + ((xx - x0 - rx) / rx) ** 2 <= 1
    a = image[y0:y1, x0:x1].astype(np.float32)
    stain = (a[..., 0] + a[..., 2]) / 2 - a[..., 1]
    if kind == "Platelets":
        nucleus = inside & (stain >= np.percentile(stain[inside], 40))
    else:  # a red cell: its darkest pixels (overlaps, the pale centre's rim)
        dark = a.sum(-1)
        nucleus = inside & (dark <= np.percentile(dark[inside], 8))
    cells, nuclei = np.zeros((h, w), np.uint32), np.zeros((h, w), np.uint32)
    cells[y0:y1, x0:x1][inside] = 1
    nuclei[y0:y1, x0:x1][nucleus] = 1
    return cells, nuclei


class _Examples:
    def __init__(self, crop: int, context: float):
        self.crop, self.context, self.big = crop, context, big_side(crop, context)
        self.parts: dict[str, list] = {
            k: [] for k in ("big", "big_label", "small", "small_label", "size", "target", "source")
        }

    def add(self, image, cells, nuclei, ids, target: int, red_cell: float | None, source: str):
        if not len(ids):
            return
        big, big_label, width = cell_crops(image, cells, nuclei, ids, self.big, BIG_CONTEXT)
        small, small_label, _ = cell_crops(image, cells, nuclei, ids, self.crop, self.context)
        for key, value in (
            ("big", big),
            ("big_label", big_label),
            ("small", small),
            ("small_label", small_label),
            ("size", size_cue(width, red_cell)),
        ):
            self.parts[key].append(value)
        self.parts["target"].append(np.full(len(ids), target, np.int64))
        self.parts["source"].append(np.array([f"{source}:{i}" for i in ids]))

    def arrays(self) -> dict[str, np.ndarray]:
        empty = {
            "big": (0, self.big, self.big, 3),
            "big_label": (0, self.big, self.big),
            "small": (0, self.crop, self.crop, 3),
            "small_label": (0, self.crop, self.crop),
            "size": (0, 2),
            "target": (0,),
            "source": (0,),
        }
        kinds = {"size": np.float32, "target": np.int64, "source": str}
        return {
            k: np.concatenate(v) if v else np.zeros(empty[k], kinds.get(k, np.uint8))
            for k, v in self.parts.items()
        }


def correction_examples(roots, split: str, crop: int = 64, context: float = 1.5) -> dict[str, np.ndarray]:
    """Classifier examples from type corrections folders: each cell in force in ``split``,
    cut from its saved crop and mask as :func:`.celltypes.cell_crops` cuts it from a field;
    ``source`` is ``<folder>/<field stem>:corrected:<id>``."""
    from PIL import Image

    from .corrections import read_corrections

    examples = _Examples(crop, context)
    for root in map(Path, roots):
        for record in read_corrections(root, split):
            files = record["files"]
            rgb = np.asarray(Image.open(root / files["crop"]).convert("RGB"))
            mask = np.asarray(Image.open(root / files["mask"]))
            cells, nuclei = (mask > 0).astype(np.uint32), (mask == 2).astype(np.uint32)
            stem = Path(str(record.get("source") or record.get("field"))).stem
            examples.add(
                rgb,
                cells,
                nuclei,
                [1],
                CLASSES.index(record["cell_type"]),
                record.get("red_cell_px"),
                f"{root.name}/{stem}:corrected:{record['id']}",
            )
    return examples.arrays()


def collect_examples(
    roots,
    split: str,
    segmenter,
    device: str = "cpu",
    crop: int = 64,
    context: float = 1.5,
    artefacts: bool = True,
    seed: int = 0,
    progress=None,
    segmented: dict | None = None,
) -> dict[str, np.ndarray]:
    """Classifier examples from the ``split`` of each dataset folder (see the module doc).
    ``segmenter`` is (net, spec) of the segmentation model whose cells will be typed.
    ``segmented`` (source -> (cells, nuclei, scale, red-cell diameter)) holds what the
    segmenter found in earlier runs and the field's ruler with those cells left out; what is
    not in it is segmented and measured now and added to it."""
    from .inference import run, segment
    from .options import Options

    net, spec = segmenter
    options = Options(device=device)
    rng = np.random.default_rng(seed)
    examples = _Examples(crop, context)
    segmented = {} if segmented is None else segmented
    jobs = []
    for root in map(Path, roots):
        types = image_cell_types(root)
        complete = (root / "annotations_voc").is_dir()
        for k, pair in enumerate(list_pairs(root, split)):
            jobs.append((root, pair, types.get(pair.stem), complete, False))
            if artefacts and complete and k % 2 == 0:
                jobs.append((root, pair, types.get(pair.stem), complete, True))
    for n, (root, pair, kind, complete, painted) in enumerate(jobs):
        image, label = load_pair(pair)
        if painted:
            image = add_artefacts(image, rng)
        source = f"{root.name}/{pair.stem}" + ("+artefacts" if painted else "")
        if source not in segmented:
            result = run(segment(image, net, spec, options))
            segmented[source] = (result.cells, result.nuclei, result.scale)
        if len(segmented[source]) == 3:  # not measured yet
            segmented[source] = (*segmented[source], field_ruler(image, segmented[source][0]))
        found, found_nuclei, _, ruler = segmented[source]
        ref = ndimage.label(label > 0)[0].astype(np.uint32)
        ref_nuclei = np.where(label == 2, ref, 0).astype(np.uint32)
        iou = _iou_matrix(found, ref)
        boxes = voc_boxes(root, pair.stem)
        target = CLASSES.index(kind) if kind else None
        if target is not None:
            if not painted:
                examples.add(
                    image,
                    ref,
                    ref_nuclei,
                    list(range(1, int(ref.max()) + 1)),
                    target,
                    ruler,
                    source + ":ref",
                )
            matched = [i + 1 for i in range(iou.shape[0]) if iou.shape[1] and iou[i].max() >= 0.5]
            examples.add(image, found, found_nuclei, matched, target, ruler, source + ":seg")
        if complete:
            wbc = np.zeros(label.shape, bool)
            for y0, x0, y1, x1 in boxes.get("WBC", []):
                wbc[y0:y1, x0:x1] = True
            false = []
            for i in range(iou.shape[0]):
                own = found == i + 1
                if (not iou.shape[1] or iou[i].max() < 0.1) and wbc[own].mean() < 0.2:
                    false.append(i + 1)
            examples.add(
                image,
                found,
                found_nuclei,
                false,
                CLASSES.index(NOT_WBC),
                ruler,
                source + ":false",
            )
            if not painted:
                objects = [("Platelets", b) for b in boxes.get("Platelets", [])]
                objects += [("RBC", b) for b in rng.permutation(boxes.get("RBC", []))[:2]]
                for name, box in objects:
                    masks = _box_masks(image, box, name)
                    if masks is not None:
                        examples.add(
                            image,
                            *masks,
                            [1],
                            CLASSES.index(NOT_WBC),
                            ruler,
                            f"{source}:{name.lower()}",
                        )
        if progress:
            progress(n + 1, len(jobs))
    return examples.arrays()


NOT_MEASURED = -1.0  # a kept segmentation whose field's ruler is not measured yet


def _stored_ruler(found: tuple) -> float:
    """The ruler of a kept segmentation as stored: its diameter, NaN for none, or
    ``NOT_MEASURED`` (kept before rulers were, and not used since)."""
    if len(found) < 4:
        return NOT_MEASURED
    return np.nan if found[3] is None else found[3]


def cached_examples(
    out,
    roots,
    split: str,
    segmenter,
    device: str = "cpu",
    crop: int = 64,
    context: float = 1.5,
    progress=None,
) -> dict[str, np.ndarray]:
    """:func:`collect_examples`, kept in ``out/examples_<split>.npz`` for reruns: cut again
    when the data folders (their names and splits), the segmenter's weights or the crop
    differ. What the segmenter found is kept in ``out/segmented_<split>.npz``, per image
    (``<data folder name>/<stem>``), and reused while the segmenter's weights are the same,
    whatever data folders a run takes, so a new crop or another choice of folders costs no
    segmentation of the images already seen, and the files can be copied to another machine."""
    import hashlib
    import json

    from .batch import write_atomic

    def key_of(**extra) -> str:
        # the data folders by name and split, not by path: the cache holds wherever they lie
        what = {
            "roots": sorted((Path(r).name, split_digest(Path(r))) for r in roots),
            "split": split,
            "segmenter": segmenter[1].to_json(),
            **extra,
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def load(path: Path, key: str) -> dict | None:
        if path.exists():
            with np.load(path) as z:
                if str(z["key"]) == key:
                    return {k: z[k] for k in z.files if k != "key"}
        return None

    def save(path: Path, key: str, arrays: dict) -> None:
        def write(p: Path) -> None:
            with open(p, "wb") as f:
                np.savez_compressed(f, key=np.array(key), **arrays)

        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, write)

    def split_digest(root: Path) -> str:
        split_csv = root / "split.csv"
        return hashlib.sha256(split_csv.read_bytes()).hexdigest()[:16] if split_csv.exists() else ""

    out = Path(out)
    key = key_of(crop=crop, context=context, big=[big_side(crop, context), BIG_CONTEXT], size_cue="red cells")
    arrays = load(out / f"examples_{split}.npz", key)
    if arrays is not None:
        return arrays
    # per image: any choice of data folders reuses it (one folder's name names one dataset)
    seg_key = hashlib.sha256(json.dumps({"segmenter": segmenter[1].to_json()}, sort_keys=True).encode())
    seg_key, seg_path = seg_key.hexdigest()[:16], out / f"segmented_{split}.npz"
    stored = load(seg_path, seg_key) or {}
    segmented = {}
    for n, source in enumerate(stored.get("sources", [])):
        found = (stored[f"cells_{n}"], stored[f"nuclei_{n}"], float(stored["scales"][n]))
        ruler = float(stored["rulers"][n]) if "rulers" in stored else NOT_MEASURED
        if ruler != NOT_MEASURED:  # NaN: the field has no ruler
            found = (*found, None if np.isnan(ruler) else ruler)
        segmented[str(source)] = found
    known = {k: len(v) for k, v in segmented.items()}
    arrays = collect_examples(
        roots, split, segmenter, device, crop, context, progress=progress, segmented=segmented
    )
    if {k: len(v) for k, v in segmented.items()} != known:
        sources = list(segmented)
        parts = {
            "sources": np.array(sources),
            "scales": np.array([segmented[k][2] for k in sources]),
            "rulers": np.array([_stored_ruler(segmented[k]) for k in sources]),
        }
        for n, k in enumerate(sources):
            parts[f"cells_{n}"], parts[f"nuclei_{n}"] = (
                np.asarray(a, np.uint16 if a.max(initial=0) < 2**16 else np.uint32) for a in segmented[k][:2]
            )
        save(seg_path, seg_key, parts)
    save(out / f"examples_{split}.npz", key, arrays)
    return arrays
