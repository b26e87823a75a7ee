"""The classifier under test, as slices and discover see it: predicted labels for any image source."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from failmode.data.sources import ImageSource, ListSource
from failmode.io import stable_hash


class Classifier(Protocol):
    """Anything that predicts labels for images of a source; `ident` names it in outputs."""

    ident: str

    def predict(self, source: ImageSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Predicted labels [N] of `source[indices]` (all images when None)."""


class FeatureHeadClassifier:
    """A frozen feature extractor (timm model) and a head on its features (`failmode.mining.heads` forms)."""

    def __init__(self, model: Any, head: Any, *, model_key: str, transform: Callable[[Any], Any] | None = None,
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
        return extract_features(self.model, source, idx, model_key=self.model_key, transform=self.transform,
                                batch_size=self.batch_size, device=self.device, precision=self.precision,
                                cache_dir=self.cache_dir, with_logits=False, desc=f"predict {self.ident}").features

    def predict(self, source: ImageSource, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Predicted labels [N]."""
        from failmode.mining.heads import apply_head

        preds, _ = apply_head(self.head, self.features(source, indices), self.num_classes)
        return np.asarray(preds, dtype=np.int64)


def images_source(images: Sequence[Image.Image], labels: Sequence[int], class_names: list[str],
                  key: Any) -> ListSource:
    """An in-memory source of generated images whose identity (for caches) is a hash of `key`."""
    return ListSource(images, labels, class_names, f"generated:{stable_hash(key, n=24)}")
