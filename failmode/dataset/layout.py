"""Where each file of a dataset folder lives, and the naming rules that keep every loader happy.

```
<root>/
  README.md                                   dataset card (YAML header + body)
  failmode.json                               manifest: pins everything needed to regenerate the folder
  assets/grid_<config>.png                    example images shown in the card
  data/<config>/<split>-00000-of-00004.parquet          Hugging Face `datasets` shards (images embedded)
  data/<config>/<split>-00000-of-00004_stats.json       per-shard marker, written last (the shard is done)
  wds/<config>/<split>-00000-of-00004.tar               webdataset shards of the same samples
  wds/<config>/_info.json                               split info for timm's `wds/` reader
  generation/plan.parquet                     the generation plan (one row per image, seed recorded)
  generation/stats/<config>/<split>-00000-of-00004.json   per-shard generation stats
```

The manifest lists every one of these files but itself with its SHA-256: what a folder publishes is exactly that
list (`folder_files` finds what lies in a folder; symbolic links are never part of a dataset).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from failmode.errors import ValidationError

MANIFEST_NAME = "failmode.json"
CARD_NAME = "README.md"
INFO_NAME = "_info.json"
PLAN_PATH = "generation/plan.parquet"  # written by the generation stage; its hash is the manifest's plan_sha256
# The manifest finalize is about to complete, kept until `failmode.json` is written (`failmode finalize DIR` resumes
# from it); a temporary name, so it is never published.
DRAFT_NAME = ".failmode.json.draft.tmp"

# Config names become folder names, parts of webdataset keys (no dots allowed there) and Hub config names.
_CONFIG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,95}$")
# Split names must be valid `datasets` split names and must not contain "tar" (timm's wds reader reads a split
# containing "tar" as a shard pattern).
_SPLIT_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_SHARD_RE = re.compile(r"^(?P<split>[a-z][a-z0-9_]*)-(?P<index>\d{5})-of-(?P<count>\d{5})(?P<rest>.*)$")


def check_config_name(config: str) -> str:
    """Return `config` if it is a valid config name (letters, digits, '_' and '-'), else raise ValidationError."""
    if not _CONFIG_RE.match(config):
        raise ValidationError(
            f"invalid config name {config!r}: use letters, digits, '_' and '-' only (no dots or slashes); "
            "see failmode.dataset.config_slug"
        )
    return config


def check_split_name(split: str) -> str:
    """Return `split` if it is a valid split name (lowercase, digits, '_', without 'tar'), else raise."""
    if not _SPLIT_RE.match(split) or "tar" in split:
        raise ValidationError(
            f"invalid split name {split!r}: use lowercase letters, digits and '_' (and not the letters 'tar', "
            "which timm's wds reader mistakes for a shard pattern)"
        )
    return split


def check_shard(shard_index: int, num_shards: int) -> None:
    """Raise ValidationError unless 0 <= shard_index < num_shards <= 99999."""
    if not (0 < num_shards <= 99999 and 0 <= shard_index < num_shards):
        raise ValidationError(f"invalid shard {shard_index} of {num_shards}")


def config_slug(name: str) -> str:
    """A valid config name for a model id or family: 'timm/vit_base.augreg' -> 'timm-vit_base-augreg'.

    `collective:<family>` becomes `collective-<family>`; characters other than letters, digits, '_' and '-' become '-'.
    """
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_")
    return check_config_name(slug[:96] or "unnamed")


def check_distinct(names: dict[str, str], where: str) -> None:
    """`names` maps what a user named (a model id, a family, a modes file) to the config / folder name it becomes;
    two that become one name (or names equal but for case, one folder on macOS and Windows) are refused in one line."""
    seen: dict[str, str] = {}
    for given, name in names.items():
        other = seen.setdefault(name.casefold(), given)
        if other != given:
            raise ValidationError(f"{where}: {other} and {given} would share the config and folder name "
                                  f"{name!r}; rename one of them")


def shard_stem(split: str, shard_index: int, num_shards: int) -> str:
    """`<split>-0000N-of-0000M`, the name every file of one shard shares."""
    return f"{split}-{shard_index:05d}-of-{num_shards:05d}"


def parquet_path(root: str | os.PathLike[str], config: str, split: str, shard_index: int, num_shards: int) -> Path:
    """Path of one parquet shard."""
    return Path(root) / "data" / config / f"{shard_stem(split, shard_index, num_shards)}.parquet"


def stats_path(root: str | os.PathLike[str], config: str, split: str, shard_index: int, num_shards: int) -> Path:
    """Path of one shard's stats marker (written last: it exists only when the shard is complete)."""
    return Path(root) / "data" / config / f"{shard_stem(split, shard_index, num_shards)}_stats.json"


def tar_path(root: str | os.PathLike[str], config: str, split: str, shard_index: int, num_shards: int) -> Path:
    """Path of one webdataset tar shard."""
    return wds_dir(root, config) / f"{shard_stem(split, shard_index, num_shards)}.tar"


def wds_dir(root: str | os.PathLike[str], config: str) -> Path:
    """Folder of a config's webdataset shards and `_info.json` (the `root` for timm's `wds/` reader)."""
    return Path(root) / "wds" / config


def generation_stats_path(root: str | os.PathLike[str], config: str, split: str, shard_index: int,
                          num_shards: int) -> Path:
    """Where a shard's generation stats are kept (counts, failures, substitutions, batch size; no timings)."""
    return Path(root) / "generation" / "stats" / config / f"{shard_stem(split, shard_index, num_shards)}.json"


def grid_path(root: str | os.PathLike[str], config: str) -> Path:
    """Path of the example-image grid of a config, shown in the card."""
    return Path(root) / "assets" / f"grid_{config}.png"


def parse_shard_name(name: str) -> tuple[str, int, int, str] | None:
    """Split a shard file name into (split, index, count, suffix), or None if it is not one."""
    m = _SHARD_RE.match(name)
    if not m:
        return None
    return m["split"], int(m["index"]), int(m["count"]), m["rest"]


def is_temp_file(path: Path) -> bool:
    """True for a leftover temporary file of an interrupted atomic write (`.<name>.<random>.tmp`)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def is_local_only(path: Path) -> bool:
    """True for files a dataset folder may hold that are never published: temporaries of interrupted writes
    (the finalize draft among them) and hidden lock files (`.<name>.lock`)."""
    return is_temp_file(path) or (path.name.startswith(".") and path.name.endswith(".lock"))


def folder_files(root: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """(regular files, symbolic links) under `root`, as sorted relative POSIX paths; links are not followed, local-only
    files (`is_local_only`) are left out."""
    root = Path(root)
    files, links = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                links.append((here / name).relative_to(root).as_posix())
        for name in filenames:
            path = here / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                links.append(rel)
            elif path.is_file() and not is_local_only(path):
                files.append(rel)
    return sorted(files), sorted(links)


def regular_file(root: str | os.PathLike[str], rel: str) -> Path:
    """`root / rel` if it is a regular file inside `root` (no symbolic link on the way), else ValidationError."""
    root = Path(root)
    parts = Path(rel).parts
    if not parts or ".." in parts or Path(rel).is_absolute():
        raise ValidationError(f"{root}: {rel!r} is not a path inside the folder")
    for i in range(1, len(parts) + 1):
        if (root.joinpath(*parts[:i])).is_symlink():
            raise ValidationError(f"{root}: {Path(*parts[:i]).as_posix()} is a symbolic link; a dataset folder holds "
                                  "regular files only")
    path = root.joinpath(*parts)
    if not path.is_file():
        raise ValidationError(f"{root}: {rel} is missing or not a regular file")
    return path
