"""Offline stand-ins for the method's two heavy backends, registered as "composite" and "exemplar".

`CompositeGenerator` stands in for Stable Diffusion: the image for "a photo of a {class} {context}" is a
Fashion-MNIST object of that class from the world's generator pool (never in train / debug / test), chosen by the
request's seed, pasted on a seeded crop of the named context's scene; a plain class prompt (the class-only
baseline, no context) shows the class where this world's photos of it usually are: on its common scene.
`ExemplarAttributor` stands in for CLIP: a context is embedded as the mean frozen feature of exemplar crops of its
scene, images by their frozen feature, both after subtracting the mean training feature. Both say "stand-in" in
their `ident`, which every output records. In a gap world the generator crops another region of each photo than the
splits, with its own layout and rendered look; exemplars come from that region too (what CLIP learnt from is not
the test photos). `failmode.world.pixels.PixelAttributor` is the attributor that uses no classifier weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from failmode.backends import Attributor, BackendContext, GenerationRequest, ImageGenerator
from failmode.data.sources import ImageSource, ListSource
from failmode.errors import ValidationError
from failmode.generation.plan import BASELINE_KIND
from failmode.world.composite import composite
from failmode.world.fashion import FASHION_CLASSES, load_fashion_mnist
from failmode.world.world import OBJECT_RANGES, WORLD_NAME, World, build_world

log = logging.getLogger(__name__)

#: Seed-stream tag of exemplar crops (kept apart from the world's split streams 1-4).
EXEMPLAR_STREAM = 5
#: Request contexts that mean "no context" (the generation stage's class-only baseline writes "none").
NO_CONTEXT = ("", "none")


def resolve_world(world: World | None, preset: str, seed: int, dataset: str | None = None) -> World:
    """The given world, else the one an exported dataset folder holds, else the preset's world at `seed`."""
    if world is not None:
        return world
    if dataset is not None:
        from failmode.world.export import world_of

        return world_of(dataset)
    return build_world(preset, seed)


def from_dataset(context: BackendContext) -> dict[str, Any]:
    """What a world backend takes of a run's context: its dataset (an exported world folder), when it has one."""
    return {"dataset": context.dataset} if context.dataset is not None else {}


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Each row of `x` scaled to unit L2 norm (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class CompositeGenerator(ImageGenerator):
    """Stand-in for Stable Diffusion: pastes a pool object of the request's class on its context's scene."""

    license = "other"
    license_note = ("The images were made by failmode's composite stand-in generator, not by a diffusion model: "
                    "Fashion-MNIST garments (MIT License) pasted on scene photos of the Debian packages "
                    "plasma-workspace-wallpapers (GPL-2+) and mate-backgrounds (GPL-2+ or CC BY-SA 4.0, photo by "
                    "photo, as each package's copyright file states) and on two texture photos shipped with "
                    "scikit-image (brick and gravel, from CC0Textures, CC0). The images carry the terms of those "
                    "sources.")

    def __init__(self, world: World | None = None, *, dataset: str | None = None, preset: str = "concentrated",
                 seed: int = 0) -> None:
        self.world = resolve_world(world, preset, seed, dataset)
        gap = " from photo regions the splits do not use, with a rendered look" if self.world.preset.gap else ""
        self.ident = (f"composite:{WORLD_NAME}/{self.world.preset.name} "
                      f"(stand-in for Stable Diffusion: Fashion-MNIST pool object pasted on the named scene{gap})")

    @classmethod
    def from_context(cls, context: BackendContext, **options: Any) -> CompositeGenerator:
        """The world of the run's dataset (an exported world folder), unless `options` name one."""
        return cls(**{**from_dataset(context), **options})

    def _object(self, label: int, rng: np.random.Generator) -> np.ndarray:
        if label not in self.world.pool:
            raise ValidationError(f"label {label} is not a {WORLD_NAME} class (0..{len(FASHION_CLASSES) - 1})")
        images, _ = load_fashion_mnist(OBJECT_RANGES["pool"][0])
        pool = self.world.pool[label]
        return images[pool[int(rng.integers(len(pool)))]]

    def render(self, request: GenerationRequest) -> Image.Image:
        """The image of one request; it depends on the request only (its seed, label, context and size).

        A request without a context (class-only baseline) renders on the class's common scene."""
        if request.context_kind == BASELINE_KIND or request.context in NO_CONTEXT:
            scene = int(self.world.common_scene[int(request.label)])
        else:
            scene = self.world.scene_index(request.context)
        rng = np.random.default_rng(int(request.seed))
        obj = self._object(int(request.label), rng)
        return self.render_object(obj, scene, rng, int(request.width), int(request.height))

    def render_object(self, obj: np.ndarray, scene: int, rng: np.random.Generator, width: int,
                      height: int) -> Image.Image:
        """Object `obj` [28, 28] on scene `scene` as this generator renders it: its photo region, layout and look."""
        image = composite(obj, self.world.generator_pixels(scene), rng, width, height, self.world.generator_layout)
        return self.world.generator_look.apply(image)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Image.Image]:
        """One RGB image per request, in order."""
        return [self.render(r) for r in requests]


def exemplar_images(world: World, n_exemplars: int) -> ListSource:
    """`n_exemplars` seeded crops per scene (scene-major; label = scene index), each with a pool object of a random
    class pasted on in the world's layout, cropped from the generator's photo region (no rendered look)."""
    images, labels = [], []
    fm_images, _ = load_fashion_mnist(OBJECT_RANGES["pool"][0])
    size = world.preset.image_size
    for s in range(len(world.scenes)):
        for j in range(n_exemplars):
            rng = np.random.default_rng([world.seed, EXEMPLAR_STREAM, s, j])
            pool = world.pool[int(rng.integers(len(world.pool)))]
            obj = fm_images[pool[int(rng.integers(len(pool)))]]
            images.append(composite(obj, world.generator_pixels(s), rng, size, size, world.preset.layout))
            labels.append(s)
    names = [s.name for s in world.scenes]
    return ListSource(images, labels, names, f"world-exemplars:{world.key}:{n_exemplars}")


class ExemplarAttributor(Attributor):
    """Stand-in for CLIP: nearest context prototype in the frozen feature space, after centring.

    A context's prototype is the mean feature of `n_exemplars` seeded crops of its scene, each with a pool object of
    a random class pasted on (so the object's share of the feature averages out); the class name is not used.
    Built from an exported world folder (`dataset`, as `failmode build` passes it), `center="train"` centres on
    the mean feature of its train split.
    """

    def __init__(self, world: World | None = None, *, dataset: str | None = None,
                 model: torch.nn.Module | None = None, center: np.ndarray | str | None = None, n_exemplars: int = 48,
                 cache_dir: str | Path | None = None, preset: str = "concentrated", seed: int = 0) -> None:
        from failmode.world.backbone import load_backbone

        self.world = resolve_world(world, preset, seed, dataset)
        self.model = model if model is not None else load_backbone()
        self.cache_dir = cache_dir
        if isinstance(center, str):
            if center != "train" or dataset is None:
                raise ValidationError(f"exemplar center must be an array or 'train' (with a dataset), not {center!r}")
            center = self._train_mean(dataset)
        self.center = None if center is None else np.asarray(center, dtype=np.float32)
        self.n_exemplars = int(n_exemplars)
        self._prototypes: np.ndarray | None = None
        centred = "centred on the mean training feature" if self.center is not None else "uncentred"
        self.ident = (f"exemplar:tf_efficientnet_lite0@efficientnet-lite0-pypi/{n_exemplars} crops per scene, "
                      f"{centred} (stand-in for CLIP)")

    @classmethod
    def from_context(cls, context: BackendContext, **options: Any) -> ExemplarAttributor:
        """The world of the run's dataset and its feature cache folder, unless `options` set them."""
        cache = {"cache_dir": context.cache_dir} if context.cache_dir is not None else {}
        return cls(**{**from_dataset(context), **cache, **options})

    def _train_mean(self, dataset: str) -> np.ndarray:
        """The mean frozen feature of the dataset's train split (mining's cached features when it ran first)."""
        from failmode.data.sources import open_source
        from failmode.world.backbone import encode

        train = open_source(dataset, "train")
        return encode(self.model, train, self.world.preset.image_size, np.arange(len(train)), cache_dir=self.cache_dir,
                      desc="train features").features.mean(axis=0)

    def _embed(self, source: ImageSource, indices: Sequence[int] | None, desc: str) -> np.ndarray:
        from failmode.world.backbone import encode

        feats = encode(self.model, source, self.world.preset.image_size, indices, cache_dir=self.cache_dir,
                       desc=desc).features
        if self.center is not None:
            feats = feats - self.center
        return normalise_rows(feats.astype(np.float32))

    def exemplars(self) -> ListSource:
        """The exemplar images: `n_exemplars` per scene, scene-major; label = scene index."""
        return exemplar_images(self.world, self.n_exemplars)

    def prototypes(self) -> np.ndarray:
        """L2-normalised context prototypes [n_scenes, D] (computed once)."""
        if self._prototypes is None:
            emb = self._embed(self.exemplars(), None, "exemplars")
            groups = emb.reshape(len(self.world.scenes), self.n_exemplars, -1).mean(axis=1)
            self._prototypes = normalise_rows(groups)
        return self._prototypes

    def encode_images(self, source: ImageSource, indices: Sequence[int]) -> np.ndarray:
        """Centred, L2-normalised frozen features of `source[indices]`."""
        return self._embed(source, indices, "attribution features")

    def encode_contexts(self, class_name: str, contexts: Sequence[str]) -> np.ndarray:
        """The prototypes of `contexts` (class-agnostic: `class_name` only has to be a world class)."""
        if class_name not in FASHION_CLASSES:
            raise ValidationError(f"{class_name!r} is not a {WORLD_NAME} class ({', '.join(FASHION_CLASSES)})")
        protos = self.prototypes()
        return protos[[self.world.scene_index(c) for c in contexts]]
