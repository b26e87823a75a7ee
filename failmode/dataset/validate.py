"""Check a dataset folder before it is published: manifest, card, every config's files, shard counts, hashes."""

from __future__ import annotations

import os
from pathlib import Path

from failmode.dataset import layout
from failmode.dataset.card import parse_card_header
from failmode.dataset.manifest import Manifest
from failmode.dataset.summary import collect_configs
from failmode.errors import ValidationError
from failmode.io import sha256_file
from failmode.progress import progress


def load_finalized(root: str | os.PathLike[str]) -> Manifest:
    """The manifest of a finalized dataset folder; a folder without one (an interrupted build, another kind of
    folder) is refused in one line."""
    root = Path(root)
    if not root.is_dir():
        raise ValidationError(f"{root}: not a directory")
    if (root / layout.MANIFEST_NAME).is_symlink():
        raise ValidationError(f"{root}: {layout.MANIFEST_NAME} is a symbolic link; a dataset folder holds regular "
                              "files only")
    if not (root / layout.MANIFEST_NAME).is_file():
        shards = sorted(p.relative_to(root).as_posix() for p in (root / "data").glob("*/*.parquet")) \
            if (root / "data").is_dir() else []
        what = f"{len(shards)} shard(s) but " if shards else ""
        raise ValidationError(f"{root}: not a finalized failmode dataset ({what}no {layout.MANIFEST_NAME}; an "
                              "interrupted build finishes when it is run again)")
    return Manifest.load(root)


def check_config_files(root: str | os.PathLike[str], manifest: Manifest, config: str) -> None:
    """Config `config` of a finalized folder is what its manifest lists: it holds images, every one of its data
    files exists with the manifest's SHA-256 and no other shard lies beside them."""
    root = Path(root)
    if config not in manifest.configs:
        raise ValidationError(f"{root}: no config {config!r} in {layout.MANIFEST_NAME} "
                              f"(configs: {', '.join(sorted(manifest.configs)) or 'none'})")
    if not sum(manifest.configs[config].num_samples.values()):
        raise ValidationError(f"{root}: config {config!r} holds no images")
    prefix = f"data/{config}/"
    listed = {rel: digest for rel, digest in manifest.files.items() if rel.startswith(prefix)}
    present = {p.relative_to(root).as_posix() for p in (root / "data" / config).glob("*.parquet")}
    stray = sorted(present - set(listed))
    if stray:
        raise ValidationError(f"{root}: {stray[0]} is not in {layout.MANIFEST_NAME} (a shard of another build?)")
    for rel, digest in sorted(listed.items()):
        if not (root / rel).is_file() and not (root / rel).is_symlink():
            raise ValidationError(f"{root}: {rel} is missing (listed in {layout.MANIFEST_NAME})")
        if sha256_file(layout.regular_file(root, rel)) != digest:  # a link is refused, never followed
            raise ValidationError(f"{root}: {rel} differs from {layout.MANIFEST_NAME} (SHA-256 mismatch)")


def validate_dataset_folder(root: str | os.PathLike[str], *, check_hashes: bool = False) -> Manifest:
    """Return the folder's manifest, or raise ValidationError naming the first problem found.

    Checks: `failmode.json` parses; the folder holds no symbolic link and no file the manifest does not list;
    `README.md` has a YAML header whose configs, version and per-split counts
    match the manifest; every shard of every config exists with the manifest's shard count and sample count, with
    no stray shards; no config is empty;
    every image config has `_info.json`. With `check_hashes`, every file's SHA-256 must match the manifest.
    """
    root = Path(root)
    manifest = load_finalized(root)
    files = check_no_links(root)
    header = _check_card(root, manifest)
    summaries = collect_configs(root, manifest)
    for name, summary in summaries.items():
        counts = {s: v.num_samples for s, v in summary.splits.items()}
        if not sum(counts.values()):
            raise ValidationError(f"config {name!r} holds no images (every planned image was dropped?)")
        if counts != manifest.configs[name].num_samples:
            raise ValidationError(f"config {name!r}: shards hold {counts} samples, the manifest says "
                                  f"{manifest.configs[name].num_samples} (was finalize run after the last shard?)")
        info = layout.wds_dir(root, name) / layout.INFO_NAME
        if summary.has_images and not info.exists():
            raise ValidationError(f"config {name!r}: {info.relative_to(root)} is missing (run finalize)")
    _check_card_counts(root, manifest, header)
    _check_unlisted(root, manifest, files)
    missing = [p for p in manifest.files if not (root / p).exists()]
    if missing:
        raise ValidationError(f"{len(missing)} file(s) listed in the manifest are missing, e.g. {missing[0]}")
    if check_hashes:
        _check_hashes(root, manifest)
    return manifest


def check_listed(root: str | os.PathLike[str], manifest: Manifest) -> None:
    """The folder holds exactly what its manifest lists (besides `failmode.json` and local temporaries): a symbolic
    link or an unlisted file is refused in one line naming it (push uploads the listed files only)."""
    _check_unlisted(Path(root), manifest, check_no_links(root))


def check_no_links(root: str | os.PathLike[str]) -> list[str]:
    """The folder's regular files (`layout.folder_files`); a symbolic link anywhere in it is refused in one line."""
    files, links = layout.folder_files(root)
    if links:
        raise ValidationError(f"{root}: {links[0]} is a symbolic link; a dataset folder holds regular files only "
                              "(nothing outside it is published)")
    return files


def _check_unlisted(root: Path, manifest: Manifest, files: list[str]) -> None:
    stray = [f for f in files if f != layout.MANIFEST_NAME and f not in manifest.files]
    if stray:
        more = f" (and {len(stray) - 1} more)" if len(stray) > 1 else ""
        raise ValidationError(f"{root}: {stray[0]}{more} is not listed in {layout.MANIFEST_NAME}; remove it, or run "
                              "`failmode finalize` if the manifest is out of date")


def _check_card_counts(root: Path, manifest: Manifest, header: dict) -> None:
    card = root / layout.CARD_NAME
    for info in header.get("dataset_info") or []:
        name = info.get("config_name") if isinstance(info, dict) else None
        if name not in manifest.configs:
            continue
        counts = {s.get("name"): s.get("num_examples") for s in info.get("splits") or [] if isinstance(s, dict)}
        if counts != manifest.configs[name].num_samples:
            raise ValidationError(f"{card}: config {name!r} counts {counts} differ from the manifest's "
                                  f"{manifest.configs[name].num_samples}")


def _check_card(root: Path, manifest: Manifest) -> dict:
    card = root / layout.CARD_NAME
    if not card.exists():
        raise ValidationError(f"{card}: dataset card not found (run finalize)")
    header = parse_card_header(card.read_text(encoding="utf-8"), str(card))
    names = [c.get("config_name") for c in header.get("configs") or [] if isinstance(c, dict)]
    if sorted(names) != sorted(manifest.configs):
        raise ValidationError(f"{card}: configs {sorted(names)} do not match the manifest's {sorted(manifest.configs)}")
    for key in ("version", "license"):
        value, expected = header.get(key), getattr(manifest, key)
        if str(value) != expected:
            raise ValidationError(f"{card}: {key} {value!r} differs from the manifest's {expected!r}")
    return header


def _check_hashes(root: Path, manifest: Manifest) -> None:
    plan = root / layout.PLAN_PATH
    if manifest.plan_sha256 and plan.exists() and sha256_file(plan) != manifest.plan_sha256:
        raise ValidationError(f"{layout.PLAN_PATH}: content differs from the manifest's plan_sha256")
    for rel, digest in progress(sorted(manifest.files.items()), desc="checking files", unit="file"):
        if sha256_file(layout.regular_file(root, rel)) != digest:
            raise ValidationError(f"{rel}: content differs from the manifest (SHA-256 mismatch)")
