"""The manifest (`failmode.json`): what a dataset folder contains and everything needed to regenerate it."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failmode import __version__
from failmode.dataset import layout
from failmode.errors import ValidationError
from failmode.hub import REPO_ID_RE  # noqa: F401  (a Hub repository id, ORG/NAME; re-exported)
from failmode.io import read_json, write_json

SEMVER_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")
CONFIG_KINDS = ("model", "collective", "baseline", "random-context", "table")
MANIFEST_FORMAT = 1


@dataclass
class ConfigSpec:
    """One config of the dataset: a debug set (per model, collective per family, class-only baseline) or a table."""

    kind: str  # "model" | "collective" | "baseline" | "random-context" | "table"
    splits: dict[str, int]  # split -> number of shards
    source_model: str = ""  # classifier id, "collective:<family>" or "baseline"
    description: str = ""
    num_samples: dict[str, int] = field(default_factory=dict)  # split -> samples (filled by finalize)

    def __post_init__(self) -> None:
        # Sorted, as in the JSON file, so a manifest built in code and one read back render identically.
        self.splits = dict(sorted(self.splits.items()))
        self.num_samples = dict(sorted(self.num_samples.items()))

    def check(self, name: str) -> None:
        """Raise ValidationError if the spec is inconsistent."""
        layout.check_config_name(name)
        if self.kind not in CONFIG_KINDS:
            raise ValidationError(f"config {name!r}: unknown kind {self.kind!r} (known: {', '.join(CONFIG_KINDS)})")
        if not self.splits:
            raise ValidationError(f"config {name!r} has no splits")
        for split, n in self.splits.items():
            layout.check_split_name(split)
            if not isinstance(n, int) or n < 1:
                raise ValidationError(f"config {name!r} split {split!r}: number of shards must be >= 1, got {n!r}")


@dataclass
class Manifest:
    """Name, version, classes, configs/splits/shard counts, and how the images were made (pinned for regeneration)."""

    name: str  # e.g. "imagenet-bg-debug"
    version: str  # semver, e.g. "1.0.0"; the Hub tag is "v<version>"
    class_names: list[str]
    configs: dict[str, ConfigSpec]
    default_config: str = ""  # config `load_dataset(repo)` opens; empty: the first image config in card order
    repo_id: str = ""  # e.g. "failmode/imagenet-bg-debug" (used in the card's loading snippets)
    pretty_name: str = ""
    description: str = ""
    image_format: str = "png"
    license: str = "creativeml-openrail-m"  # the generator's licence terms apply to its images
    source_dataset: str = ""  # Hub id of the classifier's dataset ("ILSVRC/imagenet-1k"); "" for a local folder
    generator: dict[str, Any] = field(default_factory=dict)  # {"id", "revision" or "sha256", ...}
    vocabulary: dict[str, Any] = field(default_factory=dict)  # {"source", "prompt", "sha256", ...}
    attribution: dict[str, Any] = field(default_factory=dict)  # {"attributor", "clip_model", "k", "used", ...}
    mining: dict[str, Any] = field(default_factory=dict)  # {"id" (dataset as given), "recipe", "models", ...}
    generation: dict[str, Any] = field(default_factory=dict)  # {"steps", "guidance", "size", "prompt_template", ...}
    seeds: dict[str, Any] = field(default_factory=dict)  # {"base_seed", "rule": how each image's seed is derived}
    plan_sha256: str = ""  # hash of plan.parquet (one row per image, seed recorded)
    tags: list[str] = field(default_factory=list)
    citation: str = ""  # BibTeX of the method; the card's default is used when empty
    failmode_version: str = __version__
    environment: dict[str, str] = field(default_factory=dict)  # library versions (filled by finalize)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256 (filled by finalize)
    format: int = MANIFEST_FORMAT

    def check(self) -> Manifest:
        """Raise ValidationError if the manifest is inconsistent; return self."""
        if not self.name or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", self.name):
            raise ValidationError(f"manifest: invalid dataset name {self.name!r}")
        if not SEMVER_RE.match(str(self.version)):
            raise ValidationError(f"manifest: version {self.version!r} is not semver (MAJOR.MINOR.PATCH)")
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValidationError("manifest: class_names must be a non-empty list of distinct names")
        if not self.configs:
            raise ValidationError("manifest: no configs")
        for name, spec in self.configs.items():
            spec.check(name)
        if self.default_config and self.default_config not in self.configs:
            raise ValidationError(f"manifest: default_config {self.default_config!r} is not a config")
        if self.repo_id and not REPO_ID_RE.match(self.repo_id):
            raise ValidationError(f"manifest: invalid repo_id {self.repo_id!r} (expected ORG/NAME)")
        return self

    def ordered_configs(self) -> list[str]:
        """Config names in card order: per-model, collective, baseline, then tables; by name within a kind."""
        return sorted(self.configs, key=lambda c: (CONFIG_KINDS.index(self.configs[c].kind), c))

    def default(self) -> str:
        """The default config: `default_config`, else the first image config in card order."""
        if self.default_config:
            return self.default_config
        images = [c for c in self.ordered_configs() if self.configs[c].kind != "table"]
        return (images or self.ordered_configs())[0]

    @property
    def tag(self) -> str:
        """The Hub tag of this version ("v1.0.0")."""
        return f"v{self.version}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (configs in insertion order are kept by name)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "manifest") -> Manifest:
        """Build and check a manifest from its JSON dict; unknown or missing keys raise ValidationError."""
        if not isinstance(data, dict):
            raise ValidationError(f"{where}: expected a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValidationError(f"{where}: unknown key(s) {', '.join(unknown)}")
        try:
            configs = {k: ConfigSpec(**v) for k, v in dict(data.get("configs") or {}).items()}
            return cls(**{**data, "configs": configs}).check()
        except TypeError as e:
            raise ValidationError(f"{where}: {e}") from None

    def save(self, root: str | os.PathLike[str]) -> Path:
        """Write `failmode.json` into `root` (atomic, canonical JSON)."""
        path = Path(root) / layout.MANIFEST_NAME
        write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> Manifest:
        """Read `failmode.json` from a dataset folder (or the file itself)."""
        path = Path(root)
        if path.is_dir():
            path = path / layout.MANIFEST_NAME
        return cls.from_json(read_json(path), where=str(path))
