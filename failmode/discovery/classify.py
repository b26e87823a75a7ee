"""The classifier under test, as slices and discover see it: predicted labels for any image source."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from failmode.data.sources import ImageSource, ListSource
from failmode.io import stable_hash
from failmode.options import FeatureOptions, ModelSpec


class Classifier(Protocol):
    """Anything that predicts labels for images of a source; `ident` names it in outputs."""

    ident: str

    def predict(self, source: ImageSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Predicted labels [N] of `source[indices]` (all images when None)."""


class FeatureHeadClassifier:
    """A frozen feature extractor (timm model) and a head on its features (`failmode.head.apply_head` forms)."""

    def __init__(self, model: Any, head: Any, *, model_key: str, transform: Callable[[Any], Any],
                 num_classes: int, cache_dir: str | Path | None = None, device: str | None = None,
                 batch_size: int = 64, precision: str = "fp32", ident: str | None = None) -> None:
        self.model, self.head, self.model_key, self.transform = model, head, model_key, transform
        self.num_classes, self.cache_dir, self.device = num_classes, cache_dir, device
        self.batch_size, self.precision = batch_size, precision
        self.ident = ident or f"{model_key}+head"

    def features(self, source: ImageSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Frozen features [N, D] (cached under `cache_dir` when set)."""
        from failmode.features import extract_features

        idx = None if indices is None else np.asarray(indices, dtype=np.int64)
        options = FeatureOptions(device=self.device, batch_size=self.batch_size, precision=self.precision)
        return extract_features(self.model, source, idx, model_key=self.model_key, transform=self.transform,
                                options=options, cache_dir=self.cache_dir, with_logits=False,
                                desc=f"predict {self.ident}").features

    def predict(self, source: ImageSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Predicted labels [N]."""
        from failmode.head import apply_head

        preds, _ = apply_head(self.head, self.features(source, indices), self.num_classes)
        return np.asarray(preds, dtype=np.int64)


def images_source(images: Sequence[Image.Image], labels: Sequence[int], class_names: list[str],
                  key: Any) -> ListSource:
    """An in-memory source of generated images whose identity (for caches) is a hash of `key`."""
    return ListSource(images, labels, class_names, f"generated:{stable_hash(key, n=24)}")


class TimmClassifier:
    """A timm model's own logits (or a head file on its frozen features) as a `Classifier`.

    Set up by `failmode.models.setup.open_classifier` (the model of a `ModelSpec`, its classes checked against
    `classes` when given, `where` naming their list) and preprocessed with its `eval_preprocess`; predictions go
    through `failmode.mining.failures.predict` (batched, mixed precision, the feature cache and device of
    `extraction`).
    """

    def __init__(self, model: ModelSpec, *, extraction: FeatureOptions | None = None,
                 classes: Sequence[str] | None = None, where: str | None = None) -> None:
        from failmode.head import LinearHead
        from failmode.models.setup import open_classifier

        setup = open_classifier(model, None, extraction or FeatureOptions(), classes=classes, where=where)
        self.head = LinearHead.load(model.head) if model.head is not None else None  # read before the model loads
        self.extractor = setup.extractor
        key = self.extractor.model_key
        self.ident = key if self.head is None else f"{key}+head:{model.head}"

    def predict(self, source: ImageSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Predicted labels [N] of `source[indices]`."""
        from failmode.mining.failures import predict

        idx = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
        return predict(self.extractor, source, idx, head=self.head).predictions


class RecordedClassifier:
    """Predictions recorded by an earlier run (the mining stage's predictions.npz) as a `Classifier`.

    Images of `source_ident` at recorded indices are looked up; any other image goes to `fallback` (a live
    classifier), or raises ValidationError when there is none.
    """

    def __init__(self, indices: np.ndarray, predictions: np.ndarray, *, source_ident: str, ident: str,
                 fallback: Classifier | None = None) -> None:
        self.lookup = {int(i): int(p) for i, p in zip(indices, predictions)}
        self.source_ident, self.ident, self.fallback = source_ident, ident, fallback

    def predict(self, source: ImageSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Recorded predictions where there are some, the fallback's elsewhere."""
        from failmode.errors import ValidationError

        idx = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
        recorded = np.zeros(len(idx), dtype=bool)
        if source.ident == self.source_ident:
            recorded = np.fromiter((int(i) in self.lookup for i in idx), dtype=bool, count=len(idx))
        out = np.empty(len(idx), dtype=np.int64)
        out[recorded] = [self.lookup[int(i)] for i in idx[recorded]]
        if not recorded.all():
            if self.fallback is None:
                raise ValidationError(f"{(~recorded).sum()} images of {source.ident} have no recorded prediction "
                                      f"and no model to predict them")
            out[~recorded] = self.fallback.predict(source, idx[~recorded])
        return out
