"""The fashion-scenes world wired up for slices and discover: classifier, stand-in backends and vocabulary.

Built only from the world's public functions: `build_world`, the frozen backbone (`load_backbone`, `encode`,
`backbone_transform`), `ExemplarAttributor` / `CompositeGenerator`, and `failmode.head.train_head`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from failmode.backends import GenerationRequest, ImageGenerator
from failmode.discovery.classify import FeatureHeadClassifier
from failmode.discovery.outputs import world_render
from failmode.discovery.slicing import SliceRun, run_slices, vocabulary_kinds
from failmode.errors import UsageError
from failmode.vocab import VocabClass, Vocabulary
from failmode.vocab.vocabulary import DEFAULT_TEMPLATE

log = logging.getLogger(__name__)


class PlainAsCommon(ImageGenerator):
    """Wraps the world's composite generator so a plain class prompt (no context) renders the class's common
    scene: in this world, that is what a photo of the class typically shows (the base rate of discover)."""

    def __init__(self, generator: Any, world: Any) -> None:
        self.inner, self.world = generator, world
        self.ident = f"{generator.ident}; plain prompt -> the class's common scene"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Any]:
        """One image per request; requests without a context get the class's common context."""
        fixed = [replace(r, context=self.world.common_context(r.label)) if not r.context else r for r in requests]
        return self.inner.generate(fixed)


@dataclass
class WorldSetup:
    """A world, its classifier (frozen backbone + linear head trained on the train split) and its stand-ins
    (the generator renders plain prompts on the class's common scene, see `PlainAsCommon`)."""

    world: Any
    classifier: FeatureHeadClassifier
    attributor: Any
    generator: Any
    vocabulary: Vocabulary


def slice_world(ws: WorldSetup, preset: str, seed: int, *, find: str = "debug", check: str | None = "test",
                **options: Any) -> SliceRun:
    """`run_slices` on the world's `find` split, checked on its `check` split (None: not checked); `options` are
    run_slices' params, calibration and min_check_size. The top slices render through the world's composite
    generator, rebuilt on regeneration from `preset` and `seed`."""
    report = run_slices(ws.attributor, ws.classifier, [ws.vocabulary], find=(world_split(ws, find), None),
                        check=None if check is None else (world_split(ws, check), None), **options)
    return SliceRun(report, ws.classifier.ident, ws.world.class_names, "fashion-scenes-slices",
                    vocabulary_kinds([ws.vocabulary]), world_render(ws, preset, seed))


def world_split(ws: WorldSetup, name: str) -> Any:
    """A split of the world by name, or a UsageError listing the splits."""
    if name not in ws.world.splits:
        raise UsageError(f"unknown split {name!r} (known: {', '.join(ws.world.splits)})")
    return ws.world.splits[name]


def world_vocabulary(world: Any) -> Vocabulary:
    """The world's background vocabulary: every context but the class's common one (what the method would list)."""
    classes = [VocabClass(i, name, name, world.vocabulary_contexts(i)) for i, name in enumerate(world.class_names)]
    return Vocabulary(dataset="fashion-scenes", kind="background", version="1", template=DEFAULT_TEMPLATE,
                      provenance={"generator": "world", "prompt": "", "date": "", "post_processing": ""},
                      classes=classes, source=f"world:{world.preset.name}")


def setup_world(preset: str = "concentrated", seed: int = 0, *, per_class: dict[str, int] | None = None,
                image_size: int | None = None, cache_dir: str | Path | None = None, n_exemplars: int = 16,
                epochs: int = 300) -> WorldSetup:
    """Build the world, train the linear head on frozen train features, and make the stand-in backends."""
    from failmode.head import HeadParams, train_head
    from failmode.world import build_world
    from failmode.world.backbone import MODEL_KEY, backbone_transform, encode, load_backbone
    from failmode.world.backends import CompositeGenerator, ExemplarAttributor

    world = build_world(preset, seed, per_class=per_class, image_size=image_size)
    model = load_backbone()
    size = world.preset.image_size
    feature_cache = None if cache_dir is None else Path(cache_dir) / "features"
    train = encode(model, world.splits["train"], size, cache_dir=feature_cache, desc="train features")
    head = train_head(train.features, train.labels, HeadParams(epochs=epochs, seed=seed),
                      num_classes=len(world.class_names))
    classifier = FeatureHeadClassifier(model, head, model_key=MODEL_KEY, transform=backbone_transform(model, size),
                                       num_classes=len(world.class_names), cache_dir=feature_cache,
                                       ident=f"{MODEL_KEY}+linear head (world {world.preset.name}, seed {seed})")
    center = train.features.mean(axis=0).astype(np.float32)
    attributor = ExemplarAttributor(world, model=model, center=center, n_exemplars=n_exemplars, cache_dir=feature_cache)
    return WorldSetup(world, classifier, attributor, PlainAsCommon(CompositeGenerator(world), world), world_vocabulary(world))
