"""Read a dataset folder's shard markers into per-config summaries, checking that the set is complete."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failmode.dataset import layout
from failmode.dataset.features import ArrowSchemaSpec, spec_from_json
from failmode.dataset.manifest import ConfigSpec, Manifest
from failmode.errors import ValidationError
from failmode.io import read_json

log = logging.getLogger(__name__)


@dataclass
class SplitSummary:
    """Sizes and counts of one split of one config, from its shards' stats."""

    shard_lengths: list[int]
    num_bytes: int
    download_size: int
    label_counts: Counter[int]
    files: dict[str, str]  # relative path -> sha256

    @property
    def num_samples(self) -> int:
        """Number of samples in the split."""
        return sum(self.shard_lengths)


@dataclass
class ConfigSummary:
    """One config: its spec, column types and split summaries."""

    name: str
    spec: ConfigSpec
    features: ArrowSchemaSpec
    splits: dict[str, SplitSummary] = field(default_factory=dict)

    @property
    def has_images(self) -> bool:
        """False for metadata-only (table) configs."""
        return self.spec.kind != "table"


def discover_tables(root: Path, manifest: Manifest) -> dict[str, ConfigSpec]:
    """Table configs written by `write_table_config` that the manifest does not list yet."""
    found: dict[str, ConfigSpec] = {}
    for marker in sorted((root / "data").glob("*/*_stats.json")):
        stats = read_json(marker)
        if stats.get("kind") != "table" or stats["config"] in manifest.configs:
            continue
        spec = found.setdefault(stats["config"], ConfigSpec(kind="table", splits={}, description=stats["description"]))
        spec.splits[stats["split"]] = 1
    return found


def collect_configs(root: Path, manifest: Manifest) -> dict[str, ConfigSummary]:
    """Summaries of every manifest config, in card order; ValidationError on missing, stale or inconsistent shards."""
    _check_no_strays(root, manifest)
    return {name: _collect(root, manifest, name) for name in manifest.ordered_configs()}


def _collect(root: Path, manifest: Manifest, name: str) -> ConfigSummary:
    spec = manifest.configs[name]
    summary: ConfigSummary | None = None
    for split, num_shards in spec.splits.items():
        stats = _split_stats(root, name, split, num_shards)
        for s in stats:
            features = spec_from_json(s["features"], s.get("class_names", manifest.class_names))
            if summary is None:
                summary = ConfigSummary(name, spec, features)
            elif features != summary.features and s["num_samples"] > 0:
                raise ValidationError(
                    f"config {name!r}: shard {split} {s['shard_index']} has columns {features.describe()}, "
                    f"other shards have {summary.features.describe()}; all shards of a config need the same columns")
            if spec.kind != "table" and s.get("image_format") != manifest.image_format:
                raise ValidationError(f"config {name!r}: shard {split} {s['shard_index']} stores "
                                      f"{s.get('image_format')} images, the manifest says {manifest.image_format}")
        assert summary is not None
        summary.splits[split] = SplitSummary(
            shard_lengths=[s["num_samples"] for s in stats],
            num_bytes=sum(s["num_bytes"] for s in stats),
            download_size=sum(f["size"] for s in stats for p, f in s["files"].items() if p.endswith(".parquet")),
            label_counts=sum((Counter({int(k): v for k, v in s.get("label_counts", {}).items()}) for s in stats),
                             Counter()),
            files={p: f["sha256"] for s in stats for p, f in s["files"].items()},
        )
    assert summary is not None
    return summary


def _split_stats(root: Path, config: str, split: str, num_shards: int) -> list[dict[str, Any]]:
    missing, stats = [], []
    for i in range(num_shards):
        marker = layout.stats_path(root, config, split, i, num_shards)
        if not marker.exists():
            missing.append(i)
            continue
        s = read_json(marker)
        for rel in s["files"]:
            if not (root / rel).exists():
                raise ValidationError(f"config {config!r}: {rel} is missing (its marker {marker.name} exists)")
        stats.append(s)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise ValidationError(f"config {config!r} split {split!r}: {len(missing)} of {num_shards} shards not "
                              f"written (shard {shown}); rerun the stage that writes them")
    return stats


def _check_no_strays(root: Path, manifest: Manifest) -> None:
    """Every shard file on disk must belong to a manifest config/split with the manifest's shard count."""
    for base in ("data", "wds"):
        for path in sorted((root / base).glob("*/*")):
            if layout.is_temp_file(path):
                log.warning("ignoring leftover temporary file %s (an interrupted write)", path.relative_to(root))
                continue
            if path.name == layout.INFO_NAME and base == "wds":
                continue
            parsed = layout.parse_shard_name(path.name)
            spec = manifest.configs.get(path.parent.name)
            if parsed and spec and spec.splits.get(parsed[0]) == parsed[2]:
                continue
            raise ValidationError(f"{path.relative_to(root)} is not part of this build (config, split or shard "
                                  "count not in the manifest); remove it or add its config to the manifest")
