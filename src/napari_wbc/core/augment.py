"""Augmentations for smear patches: geometry, scale, elastic, stain, blur, noise.

One geometric warp per sample: scale, rotation, flip, an elastic displacement and the
crop are folded into a single coordinate map, so the image is resampled once
(bilinear) and the label once (nearest). Colour augmentations jitter the stain in
haematoxylin-eosin-DAB space, then brightness, contrast, gamma and saturation, so the
network sees stains, lamps and cameras other than those of the training sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class AugmentConfig:
    size: int = 192
    scale: tuple[float, float] = (0.7, 1.5)  # zoom range (log-uniform), relative to native
    rotate: bool = True
    rotation: float = 180.0  # largest rotation, degrees (WCSegNet: 40)
    shear: float = 0.0  # largest shear factor (WCSegNet: 0.2)
    shift: float = 0.25  # largest shift of the patch centre, as a fraction of the patch (WCSegNet: 0.2)
    elastic_p: float = 0.3
    elastic_alpha: float = 6.0  # displacement in px
    stain_p: float = 0.8
    stain_scale: float = 0.25  # each of H, E, DAB scaled by 1 +- this (0.4 covers a 1.4x haematoxylin)
    blur_p: float = 0.2
    noise_p: float = 0.2
    gray_p: float = 0.03
    focus_p: float = 0.8  # probability that the patch is centred near a white cell
    centred: bool = False  # the patch is centred on the image's centre (a crop around one cell)


def parse_overrides(items: list[str]) -> dict:
    """``["rotation=40", "scale=0.8,1.2", "rotate=false"]`` as AugmentConfig overrides,
    each value converted to its field's type; a ValueError names a bad key or value."""
    from dataclasses import fields

    kinds = {f.name: type(getattr(AugmentConfig(), f.name)) for f in fields(AugmentConfig)}
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in kinds or key == "size":
            raise ValueError(
                f"augmentation {item!r}: expected KEY=VALUE with KEY one of "
                + ", ".join(k for k in kinds if k != "size")
                + " (the patch size is --patch)"
            )
        kind = kinds[key]
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1", "yes")
            elif kind is tuple:
                value = tuple(float(v) for v in text.split(","))
                if len(value) != 2:
                    raise ValueError(text)
            else:
                value = kind(text)
        except ValueError:
            raise ValueError(
                f"augmentation {item!r}: {text!r} is not a {kind.__name__}"
                + (" of two numbers, e.g. 0.8,1.2" if kind is tuple else "")
            ) from None
        out[key] = value
    return out


def _coordinates(shape_in, label, cfg: AugmentConfig, rng: np.random.Generator, scale_range):
    h, w = shape_in
    size = cfg.size
    zoom = float(np.exp(rng.uniform(*np.log(scale_range))))
    if not cfg.rotate:
        angle = 0.0
    elif cfg.rotation >= 180:  # any angle
        angle = rng.uniform(0, 2 * np.pi)
    else:
        angle = np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation))
    flip = rng.random() < 0.5
    fg = np.flatnonzero(label.ravel() > 0)
    if cfg.centred:
        jitter = cfg.shift * size / zoom
        cy, cx = h / 2 + rng.uniform(-jitter, jitter), w / 2 + rng.uniform(-jitter, jitter)
    elif fg.size and rng.random() < cfg.focus_p:
        idx = fg[rng.integers(fg.size)]
        cy, cx = divmod(int(idx), w)
        jitter = cfg.shift * size / zoom
        cy += rng.uniform(-jitter, jitter)
        cx += rng.uniform(-jitter, jitter)
    else:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy -= size / 2
    xx -= size / 2
    if flip:
        xx = -xx
    if cfg.shear:
        xx = xx + rng.uniform(-cfg.shear, cfg.shear) * yy
    if rng.random() < cfg.elastic_p:
        coarse = rng.normal(0, cfg.elastic_alpha, (2, 5, 5))
        dy, dx = (ndimage.zoom(c, size / 5, order=3)[:size, :size] for c in coarse)
        yy, xx = yy + dy, xx + dx
    c, s = np.cos(angle), np.sin(angle)
    sy = (c * yy - s * xx) / zoom + cy
    sx = (s * yy + c * xx) / zoom + cx
    return np.stack([sy, sx])


def _stain(image: np.ndarray, rng: np.random.Generator, scale: float = 0.25) -> np.ndarray:
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(image)
    hed = hed * rng.uniform(1 - scale, 1 + scale, 3) + rng.uniform(-0.04, 0.04, 3)
    return np.clip(hed2rgb(hed), 0, 1).astype(np.float32)


def augment(
    image: np.ndarray,
    label: np.ndarray,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    scale_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A random (size, size, 3) float32 patch in 0..1 and its (size, size) int64 label."""
    coords = _coordinates(image.shape[:2], label, cfg, rng, scale_range or cfg.scale)
    img = image.astype(np.float32) / 255.0
    out = np.stack(
        [ndimage.map_coordinates(img[..., k], coords, order=1, mode="mirror") for k in range(3)], -1
    )
    lab = ndimage.map_coordinates(label, coords, order=0, mode="mirror")
    if rng.random() < cfg.stain_p:
        out = _stain(out, rng, cfg.stain_scale)
    # lamp and camera: brightness, contrast, gamma, saturation
    out = out * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.8, 1.2) + mean
    out = np.clip(out, 0, 1) ** np.exp(rng.uniform(-0.3, 0.3))
    gray = out.mean(-1, keepdims=True)
    out = gray + (out - gray) * (0.0 if rng.random() < cfg.gray_p else rng.uniform(0.7, 1.3))
    if rng.random() < cfg.blur_p:
        sigma = rng.uniform(0.5, 1.8)
        out = ndimage.gaussian_filter(out, (sigma, sigma, 0))
    if rng.random() < cfg.noise_p:
        out = out + rng.normal(0, rng.uniform(0.005, 0.03), out.shape)
    return np.clip(out, 0, 1).astype(np.float32), lab.astype(np.int64)
