"""Frozen features (timm pre-logits) and the model's own logits, computed once and cached on disk.

The cache key is (model key, source identity, indices, preprocessing, precision): change any of them and the
features are recomputed; otherwise a rerun reads one .npz file and does no forward pass. Each entry carries its own
check (`failmode.cache`: key, shapes, dtypes, SHA-256); one that fails it is computed again with one warning line.
NaN or infinite features from a model are an error naming the model and the batch.

Preprocessing is either a per-image transform (a PIL -> tensor callable, run in the loader's workers) or a
`failmode.images.Preprocess`, the fast path: workers decode only, and resizing, cropping and normalisation run on
the device (`decode`: "cpu" keeps the resize in the workers, pixel-identical to timm's transform; "hybrid" resizes
on the device; "gpu" also decodes JPEGs there). On a GPU the per-image PIL resize otherwise bounds the throughput.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from failmode.cache import load_arrays, save_arrays
from failmode.data.sources import ImageSource
from failmode.errors import FailmodeError
from failmode.images import Preprocess, Transform, default_workers, resolve_decode
from failmode.io import stable_hash
from failmode.options import FeatureOptions
from failmode.progress import bar
from failmode.runtime import HostArrays, autocast, autocast_dtype, pick_device

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


def default_batch_size(device: torch.device) -> int:
    """256 images per batch on a GPU; 64 on a CPU, where larger batches measured slower (cache-bound)."""
    return 256 if device.type == "cuda" else 64


def feature_key(model_key: str, source: ImageSource, indices: np.ndarray, preprocessing: Any, precision: str) -> str:
    """Cache key of one feature extraction."""
    return stable_hash({"model": model_key, "source": source.ident, "indices": stable_hash(indices.tolist()),
                        "pre": repr(preprocessing), "precision": precision}, n=24)


def _batches(source: ImageSource, idx: np.ndarray, transform: Transform,
             decode: str, dev: torch.device, dtype: torch.dtype | None, batch_size: int,
             num_workers: int) -> Iterator[torch.Tensor]:
    """Model-ready batches on `dev`, in `idx` order."""
    if isinstance(transform, Preprocess):
        from failmode.images import iter_crops, normalize

        for x in iter_crops(source, idx, transform, device=dev, batch_size=batch_size, num_workers=num_workers,
                            decode=decode):
            yield normalize(x, transform, dtype or torch.float32)
        return
    loader = torch.utils.data.DataLoader(_Images(source, idx, transform), batch_size=batch_size,
                                         num_workers=num_workers, pin_memory=dev.type == "cuda")
    for x in loader:
        yield x.to(dev, non_blocking=True)


def forward_features(model: torch.nn.Module, x: torch.Tensor,
                     with_logits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
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
    transform: Transform,
    options: FeatureOptions = FeatureOptions(),
    cache_dir: str | Path | None = None,
    with_logits: bool = True,
    desc: str = "features",
) -> Features:
    """Features of `source[indices]` (all images if None) through `model`, from the cache when possible.

    `model_key` identifies model and weights (e.g. "tf_efficientnet_lite0@efficientnet-lite0-pypi"); the transform
    (a callable or a `Preprocess`, e.g. `failmode.models.classifier.eval_preprocess`) and the decoder
    (`options.decode`, used with a `Preprocess` only) are part of the cache key. `options` give the device, batch,
    precision and loader workers (None: `failmode.images.default_workers`); entries are cached in `cache_dir` (None:
    not cached; `options.cache_dir` is the cache root a `FeatureExtractor` keeps its features/ under).
    """
    idx = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    precision, num_workers = options.precision, options.num_workers
    dev = pick_device(str(options.device) if options.device else None)
    decode = resolve_decode(options.decode, dev) if isinstance(transform, Preprocess) else "transform"
    path, key = None, ""
    if cache_dir is not None:
        pre = (transform, decode) if isinstance(transform, Preprocess) else transform
        key = feature_key(model_key, source, idx, pre, precision)
        path = Path(cache_dir) / f"{key}.npz"
        # an entry that fails its own check (key, shapes, row count, checksum, finite values) is computed again
        z = load_arrays(path, key, rows=len(idx), what=desc)
        if z is not None and "features" in z:
            logits = z.get("logits")
            # an entry written with with_logits=False lacks the logits a classifier can give: recompute
            if logits is not None or not with_logits or not hasattr(model, "forward_head"):
                log.info("%s: %d cached features from %s", desc, len(idx), path)
                return Features(z["features"], logits, source.labels[idx], idx, cached=True)

    dtype = autocast_dtype(dev, precision)
    batch_size = options.batch_size or default_batch_size(dev)
    num_workers = default_workers(dev) if num_workers is None else num_workers
    # channels_last: cuDNN's and oneDNN's fast convolution kernels (1.5x for EfficientNet-Lite0 on a CPU); the
    # Preprocess path's inputs are channels_last on CUDA already
    model = model.to(dev).eval().to(memory_format=torch.channels_last)
    feats, logits = HostArrays(), HostArrays()  # copies to the host queue behind the GPU work (no per-batch wait)
    with bar(desc, total=len(idx), unit="img") as b:
        for x in _batches(source, idx, transform, decode, dev, dtype, batch_size, num_workers):
            x = x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
            with autocast(dev, dtype):
                f, lg = forward_features(model, x, with_logits)
            feats.add(f)
            if lg is not None:
                logits.add(lg)
            b.update(len(x))
    f_all = feats.numpy()
    out = Features(f_all if f_all is not None else np.zeros((0, 0), np.float32), logits.numpy(),
                   source.labels[idx], idx)
    check_finite(out, model_key, batch_size)
    if path is not None:
        save_arrays(path, key, {"features": out.features} | ({"logits": out.logits} if out.logits is not None else {}))
    return out


def check_finite(out: Features, model_key: str, batch_size: int) -> None:
    """NaN or infinite features or logits from a model are an error naming the model and the first bad batch (checked
    on the host after extraction, so the device never waits for a per-batch check)."""
    for name, a in (("features", out.features), ("logits", out.logits)):
        if a is None or not len(a):
            continue
        bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            b = row // batch_size
            raise FailmodeError(f"{model_key}: the model gave NaN or infinite {name} in batch {b} (images "
                                f"{b * batch_size}..{min((b + 1) * batch_size, len(a)) - 1} of {len(a)}, first at "
                                f"source index {int(out.indices[row])}); nothing was cached (check the weights and "
                                "--precision)")


@dataclass(frozen=True)
class FeatureExtractor:
    """A frozen model bound to how its images become features: its cache key (model and weights), its evaluation
    transform (`failmode.models.classifier.eval_preprocess`) and the extraction settings (device, batch, precision,
    workers, decoder, cache: `failmode.options.FeatureOptions`). Mining, evaluation and the classifiers of slices /
    discover use it."""

    model: torch.nn.Module
    model_key: str
    transform: Transform
    options: FeatureOptions = field(default_factory=FeatureOptions)

    def __call__(self, source: ImageSource, indices: Sequence[int] | np.ndarray | None = None, *,
                 with_logits: bool = True, desc: str = "features") -> Features:
        """`extract_features` of `source[indices]` (all images if None) with these settings."""
        return extract_features(self.model, source, indices, model_key=self.model_key, transform=self.transform,
                                options=self.options, cache_dir=self.options.feature_cache(), with_logits=with_logits,
                                desc=desc)
