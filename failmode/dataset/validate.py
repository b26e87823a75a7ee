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


def validate_dataset_folder(root: str | os.PathLike[str], *, check_hashes: bool = False) -> Manifest:
    """Return the folder's manifest, or raise ValidationError naming the first problem found.

    Checks: `failmode.json` parses; `README.md` has a YAML header whose configs and version match the manifest;
    every shard of every config exists with the manifest's shard count and sample count, with no stray shards;
    every image config has `_info.json`. With `check_hashes`, every file's SHA-256 must match the manifest.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValidationError(f"{root}: not a directory")
    manifest = Manifest.load(root)
    _check_card(root, manifest)
    summaries = collect_configs(root, manifest)
    for name, summary in summaries.items():
        counts = {s: v.num_samples for s, v in summary.splits.items()}
        if counts != manifest.configs[name].num_samples:
            raise ValidationError(f"config {name!r}: shards hold {counts} samples, the manifest says "
                                  f"{manifest.configs[name].num_samples} (was finalize run after the last shard?)")
        info = layout.wds_dir(root, name) / layout.INFO_NAME
        if summary.has_images and not info.exists():
            raise ValidationError(f"config {name!r}: {info.relative_to(root)} is missing (run finalize)")
    missing = [p for p in manifest.files if not (root / p).exists()]
    if missing:
        raise ValidationError(f"{len(missing)} file(s) listed in the manifest are missing, e.g. {missing[0]}")
    if check_hashes:
        _check_hashes(root, manifest)
    return manifest


def _check_card(root: Path, manifest: Manifest) -> None:
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


def _check_hashes(root: Path, manifest: Manifest) -> None:
    plan = root / layout.PLAN_PATH
    if manifest.plan_sha256 and plan.exists() and sha256_file(plan) != manifest.plan_sha256:
        raise ValidationError(f"{layout.PLAN_PATH}: content differs from the manifest's plan_sha256")
    for rel, digest in progress(sorted(manifest.files.items()), desc="checking files", unit="file"):
        if sha256_file(root / rel) != digest:
            raise ValidationError(f"{rel}: content differs from the manifest (SHA-256 mismatch)")
