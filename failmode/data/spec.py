"""Dataset specs, parsed in one place: a known name, `hf:ORG/NAME[@REV]`, `wds:DIR`, a local path, `#config`, labels.

Grammar (every command and stage that names a dataset goes through `parse_spec`):
  - `imagenet-1k`, `cifar10`, `cifar100`: the Hub dataset of that name (a folder of that name is `./cifar10`);
  - `hf:ORG/NAME`, `hf:ORG/NAME@REVISION`: any Hub image-classification dataset (with `hub_default`, as for debug
    data, whatever is no local path is a Hub id, known names included: `ORG/NAME`, `hf:ORG/NAME`);
  - `wds:DIR`: webdataset shards with `_info.json`;
  - a local path (an existing file or folder): a `save_to_disk` folder, a folder of parquet files, an ImageFolder
    (class-name or WordNet-id sub-folders), or a flat image folder with a labels file;
  - `#CONFIG` after a local path or Hub id: one config of a multi-config dataset (a failmode dataset folder);
  - `?labels=FILE` at the end: the labels file of a flat image folder (`file,label` CSV or Kaggle's
    `LOC_val_solution.csv`); `with_labels(spec, FILE)` is how `--labels` / a preset's `dataset.labels` add it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from failmode.errors import UsageError


@dataclass(frozen=True)
class KnownDataset:
    """A Hub dataset's id and column schema."""

    repo: str
    image_column: str
    label_column: str
    train_split: str
    eval_split: str


#: The datasets of the paper, by short name.
KNOWN_DATASETS: dict[str, KnownDataset] = {
    "imagenet-1k": KnownDataset("ILSVRC/imagenet-1k", "image", "label", "train", "validation"),
    "cifar10": KnownDataset("uoft-cs/cifar10", "img", "label", "train", "test"),
    "cifar100": KnownDataset("uoft-cs/cifar100", "img", "fine_label", "train", "test"),
}

#: what a spec is: a known name, a Hub id, webdataset shards or a local path
KINDS = ("known", "hub", "wds", "local")
_LABELS = "?labels="


@dataclass(frozen=True)
class DatasetSpec:
    """One parsed dataset spec: `kind` (one of KINDS) and the parts that kind has."""

    text: str
    kind: str
    path: Path | None = None  # local and wds
    repo: str | None = None  # known and hub
    revision: str | None = None
    config: str | None = None
    labels: Path | None = None  # labels file of a flat image folder
    known: KnownDataset | None = None
    name: str | None = None  # the known short name

    @property
    def hub_id(self) -> str:
        """The Hub id the spec names; empty for a local folder or `wds:` shards."""
        return self.repo or ""

    def default_split(self, role: str) -> str:
        """The split a role ("train" or "eval") reads when none is given: a known dataset's own names, else
        "train" / "validation"."""
        if self.known is not None:
            return self.known.train_split if role == "train" else self.known.eval_split
        return "train" if role == "train" else "validation"


def with_labels(spec: str, labels: str | None) -> str:
    """`spec` with a labels file attached (`--labels FILE`, a preset's `dataset.labels`); unchanged without one."""
    if not labels:
        return spec
    if _LABELS in spec:
        raise UsageError(f"{spec}: a labels file is given twice (in the spec and as --labels {labels})")
    return f"{spec}{_LABELS}{labels}"


def parse_spec(spec: str, *, hub_default: bool = False) -> DatasetSpec:
    """Parse a dataset spec (see the module docstring); an unknown one is a UsageError listing what is accepted."""
    text = spec
    spec, _, labels_text = spec.partition(_LABELS)
    labels = Path(labels_text).expanduser() if labels_text else None
    if labels is not None and not labels.is_file():
        raise UsageError(f"labels file {labels_text} does not exist")
    if spec.startswith("wds:"):
        return DatasetSpec(text, "wds", path=Path(spec[4:]).expanduser(), labels=labels)
    if spec in KNOWN_DATASETS and not hub_default:  # a known name is always the Hub dataset: a folder of that name is "./name"
        known = KNOWN_DATASETS[spec]
        return DatasetSpec(text, "known", repo=known.repo, known=known, name=spec, labels=labels)
    target, _, config = spec.partition("#")
    if Path(target).expanduser().exists():
        return DatasetSpec(text, "local", path=Path(target).expanduser(), config=config or None, labels=labels)
    if spec.startswith("hf:") or hub_default:
        repo, _, revision = target.removeprefix("hf:").partition("@")
        return DatasetSpec(text, "hub", repo=repo, revision=revision or None, config=config or None, labels=labels)
    raise UsageError(f"unknown dataset {text!r}: use {', '.join(KNOWN_DATASETS)}, hf:ORG/NAME, wds:DIR or an "
                     "existing local folder")
