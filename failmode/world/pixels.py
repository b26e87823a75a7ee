"""An attributor built on pixels only, registered as "pixels": no classifier weights, no learnt features.

An image's descriptor is the square root of its joint RGB histogram (6 bins per channel) next to the square root
of its gradient histogram (8 orientations x 4 magnitudes), both normalised. A context's prototype is the mean
centred descriptor of the world's exemplar crops of its scene (`exemplar_images`: the generator's photo region in
a gap world); images are centred on the exemplars' mean and matched by cosine similarity. Like CLIP it is a model
other than the classifier, so its agreement with the true context says nothing about the classifier's features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from failmode.backends import Attributor, BackendContext
from failmode.data.sources import ImageSource
from failmode.errors import ValidationError
from failmode.progress import bar
from failmode.world.backends import exemplar_images, from_dataset, normalise_rows, resolve_world
from failmode.world.fashion import FASHION_CLASSES
from failmode.world.world import WORLD_NAME, World

#: bins per RGB channel of the colour histogram
COLOUR_BINS = 6
#: gradient orientation bins over [0, pi) and magnitude bin edges (grey levels in [0, 1] per pixel)
ORIENTATION_BINS = 8
MAGNITUDE_EDGES = (0.02, 0.06, 0.15)


def describe(image: Image.Image) -> np.ndarray:
    """The pixel descriptor of one RGB image (float32 [COLOUR_BINS**3 + ORIENTATION_BINS * 4])."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    q = np.minimum((a * COLOUR_BINS).astype(np.int64), COLOUR_BINS - 1)
    colour = np.bincount(((q[..., 0] * COLOUR_BINS + q[..., 1]) * COLOUR_BINS + q[..., 2]).ravel(),
                         minlength=COLOUR_BINS ** 3).astype(np.float32)
    grey = a.mean(axis=2)
    gx, gy = np.diff(grey, axis=1)[:-1], np.diff(grey, axis=0)[:, :-1]
    orientation = np.minimum(((np.arctan2(gy, gx) % np.pi) / np.pi * ORIENTATION_BINS).astype(np.int64),
                             ORIENTATION_BINS - 1)
    magnitude = np.digitize(np.hypot(gx, gy), MAGNITUDE_EDGES)
    texture = np.bincount((magnitude * ORIENTATION_BINS + orientation).ravel(),
                          minlength=ORIENTATION_BINS * (len(MAGNITUDE_EDGES) + 1)).astype(np.float32)
    return np.concatenate([np.sqrt(colour / colour.sum()), np.sqrt(texture / texture.sum())])


def describe_all(source: ImageSource, indices: Sequence[int], desc: str = "pixel descriptors") -> np.ndarray:
    """Descriptors [len(indices), D] of `source[indices]`."""
    out = []
    with bar(desc, total=len(indices), unit="img") as b:
        for i in indices:
            out.append(describe(source.image(int(i))))
            b.update(1)
    return np.stack(out) if out else np.zeros((0, COLOUR_BINS ** 3 + ORIENTATION_BINS * 4), np.float32)


class PixelAttributor(Attributor):
    """Stand-in for CLIP that uses no classifier weights: nearest centred context prototype of pixel descriptors."""

    def __init__(self, world: World | None = None, *, dataset: str | None = None, n_exemplars: int = 48,
                 preset: str = "concentrated", seed: int = 0) -> None:
        if n_exemplars < 1:
            raise ValidationError(f"pixels attributor: n_exemplars must be >= 1, not {n_exemplars}")
        self.world = resolve_world(world, preset, seed, dataset)
        self.n_exemplars = int(n_exemplars)
        self._center: np.ndarray | None = None
        self._prototypes: np.ndarray | None = None
        self.ident = (f"pixels:rgb{COLOUR_BINS}^3+grad{ORIENTATION_BINS}x{len(MAGNITUDE_EDGES) + 1}/"
                      f"{n_exemplars} crops per scene, centred on the exemplars "
                      "(stand-in for CLIP; no classifier weights)")

    @classmethod
    def from_context(cls, context: BackendContext, **options: Any) -> PixelAttributor:
        """The world of the run's dataset (an exported world folder), unless `options` name one."""
        return cls(**{**from_dataset(context), **options})

    def prototypes(self) -> np.ndarray:
        """L2-normalised context prototypes [n_scenes, D] (computed once)."""
        if self._prototypes is None:
            ex = exemplar_images(self.world, self.n_exemplars)
            d = describe_all(ex, range(len(ex)), "exemplar descriptors")
            self._center = d.mean(axis=0)
            groups = normalise_rows(d - self._center).reshape(len(self.world.scenes), self.n_exemplars, -1).mean(axis=1)
            self._prototypes = normalise_rows(groups)
        return self._prototypes

    def encode_images(self, source: ImageSource, indices: Sequence[int]) -> np.ndarray:
        """Centred, L2-normalised pixel descriptors of `source[indices]`."""
        self.prototypes()
        assert self._center is not None
        return normalise_rows(describe_all(source, indices) - self._center)

    def encode_contexts(self, class_name: str, contexts: Sequence[str]) -> np.ndarray:
        """The prototypes of `contexts` (class-agnostic: `class_name` only has to be a world class)."""
        if class_name not in FASHION_CLASSES:
            raise ValidationError(f"{class_name!r} is not a {WORLD_NAME} class ({', '.join(FASHION_CLASSES)})")
        return self.prototypes()[[self.world.scene_index(c) for c in contexts]]
