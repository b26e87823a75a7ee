"""After all shards: `_info.json` per config, example grids, the manifest and the dataset card."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import platform
from importlib import metadata
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from failmode.dataset import layout
from failmode.dataset.card import card_tags, render_card
from failmode.dataset.manifest import Manifest
from failmode.dataset.sample import CODECS
from failmode.dataset.summary import ConfigSummary, collect_configs, discover_tables
from failmode.errors import ValidationError
from failmode.grids import image_grid
from failmode.io import sha256_file, write_bytes_atomic, write_json

log = logging.getLogger(__name__)

GRID_SIZE = 16  # images per example grid
THUMB_PX = 128
PINNED_LIBRARIES = ("diffusers", "numpy", "open_clip_torch", "pillow", "pyarrow", "timm", "torch", "transformers")


def finalize(root: str | os.PathLike[str], manifest: Manifest) -> Manifest:
    """Write `_info.json` per image config, the example grids, `failmode.json` and `README.md`; return the manifest.

    The manifest written names its default config and carries the card's tags (`card_tags`).
    Every shard the manifest lists must be done; table configs written with `write_table_config` are added. An image
    config with no sample is refused (ValidationError) before anything is written.
    The returned manifest has sample counts, library versions and file hashes filled in.
    """
    root = Path(root)
    manifest.check()
    configs = {**manifest.configs, **discover_tables(root, manifest)}
    manifest = dataclasses.replace(manifest, configs={k: dataclasses.replace(v) for k, v in configs.items()})
    # The manifest states what the card shows: the default config by name, every tag.
    manifest = dataclasses.replace(manifest, default_config=manifest.default(), tags=card_tags(manifest))
    summaries = collect_configs(root, manifest)
    empty = sorted(name for name, summary in summaries.items()
                   if manifest.configs[name].kind != "table" and not any(v.num_samples for v in summary.splits.values()))
    if empty:
        raise ValidationError(f"{root}: config{'s' if len(empty) > 1 else ''} {', '.join(empty)} hold no image (every "
                              "planned image was dropped by the quality filter or rejected; see the shards' stats in "
                              "generation/stats/): nothing finalized")
    files: dict[str, str] = {}
    for name, summary in summaries.items():
        manifest.configs[name].num_samples = {s: v.num_samples for s, v in summary.splits.items()}
        for split in summary.splits.values():
            files.update(split.files)
        if summary.has_images:
            files.update(_write_info(root, manifest, summary))
            files.update(_write_grid(root, summary))
    manifest = dataclasses.replace(manifest, files=dict(sorted(files.items())), environment=environment())
    manifest.save(root)
    write_bytes_atomic(root / layout.CARD_NAME, render_card(manifest, summaries).encode("utf-8"))
    log.info("finalized %s v%s: %d configs", manifest.name, manifest.version, len(summaries))
    return manifest


def environment() -> dict[str, str]:
    """Versions of the libraries whose behaviour decides the bytes of the images and files."""
    out = {"python": platform.python_version()}
    for lib in PINNED_LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "not installed"
    return out


def _write_info(root: Path, manifest: Manifest, summary: ConfigSummary) -> dict[str, str]:
    """The `_info.json` timm's `wds/` reader uses for split sizes and shard lists."""
    splits = {}
    for split, v in summary.splits.items():
        n = summary.spec.splits[split]
        names = [layout.tar_path("", summary.name, split, i, n).name for i in range(n)]
        splits[split] = {"name": split, "num_samples": v.num_samples, "filenames": names,
                         "shard_lengths": v.shard_lengths}
    path = layout.wds_dir(root, summary.name) / layout.INFO_NAME
    write_json(path, {"name": manifest.name, "version": manifest.version, "num_classes": len(manifest.class_names),
                      "class_names": manifest.class_names, "splits": splits})
    return {path.relative_to(root).as_posix(): sha256_file(path)}


def _write_grid(root: Path, summary: ConfigSummary) -> dict[str, str]:
    """A PNG grid of up to GRID_SIZE examples (distinct classes first) from the first split's first shards."""
    images = _grid_images(root, summary)
    path = layout.grid_path(root, summary.name)
    if not images:
        return {}
    decoded = []
    for data in images:
        with Image.open(io.BytesIO(data)) as im:
            decoded.append(im.convert("RGB"))
    grid = image_grid(decoded, cols=4, thumb=THUMB_PX)
    write_bytes_atomic(path, CODECS.get("png").encode(grid))
    return {path.relative_to(root).as_posix(): sha256_file(path)}


def _grid_images(root: Path, summary: ConfigSummary) -> list[bytes]:
    split, n = next(iter(summary.spec.splits.items()))
    first: dict[int, bytes] = {}
    rest: list[bytes] = []
    for i in range(n):
        pf = pq.ParquetFile(layout.parquet_path(root, summary.name, split, i, n))
        for batch in pf.iter_batches(batch_size=64, columns=["image", "label"]):
            for img, label in zip(batch.column("image").to_pylist(), batch.column("label").to_pylist(), strict=True):
                if label not in first and len(first) < GRID_SIZE:
                    first[label] = img["bytes"]
                elif len(rest) < GRID_SIZE:
                    rest.append(img["bytes"])
        if len(first) + len(rest) >= GRID_SIZE:  # one shard is enough when it has GRID_SIZE samples
            break
    return (list(first.values()) + rest)[:GRID_SIZE]
