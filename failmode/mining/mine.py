"""`mine_failures`: one model on one dataset, from names to failures.parquet (the `failmode mine` stage)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from failmode.data.sources import BadImages, ImageSource
from failmode.head import DATASET_HEAD_RECIPE, HEAD_FILE, LinearHead, train_dataset_head
from failmode.io import write_json
from failmode.mining.failures import failures_from_predictions, predict, write_failures, write_predictions
from failmode.models.setup import head_ident, open_classifier
from failmode.options import FeatureOptions, ModelSpec, SplitSpec

log = logging.getLogger(__name__)


def _resolve_head(head: str | None, train: ImageSource | None, train_idx: np.ndarray, out: Path,
                  record: dict[str, Any], features: Any) -> tuple[Any, str]:
    """(head object or None, description recorded in the outputs); a trained head is saved as out/head.safetensors."""
    if head == "train":
        assert train is not None
        feats = features(train, train_idx, "train features")
        fitted = train_dataset_head(feats.features, feats.labels, len(train.class_names),
                                    device=record.get("device"))
        meta = {**{k: v for k, v in record.items() if k != "device"}, "train_source": train.ident,
                "n_train": len(feats.labels), "recipe": DATASET_HEAD_RECIPE, "class_names": train.class_names}
        fitted.save(out / HEAD_FILE, metadata=meta)
        return fitted, f"linear head trained on {len(feats.labels)} train images ({HEAD_FILE})"
    return (None if head is None else LinearHead.load(head)), head_ident(head, mining=True)


def mine_failures(model: ModelSpec, data: SplitSpec, *, out_dir: str | os.PathLike[str],
                  extraction: FeatureOptions = FeatureOptions(), on_bad_image: str = "error") -> Path:
    """Mine a timm model's failures on the debug split of `data`; returns out_dir/failures.parquet.

    Writes failures.parquet (one row per misclassified debug image, seed/heldout half), splits.json,
    predictions.npz and mining.json. The model's own logits are used when its classes are the dataset's;
    otherwise `model.head` is required: a head file, or "train" (fit on the train split with
    `failmode.head.train_dataset_head` and saved as out_dir/head.safetensors, with what it was trained on).
    `extraction` says how images become features (device, batch, precision, workers, decoder; cached under its
    cache_dir/features, default `default_cache_dir()`). Inputs are checked (recipe, splits) before the model is loaded
    (`failmode.models.setup.open_classifier`). An image that cannot be decoded stops the run with one line naming it;
    `on_bad_image="skip"` leaves such images out instead (train and debug split alike), and mining.json /
    failures.parquet record how many and which.
    """
    bad = BadImages(on_bad_image)
    needs_train = model.head == "train"
    setup = open_classifier(model, data, extraction, need_train=needs_train)
    source, splits, recipe = setup.source, setup.splits, setup.recipe
    assert source is not None and splits is not None
    extractor = setup.extractor
    key = setup.model_key
    out = Path(out_dir)
    record = {"model": model.id, "weights": model.weights, "model_key": key, "dataset": data.dataset,
              "train_split": data.train_split, "split_seed": data.split_seed, **recipe, "device": extraction.device}
    head_obj, head_desc = _resolve_head(
        model.head, setup.train, splits.train, out, record,
        lambda src, idx, desc: bad.run(src, idx, lambda i: extractor(src, i, desc=desc))[0])
    preds, debug_idx = bad.run(source, splits.debug, lambda i: predict(extractor, source, i, head=head_obj))
    rows = failures_from_predictions(source, preds, seed=data.split_seed)
    write_json(out / "splits.json", splits.to_json())
    write_predictions(out / "predictions.npz", preds)
    meta = {"model": model.id, "weights": model.weights, "model_key": key, "dataset": data.dataset,
            "split": data.split, "source": source.ident, "class_names": source.class_names,
            "split_seed": data.split_seed, "head": head_desc, "head_file": HEAD_FILE if needs_train else None,
            "train_split": data.train_split, "recipe": recipe, "n_debug": len(debug_idx), "accuracy": preds.accuracy,
            "image_size": model.image_size, "crop_pct": model.crop_pct, "bad_images": bad.record()}
    path = write_failures(out, rows, meta)
    log.info("%s on %s: %d of %d debug images misclassified (accuracy %.4f) -> %s", model.id, data.dataset, len(rows),
             len(debug_idx), preds.accuracy, path)
    return path
