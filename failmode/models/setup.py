"""One setup for a classifier on a dataset: `open_classifier` turns a `ModelSpec`, a `SplitSpec` and
`FeatureOptions` into the opened sources, the splits, the recipe and (on first use) the model with its feature
extractor, its classes checked against the dataset's; mine, evaluate, build and discover all start here.

Everything a stage checks about its data (names, splits, labels, recipe) is checked when the setup is opened, before
any model loads; the model is loaded, and its classes checked, when `net` or `extractor` is first used, so a stage can
check its own inputs in between.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from failmode.data.sources import ImageSource, check_disjoint_splits, open_source
from failmode.data.spec import parse_spec
from failmode.data.splits import Splits, make_splits, resolve_recipe
from failmode.errors import UsageError, ValidationError
from failmode.options import FeatureOptions, ModelSpec, SplitSpec, weights_or_none

if TYPE_CHECKING:
    import torch

    from failmode.features import FeatureExtractor


def model_key(model: str, weights: str | None) -> str:
    """Cache identity of a model and its weights; a weights file counts by path, size and modification time."""
    if weights and os.path.isfile(weights):
        st = os.stat(weights)
        weights = f"file:{os.path.abspath(weights)}:{st.st_size}:{st.st_mtime_ns}"
    if weights_or_none(weights) is None:
        weights = "random-init-seed0"  # create_classifier's seeded random init
    return f"{model}@{weights}"


def head_ident(head: str | None, *, mining: bool = False) -> str:
    """How a head given by name is described in outputs: "native" (the model's own), "train" (fitted on the train
    split), a head file by its absolute path.

    Two files write a head file's path in two forms, each kept as it always was: evaluate's results (`params.head`)
    the resolved path (links followed, `~` expanded), mining.json (`mining=True`) "file:" and `os.path.abspath`
    (what slices reads back to rebuild the classifier)."""
    if head is None or head == "train":
        return head or "native"
    return f"file:{os.path.abspath(head)}" if mining else str(Path(head).expanduser().resolve())


def check_classes(net: Any, model: str, head: Any, num_classes: int, dataset: str,
                  known: str | None = None) -> None:
    """With no head, the model's own classifier must have the dataset's classes (one line saying what to pass), and
    a model whose head is a known dataset's (timm's `infer_imagenet_subset`: 1,000 classes are ImageNet-1k's) needs
    the dataset in that class order (`known`: the source's `known`), never a class list of its own order."""
    from timm.data import infer_imagenet_subset

    from failmode.vocab.classnames import known_datasets

    have = getattr(net, "num_classes", None)
    fix = ("give it a head for these classes: --head FILE reads one (mine, evaluate, discover), --head train fits one "
           'on the train split (mine, evaluate; in a preset: "head": "train")')
    if head is None and have is not None and have != num_classes:
        raise UsageError(f"{model} has {have} classes but {dataset} has {num_classes}: {fix}")
    order = infer_imagenet_subset(net) if head is None else None
    if order in known_datasets() and known != order:
        raise UsageError(f"{dataset}: its class list matches no known class order, so its labels cannot be "
                         f"matched to {model}'s own {order} head: name its classes as {order} does (class names "
                         f"or WordNet ids, in any order) or {fix}")


def known_order(names: Sequence[str]) -> str | None:
    """The known dataset whose classes `names` are, in its own index order (a class list's `known`), else None."""
    from failmode.vocab.classnames import align_to_known

    found = align_to_known(list(names))
    return found[0] if found is not None and list(found[1]) == list(range(len(names))) else None


def _train_source(dataset: str, train_split: str | None, per_class: float, seed: int) -> ImageSource:
    """The head's training images: a count per class is taken as the source is read (`open_source`'s
    `per_class`: a few percent of a large split); a fraction needs the whole split's labels."""
    take = int(per_class) if per_class >= 1 else None
    return open_source(dataset, train_split or parse_spec(dataset).default_split("train"), per_class=take, seed=seed)


@dataclass
class ClassifierSetup:
    """A classifier on a dataset, ready to run: the sources and splits (opened and checked), the recipe, the model's
    cache key, and the model with its `FeatureExtractor` (loaded on first use, its classes checked then)."""

    model: ModelSpec
    data: SplitSpec | None
    extraction: FeatureOptions
    class_names: list[str] | None  # the dataset's classes (None: not checked, e.g. a recorded run's model)
    known: str | None  # the known dataset whose class order the labels follow
    where: str  # the dataset as error messages name it
    train: ImageSource | None = None
    source: ImageSource | None = None
    splits: Splits | None = None
    recipe: dict[str, float] = field(default_factory=dict)

    @property
    def model_key(self) -> str:
        """Cache identity of the model and its weights (`model_key`)."""
        return model_key(self.model.id, self.model.weights)

    @cached_property
    def net(self) -> torch.nn.Module:
        """The timm model with its weights, its classes checked against the dataset's (`check_classes`)."""
        from failmode.models.classifier import create_classifier

        net = create_classifier(self.model.id, self.model.weights)
        if self.class_names is not None:
            check_classes(net, self.model.id, self.model.head, len(self.class_names), self.where, self.known)
        return net

    @cached_property
    def extractor(self) -> FeatureExtractor:
        """The model bound to its cache key, its evaluation preprocessing and `extraction`."""
        from failmode.features import FeatureExtractor
        from failmode.models.classifier import eval_preprocess

        return FeatureExtractor(self.net, self.model_key,
                                eval_preprocess(self.net, self.model.image_size, self.model.crop_pct), self.extraction)


def open_classifier(model: ModelSpec, data: SplitSpec | None, extraction: FeatureOptions, *, need_train: bool = False,
                    classes: Sequence[str] | None = None, where: str | None = None) -> ClassifierSetup:
    """The one setup of a classifier on a dataset (mine, evaluate, build, discover).

    With `data`, its evaluation source is opened (the train source too with `need_train`: labels, classes and
    disjointness checked), the splits made with the recipe; the dataset's classes are what the model must predict.
    Without `data` (discover: generated images), `classes` name what it must predict (None: nothing is checked) and
    `where` names their list in messages. The model name is checked now, the model loaded on first use.
    """
    from failmode.models.classifier import known_model

    known_model(model.id)
    if data is None:
        names = None if classes is None else list(classes)
        return ClassifierSetup(model, None, extraction, names, None if names is None else known_order(names),
                               where or "the class list")
    recipe = resolve_recipe(data.dataset, data.train_per_class, data.debug_per_class)
    source = open_source(data.dataset, data.split)
    train = _train_source(data.dataset, data.train_split, recipe["train_per_class"], data.split_seed) \
        if need_train else None
    check_disjoint_splits(train, source, data.dataset)
    if train is not None and train.class_names != source.class_names:
        raise ValidationError(f"{data.dataset}: the training split's classes differ from the evaluation split's")
    splits = make_splits(train.labels if train is not None else np.zeros(0, np.int64), source.labels,
                         seed=data.split_seed, class_names=source.class_names,
                         where=f"{data.dataset} (split {data.split or 'default'})",
                         train_ids=None if train is None else train.ids, **recipe)
    return ClassifierSetup(model, data, extraction, source.class_names, source.known, data.dataset, train, source,
                           splits, recipe)
