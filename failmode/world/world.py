"""Build a seeded fashion-scenes world from a preset (JSON data): train / debug / test splits and a generator pool.

Objects come from disjoint parts of Fashion-MNIST: train split objects from its train images [0, 30000), debug
from [30000, 45000), the generator pool (the composite generator's objects) from [45000, 60000), test from its
test images. Each image's context (scene) is drawn per the preset and recorded, so ground truth is known.
Images are rendered on demand from (object, scene, seed); nothing is stored but those three numbers.

A preset with a `gap` section is a gap world: the splits crop one region of each scene photo and the generator
(with the attributors' exemplars) another, disjoint one, and the generator's images get their own layout and a
rendered look (`failmode.world.composite.Look`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from failmode.data.sources import ImageSource
from failmode.errors import UsageError, ValidationError
from failmode.io import read_json, stable_hash
from failmode.world.composite import PLACEMENTS, Layout, Look, composite, region
from failmode.world.fashion import FASHION_CLASSES, load_fashion_mnist
from failmode.world.scenes import Scene, load_scenes, scene_pixels

log = logging.getLogger(__name__)

WORLD_NAME = "fashion-scenes"
#: Which Fashion-MNIST split and index range each world split draws its objects from.
OBJECT_RANGES: dict[str, tuple[str, int, int]] = {
    "train": ("train", 0, 30000),
    "debug": ("train", 30000, 45000),
    "pool": ("train", 45000, 60000),
    "test": ("test", 0, 10000),
}
SPLIT_CODES = {"train": 1, "debug": 2, "test": 3, "pool": 4}
UNCOMMON_POLICIES = ("listed", "all_others")


@dataclass(frozen=True)
class Gap:
    """How a gap world's generator differs from its photos: the photo regions (fractions of each scene photo's long
    side) the splits and the generator crop from, the generator's layout and its rendered look."""

    world_region: tuple[float, float] = (0.0, 1.0)
    generator_region: tuple[float, float] = (0.0, 1.0)
    layout: Layout | None = None  # the generator's layout; None: the world's
    look: Look = Look()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, recorded in results (the preset file's `gap` section)."""
        out: dict[str, Any] = {"world_region": list(self.world_region),
                               "generator_region": list(self.generator_region),
                               "look": {"blur": self.look.blur, "saturation": self.look.saturation,
                                        "contrast": self.look.contrast, "tint": list(self.look.tint)}}
        if self.layout is not None:
            out["layout"] = _layout_dict(self.layout)
        return out


def _layout_dict(layout: Layout) -> dict[str, Any]:
    out: dict[str, Any] = {"object_scale": list(layout.object_scale), "crop_scale": list(layout.crop_scale)}
    if layout.placement != "random":
        out["placement"] = layout.placement
    return out


def _layout(doc: dict[str, Any]) -> Layout:
    return Layout(tuple(doc.get("object_scale", Layout.object_scale)),  # type: ignore[arg-type]
                  tuple(doc.get("crop_scale", Layout.crop_scale)),  # type: ignore[arg-type]
                  str(doc.get("placement", "random")))


def _gap(doc: dict[str, Any]) -> Gap:
    look = doc.get("look", {})
    return Gap(world_region=tuple(float(v) for v in doc["world_region"]),  # type: ignore[arg-type]
               generator_region=tuple(float(v) for v in doc["generator_region"]),  # type: ignore[arg-type]
               layout=_layout(doc["layout"]) if "layout" in doc else None,
               look=Look(float(look.get("blur", 0.0)), float(look.get("saturation", 1.0)),
                         float(look.get("contrast", 1.0)),
                         tuple(float(v) for v in look.get("tint", (1.0, 1.0, 1.0)))))  # type: ignore[arg-type]


@dataclass(frozen=True)
class WorldPreset:
    """A world regime, read from `failmode/world/data/presets/<name>.json`."""

    name: str
    description: str
    image_size: int
    per_class: dict[str, int]
    train_common_fraction: float
    eval_uncommon_fraction: float
    uncommon_policy: str
    common: dict[str, str]
    uncommon: dict[str, list[str]] = field(default_factory=dict)
    layout: Layout = Layout()
    gap: Gap | None = None
    attributor: str = "exemplar"  # the attributor `failmode demo` uses on this world unless told otherwise

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, recorded in results (and hashed into the world's key)."""
        out = {"name": self.name, "image_size": self.image_size, "per_class": dict(self.per_class),
               "train_common_fraction": self.train_common_fraction,
               "eval_uncommon_fraction": self.eval_uncommon_fraction, "uncommon_policy": self.uncommon_policy,
               "common": dict(self.common), "uncommon": {k: list(v) for k, v in self.uncommon.items()},
               "layout": _layout_dict(self.layout)}
        if self.gap is not None:
            out["gap"] = self.gap.to_dict()
        return out


def _presets_dir() -> Path:
    return Path(str(resources.files("failmode.world") / "data" / "presets"))


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in _presets_dir().glob("*.json"))


def load_preset(name_or_path: str | Path) -> WorldPreset:
    """A shipped preset by name ("concentrated", "diffuse") or a preset JSON file by path; validated (one-line
    ValidationError naming the file and what is wrong)."""
    path = Path(name_or_path)
    if not path.suffix and os.sep not in str(name_or_path):
        if str(name_or_path) not in list_presets():
            raise UsageError(f"unknown world {name_or_path!r} (known: {', '.join(list_presets())})")
        path = _presets_dir() / f"{name_or_path}.json"
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != "failmode-world/1":
        raise ValidationError(f"{path}: format must be 'failmode-world/1'")
    return preset_from_doc(doc, path)


def preset_from_doc(doc: dict[str, Any], where: object) -> WorldPreset:
    """A world preset from its JSON object (a preset file's, or the `preset` an export records), validated."""
    path = where
    try:
        lay = doc.get("layout", {})
        preset = WorldPreset(
            name=doc["name"], description=doc.get("description", ""), image_size=int(doc["image_size"]),
            per_class={k: int(v) for k, v in doc["per_class"].items()},
            train_common_fraction=float(doc["train_common_fraction"]),
            eval_uncommon_fraction=float(doc["eval_uncommon_fraction"]), uncommon_policy=doc["uncommon_policy"],
            common=dict(doc["common"]), uncommon={k: list(v) for k, v in doc.get("uncommon", {}).items()},
            layout=_layout(lay), gap=_gap(doc["gap"]) if "gap" in doc else None,
            attributor=str(doc.get("attributor", "exemplar")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValidationError(f"{path}: malformed world preset ({type(e).__name__}: {e})") from None
    _check_preset(preset, path)
    return preset


def is_shipped(p: WorldPreset) -> bool:
    """True when `p` is a shipped world preset (by name and content; sizes aside), so its name rebuilds it."""
    if p.name not in list_presets():
        return False
    sizes = ("per_class", "image_size")
    mine, shipped = p.to_dict(), load_preset(p.name).to_dict()
    return {k: v for k, v in mine.items() if k not in sizes} == {k: v for k, v in shipped.items() if k not in sizes}


def _check_preset(p: WorldPreset, where: object) -> None:
    names = {s.name for s in load_scenes()}
    if sorted(p.common) != sorted(FASHION_CLASSES):
        raise ValidationError(f"{where}: 'common' must name every class ({', '.join(FASHION_CLASSES)})")
    if p.uncommon_policy not in UNCOMMON_POLICIES:
        raise ValidationError(f"{where}: uncommon_policy must be one of {', '.join(UNCOMMON_POLICIES)}")
    if p.uncommon_policy == "listed" and sorted(p.uncommon) != sorted(FASHION_CLASSES):
        raise ValidationError(f"{where}: policy 'listed' needs an 'uncommon' list for every class")
    for cls, scene in p.common.items():
        listed = p.uncommon.get(cls, [])
        unknown = sorted({scene, *listed} - names)
        if unknown:
            raise ValidationError(f"{where}: unknown scene(s) {', '.join(unknown)} for class {cls!r}")
        if scene in listed:
            raise ValidationError(f"{where}: class {cls!r} lists its common scene {scene!r} as uncommon")
    for key in ("train", "debug", "test"):
        if p.per_class.get(key, 0) < 1:
            raise ValidationError(f"{where}: per_class.{key} must be >= 1")
    if not (0 <= p.train_common_fraction <= 1 and 0 <= p.eval_uncommon_fraction <= 1):
        raise ValidationError(f"{where}: fractions must lie in [0, 1]")
    for key, lay in (("layout", p.layout), ("gap.layout", p.gap.layout if p.gap else None)):
        if lay is not None and lay.placement not in PLACEMENTS:
            raise ValidationError(f"{where}: {key}.placement must be one of {', '.join(PLACEMENTS)}")
    if p.gap is not None:
        a, b = p.gap.world_region, p.gap.generator_region
        if not all(len(r) == 2 and 0 <= r[0] < r[1] <= 1 for r in (a, b)):
            raise ValidationError(f"{where}: gap regions must be [lo, hi] with 0 <= lo < hi <= 1")
        if a[0] < b[1] and b[0] < a[1]:
            raise ValidationError(f"{where}: gap.world_region {list(a)} and gap.generator_region {list(b)} overlap")
        lk = p.gap.look
        if lk.blur < 0 or lk.saturation < 0 or lk.contrast < 0 or len(lk.tint) != 3 or min(lk.tint) < 0:
            raise ValidationError(f"{where}: gap.look needs blur, saturation, contrast >= 0 and 3 tint gains >= 0")


class WorldSource(ImageSource):
    """One split of a world, rendered on demand: image i is object `objects[i]` on scene `scenes[i]`."""

    def __init__(self, world: World, split: str, objects: np.ndarray, labels: np.ndarray, scenes: np.ndarray) -> None:
        self.world, self.split = world, split
        self.objects = np.asarray(objects, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.scenes = np.asarray(scenes, dtype=np.int64)
        self.class_names = list(FASHION_CLASSES)
        self.ids = [f"{split}-{i:06d}" for i in range(len(self.labels))]
        key = stable_hash([world.key, split, self.objects.tolist(), self.scenes.tolist()])
        self.ident = f"world:{WORLD_NAME}/{world.preset.name}@seed{world.seed}:{split}:{key}"

    def image(self, i: int) -> Image.Image:
        fm_split = OBJECT_RANGES[self.split][0]
        images, _ = load_fashion_mnist(fm_split)
        rng = np.random.default_rng([self.world.seed, SPLIT_CODES[self.split], int(i)])
        size = self.world.preset.image_size
        return composite(images[self.objects[i]], self.world.split_pixels(int(self.scenes[i])), rng, size, size,
                         self.world.preset.layout)

    def contexts(self) -> list[str]:
        """The ground-truth context phrase of every image."""
        return [self.world.scenes[s].context for s in self.scenes]

    def is_uncommon(self) -> np.ndarray:
        """Boolean [N]: the image's scene is not its class's common scene."""
        return self.scenes != self.world.common_scene[self.labels]


@dataclass
class World:
    """A seeded world: its preset, scenes, per-class common / uncommon scenes, splits and generator pool."""

    preset: WorldPreset
    seed: int
    scenes: list[Scene]
    common_scene: np.ndarray
    uncommon_scenes: list[list[int]]
    pool: dict[int, np.ndarray] = field(default_factory=dict)
    splits: dict[str, WorldSource] = field(default_factory=dict)
    key: str = ""

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return list(FASHION_CLASSES)

    def scene_index(self, context_or_name: str) -> int:
        """Index of the scene whose context phrase (or short name) is `context_or_name`."""
        for i, s in enumerate(self.scenes):
            if context_or_name in (s.context, s.name):
                return i
        raise ValidationError(f"unknown context {context_or_name!r} in world {WORLD_NAME} "
                              f"(known: {', '.join(s.context for s in self.scenes)})")

    def split_pixels(self, scene: int) -> np.ndarray:
        """The pixels of scene `scene` that the train / debug / test images are cropped from."""
        gap = self.preset.gap
        return region(scene_pixels(self.scenes[scene]), gap.world_region if gap else (0.0, 1.0))

    def generator_pixels(self, scene: int) -> np.ndarray:
        """The pixels of scene `scene` that the generator and the attributors' exemplars crop from (in a gap world
        disjoint from `split_pixels`; else the same)."""
        gap = self.preset.gap
        return region(scene_pixels(self.scenes[scene]), gap.generator_region if gap else (0.0, 1.0))

    @property
    def generator_layout(self) -> Layout:
        """The layout of the generator's images (a gap world's own, else the world's)."""
        gap = self.preset.gap
        return gap.layout if gap is not None and gap.layout is not None else self.preset.layout

    @property
    def generator_look(self) -> Look:
        """The rendered look of the generator's images (the identity outside gap worlds)."""
        return self.preset.gap.look if self.preset.gap is not None else Look()

    def common_context(self, label: int) -> str:
        """The context phrase of class `label`'s common scene."""
        return self.scenes[int(self.common_scene[label])].context

    def vocabulary_contexts(self, label: int) -> list[str]:
        """Every context but the class's common one (what the shipped vocabulary lists for it)."""
        return [s.context for i, s in enumerate(self.scenes) if i != self.common_scene[label]]


def _sample_objects(split: str, per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    fm_split, lo, hi = OBJECT_RANGES[split]
    _, labels = load_fashion_mnist(fm_split)
    objects, out_labels = [], []
    for c in range(len(FASHION_CLASSES)):
        candidates = lo + np.flatnonzero(labels[lo:hi] == c)
        if per_class > len(candidates):
            raise ValidationError(f"{split}: {per_class} images per class asked, only {len(candidates)} available")
        objects.append(np.sort(rng.choice(candidates, per_class, replace=False)))
        out_labels.append(np.full(per_class, c))
    return np.concatenate(objects), np.concatenate(out_labels)


def _sample_scenes(world: World, labels: np.ndarray, split: str, rng: np.random.Generator) -> np.ndarray:
    p = world.preset
    n_scenes = len(world.scenes)
    scenes = np.empty(len(labels), dtype=np.int64)
    for i, c in enumerate(labels):
        common = int(world.common_scene[c])
        others = [s for s in range(n_scenes) if s != common]
        if split == "train":
            scenes[i] = common if rng.random() < p.train_common_fraction else int(rng.choice(others))
        else:
            scenes[i] = int(rng.choice(world.uncommon_scenes[c])) if rng.random() < p.eval_uncommon_fraction else common
    return scenes


def build_world(preset: str | Path | WorldPreset = "concentrated", seed: int = 0,
                per_class: dict[str, int] | None = None, image_size: int | None = None) -> World:
    """A seeded world; `per_class` ({"train": n, ...}) and `image_size` override the preset's (small test worlds)."""
    p = preset if isinstance(preset, WorldPreset) else load_preset(preset)
    if per_class or image_size:
        p = WorldPreset(**{**p.__dict__, "per_class": {**p.per_class, **(per_class or {})},
                           "image_size": image_size or p.image_size})
        _check_preset(p, f"world {p.name}")
    scenes = load_scenes()
    index = {s.name: i for i, s in enumerate(scenes)}
    common = np.array([index[p.common[c]] for c in FASHION_CLASSES], dtype=np.int64)
    if p.uncommon_policy == "listed":
        uncommon = [[index[s] for s in p.uncommon[c]] for c in FASHION_CLASSES]
    else:
        uncommon = [[i for i in range(len(scenes)) if i != common[c]] for c in range(len(FASHION_CLASSES))]
    world = World(p, int(seed), scenes, common, uncommon)
    world.key = stable_hash([WORLD_NAME, p.to_dict(), seed, [s.__dict__ for s in scenes]])
    for split in ("train", "debug", "test"):
        rng = np.random.default_rng([int(seed), SPLIT_CODES[split], 0])
        objects, labels = _sample_objects(split, p.per_class[split], rng)
        world.splits[split] = WorldSource(world, split, objects, labels, _sample_scenes(world, labels, split, rng))
    _, pool_labels = load_fashion_mnist("train")
    lo, hi = OBJECT_RANGES["pool"][1:]
    world.pool = {c: lo + np.flatnonzero(pool_labels[lo:hi] == c) for c in range(len(FASHION_CLASSES))}
    log.info("world %s/%s seed %d: %s", WORLD_NAME, p.name, seed,
             ", ".join(f"{k} {len(v)}" for k, v in world.splits.items()))
    return world
