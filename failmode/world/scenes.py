"""The world's contexts: real scene photos installed offline, each with a short context phrase (data in JSON)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from failmode.errors import LoadError, ValidationError
from failmode.io import read_json

#: Scene photos are downscaled once so their short side is this many pixels; crops are taken from that.
SCENE_SHORT_SIDE = 384


@dataclass(frozen=True)
class Scene:
    """One context: a short `name`, the `context` phrase used in prompts, and where its photo comes from."""

    name: str
    context: str
    source: str
    path: str
    package: str

    def file(self) -> Path:
        """The photo's path on this machine."""
        if self.source == "skimage":
            import skimage

            return Path(skimage.__file__).parent / "data" / self.path
        return Path(self.path)


def _scenes_file() -> Path:
    return Path(str(resources.files("failmode.world") / "data" / "scenes.json"))


@functools.lru_cache(maxsize=4)
def _load(path: str) -> tuple[Scene, ...]:
    doc = read_json(path)
    if doc.get("format") != "failmode-scenes/1":
        raise ValidationError(f"{path}: format must be 'failmode-scenes/1'")
    try:
        scenes = tuple(Scene(s["name"], s["context"], s["source"], s["path"], s["package"]) for s in doc["scenes"])
    except (KeyError, TypeError) as e:
        raise ValidationError(f"{path}: every scene needs name, context, source, path, package ({e})") from None
    for field in ("name", "context"):
        values = [getattr(s, field) for s in scenes]
        if len(set(values)) != len(values):
            raise ValidationError(f"{path}: duplicate scene {field}s")
    return scenes


def load_scenes(path: str | Path | None = None) -> list[Scene]:
    """The world's scenes in their canonical order (that order is the scene index)."""
    return list(_load(str(path or _scenes_file())))


@functools.lru_cache(maxsize=64)
def scene_pixels(scene: Scene, short_side: int = SCENE_SHORT_SIDE) -> np.ndarray:
    """The scene photo as RGB uint8 [H, W, 3], downscaled so its short side is `short_side` (read once, cached)."""
    path = scene.file()
    if not path.exists():
        hint = "pip install 'failmode[demo]'" if scene.source == "skimage" else f"apt-get install {scene.package}"
        raise LoadError(f"scene {scene.name!r}: {path} not found ({hint})")
    with Image.open(path) as im:
        im.draft("RGB", (short_side * 2, short_side * 2))  # fast JPEG downscale on decode
        im = im.convert("RGB")
        scale = short_side / min(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        arr = np.asarray(im, dtype=np.uint8)
    arr.flags.writeable = False
    return arr
