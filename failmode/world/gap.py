"""How far the generator's images are from the world's photos: a linear probe on the classifier's frozen features.

Pairs of images of the same held-out objects (the generator pool's, in no split) on the same scene: one as the
world's photos show it (its photo region and layout), one as the generator renders it. A 2-way linear head is fit on
the pairs of half the objects and its accuracy at telling generated from real is measured on the other half's
(`gap_probe_acc`): about 0.5 means the model cannot see the difference, 1.0 that every generated image is told apart
(a probe on CLIP features tells Stable Diffusion images from photos about that well).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from failmode.data.sources import ListSource
from failmode.errors import ValidationError
from failmode.head import HeadParams, accuracy, train_head
from failmode.world.backends import CompositeGenerator
from failmode.world.composite import composite
from failmode.world.fashion import load_fashion_mnist
from failmode.world.world import OBJECT_RANGES, World

#: Seed-stream tag of the probe's pairs (apart from the world's split streams 1-4 and the exemplars' 5).
GAP_STREAM = 6
#: the probe head's recipe (full-batch SGD on standardised features)
PROBE_HEAD = HeadParams(epochs=300)


@dataclass(frozen=True)
class GapProbe:
    """The probe's result: held-out accuracy at telling generated from real, and what it was measured on."""

    gap_probe_acc: float
    n_fit: int  # images the probe was fit on (half real, half generated)
    n_eval: int  # held-out images it was scored on
    features: str  # the frozen features' model key
    fit_objects: tuple[int, ...]  # Fashion-MNIST indices of the objects of each half (disjoint)
    eval_objects: tuple[int, ...]

    def record(self) -> dict[str, Any]:
        """What results.json holds (the object lists left out)."""
        return {k: v for k, v in asdict(self).items() if not k.endswith("_objects")}


def probe_pairs(world: World, per_class: int = 80) -> tuple[ListSource, np.ndarray, np.ndarray]:
    """(images, is_generated [2N], object index [2N]): for `per_class` distinct pool objects of each class, on a
    seeded scene, the world's photo then the generator's image."""
    gen = CompositeGenerator(world)
    images_fm, _ = load_fashion_mnist(OBJECT_RANGES["pool"][0])
    size = world.preset.image_size
    images, generated, objects = [], [], []
    for c, pool in sorted(world.pool.items()):
        if per_class > len(pool):
            raise ValidationError(f"gap probe: {per_class} objects per class asked, the pool has {len(pool)}")
        picked = np.random.default_rng([world.seed, GAP_STREAM, c]).choice(pool, per_class, replace=False)
        for j, obj in enumerate(picked):
            rng = np.random.default_rng([world.seed, GAP_STREAM, c, j])
            scene = int(rng.integers(len(world.scenes)))
            images.append(composite(images_fm[obj], world.split_pixels(scene), rng, size, size, world.preset.layout))
            images.append(gen.render_object(images_fm[obj], scene, rng, size, size))
            generated += [0, 1]
            objects += [int(obj), int(obj)]
    source = ListSource(images, generated, ["real", "generated"], f"gap-probe:{world.key}:{per_class}")
    return source, np.asarray(generated), np.asarray(objects)


def measure_gap(world: World, model: torch.nn.Module | None = None, *, per_class: int = 80,
                cache_dir: str | Path | None = None) -> GapProbe:
    """The held-out accuracy of a linear probe on the frozen features telling the generator's images from the
    world's photos (module docstring); objects of the fit and held-out halves are disjoint."""
    from failmode.world.backbone import MODEL_KEY, encode, load_backbone

    if per_class < 2:
        raise ValidationError(f"gap probe: per_class must be >= 2 (one object per half), not {per_class}")
    source, y, objects = probe_pairs(world, per_class)
    feats = encode(model if model is not None else load_backbone(), source, world.preset.image_size,
                   cache_dir=cache_dir, desc="gap probe features").features.astype(np.float32)
    pair = np.arange(len(y)) // 2
    fit = pair % 2 == 0  # alternate objects of each class: the halves share no object
    mu, sd = feats[fit].mean(axis=0), feats[fit].std(axis=0) + 1e-6
    x = (feats - mu) / sd
    head = train_head(x[fit], y[fit], PROBE_HEAD, num_classes=2, device="cpu")
    acc = accuracy(head, x[~fit], y[~fit])
    return GapProbe(round(float(acc), 4), int(fit.sum()), int((~fit).sum()), MODEL_KEY,
                    tuple(sorted(set(objects[fit].tolist()))), tuple(sorted(set(objects[~fit].tolist()))))
