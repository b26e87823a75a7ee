"""Build presets: one JSON file per target dataset in `builders/` (imported as `failmode.builders`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import failmode
from failmode.errors import UsageError, ValidationError
from failmode.generation.plan import GenerationSettings
from failmode.io import read_json

PRESET_FORMAT = "failmode-preset/1"
BUILDERS_DIR = Path(failmode.__file__).parent / "builders"
_REQUIRED = ("name", "version", "dataset", "vocabulary", "models", "families", "attribution", "generation",
             "baseline", "render", "quality", "image_format")


@dataclass
class Preset:
    """A target dataset: classifier models and families, attribution, generation, filter and output settings."""

    name: str
    version: str
    dataset: dict[str, Any]
    vocabulary: dict[str, Any]
    models: list[dict[str, Any]]
    families: dict[str, list[str]]
    attribution: dict[str, Any]
    generation: GenerationSettings
    baseline: dict[str, Any]
    render: dict[str, Any]
    quality: dict[str, Any]
    image_format: str = "png"
    pretty_name: str = ""
    description: str = ""
    repo_id: str = ""
    tags: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def model_ids(self) -> list[str]:
        """The classifier ids, in preset order."""
        return [m["id"] for m in self.models]


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in BUILDERS_DIR.glob("*.json"))


def load_preset(name_or_path: str | os.PathLike[str]) -> Preset:
    """A shipped preset by name ("imagenet-bg-debug") or a preset JSON file by path, checked."""
    path = Path(name_or_path)
    if not path.exists():
        path = BUILDERS_DIR / f"{name_or_path}.json"
        if not path.exists():
            raise UsageError(f"unknown preset {str(name_or_path)!r} (shipped: {', '.join(list_presets())}; "
                             "or pass a preset JSON path)")
    data = read_json(path)
    if data.get("format") != PRESET_FORMAT:
        raise ValidationError(f"{path}: not a {PRESET_FORMAT} file (format {data.get('format')!r})")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValidationError(f"{path}: missing key(s) {', '.join(missing)}")
    known = set(Preset.__dataclass_fields__) | {"format"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValidationError(f"{path}: unknown key(s) {', '.join(unknown)}")
    body = {k: v for k, v in data.items() if k != "format"}
    preset = Preset(**{**body, "generation": GenerationSettings.from_dict(data["generation"], f"{path}: generation"),
                       "source": str(path)})
    _check(preset, path)
    return preset


def _check(p: Preset, path: Path) -> None:
    ids = p.model_ids
    if not ids or len(set(ids)) != len(ids):
        raise ValidationError(f"{path}: models must be a non-empty list of distinct ids")
    for fam, members in p.families.items():
        stray = sorted(set(members) - set(ids))
        if stray:
            raise ValidationError(f"{path}: family {fam!r} names model(s) not in models: {', '.join(stray)}")
    if p.attribution.get("k", p.generation.k) != p.generation.k:
        raise ValidationError(f"{path}: attribution k ({p.attribution['k']}) differs from generation k "
                              f"({p.generation.k})")
