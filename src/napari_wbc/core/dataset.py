"""Training pairs on disk in the layout of ``../shared/datasets``.

A dataset folder holds ``images/<stem>.png|.jpg``, ``labels/<stem>.png`` (uint8 index
mask: 0 background, 1 cytoplasm, 2 nucleus) and ``split.csv`` (``stem,split`` with split
in train/val/test). Folders without ``split.csv`` put every pair in ``train``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Pair:
    dataset: str
    stem: str
    image: Path
    label: Path
    split: str


def list_pairs(root: str | Path, split: str | None = None) -> list[Pair]:
    """Every (image, label) pair of a dataset folder, optionally of one split."""
    root = Path(root)
    if not (root / "images").is_dir() or not (root / "labels").is_dir():
        raise FileNotFoundError(
            f"{root} is not a dataset folder: it needs images/ and labels/ "
            "(see the README of the datasets)"
        )
    splits: dict[str, str] = {}
    if (root / "split.csv").exists():
        with open(root / "split.csv", newline="") as f:
            splits = {row["stem"]: row["split"] for row in csv.DictReader(f)}
    pairs = []
    for image in sorted((root / "images").iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        label = root / "labels" / f"{image.stem}.png"
        if not label.exists():
            continue
        s = splits.get(image.stem, "train")
        if split is None or s == split:
            pairs.append(Pair(root.name, image.stem, image, label, s))
    return pairs


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """The RGB uint8 image and its uint8 class mask."""
    from skimage.io import imread

    image = read_image(pair.image).data
    label = np.asarray(imread(pair.label))
    if label.ndim == 3:
        label = label[..., 0]
    if label.shape != image.shape[:2]:
        raise ValueError(f"{pair.label}: label shape {label.shape} != image {image.shape[:2]}")
    return image, label.astype(np.uint8)
