"""Frozen features (timm pre-logits) and the model's own logits, computed once and cached on disk.

The cache key is (model key, source identity, indices, preprocessing, precision): change any of them and the
features are recomputed; otherwise a rerun reads one .npz file and does no forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from failmode.data.sources import ImageSource
from failmode.io import atomic_path, stable_hash
from failmode.progress import bar
from failmode.runtime import autocast, autocast_dtype, pick_device

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Pre-logit features [N, D], the model's own logits [N, C] (or None), labels and source indices."""

    features: np.ndarray
    logits: np.ndarray | None
    labels: np.ndarray
    indices: np.ndarray
    cached: bool = False


class _Images(torch.utils.data.Dataset):
    def __init__(self, source: ImageSource, indices: np.ndarray, transform: Callable[[Any], torch.Tensor]) -> None:
        self.source, self.indices, self.transform = source, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> torch.Tensor:
        return self.transform(self.source.image(int(self.indices[j])))


def feature_key(model_key: str, source: ImageSource, indices: np.ndarray, preprocessing: Any, precision: str) -> str:
    """Cache key of one feature extraction."""
    return stable_hash({"model": model_key, "source": source.ident, "indices": stable_hash(indices.tolist()),
                        "pre": repr(preprocessing), "precision": precision}, n=24)


def forward_features(model: torch.nn.Module, x: torch.Tensor, with_logits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pre-logit features, logits) of a timm model; other modules return (model(x), None)."""
    if hasattr(model, "forward_head") and hasattr(model, "forward_features"):
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model.get_classifier()(pre) if with_logits else None
        return pre, logits
    return model(x), None


@torch.inference_mode()
def extract_features(
    model: torch.nn.Module,
    source: ImageSource,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    model_key: str,
    transform: Callable[[Any], torch.Tensor] | None = None,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    precision: str = "auto",
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    with_logits: bool = True,
    desc: str = "features",
) -> Features:
    """Features of `source[indices]` (all images if None) through `model`, from the cache when possible.

    `model_key` identifies model and weights (e.g. "tf_efficientnet_lite0@efficientnet-lite0-pypi"); the transform
    defaults to timm's evaluation transform for the model and is part of the cache key.
    """
    from failmode.models.classifier import eval_transform

    idx = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    transform = transform or eval_transform(model)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{feature_key(model_key, source, idx, transform, precision)}.npz"
        if path.exists():
            with np.load(path) as z:
                logits = z["logits"] if "logits" in z.files else None
                # an entry written with with_logits=False lacks the logits a classifier can give: recompute
                if logits is not None or not with_logits or not hasattr(model, "forward_head"):
                    log.info("%s: %d cached features from %s", desc, len(idx), path)
                    return Features(z["features"], logits, source.labels[idx], idx, cached=True)

    dev = pick_device(str(device) if device else None)
    dtype = autocast_dtype(dev, precision)
    model = model.to(dev).eval()
    loader = torch.utils.data.DataLoader(_Images(source, idx, transform), batch_size=batch_size,
                                         num_workers=num_workers, pin_memory=dev.type == "cuda")
    feats, logits = [], []
    with bar(desc, total=len(idx), unit="img") as b:
        for x in loader:
            x = x.to(dev, non_blocking=True)
            with autocast(dev, dtype):
                f, lg = forward_features(model, x, with_logits)
            feats.append(f.float().cpu().numpy())
            if lg is not None:
                logits.append(lg.float().cpu().numpy())
            b.update(len(x))
    out = Features(np.concatenate(feats) if feats else np.zeros((0, 0), np.float32),
                   np.concatenate(logits) if logits else None, source.labels[idx], idx)
    if path is not None:
        with atomic_path(path) as tmp:
            arrays = {"features": out.features} | ({"logits": out.logits} if out.logits is not None else {})
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    return out
