"""`mine_failures`: one model on one dataset, from names to failures.parquet (the `failmode mine` stage)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from failmode.data.sources import BadImages, ImageSource, check_disjoint_splits, open_source
from failmode.data.spec import parse_spec
from failmode.data.splits import Splits, make_splits, resolve_recipe
from failmode.errors import UsageError, ValidationError
from failmode.head import DATASET_HEAD_RECIPE, HEAD_FILE, LinearHead, train_dataset_head
from failmode.io import write_json
from failmode.mining.failures import failures_from_predictions, predict, write_failures, write_predictions
from failmode.options import FeatureOptions, weights_or_none

log = logging.getLogger(__name__)


def model_key(model: str, weights: str | None) -> str:
    """Cache identity of a model and its weights; a weights file counts by path, size and modification time."""
    if weights and os.path.isfile(weights):
        st = os.stat(weights)
        weights = f"file:{os.path.abspath(weights)}:{st.st_size}:{st.st_mtime_ns}"
    if weights_or_none(weights) is None:
        weights = "random-init-seed0"  # create_classifier's seeded random init
    return f"{model}@{weights}"


def _train_source(dataset: str, train_split: str | None, per_class: float, seed: int) -> ImageSource:
    """The head's training images: a count per class is taken as the source is read (`open_source`'s
    `per_class`: a few percent of a large split); a fraction needs the whole split's labels."""
    take = int(per_class) if per_class >= 1 else None
    return open_source(dataset, train_split or parse_spec(dataset).default_split("train"), per_class=take, seed=seed)


def split_sources(dataset: str, split: str | None, train_split: str | None,
                  train_per_class: float | None, debug_per_class: float | None, split_seed: int,
                  needs_train: bool) -> tuple[ImageSource | None, ImageSource, Splits, dict[str, float]]:
    """(train source or None, evaluation source, Splits, recipe) of a dataset: the sources opened (labels and
    classes checked), the splits made; everything a stage checks about its data before a model loads."""
    recipe = resolve_recipe(dataset, train_per_class, debug_per_class)
    source = open_source(dataset, split)
    train = _train_source(dataset, train_split, recipe["train_per_class"], split_seed) if needs_train else None
    check_disjoint_splits(train, source, dataset)
    if train is not None and train.class_names != source.class_names:
        raise ValidationError(f"{dataset}: the training split's classes differ from the evaluation split's")
    splits = make_splits(train.labels if train is not None else np.zeros(0, np.int64), source.labels,
                         seed=split_seed, class_names=source.class_names,
                         where=f"{dataset} (split {split or 'default'})",
                         train_ids=None if train is None else train.ids, **recipe)
    return train, source, splits, recipe


def _resolve_head(head: Any, train: ImageSource | None, train_idx: np.ndarray, out: Path, record: dict[str, Any],
                  features: Any) -> tuple[Any, str]:
    """(head object or None, description recorded in the outputs); a trained head is saved as out/head.safetensors."""
    if head is None:
        return None, "native"
    if isinstance(head, (str, os.PathLike)) and str(head) == "train":
        assert train is not None
        feats = features(train, train_idx, "train features")
        fitted = train_dataset_head(feats.features, feats.labels, len(train.class_names),
                                    device=record.get("device"))
        meta = {**{k: v for k, v in record.items() if k != "device"}, "train_source": train.ident,
                "n_train": len(feats.labels), "recipe": DATASET_HEAD_RECIPE, "class_names": train.class_names}
        fitted.save(out / HEAD_FILE, metadata=meta)
        return fitted, f"linear head trained on {len(feats.labels)} train images ({HEAD_FILE})"
    if isinstance(head, (str, os.PathLike)):
        return LinearHead.load(head), f"file:{os.path.abspath(head)}"
    return head, f"object:{type(head).__name__}"


def check_classes(net: Any, model: str, head: Any, num_classes: int, dataset: str,
                  known: str | None = None) -> None:
    """With no head, the model's own classifier must have the dataset's classes (one line saying what to pass), and
    a model whose head is a known dataset's (timm's `infer_imagenet_subset`: 1,000 classes are ImageNet-1k's) needs
    the dataset in that class order (`known`: the source's `known`), never a class list of its own order."""
    from timm.data import infer_imagenet_subset

    from failmode.vocab.classnames import known_datasets

    have = getattr(net, "num_classes", None)
    fix = ('give it a head for this dataset (--head train fits one on the train split, --head FILE reads one; in a '
           'preset: "head": "train")')
    if head is None and have is not None and have != num_classes:
        raise UsageError(f"{model} has {have} classes but {dataset} has {num_classes}: {fix}")
    order = infer_imagenet_subset(net) if head is None else None
    if order in known_datasets() and known != order:
        raise UsageError(f"{dataset}: its class list matches no known class order, so its labels cannot be "
                         f"matched to {model}'s own {order} head: name its classes as {order} does (class names "
                         f"or WordNet ids, in any order) or {fix}")


def mine_failures(
    model: str,
    dataset: str,
    *,
    out_dir: str | os.PathLike[str],
    weights: str | None = "timm",
    split_seed: int = 0,
    extraction: FeatureOptions = FeatureOptions(),
    head: Any | None = None,
    split: str | None = None,
    train_split: str | None = None,
    train_per_class: float | None = None,
    debug_per_class: float | None = None,
    image_size: int | None = None,
    crop_pct: float | None = None,
    on_bad_image: str = "error",
) -> Path:
    """Mine a timm model's failures on the debug split of `dataset`; returns out_dir/failures.parquet.

    Writes failures.parquet (one row per misclassified debug image, seed/heldout half), splits.json,
    predictions.npz and mining.json. The model's own logits are used when its classes are the dataset's;
    otherwise `head` is required: a head file, "train" (fit on the train split with
    `failmode.head.train_dataset_head` and saved as out_dir/head.safetensors, with what it was trained on), or a
    head object (see `failmode.head.apply_head`). `extraction` says how images become features (device, batch,
    precision, workers, decoder; cached under its cache_dir/features, default `default_cache_dir()`). Inputs are
    checked (recipe, splits) before the model is loaded. An image that cannot be decoded
    stops the run with one line naming it; `on_bad_image="skip"` leaves such images out instead (train and debug
    split alike), and mining.json / failures.parquet record how many and which.
    """
    from failmode.features import FeatureExtractor
    from failmode.models.classifier import create_classifier, eval_preprocess, known_model

    known_model(model)
    bad = BadImages(on_bad_image)
    needs_train = isinstance(head, str) and head == "train"
    train, source, splits, recipe = split_sources(dataset, split, train_split, train_per_class, debug_per_class,
                                                  split_seed, needs_train)
    net = create_classifier(model, weights)
    check_classes(net, model, head, len(source.class_names), dataset, source.known)
    key = model_key(model, weights)
    extractor = FeatureExtractor(net, key, eval_preprocess(net, image_size, crop_pct), extraction)
    out = Path(out_dir)
    record = {"model": model, "weights": weights, "model_key": key, "dataset": dataset, "train_split": train_split,
              "split_seed": split_seed, **recipe, "device": extraction.device}
    head_obj, head_desc = _resolve_head(
        head, train, splits.train, out, record,
        lambda src, idx, desc: bad.run(src, idx, lambda i: extractor(src, i, desc=desc))[0])
    preds, debug_idx = bad.run(source, splits.debug, lambda i: predict(extractor, source, i, head=head_obj))
    rows = failures_from_predictions(source, preds, seed=split_seed)
    write_json(out / "splits.json", splits.to_json())
    write_predictions(out / "predictions.npz", preds)
    meta = {"model": model, "weights": weights, "model_key": key, "dataset": dataset, "split": split,
            "source": source.ident, "class_names": source.class_names, "split_seed": split_seed, "head": head_desc,
            "head_file": HEAD_FILE if needs_train else None, "train_split": train_split, "recipe": recipe,
            "n_debug": len(debug_idx), "accuracy": preds.accuracy, "image_size": image_size,
            "crop_pct": crop_pct, "bad_images": bad.record()}
    path = write_failures(out, rows, meta)
    log.info("%s on %s: %d of %d debug images misclassified (accuracy %.4f) -> %s", model, dataset, len(rows),
             len(debug_idx), preds.accuracy, path)
    return path
