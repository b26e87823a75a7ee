"""After all shards: `_info.json` per config, example grids, the dataset card and, last, the manifest.

Finalize is resumable as a whole: it first saves the manifest it is completing as a draft (`layout.DRAFT_NAME`) and
removes the old `failmode.json`, then rewrites every derived file, and last renames the completed draft to
`failmode.json` (listing every file with its SHA-256, the card included). A folder killed at any point in between is
not finalized (no manifest), so a rerun of the build, or `failmode finalize DIR` (which resumes from the draft),
finishes it with the same bytes. It reads regular files of the folder only: a symbolic link is refused first.
"""

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
from failmode.dataset.validate import check_no_links
from failmode.errors import ValidationError
from failmode.grids import image_grid
from failmode.io import read_json, sha256_file, write_bytes_atomic, write_json

log = logging.getLogger(__name__)

GRID_SIZE = 16  # images per example grid
THUMB_PX = 128
PINNED_LIBRARIES = ("diffusers", "numpy", "open_clip_torch", "pillow", "pyarrow", "timm", "torch", "transformers")


def finalize(root: str | os.PathLike[str], manifest: Manifest) -> Manifest:
    """Write `_info.json` per image config, the example grids, `README.md` and, last, `failmode.json`; return the
    manifest.

    The manifest written names its default config and carries the card's tags (`card_tags`).
    Every shard the manifest lists must be done; table configs written with `write_table_config` are added. An image
    config with no sample is refused (ValidationError) before anything is written.
    The returned manifest has sample counts, library versions and the SHA-256 of every file the folder publishes
    filled in (shards, their markers and generation stats, `_info.json`, grids, the plan and the card).
    """
    root = Path(root)
    manifest.check()
    check_no_links(root)  # nothing outside the folder is read, hashed or published
    manifest_in = manifest.to_json()
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
    draft = root / layout.DRAFT_NAME
    if not draft.exists() or read_json(draft) != manifest_in:
        write_json(draft, manifest_in)
    (root / layout.MANIFEST_NAME).unlink(missing_ok=True)  # not finalized until every derived file is rewritten
    _clear_temporaries(root)
    files: dict[str, str] = {}
    for name, summary in summaries.items():
        manifest.configs[name].num_samples = {s: v.num_samples for s, v in summary.splits.items()}
        for split, v in summary.splits.items():
            files.update(v.files)
            files.update(_shard_records(root, name, split, manifest.configs[name].splits[split]))
        if summary.has_images:
            files.update(_write_info(root, manifest, summary))
            files.update(_write_grid(root, summary))
    if (root / layout.PLAN_PATH).is_file():
        files[layout.PLAN_PATH] = sha256_file(layout.regular_file(root, layout.PLAN_PATH))
    manifest = dataclasses.replace(manifest, files=files, environment=environment())
    write_bytes_atomic(root / layout.CARD_NAME, render_card(manifest, summaries).encode("utf-8"))
    files[layout.CARD_NAME] = sha256_file(root / layout.CARD_NAME)
    manifest = dataclasses.replace(manifest, files=dict(sorted(files.items())))
    write_json(draft, manifest.to_json())  # the draft becomes the manifest: one rename, nothing left behind
    os.replace(draft, root / layout.MANIFEST_NAME)
    log.info("finalized %s v%s: %d configs", manifest.name, manifest.version, len(summaries))
    return manifest


def derived_files_current(root: str | os.PathLike[str], manifest: Manifest) -> bool:
    """Whether a finalized folder still holds what finalize wrote: every listed file present, no finalize draft, and
    the small files finalize derives (card, `_info.json`, grids) with the manifest's SHA-256 (a build rerun
    finalizes again otherwise; shards are checked by validation)."""
    root = Path(root)
    if (root / layout.DRAFT_NAME).exists() or not all((root / f).is_file() for f in manifest.files):
        return False
    derived = [f for f in manifest.files if f == layout.CARD_NAME or f.startswith("assets/")
               or f.endswith("/" + layout.INFO_NAME)]
    return all(sha256_file(root / f) == manifest.files[f] for f in derived)


def resume(root: str | os.PathLike[str]) -> Manifest:
    """Finalize a folder whose shards are all written again, from its manifest or from the draft an interrupted
    finalize left (`failmode finalize DIR`); one line when there is neither."""
    root = Path(root)
    if not root.is_dir():
        raise ValidationError(f"{root}: not a directory")
    for name in (layout.MANIFEST_NAME, layout.DRAFT_NAME):
        path = root / name
        if path.is_symlink():
            raise ValidationError(f"{root}: {name} is a symbolic link; a dataset folder holds regular files only")
        if path.is_file():
            return finalize(root, Manifest.from_json(read_json(path), where=str(path)))
    raise ValidationError(f"{root}: no {layout.MANIFEST_NAME} and no interrupted finalize to resume; run the build "
                          "(failmode build / generate) that wrote the shards again")


def _clear_temporaries(root: Path) -> None:
    """Remove leftover temporaries of interrupted writes in the folders finalize writes (not the draft)."""
    for folder in (root, root / "assets", *sorted((root / "wds").glob("*"))):
        for path in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
            if path.name != layout.DRAFT_NAME and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)


def _shard_records(root: Path, config: str, split: str, num_shards: int) -> dict[str, str]:
    """A shard's stats marker and, when the generation stage wrote them, its generation stats (published too)."""
    out = {}
    for i in range(num_shards):
        for path in (layout.stats_path(root, config, split, i, num_shards),
                     layout.generation_stats_path(root, config, split, i, num_shards)):
            rel = path.relative_to(root).as_posix()
            if path.exists() or path.is_symlink():
                out[rel] = sha256_file(layout.regular_file(root, rel))
    return out


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
