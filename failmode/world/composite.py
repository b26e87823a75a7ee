"""Paste a Fashion-MNIST object onto a random crop of a scene: the single image-making step of the world."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

#: Pixels darker than this (of 255) are Fashion-MNIST's black background, not the object.
MASK_THRESHOLD = 12
#: Enclosed dark regions up to this many pixels are dark prints of the object; larger ones (a bag's handle) are holes.
MAX_FILLED_HOLE = 12


@dataclass(frozen=True)
class Layout:
    """Ranges the random layout is drawn from: object side / image side, crop side / scene short side."""

    object_scale: tuple[float, float] = (0.55, 0.8)
    crop_scale: tuple[float, float] = (0.25, 0.6)


def object_mask(obj: np.ndarray) -> np.ndarray:
    """Alpha in [0, 1] of a 28x28 Fashion-MNIST image: its non-black pixels plus small enclosed dark prints."""
    visible = obj > MASK_THRESHOLD
    holes, n = ndimage.label(ndimage.binary_fill_holes(visible) & ~visible)
    sizes = np.bincount(holes.ravel(), minlength=n + 1)
    small = (sizes <= MAX_FILLED_HOLE) & (np.arange(n + 1) > 0)
    return (visible | small[holes]).astype(np.float32)


def _crop(scene: np.ndarray, width: int, height: int, scale: float, rng: np.random.Generator) -> Image.Image:
    h, w = scene.shape[:2]
    side = scale * min(h, w)
    cw = max(8, min(w, round(side * width / max(width, height))))
    ch = max(8, min(h, round(side * height / max(width, height))))
    x = int(rng.integers(0, w - cw + 1))
    y = int(rng.integers(0, h - ch + 1))
    crop = Image.fromarray(np.ascontiguousarray(scene[y:y + ch, x:x + cw]))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop.resize((width, height), Image.Resampling.BILINEAR)


def composite(obj: np.ndarray, scene: np.ndarray, rng: np.random.Generator, width: int, height: int,
              layout: Layout = Layout()) -> Image.Image:
    """An RGB image: a random crop of `scene` with the grey object `obj` [28, 28] pasted at a random place and size.

    Every random choice comes from `rng`, in a fixed order, so the same generator state gives the same pixels.
    """
    background = _crop(scene, width, height, float(rng.uniform(*layout.crop_scale)), rng)
    side = max(4, round(float(rng.uniform(*layout.object_scale)) * min(width, height)))
    x = int(rng.integers(0, width - side + 1))
    y = int(rng.integers(0, height - side + 1))
    grey = Image.fromarray(np.ascontiguousarray(obj)).resize((side, side), Image.Resampling.BILINEAR)
    alpha = Image.fromarray((object_mask(obj) * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
    background.paste(grey.convert("RGB"), (x, y), alpha)
    return background
