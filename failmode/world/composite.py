"""Paste a Fashion-MNIST object onto a random crop of a scene: the single image-making step of the world.

A gap world's generator also draws from another region of each photo (`region`) and gives its images a rendered
look (`Look`: smoothing, saturation, contrast, tint), so its images differ from the world's photos as Stable
Diffusion's differ from real ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage

#: Pixels darker than this (of 255) are Fashion-MNIST's black background, not the object.
MASK_THRESHOLD = 12
#: Enclosed dark regions up to this many pixels are dark prints of the object; larger ones (a bag's handle) are holes.
MAX_FILLED_HOLE = 12


#: Layout placements: "random" anywhere in the image, "centre" within a quarter of the free margin of the centre.
PLACEMENTS = ("random", "centre")


@dataclass(frozen=True)
class Layout:
    """Ranges the random layout is drawn from: object side / image side, crop side / scene short side; where the
    object goes."""

    object_scale: tuple[float, float] = (0.55, 0.8)
    crop_scale: tuple[float, float] = (0.25, 0.6)
    placement: str = "random"


@dataclass(frozen=True)
class Look:
    """A global rendered look: Gaussian blur (radius in px), colour saturation and contrast factors, an RGB tint
    (per-channel gain). The identity look changes nothing."""

    blur: float = 0.0
    saturation: float = 1.0
    contrast: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def apply(self, image: Image.Image) -> Image.Image:
        """`image` with the look applied (deterministic)."""
        if self.blur > 0:
            image = image.filter(ImageFilter.GaussianBlur(self.blur))
        if self.saturation != 1.0:
            image = ImageEnhance.Color(image).enhance(self.saturation)
        if self.contrast != 1.0:
            image = ImageEnhance.Contrast(image).enhance(self.contrast)
        if tuple(self.tint) != (1.0, 1.0, 1.0):
            arr = np.asarray(image, dtype=np.float32) * np.asarray(self.tint, dtype=np.float32)
            image = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
        return image


def region(scene: np.ndarray, span: tuple[float, float]) -> np.ndarray:
    """The part [lo, hi) (fractions) of a scene photo along its long side; (0, 1) is the whole photo."""
    lo, hi = span
    if (lo, hi) == (0.0, 1.0):
        return scene
    h, w = scene.shape[:2]
    if w >= h:
        return scene[:, round(lo * w):round(hi * w)]
    return scene[round(lo * h):round(hi * h)]


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
    if layout.placement == "centre":
        x = round((width - side) / 2 + (x - (width - side) / 2) / 4)
        y = round((height - side) / 2 + (y - (height - side) / 2) / 4)
    grey = Image.fromarray(np.ascontiguousarray(obj)).resize((side, side), Image.Resampling.BILINEAR)
    alpha = Image.fromarray((object_mask(obj) * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
    background.paste(grey.convert("RGB"), (x, y), alpha)
    return background
