"""How the shipped (or given) model holds up on smears unlike its training data.

Accuracy is also judged on smears from other labs, microscopes, stains and
magnifications. This benchmark takes the test splits and changes them the way another
lab's images differ: magnification (the field resampled to half size or 1.6x, labels with
it), stain (haematoxylin and eosin amounts changed in H&E-DAB space), exposure, focus,
JPEG compression and a grayscale camera. Each changed split is written as a dataset
folder and scored by ``evaluate_dataset``, no pixel size given, so the pipeline's own
scale estimate has to cope with the magnification changes.

Usage: python bench/robustness.py [--datasets zheng_d1 zheng_d2 bccd] [--max-images 30]
       [--conditions none half ...] [--flip-average] [--classifier-weights DIR]
Prints a Markdown table (pipeline Dice cell / nucleus %, count exact, cell-type accuracy of the
whole pipeline) per condition.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _resample(image, label, factor):
    from skimage.transform import resize

    h, w = label.shape
    shape = (round(h * factor), round(w * factor))
    image = resize(image, shape, order=1, preserve_range=True, anti_aliasing=factor < 1)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), resize(
        label, shape, order=0, preserve_range=True, anti_aliasing=False
    ).astype(np.uint8)


def _stain(image, haematoxylin, eosin):
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(image)
    hed[..., 0] *= haematoxylin
    hed[..., 1] *= eosin
    return np.clip(np.rint(hed2rgb(hed) * 255), 0, 255).astype(np.uint8)


def _jpeg(image, quality):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _gray(image):
    from skimage.color import rgb2gray

    g = np.rint(rgb2gray(image) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _blur(image, sigma):
    from scipy import ndimage

    return ndimage.gaussian_filter(image, (sigma, sigma, 0))


def _artefacts(image, label):
    from napari_wbc.core.celltype_data import add_artefacts

    seed = int(image[::37, ::41].sum()) % 2**32  # the same image gets the same frame and glare
    return add_artefacts(image, np.random.default_rng(seed)), label


# name: (what it stands for, function of (image, label) -> (image, label))
CONDITIONS = {
    "none": ("the test split as it is", lambda i, lab: (i, lab)),
    "half": ("half the magnification (field resampled to 0.5x)", lambda i, lab: _resample(i, lab, 0.5)),
    "1.6x": ("1.6x the magnification", lambda i, lab: _resample(i, lab, 1.6)),
    "hema+": ("stain: 1.4x haematoxylin, 0.7x eosin", lambda i, lab: (_stain(i, 1.4, 0.7), lab)),
    "hema-": ("stain: 0.7x haematoxylin, 1.3x eosin", lambda i, lab: (_stain(i, 0.7, 1.3), lab)),
    "dim": ("under-exposed: intensities x0.6", lambda i, lab: ((i * 0.6).astype(np.uint8), lab)),
    "blur": ("out of focus: Gaussian blur, sigma 1.5 px", lambda i, lab: (_blur(i, 1.5), lab)),
    "jpeg": ("JPEG quality 30", lambda i, lab: (_jpeg(i, 30), lab)),
    "gray": ("grayscale camera", lambda i, lab: (_gray(i), lab)),
    "artefacts": ("dark field-stop frame at the edges and glare spots", _artefacts),
}


def changed_split(dataset: Path, condition: str, out: Path, max_images: int | None) -> Path:
    """The test split of ``dataset`` changed by ``condition``, as a dataset folder."""
    from skimage.io import imsave

    from napari_wbc.core.dataset import list_pairs, load_pair

    change = CONDITIONS[condition][1]
    root = out / f"{dataset.name}-{condition}"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    stems = []
    for pair in list_pairs(dataset, "test")[:max_images]:
        image, label = change(*load_pair(pair))
        imsave(root / "images" / f"{pair.stem}.png", image, check_contrast=False)
        imsave(root / "labels" / f"{pair.stem}.png", label, check_contrast=False)
        stems.append(pair.stem)
    (root / "split.csv").write_text("stem,split\n" + "".join(f"{s},test\n" for s in stems))
    for types in ("class_labels.csv", "wbc_class_labels.csv"):  # the cell types go along
        if (dataset / types).exists():
            (root / types).write_text((dataset / types).read_text())
    return root


def main() -> None:
    from napari_wbc.core.evaluate import evaluate_dataset

    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--weights", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--datasets", nargs="+", default=["zheng_d1", "zheng_d2", "bccd"])
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    p.add_argument("--max-images", type=int, default=30, help="first N test images of each split")
    p.add_argument("--flip-average", action="store_true")
    p.add_argument(
        "--classifier-weights", default=None, help="a classifier weights folder (default: shipped)"
    )
    args = p.parse_args()
    names = args.datasets
    heads = [f"{n}: Dice cell / nucleus, count exact, type accuracy" for n in names]
    print("| condition | " + " | ".join(heads) + " |")
    print("|---" * (len(names) + 1) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for condition in args.conditions:
            cells = []
            for name in names:
                root = changed_split(DATASETS / name, condition, Path(tmp), args.max_images)
                r = evaluate_dataset(
                    root,
                    "test",
                    args.model,
                    args.weights,
                    args.device,
                    flip_average=args.flip_average,
                    classifier_weights=args.classifier_weights,
                )
                m = r["metrics"]
                types = r.get("types", {}).get("accuracy")
                cells.append(
                    f"{100 * m['cell']['dice']:.1f} / {100 * m['nucleus']['dice']:.1f}, "
                    f"{100 * r['count']['exact']:.0f}%, " + ("–" if types is None else f"{100 * types:.0f}%")
                )
            print(f"| {condition}: {CONDITIONS[condition][0]} | " + " | ".join(cells) + " |", flush=True)
    print(
        f"\n{args.max_images} first test images per split; weights {r['weights']} "
        f"(sha256 {r['weights_sha256'][:16]}...), device {r['device']}, flip-averaged {r['flip_average']}"
        + (f"; classifier sha256 {r['classifier']['weights_sha256'][:16]}..." if r.get("classifier") else "")
    )


if __name__ == "__main__":
    main()
