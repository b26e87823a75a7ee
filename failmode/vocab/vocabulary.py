"""Per-class context vocabularies: the data model, loading (shipped or from a path) and validation.

A vocabulary file (format `failmode-vocabulary/1`) lists, for each class of a dataset, contexts in which the class
is *uncommon* (kind `background`: "in a desert") or uncommon colours (kind `color`: "that is bright pink"),
phrased to complete the template "a photo of a {class_name} {context}".
"""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failmode.errors import UsageError, ValidationError
from failmode.io import read_json, write_json
from failmode.prompts import fill_template
from failmode.typed import labelled_entry
from failmode.vocab import text
from failmode.vocab.classnames import CLASS_LISTS, known_datasets, label_names, norm_name
from failmode.vocab.classnames import class_names as dataset_class_names
from failmode.vocab.kinds import KINDS

log = logging.getLogger(__name__)

FORMAT = "failmode-vocabulary/1"
DEFAULT_TEMPLATE = "a photo of a {class_name} {context}"
DATA_DIR = Path(__file__).with_name("data")
MIN_CONTEXTS = 6
MAX_CONTEXTS = 12
PROVENANCE_KEYS = ("generator", "prompt", "date", "post_processing")
_MAX_PROBLEMS_SHOWN = 3


@dataclass
class VocabClass:
    """One class of a vocabulary: label index, canonical name, prompt name, contexts and optional id (synset)."""

    index: int
    name: str
    prompt_name: str
    contexts: list[str]
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The class as it is written to a vocabulary file."""
        d: dict[str, Any] = {"index": self.index, "name": self.name, "prompt_name": self.prompt_name,
                             "contexts": list(self.contexts)}
        if self.id is not None:
            d["id"] = self.id
        return d


@dataclass
class Vocabulary:
    """A versioned per-class context vocabulary for one (dataset, kind)."""

    dataset: str
    kind: str
    version: str
    template: str
    provenance: dict[str, Any]
    classes: list[VocabClass]
    source: str = field(default="<memory>", compare=False)

    def __post_init__(self) -> None:
        self._by_index = {c.index: c for c in self.classes}

    def get(self, label: int) -> VocabClass:
        """The class with label index `label` (ValidationError if the vocabulary lacks it)."""
        try:
            return self._by_index[label]
        except KeyError:
            raise ValidationError(f"{self.source}: no class with index {label} in the {self.dataset} "
                                  f"{self.kind} vocabulary") from None

    def contexts(self, label: int) -> list[str]:
        """The contexts of class `label`; ValidationError if the class is missing or has none."""
        cls = self.get(label)
        if not cls.contexts:
            raise ValidationError(f"{self.source}: class {label} {cls.name!r} has no contexts")
        return list(cls.contexts)

    def prompt(self, label: int, context: str | None) -> str:
        """'a photo of a {prompt_name} {context}' for class `label`; without a context, 'a photo of a {prompt_name}'."""
        return fill_template(self.template, self.get(label).prompt_name, context)

    @property
    def class_names(self) -> list[str]:
        """Canonical class names, in the vocabulary's (index) order."""
        return [c.name for c in self.classes]

    @property
    def indices(self) -> list[int]:
        """Label indices of the classes the vocabulary covers."""
        return [c.index for c in self.classes]

    def label_names(self) -> list[str]:
        """Class names as the vocabulary's dataset spells them in its ClassLabel (known datasets), else `class_names`."""
        return label_names(self.dataset) if self.dataset in known_datasets() else self.class_names

    def check_classes(self, class_names: Sequence[str], dataset: str) -> None:
        """Every class of the vocabulary must be the dataset's class of the same index, by name: matched by name,
        never by label number alone. The dataset must spell it as the vocabulary's `label_names` do, since debug
        datasets are matched to it by exact name; a spelling that differs only in case, spaces, `_` or a trailing
        synonym list is named as such (a known dataset's full class list or WordNet ids are aligned to its spelling
        when the source opens, so this is a copy of a few classes, or of a dataset with its own vocabulary).
        Raises a one-line ValidationError otherwise, before any model loads."""
        known = label_names(self.dataset) if self.dataset in known_datasets() else []
        for c in self.classes:
            if c.index >= len(class_names):
                raise ValidationError(f"vocabulary {self.source} has class {c.index} ({c.name!r}) but {dataset} has "
                                      f"{len(class_names)} classes: use the vocabulary of this dataset")
            theirs = class_names[c.index]
            ours = known[c.index] if c.index < len(known) else c.name
            if theirs == ours:
                continue
            if not {_norm(theirs), _norm(theirs.split(",")[0])} & {_norm(c.name), _norm(ours)}:
                raise ValidationError(f"vocabulary {self.source} calls class {c.index} {c.name!r}, but {dataset} calls "
                                      f"it {theirs!r}: use the vocabulary of this dataset")
            raise ValidationError(f"{dataset} spells class {c.index} {theirs!r}, the vocabulary {ours!r}: debug data "
                                  "is matched to a dataset by exact class name, so rename the class to "
                                  f"{ours!r} (case, spaces and synonyms count)")

    def to_dict(self) -> dict[str, Any]:
        """The vocabulary as written to a file."""
        return {"format": FORMAT, "dataset": self.dataset, "kind": self.kind, "version": self.version,
                "template": self.template, "provenance": self.provenance,
                "classes": [c.to_dict() for c in self.classes]}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the vocabulary atomically as canonical JSON; returns the path."""
        write_json(path, self.to_dict())
        return Path(path)


def _norm(name: str) -> str:
    return norm_name(name)


def shipped_path(dataset: str, kind: str) -> Path:
    """Where the shipped vocabulary for (dataset, kind) lives (it may not exist)."""
    return DATA_DIR / f"{dataset}.{kind}.json"


def shipped_vocabularies() -> list[tuple[str, str]]:
    """(dataset, kind) of every vocabulary shipped with the toolkit, sorted."""
    out = []
    for p in DATA_DIR.glob("*.json"):
        dataset, _, kind = p.stem.rpartition(".")
        if dataset and kind in KINDS:
            out.append((dataset, kind))
    return sorted(out)


def load_vocabulary(name_or_path: str | os.PathLike[str], kind: str = "background") -> Vocabulary:
    """Load a shipped vocabulary by dataset name ("cifar10", with `kind`) or a vocabulary JSON file by path.

    The file's structure is checked (ValidationError naming the file and class); count bounds and duplicates
    are checked by `validate`.
    """
    s = os.fspath(name_or_path)
    path = Path(s)
    if not (path.suffix == ".json" or os.sep in s or path.is_file()):  # a folder called "cifar10" is no vocabulary
        path = shipped_path(s, kind)
        if not path.exists():
            known = ", ".join(f"{d} ({k})" for d, k in shipped_vocabularies()) or "none"
            raise UsageError(f"no shipped {kind} vocabulary for {s!r} (shipped: {known}; or pass a JSON path)")
    return from_dict(read_json(path), source=str(path))


def from_dict(doc: Any, source: str = "<memory>") -> Vocabulary:
    """Build a Vocabulary from parsed JSON, checking its structure; errors name `source` and the class."""
    if not isinstance(doc, dict):
        raise ValidationError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise ValidationError(f"{source}: 'format' must be {FORMAT!r}, got {doc.get('format')!r}")
    for key in ("dataset", "kind", "version", "template"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise ValidationError(f"{source}: missing or empty string field {key!r}")
    if doc["kind"] not in KINDS:
        raise ValidationError(f"{source}: unknown kind {doc['kind']!r} (known: {', '.join(KINDS.names())})")
    if "{class_name}" not in doc["template"] or "{context}" not in doc["template"]:
        raise ValidationError(f"{source}: template must contain {{class_name}} and {{context}}")
    if not isinstance(doc.get("provenance"), dict):
        raise ValidationError(f"{source}: missing 'provenance' object")
    if not isinstance(doc.get("classes"), list) or not doc["classes"]:
        raise ValidationError(f"{source}: 'classes' must be a non-empty list")
    classes = [_parse_class(c, i, source) for i, c in enumerate(doc["classes"])]
    _check_order(classes, source)
    _check_known_names(doc["dataset"], classes, source)
    return Vocabulary(doc["dataset"], doc["kind"], doc["version"], doc["template"], doc["provenance"], classes,
                      source=source)


def _parse_class(c: Any, pos: int, source: str) -> VocabClass:
    index, name = labelled_entry(c, f"{source}: classes[{pos}]", "index", "name")
    where = f"{source}: class {index} {name!r}"
    contexts = c.get("contexts")
    if not isinstance(contexts, list) or not contexts:
        raise ValidationError(f"{where}: 'contexts' must be a non-empty list")
    if not all(isinstance(x, str) and x.strip() for x in contexts):
        raise ValidationError(f"{where}: every context must be a non-empty string")
    prompt_name = c.get("prompt_name", name)
    if not isinstance(prompt_name, str) or not prompt_name.strip():
        raise ValidationError(f"{where}: 'prompt_name' must be a non-empty string")
    cid = c.get("id")
    if cid is not None and not isinstance(cid, str):
        raise ValidationError(f"{where}: 'id' must be a string")
    return VocabClass(index, name, prompt_name, list(contexts), cid)


def _check_order(classes: list[VocabClass], source: str) -> None:
    for prev, cur in itertools.pairwise(classes):
        if cur.index <= prev.index:
            raise ValidationError(f"{source}: class {cur.index} {cur.name!r}: classes must be listed in strictly "
                                  f"increasing index order (after {prev.index})")


def _check_known_names(dataset: str, classes: list[VocabClass], source: str) -> None:
    if dataset not in CLASS_LISTS:
        return
    names = dataset_class_names(dataset)
    for c in classes:
        if c.index >= len(names) or names[c.index] != c.name:
            expected = repr(names[c.index]) if c.index < len(names) else f"an index below {len(names)}"
            raise ValidationError(f"{source}: class {c.index} {c.name!r}: unknown class for {dataset} "
                                  f"(expected {expected})")


def validate(vocab: Vocabulary, class_names: list[str] | None = None, *, min_contexts: int = MIN_CONTEXTS,
             max_contexts: int | None = MAX_CONTEXTS, complete: bool = True) -> None:
    """Check coverage, per-class count bounds, phrasing, duplicates after normalisation and provenance.

    `class_names` (index order) defaults to the dataset's known class list when the dataset is registered;
    then every class must be present (unless `complete=False`, for a vocabulary of a few classes) with the
    matching name. Raises one ValidationError summarising the problems.
    """
    if class_names is None and vocab.dataset in CLASS_LISTS:
        class_names = dataset_class_names(vocab.dataset)
    problems = _provenance_problems(vocab.provenance)
    if class_names is not None:
        problems += _coverage_problems(vocab, class_names, complete)
    for c in vocab.classes:
        problems += [f"class {c.index} {c.name!r}: {p}" for p in _class_problems(vocab.kind, c, min_contexts,
                                                                                    max_contexts)]
    if problems:
        shown = "; ".join(problems[:_MAX_PROBLEMS_SHOWN])
        more = f" (+{len(problems) - _MAX_PROBLEMS_SHOWN} more)" if len(problems) > _MAX_PROBLEMS_SHOWN else ""
        raise ValidationError(f"{vocab.source}: {shown}{more}")


def _provenance_problems(prov: dict[str, Any]) -> list[str]:
    problems = [f"provenance lacks {k!r}" for k in PROVENANCE_KEYS if not prov.get(k)]
    if prov.get("date"):
        try:
            _dt.date.fromisoformat(str(prov["date"]))
        except ValueError:
            problems.append(f"provenance date {prov['date']!r} is not YYYY-MM-DD")
    if "post_processing" in prov and not isinstance(prov["post_processing"], list):
        problems.append("provenance post_processing must be a list")
    return problems


def _coverage_problems(vocab: Vocabulary, class_names: list[str], complete: bool) -> list[str]:
    have = {c.index: c.name for c in vocab.classes}
    problems = [f"class {i} {n!r} is missing" for i, n in enumerate(class_names) if complete and i not in have]
    problems += [f"class {i} {have[i]!r} does not match the dataset's name {class_names[i]!r}"
                 for i in have if i < len(class_names) and have[i] != class_names[i]]
    problems += [f"class {i} {have[i]!r} is beyond the dataset's {len(class_names)} classes"
                 for i in have if i >= len(class_names)]
    return problems


def _class_problems(kind_name: str, c: VocabClass, lo: int, hi: int | None) -> list[str]:
    kind = KINDS.get(kind_name)
    n = len(c.contexts)
    problems = []
    if n < lo or (hi is not None and n > hi):
        problems.append(f"{n} contexts (need {lo}-{hi if hi is not None else 'any'})")
    seen: dict[str, str] = {}
    for ctx in c.contexts:
        key = text.norm_key(ctx)
        if not key:
            problems.append(f"context {ctx!r} has no content words")
        elif key in seen:
            first = seen[key]
            problem = (f"context {ctx!r} is listed more than once" if first == ctx
                       else f"contexts {first!r} and {ctx!r} are duplicates after normalisation")
            if problem not in problems:  # each duplicate named once, however often it repeats
                problems.append(problem)
        seen.setdefault(key, ctx)
        if not kind.is_phrased(ctx):
            problems.append(f"context {ctx!r} is not phrased as a {kind.name} entry ({kind.rule})")
        elif (why := kind.extra_check(ctx)) is not None:
            problems.append(f"context {ctx!r} {why}")
    return problems
