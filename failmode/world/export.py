"""The fashion-scenes world as an ordinary local dataset: the layout of a Hub image-classification dataset.

    ROOT/data/train-00000-of-00001.parquet        the world's train split
    ROOT/data/validation-00000-of-00001.parquet   its debug split, then its test split (the evaluation split that
                                                  failmode's split recipe cuts into debug and test per class)
    ROOT/world.json                               which world this is (preset, seed, sizes, key)

Columns: `image` (PNG), `label` (ClassLabel of the ten Fashion-MNIST classes), `context` (the scene's context
phrase, ground truth) and `common` (whether that is the class's common context). The same world gives the same
bytes. The stand-in backends rebuild the world from `world.json` (`world_of`).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any

from failmode.errors import ValidationError
from failmode.io import read_json, write_json
from failmode.progress import bar
from failmode.world.fashion import FASHION_CLASSES
from failmode.world.world import World, build_world

log = logging.getLogger(__name__)

WORLD_FILE = "world.json"
WORLD_FORMAT = "failmode-world-dataset/1"
#: the exported splits: name -> the world splits they hold, in order
EXPORT_SPLITS = {"train": ("train",), "validation": ("debug", "test")}


def _png(image: Any) -> bytes:
    """Lossless PNG at zlib level 1: a few times faster to write than the default level, for ~30 % more bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


_WORLD: World | None = None  # the world being exported, for forked render workers


def _render_chunk(job: tuple[str, int, int]) -> list[bytes]:
    split, start, stop = job
    assert _WORLD is not None
    src = _WORLD.splits[split]
    return [_png(src.image(i)) for i in range(start, stop)]


def _render(world: World, splits: tuple[str, ...], desc: str, chunk: int = 250) -> list[bytes]:
    """PNG bytes of every image of `splits`, in order; rendered by forked worker processes, one per core (the
    images depend only on the world, its seed and the index, so any process renders the same bytes)."""
    global _WORLD
    jobs = [(s, i, min(i + chunk, len(world.splits[s]))) for s in splits for i in range(0, len(world.splits[s]), chunk)]
    processes = min(os.cpu_count() or 1, len(jobs))
    out: list[bytes] = []
    with bar(desc, total=sum(stop - start for _, start, stop in jobs), unit="img") as b:
        _WORLD = world
        try:
            if processes > 1 and "fork" in multiprocessing.get_all_start_methods():
                with multiprocessing.get_context("fork").Pool(processes) as pool:
                    for pngs in pool.imap(_render_chunk, jobs):
                        out += pngs
                        b.update(len(pngs))
            else:
                for job in jobs:
                    out += _render_chunk(job)
                    b.update(job[2] - job[1])
        finally:
            _WORLD = None
    return out


def _describe(world: World) -> dict[str, Any]:
    """world.json: the world by name, seed and sizes; a world that is not a shipped preset (a user's world JSON)
    also records its whole preset, so the stand-in backends can rebuild it from the folder alone."""
    from failmode.world.world import is_shipped

    p = world.preset
    out = {"format": WORLD_FORMAT, "world": p.name, "seed": world.seed, "per_class": dict(p.per_class),
           "image_size": p.image_size, "key": world.key}
    if not is_shipped(p):
        out["preset"] = {**p.to_dict(), "description": p.description, "attributor": p.attributor}
    return out


def export_world(world: World, root: str | os.PathLike[str]) -> Path:
    """Write `world` into `root` as a local dataset (see the module docstring); a folder already holding this
    world is left as it is. Returns `root`."""
    from failmode.data.sources import offline_datasets

    datasets = offline_datasets()
    root = Path(root)
    info = _describe(world)
    files = [root / "data" / f"{split}-00000-of-00001.parquet" for split in EXPORT_SPLITS]
    if (root / WORLD_FILE).is_file() and read_json(root / WORLD_FILE) == info and all(f.is_file() for f in files):
        log.info("world %s already exported to %s", world.key, root)
        return root
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(FASHION_CLASSES)),
                                  "context": datasets.Value("string"), "common": datasets.Value("bool")})
    for split, path in zip(EXPORT_SPLITS, files, strict=True):
        parts = [world.splits[s] for s in EXPORT_SPLITS[split]]
        cols: dict[str, list[Any]] = {
            "image": [{"bytes": b, "path": None} for b in _render(world, EXPORT_SPLITS[split], f"export {split}")],
            "label": [int(y) for src in parts for y in src.labels],
            "context": [c for src in parts for c in src.contexts()],
            "common": [not bool(u) for src in parts for u in src.is_uncommon()]}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        datasets.Dataset.from_dict(cols, features=features).to_parquet(str(tmp))
        os.replace(tmp, path)
    write_json(root / WORLD_FILE, info)
    log.info("world %s exported to %s", world.key, root)
    return root


def world_of(dataset: str | os.PathLike[str]) -> World:
    """The world an exported dataset folder holds, rebuilt from its `world.json` (ValidationError if it is none)."""
    path = Path(dataset) / WORLD_FILE
    if not path.is_file():
        raise ValidationError(f"{dataset} is not an exported fashion-scenes world (no {WORLD_FILE}); the stand-in "
                              "backends work on the folder `failmode demo` exports")
    info = read_json(path)
    if info.get("format") != WORLD_FORMAT:
        raise ValidationError(f"{path}: not a {WORLD_FORMAT} file")
    from failmode.world.world import preset_from_doc

    preset = preset_from_doc(info["preset"], path) if "preset" in info else info["world"]
    world = build_world(preset, int(info["seed"]), per_class=info["per_class"], image_size=info["image_size"])
    if world.key != info["key"]:
        raise ValidationError(f"{path}: world {info['world']} seed {info['seed']} now builds another world "
                              f"({world.key}, recorded {info['key']}): export it again")
    return world
