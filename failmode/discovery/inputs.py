"""Named inputs of `failmode slices` / `failmode discover` on real data: vocabularies, class lists, class choices."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from failmode.errors import LoadError, UsageError, ValidationError
from failmode.vocab import Vocabulary


def _is_path(spec: str) -> bool:
    return spec.endswith(".json") or os.sep in spec or Path(spec).exists()


def load_vocabularies(specs: Sequence[str], kinds: Sequence[str] = ("background",)) -> list[Vocabulary]:
    """One vocabulary per (shipped dataset name, kind) and one per JSON path (its own kind); kinds must differ."""
    from failmode.vocab import load_vocabulary

    if not specs:
        raise UsageError("name a vocabulary: --vocabulary DATASET_OR_JSON")
    out = []
    for spec in specs:
        out += [load_vocabulary(spec)] if _is_path(spec) else [load_vocabulary(spec, k) for k in kinds]
    seen = [v.kind for v in out]
    dup = sorted({k for k in seen if seen.count(k) > 1})
    if dup:
        raise UsageError(f"two vocabularies of kind {dup[0]!r}: give one vocabulary per kind")
    return out


def dataset_classes(spec: str) -> tuple[list[str], list[str]]:
    """(canonical class names, the dataset's own label spellings) of a known dataset (imagenet-1k, cifar10, ...),
    a JSON file holding a list of names, or a text file with one name per line."""
    from failmode.io import read_json
    from failmode.vocab.classnames import class_names, known_datasets, label_names

    if spec in known_datasets():
        return class_names(spec), label_names(spec)
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--dataset-classes: {spec!r} is neither a known dataset ({', '.join(known_datasets())}) "
                         "nor a class-list file")
    try:
        names = read_json(path) if path.suffix == ".json" else [
            line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise LoadError(f"{path}: cannot read the class list ({e})") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValidationError(f"{path}: expected a non-empty list of class names")
    return list(names), list(names)


def pick_labels(choices: Sequence[str] | None, class_names: Sequence[str],
                vocabularies: Sequence[Vocabulary]) -> list[int]:
    """Labels of the chosen classes (names or label numbers); by default every class all vocabularies cover."""
    covered = set(range(len(class_names)))
    for v in vocabularies:
        covered &= set(v.indices)
    if not choices:
        if not covered:
            raise ValidationError("the vocabularies have no class in common with the class list")
        return sorted(covered)
    labels = []
    for c in choices:
        if c.isdigit() and int(c) < len(class_names):
            labels.append(int(c))
        elif c in class_names:
            if list(class_names).count(c) > 1:
                raise UsageError(f"class name {c!r} is ambiguous: give its label number")
            labels.append(list(class_names).index(c))
        else:
            raise UsageError(f"unknown class {c!r} (give a class name or a label number < {len(class_names)})")
    lacking = [class_names[y] for y in labels if y not in covered]
    if lacking:
        raise ValidationError(f"no vocabulary contexts for class {lacking[0]!r}")
    return labels


def check_class_names(vocabularies: Sequence[Vocabulary], class_names: Sequence[str]) -> None:
    """Each vocabulary class must name the class at its label in `class_names` (else the lists disagree)."""
    for v in vocabularies:
        for c in v.classes:
            have = class_names[c.index] if c.index < len(class_names) else None
            if have != c.name:
                raise ValidationError(f"vocabulary {v.source}: class {c.index} is {c.name!r}, but the class list "
                                      f"has {have!r} there; pass the matching --dataset-classes")
