"""Class lists of the datasets the toolkit ships vocabularies for, in label-index order.

CIFAR names are data (`classnames.json`, the Hub `cifar10` / `cifar100` fine-label ClassLabel names; also the
offline world's `fashion-scenes` classes);
ImageNet-1k names come from `timm.data.ImageNetInfo` (first synonym of each synset), with the synset gloss kept
so an LLM prompt can tell the two "crane" classes apart.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from failmode.registry import Registry

_PATH = Path(__file__).with_name("classnames.json")


@dataclass(frozen=True)
class ClassInfo:
    """One class of a dataset: label index, canonical name, name used in prompts, optional id and gloss."""

    index: int
    name: str
    prompt_name: str
    id: str | None = None
    gloss: str | None = None
    synonyms: tuple[str, ...] = ()
    label_name: str | None = None  # the dataset's own ClassLabel spelling, when it differs from `name`


CLASS_LISTS: Registry[Callable[[], list[ClassInfo]]] = Registry("dataset")


@functools.cache
def _data() -> dict:
    return json.loads(_PATH.read_text(encoding="utf-8"))


def _prompt_name(dataset: str, index: int, name: str) -> str:
    overrides = _data()[dataset].get("prompt_names", {})
    return overrides.get(str(index), name.replace("_", " "))


def _from_json(dataset: str) -> list[ClassInfo]:
    names = _data()[dataset]["names"]
    return [ClassInfo(i, n, _prompt_name(dataset, i, n)) for i, n in enumerate(names)]


@CLASS_LISTS.register("cifar10")
def _cifar10() -> list[ClassInfo]:
    return _from_json("cifar10")


@CLASS_LISTS.register("cifar100")
def _cifar100() -> list[ClassInfo]:
    return _from_json("cifar100")


@CLASS_LISTS.register("fashion-scenes")
def _fashion_scenes() -> list[ClassInfo]:
    return _from_json("fashion-scenes")


@CLASS_LISTS.register("imagenet-1k")
def _imagenet() -> list[ClassInfo]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    out = []
    pairs = zip(info.label_names(), info.label_descriptions(detailed=True), strict=True)
    for i, (synset, detailed) in enumerate(pairs):
        names, _, gloss = detailed.partition(": ")
        synonyms = tuple(s.strip() for s in names.split(","))
        out.append(ClassInfo(i, synonyms[0], _prompt_name("imagenet-1k", i, synonyms[0]), synset, gloss, synonyms,
                             label_name=", ".join(synonyms)))
    return out


@functools.cache
def class_infos(dataset: str) -> tuple[ClassInfo, ...]:
    """The classes of a registered dataset (UsageError listing the known ones otherwise)."""
    return tuple(CLASS_LISTS.get(dataset)())


def class_names(dataset: str) -> list[str]:
    """Canonical class names of a registered dataset, in index order."""
    return [c.name for c in class_infos(dataset)]


def label_names(dataset: str) -> list[str]:
    """Class names as the dataset's own ClassLabel spells them (ImageNet-1k on the Hub: "tench, Tinca tinca").

    Debug datasets use these, so their labels line up by name with the dataset a model is evaluated on.
    """
    return [c.label_name or c.name for c in class_infos(dataset)]


def known_datasets() -> list[str]:
    """Datasets whose class lists the toolkit knows."""
    return CLASS_LISTS.names()
