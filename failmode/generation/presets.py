"""Build presets: one JSON file per target dataset in `builders/` (imported as `failmode.builders`).

Every section of a preset is a frozen dataclass below; an unknown key or a value of the wrong type is one
line naming the file, section and key. Every accepted key reaches the stage it configures, and the manifest
records the values used (`Preset.record`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import failmode
from failmode.errors import UsageError, ValidationError
from failmode.generation.plan import GenerationSettings
from failmode.io import read_json
from failmode.options import AttributionOptions, ModelSpec, RenderOptions, SplitSpec
from failmode.typed import bounded, from_mapping, to_json

PRESET_FORMAT = "failmode-preset/1"
BUILDERS_DIR = Path(failmode.__file__).parent / "builders"


@dataclass(frozen=True)
class DatasetSection:
    """The classifiers' dataset: a known name, hf:ORG/NAME or a local folder, its splits and split recipe."""

    id: str
    split: str | None = None  # evaluation split holding the debug images (default: the dataset's own)
    train_split: str | None = None  # split a `head: train` head is fitted on (default: the dataset's own)
    # recipe: train images per class (default: the known dataset's recipe)
    train_per_class: float | None = bounded(None, 0, 1_000_000, lo_open=True)
    # recipe: debug images per class, a count or a fraction < 1
    debug_per_class: float | None = bounded(None, 0, 1_000_000, lo_open=True)
    split_seed: int = 0  # seed of the debug/test split and of the seed/heldout halves
    labels: str | None = None  # labels file of a flat image folder (`file,label` CSV or LOC_val_solution.csv)

    @property
    def spec(self) -> str:
        """The dataset as `failmode.data.sources.open_source` reads it (the id, with the labels file if any)."""
        from failmode.data.spec import with_labels

        return with_labels(self.id, self.labels)

    def splits(self, recipe: dict[str, float]) -> SplitSpec:
        """The dataset and its splits as the one classifier setup (`failmode.models.setup`) takes them, with the
        per-class `recipe` resolved for it (`failmode.data.splits.resolve_recipe`)."""
        return SplitSpec(self.spec, self.split, self.train_split, split_seed=self.split_seed, **recipe)


@dataclass(frozen=True)
class VocabularySection:
    """The context vocabulary: a shipped dataset name or a vocabulary JSON path, and its kind."""

    dataset: str
    kind: str = "background"


@dataclass(frozen=True)
class BaselineSection:
    """The controls: the class-only config ("a photo of a {class}") and the random-context config."""

    enabled: bool = True  # the class-only config "baseline"
    images_per_class: int | None = bounded(None, 1, 10_000)  # class-only images per class (default: k x images_per_mode)
    random_context: bool = True  # the "random-context" config: per class as many images as the model configs


@dataclass(frozen=True)
class QualitySection:
    """The CLIP quality filter of generated images."""

    enabled: bool = False
    clip_model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    min_class_score: float | None = None
    min_context_score: float | None = None
    reserve: int = bounded(3, 0, 1000)  # spare seeds per shard that replace dropped images


#: keys of RenderOptions a preset may not set: the device is the machine's, the scheduler is generation's
_RENDER_EXCLUDED = ("device", "scheduler")


@dataclass(frozen=True)
class Preset:
    """A target dataset: classifier models and families, attribution, generation, filter and output settings."""

    name: str
    version: str
    dataset: DatasetSection
    vocabulary: VocabularySection
    models: tuple[ModelSpec, ...]  # the classifiers (failmode.options.ModelSpec)
    families: dict[str, list[str]]
    attribution: AttributionOptions
    generation: GenerationSettings
    baseline: BaselineSection
    render: RenderOptions
    quality: QualitySection
    image_format: str = "png"
    pretty_name: str = ""
    description: str = ""
    repo_id: str = ""
    tags: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def model_ids(self) -> list[str]:
        """The classifier ids, in preset order."""
        return [m.id for m in self.models]

    def replace(self, **sections: dict[str, Any]) -> Preset:
        """A copy with some keys of some sections changed, e.g. `replace(dataset={"id": "./cifar10"})`, checked as
        a preset file is (types, values)."""
        where = self.source or "preset"
        changed = {}
        for name, values in sections.items():
            current = getattr(self, name)
            if not dataclasses.is_dataclass(current) or name not in _SECTIONS:
                raise UsageError(f"{where}: {name!r} is not a section that can be overridden")
            data = {k: v for k, v in to_json(current).items() if k not in _RENDER_EXCLUDED or name != "render"}
            changed[name] = _SECTIONS[name](data | values, f"{where}: {name}")
        out = dataclasses.replace(self, **changed)
        _check(out, where)
        return out

    def record(self) -> dict[str, Any]:
        """The preset's settings as JSON values (what the manifest records as used)."""
        return to_json(self)


#: how each typed section is built from its JSON object (one-line errors naming `where`)
_SECTIONS: dict[str, Any] = {
    "dataset": lambda v, w: from_mapping(DatasetSection, v, w),
    "vocabulary": lambda v, w: from_mapping(VocabularySection, v, w),
    "attribution": lambda v, w: from_mapping(AttributionOptions, v, w),
    "generation": GenerationSettings.from_dict,
    "baseline": lambda v, w: from_mapping(BaselineSection, v, w),
    "render": lambda v, w: from_mapping(RenderOptions, v, w, exclude=_RENDER_EXCLUDED),
    "quality": lambda v, w: from_mapping(QualitySection, v, w),
}


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in BUILDERS_DIR.glob("*.json"))


def load_preset(name_or_path: str | os.PathLike[str]) -> Preset:
    """A shipped preset by name ("imagenet-bg-debug") or a preset JSON file by path, checked."""
    s = os.fspath(name_or_path)
    path = Path(s)
    if not (path.suffix == ".json" or os.sep in s):
        path = BUILDERS_DIR / f"{s}.json"
        if not path.exists():
            raise UsageError(f"unknown preset {s!r} (shipped: {', '.join(list_presets())}; or pass a preset JSON path)")
    elif not path.is_file():
        raise UsageError(f"preset file {path} does not exist")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != PRESET_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValidationError(f"{path}: not a {PRESET_FORMAT} file (format {found!r})")
    body = {k: v for k, v in data.items() if k != "format"}
    for key, make in _SECTIONS.items():
        if key in body:
            body[key] = make(body[key], f"{path}: {key}")
    preset = from_mapping(Preset, {**body, "source": str(path)}, str(path), exclude=())
    _check(preset, path)
    return preset


def _check(p: Preset, path: object) -> None:
    ids = p.model_ids
    if not ids or len(set(ids)) != len(ids):
        raise ValidationError(f"{path}: models must be a non-empty list of distinct ids")
    for fam, members in p.families.items():
        stray = sorted(set(members) - set(ids))
        if stray:
            raise ValidationError(f"{path}: family {fam!r} names model(s) not in models: {', '.join(stray)}")
    if p.image_format not in ("png", "jpeg"):
        raise ValidationError(f"{path}: image_format must be 'png' or 'jpeg', got {p.image_format!r}")
    from failmode.dataset.manifest import SEMVER_RE

    if not SEMVER_RE.match(p.version):
        raise ValidationError(f"{path}: version {p.version!r} is not semver (MAJOR.MINOR.PATCH, e.g. 1.0.0)")
    p.generation.check(f"{path}: generation")
    from failmode.dataset.layout import check_distinct, config_slug

    names = {f"model {m!r}": config_slug(m) for m in ids}
    names |= {f"family {fam!r}": config_slug(f"collective-{fam}") for fam in p.families}
    if p.baseline.enabled:
        names["the class-only control"] = "baseline"
    if p.baseline.random_context:
        names["the random-context control"] = "random-context"
    check_distinct(names, str(path))
