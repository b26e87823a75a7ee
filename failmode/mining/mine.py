"""`mine_failures`: one model on one dataset, from names to failures.parquet (the `failmode mine` stage)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from failmode.data.sources import KNOWN_DATASETS, ImageSource, open_source
from failmode.data.splits import make_splits, resolve_recipe
from failmode.errors import LoadError, UsageError
from failmode.io import write_json
from failmode.mining.failures import failures_from_predictions, predict, write_failures, write_predictions

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$FAILMODE_CACHE_DIR, else $XDG_CACHE_HOME/failmode, else ~/.cache/failmode (features and embeddings)."""
    if os.environ.get("FAILMODE_CACHE_DIR"):
        return Path(os.environ["FAILMODE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "failmode"


def model_key(model: str, weights: str | None) -> str:
    """Cache identity of a model and its weights; a weights file counts by path, size and modification time."""
    if weights and os.path.isfile(weights):
        st = os.stat(weights)
        weights = f"file:{os.path.abspath(weights)}:{st.st_size}:{st.st_mtime_ns}"
    return f"{model}@{weights or 'random-init'}"


def _train_source(dataset: str, train_split: str | None) -> ImageSource:
    known = KNOWN_DATASETS.get(dataset)
    split = train_split or (known.train_split if known else None)
    if split is None:
        raise UsageError("--head train needs the training split of the dataset: pass --train-split")
    return open_source(dataset, split)


def _resolve_head(head: Any, net: Any, train: ImageSource | None, train_idx: np.ndarray, features_kw: dict[str, Any]
                  ) -> tuple[Any, str]:
    """(head object or None, description recorded in the outputs)."""
    from failmode.mining.heads import load_head

    if head is None:
        return None, "native"
    if isinstance(head, (str, os.PathLike)) and str(head) == "train":
        from failmode.features import extract_features

        try:
            from failmode.evaluate.head import train_head
        except ImportError as e:
            raise LoadError(f"--head train needs failmode.evaluate.head.train_head ({e})") from None
        assert train is not None
        feats = extract_features(net, train, train_idx, desc="train features", **features_kw)
        fitted = train_head(feats.features, feats.labels, num_classes=len(train.class_names),
                            device=features_kw["device"])
        return fitted, f"linear head trained on {len(train_idx)} train images"
    if isinstance(head, (str, os.PathLike)):
        return load_head(head), f"file:{os.path.abspath(head)}"
    return head, f"object:{type(head).__name__}"


def mine_failures(
    model: str,
    dataset: str,
    *,
    out_dir: str | os.PathLike[str],
    weights: str | None = "timm",
    split_seed: int = 0,
    device: str | None = None,
    batch_size: int = 256,
    cache_dir: str | os.PathLike[str] | None = None,
    head: Any | None = None,
    split: str | None = None,
    train_split: str | None = None,
    train_per_class: float | None = None,
    debug_per_class: float | None = None,
    image_size: int | None = None,
    precision: str = "auto",
    num_workers: int | None = None,
    decode: str = "auto",
) -> Path:
    """Mine a timm model's failures on the debug split of `dataset`; returns out_dir/failures.parquet.

    Writes failures.parquet (one row per misclassified debug image, seed/heldout half), splits.json,
    predictions.npz and mining.json. The model's own logits are used when its classes are the dataset's;
    otherwise `head` is required: a head file, "train" (fit on the train split), or a head object (see
    `failmode.mining.heads`). Features are cached under `cache_dir`/features (default `default_cache_dir()`).
    """
    from failmode.models.classifier import create_classifier, eval_preprocess

    net = create_classifier(model, weights)
    source = open_source(dataset, split)
    recipe = resolve_recipe(dataset, train_per_class, debug_per_class)
    needs_train = isinstance(head, str) and head == "train"
    train = _train_source(dataset, train_split) if needs_train else None
    splits = make_splits(train.labels if train is not None else np.zeros(0, np.int64), source.labels,
                         seed=split_seed, **recipe)
    key = model_key(model, weights)
    features_kw = {"model_key": key, "transform": eval_preprocess(net, image_size), "batch_size": batch_size,
                   "device": device, "precision": precision, "num_workers": num_workers, "decode": decode,
                   "cache_dir": Path(cache_dir or default_cache_dir()) / "features"}
    head_obj, head_desc = _resolve_head(head, net, train, splits.train, features_kw)
    preds = predict(net, source, splits.debug, head=head_obj, **features_kw)
    rows = failures_from_predictions(source, preds, seed=split_seed)
    out = Path(out_dir)
    write_json(out / "splits.json", splits.to_json())
    write_predictions(out / "predictions.npz", preds)
    meta = {"model": model, "weights": weights, "model_key": key, "dataset": dataset, "split": split,
            "source": source.ident, "class_names": source.class_names, "split_seed": split_seed, "head": head_desc,
            "n_debug": len(splits.debug), "accuracy": preds.accuracy, "image_size": image_size}
    path = write_failures(out, rows, meta)
    log.info("%s on %s: %d of %d debug images misclassified (accuracy %.4f) -> %s", model, dataset, len(rows),
             len(splits.debug), preds.accuracy, path)
    return path
