"""Deterministic, stratified splits of the paper: a small train subset for the head, a debug set, a test set.

ImageNet-1k: 30 training images per class train the head; the 50,000 validation images split 30 / 20 per class
into the debug set (30,000, where failures are mined) and the test set (20,000). CIFAR follows the same shape
(recipes below). Splits depend only on the labels and the seed, and are recorded as JSON beside the outputs, with
the ids of the chosen training images.

The head's training images are a small per-class subset of a large split (30 of ImageNet's ~1,300 per class): the
training source is opened with that quota (`failmode.data.sources.open_source(..., per_class=...)`), which reads
parquet files and tar shards in a seeded order until every class has its images, so only a few percent of the
split is read; the split then takes all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from failmode.errors import UsageError, ValidationError

log = logging.getLogger(__name__)

#: per-dataset split recipes (per-class counts; `debug` is taken from the evaluation split, the rest is `test`)
SPLIT_RECIPES: dict[str, dict[str, float]] = {
    "imagenet-1k": {"train_per_class": 30, "debug_per_class": 30},   # validation: 50 per class -> 30 debug, 20 test
    "cifar10": {"train_per_class": 100, "debug_per_class": 600},     # test: 1,000 per class -> 600 debug, 400 test
    "cifar100": {"train_per_class": 30, "debug_per_class": 60},      # test: 100 per class -> 60 debug, 40 test
}


@dataclass
class Splits:
    """Index arrays: `train` into the training source, `debug` and `test` into the evaluation source."""

    train: np.ndarray
    debug: np.ndarray
    test: np.ndarray
    seed: int
    recipe: dict[str, float] = field(default_factory=dict)
    train_ids: list[str] | None = None  # ids of the chosen training images (the source's `ids`)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form (recorded next to every stage output)."""
        out = {"seed": self.seed, "recipe": self.recipe, "train": self.train.tolist(),
               "debug": self.debug.tolist(), "test": self.test.tolist()}
        return out | ({"train_ids": list(self.train_ids)} if self.train_ids is not None else {})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Splits:
        """Inverse of `to_json`."""
        arr = lambda k: np.asarray(d[k], dtype=np.int64)  # noqa: E731
        return cls(arr("train"), arr("debug"), arr("test"), int(d["seed"]), dict(d.get("recipe", {})),
                   d.get("train_ids"))


def stratified_take(labels: np.ndarray, per_class: float, seed: int, salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded random `per_class` images (a count, or a fraction if < 1); returns (taken, rest), sorted.

    A class with fewer images than asked gives all it has (see `make_splits` for what is refused).
    """
    labels = np.asarray(labels)
    taken, rest = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, salt, int(c)])  # one stream per class: adding a class changes no other
        idx = rng.permutation(idx)
        n = int(round(per_class * len(idx))) if per_class < 1 else int(per_class)
        taken.append(idx[:n])
        rest.append(idx[n:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(taken), cat(rest)


def _name(class_names: Sequence[str] | None, c: int) -> str:
    return f"{c} ({class_names[c]!r})" if class_names is not None and 0 <= c < len(class_names) else str(c)


def make_splits(train_labels: np.ndarray, eval_labels: np.ndarray, *, train_per_class: float,
                debug_per_class: float, seed: int = 0, class_names: Sequence[str] | None = None,
                where: str = "the evaluation split", train_ids: Sequence[str] | None = None) -> Splits:
    """Train subset from the training labels; debug/test halves of the evaluation labels; all stratified by class.

    With `train_ids` (the training source's `ids`), the chosen images' ids are recorded.

    Refused in one line (ValidationError): an empty evaluation split, a class of it too small to give its debug
    images and at least one test image, and (when training labels are given) a class with no training image.
    A class with fewer training images than asked gives all it has (logged).
    """
    if train_per_class <= 0 or debug_per_class <= 0:
        raise UsageError("train_per_class and debug_per_class must be positive")
    eval_labels, train_labels = np.asarray(eval_labels), np.asarray(train_labels)
    if len(eval_labels) == 0:
        raise ValidationError(f"{where} holds no images")
    hint = "lower the recipe (dataset.debug_per_class in the preset, or --debug-per-class)"
    for c, n in zip(*np.unique(eval_labels, return_counts=True)):
        want = int(round(debug_per_class * n)) if debug_per_class < 1 else int(debug_per_class)
        if want < 1 or want >= n:
            raise ValidationError(f"{where}: class {_name(class_names, int(c))} has {n} images; the recipe takes "
                                  f"{debug_per_class:g} per class for the debug set, which leaves "
                                  f"{'no debug image' if want < 1 else 'no test image'}: {hint}")
    if len(train_labels):
        missing = np.setdiff1d(np.unique(eval_labels), np.unique(train_labels))
        if len(missing):
            raise ValidationError(f"the training split has no image of class {_name(class_names, int(missing[0]))}"
                                  + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        short = [int(c) for c, n in zip(*np.unique(train_labels, return_counts=True))
                 if train_per_class >= 1 and n < train_per_class]
        if short:
            log.warning("%d classes have fewer than %g training images (e.g. class %s); taking all they have",
                        len(short), train_per_class, _name(class_names, short[0]))
    train, _ = stratified_take(train_labels, train_per_class, seed, salt=1)
    debug, test = stratified_take(eval_labels, debug_per_class, seed, salt=2)
    recipe = {"train_per_class": train_per_class, "debug_per_class": debug_per_class}
    ids = [train_ids[int(i)] for i in train] if train_ids is not None else None
    return Splits(train.astype(np.int64), debug.astype(np.int64), test.astype(np.int64), seed, recipe, ids)


def recipe_for(dataset: str) -> dict[str, float]:
    """The documented split recipe of a known dataset."""
    try:
        return dict(SPLIT_RECIPES[dataset])
    except KeyError:
        raise UsageError(f"no split recipe for {dataset!r} (known: {', '.join(SPLIT_RECIPES)}): set "
                         "dataset.train_per_class and dataset.debug_per_class in the preset, or pass "
                         "--train-per-class and --debug-per-class") from None


def resolve_recipe(dataset: str, train_per_class: float | None = None,
                   debug_per_class: float | None = None) -> dict[str, float]:
    """The dataset's recipe with the given per-class counts overriding it (both given: no recipe needed)."""
    given = {"train_per_class": train_per_class, "debug_per_class": debug_per_class}
    recipe = recipe_for(dataset) if None in given.values() else {}
    return recipe | {k: v for k, v in given.items() if v is not None}
