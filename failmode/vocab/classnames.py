"""Class lists of the datasets the toolkit ships vocabularies for, in label-index order.

CIFAR names are data (`classnames.json`, the Hub `cifar10` / `cifar100` fine-label ClassLabel names; also the
offline world's `fashion-scenes` classes);
ImageNet-1k names come from `timm.data.ImageNetInfo` (first synonym of each synset), with the synset gloss kept
so an LLM prompt can tell the two "crane" classes apart.

Duplicate names, one rule everywhere: ImageNet-1k names two classes "crane" (134 the bird, 517 the machine) and
two "maillot" (638, 639), and `datasets` refuses a ClassLabel with a repeated name. The later class of each pair is
spelled with its synonyms ("crane, construction crane", "maillot, tank suit"): that one spelling is the class's
`name` and `label_name`, so vocabularies, ClassLabel features, modes files, cards and checks all agree.
`align_to_known` matches a user's class list (names in any spelling: a label name, its first synonym, any synonym,
the prompt name, a WordNet id; case, spaces and `_` aside) to a known dataset's classes and index order.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
    out: list[ClassInfo] = []
    seen: set[str] = set()
    pairs = zip(info.label_names(), info.label_descriptions(detailed=True), strict=True)
    for i, (synset, detailed) in enumerate(pairs):
        names, _, gloss = detailed.partition(": ")
        synonyms = tuple(s.strip() for s in names.split(","))
        prompt = _prompt_name("imagenet-1k", i, synonyms[0])
        name, label = synonyms[0], ", ".join(synonyms)
        if name in seen:  # the second "crane" / "maillot": one disambiguated spelling for name and label
            if label == name:
                synonyms += (prompt,)
                label = ", ".join(synonyms)
            name = label
        seen.add(name)
        out.append(ClassInfo(i, name, prompt, synset, gloss, synonyms, label_name=label))
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


def norm_name(name: str) -> str:
    """A class name as it is compared: case, runs of spaces and `_` aside ("Great_White  Shark" = "great white shark")."""
    return " ".join(name.replace("_", " ").lower().split())


def _aliases(c: ClassInfo) -> set[str]:
    names = {c.name, c.prompt_name, c.label_name or c.name, ", ".join(c.synonyms), *c.synonyms}
    return {norm_name(n) for n in names if n} | ({c.id.lower()} if c.id else set())


@functools.cache
def _alias_index(dataset: str) -> dict[str, tuple[int, ...]]:
    index: dict[str, list[int]] = {}
    for c in class_infos(dataset):
        for a in _aliases(c):
            index.setdefault(a, []).append(c.index)
    return {a: tuple(v) for a, v in index.items()}


def match_classes(names: list[str], dataset: str) -> np.ndarray | None:
    """Index in `dataset` of each of `names` (any spelling `_aliases` knows), or None when some name matches no
    class or two names match the same one. A name two classes share ("crane") goes to the one no other name took,
    else to the class at its own position."""
    index = _alias_index(dataset)
    cands = [set(index.get(norm_name(n), ())) for n in names]
    if not names or any(not c for c in cands):
        return None
    out: list[int | None] = [None] * len(names)
    while True:
        taken = {v for v in out if v is not None}
        progress = False
        for u, c in enumerate(cands):
            if out[u] is None and len(c - taken) == 1:
                out[u] = next(iter(c - taken))
                taken.add(out[u])
                progress = True
        if not progress:
            break
    for u, c in enumerate(cands):  # still shared: the class at the name's own position, else the first free one
        if out[u] is None:
            free = sorted(c - {v for v in out if v is not None})
            if not free:
                return None
            out[u] = u if u in free else free[0]
    result = np.asarray(out, dtype=np.int64)
    return result if len(set(result.tolist())) == len(result) else None


def align_to_known(names: list[str]) -> tuple[str, np.ndarray] | None:
    """(known dataset, index there of each of `names`) when `names` are a known dataset's classes: all of them (any
    order, any spelling `match_classes` accepts), or any subset given by WordNet ids; None otherwise (a class list
    of its own keeps its order)."""
    for dataset in known_datasets():
        infos = class_infos(dataset)
        ids = {c.id.lower() for c in infos if c.id}
        if len(names) != len(infos) and not (ids and all(n.lower() in ids for n in names)):
            continue
        mapping = match_classes(names, dataset)
        if mapping is not None:
            return dataset, mapping
    return None
