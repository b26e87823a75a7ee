"""Attribution: each seed failure gets the context of its class's vocabulary it looks most like; per class,
the k most frequent contexts are its failure modes (modes.json, the generation stage's input).

Rules (all deterministic):
  - a failure's context is the arg-max of the attributor's scores over its class's contexts; equal scores go
    to the context listed first in the vocabulary;
  - a class's modes are its contexts chosen at least once, ordered by count (descending), then by the summed
    softmax probability over the class's seed failures (descending; sums equal to 1e-6 count as equal), then by
    vocabulary order; the first k are kept (fewer if fewer contexts were chosen);
  - modes.json lists every class with at least one seed failure, by label.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from failmode.backends import ATTRIBUTORS, Attributor, BackendContext, construct
from failmode.cache import load_arrays, save_arrays
from failmode.data.sources import ImageSource
from failmode.errors import UsageError, ValidationError
from failmode.io import stable_hash
from failmode.mining.clip_attributor import ClipAttributor
from failmode.options import AttributionOptions, FeatureOptions

log = logging.getLogger(__name__)

__all__ = ["Attribution", "ClipAttributor", "attribute", "attribute_failures", "make_attributor", "top_k_modes"]

MODES_FORMAT = "failmode-modes/1"


@dataclass
class Attribution:
    """Per seed failure records (chosen context and score distribution) and per class failure modes."""

    records: list[dict[str, Any]]
    classes: list[dict[str, Any]]
    attributor: str
    k: int


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def top_k_modes(chosen: np.ndarray, probs: np.ndarray, contexts: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The k most frequent chosen contexts with counts, ties broken as the module docstring says."""
    counts = np.bincount(np.asarray(chosen, np.int64), minlength=len(contexts))
    mass = np.round(np.asarray(probs, np.float64).sum(0), 6) if len(probs) else np.zeros(len(contexts))
    order = sorted(range(len(contexts)), key=lambda j: (-counts[j], -mass[j], j))
    return [{"context": contexts[j], "count": int(counts[j])} for j in order[:k] if counts[j] > 0]


def _vocab_classes(vocabulary: Any) -> dict[int, Any]:
    return {int(c.index): c for c in vocabulary.classes}


def encode_images_cached(attributor: Attributor, source: ImageSource, indices: Sequence[int],
                         cache_dir: str | os.PathLike[str] | None) -> np.ndarray:
    """`attributor.encode_images`, reusing embeddings cached for this attributor and source (only new images run).

    Cached only when the attributor has a `cache_key` (its weights and preprocessing) that is not None.
    """
    key = getattr(attributor, "cache_key", None)
    idx = np.asarray(indices, dtype=np.int64)
    if key is None or cache_dir is None or len(idx) == 0:
        return attributor.encode_images(source, idx.tolist())
    entry = stable_hash({'a': key, 's': source.ident}, n=24)
    path = Path(cache_dir) / "embeddings" / f"{entry}.npz"
    have_idx, have_emb = np.zeros(0, np.int64), None
    z = load_arrays(path, entry, what="image embeddings")  # an entry failing its own check is computed again
    if z is not None and {"indices", "embeddings"} <= set(z) and len(z["indices"]) == len(z["embeddings"]):
        have_idx, have_emb = z["indices"], z["embeddings"]
    missing = np.setdiff1d(idx, have_idx)
    if len(missing):
        new = attributor.encode_images(source, missing.tolist())
        have_idx = np.concatenate([have_idx, missing])
        have_emb = new if have_emb is None else np.concatenate([have_emb, new])
        save_arrays(path, entry, {"indices": have_idx, "embeddings": have_emb})
    log.info("image embeddings: %d cached, %d computed", len(idx) - len(missing), len(missing))
    pos = {int(i): p for p, i in enumerate(have_idx)}
    return have_emb[[pos[int(i)] for i in idx]]


def check_vocabulary(vocabulary: Any, labels: Sequence[int], class_names: Sequence[str], where: str) -> None:
    """Every label with failures must have contexts in the vocabulary; else one line naming the first missing."""
    known = _vocab_classes(vocabulary)
    missing = [int(y) for y in sorted(set(labels)) if int(y) not in known or not vocabulary.contexts(int(y))]
    if missing:
        y = missing[0]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ValidationError(f"vocabulary {where} has no contexts for class {y} ({class_names[y]!r}){more}")


def attribute(rows: Sequence[dict[str, Any]], source: ImageSource, vocabulary: Any, attributor: Attributor, *,
              k: int = 3, cache_dir: str | os.PathLike[str] | None = None, halves: Sequence[str] = ("seed",),
              vocabulary_name: str = "") -> Attribution:
    """Attribute the failures of `rows` in `halves` (default: seed) and count the top-k modes per class."""
    if k < 1:
        raise UsageError(f"k must be at least 1, not {k}")
    picked = sorted((r for r in rows if r["half"] in halves), key=lambda r: (r["label"], r["index"]))
    check_vocabulary(vocabulary, [r["label"] for r in picked], source.class_names, vocabulary_name or "given")
    emb = encode_images_cached(attributor, source, [r["index"] for r in picked], cache_dir)
    vocab = _vocab_classes(vocabulary)
    records, classes = [], []
    labels = np.asarray([r["label"] for r in picked], np.int64)
    present = [int(y) for y in np.unique(labels)]
    context_emb = attributor.encode_context_sets(
        [(vocab[y].prompt_name, list(vocabulary.contexts(y))) for y in present])  # all classes in one pass
    for y, class_emb in zip(present, context_emb, strict=True):
        members = np.flatnonzero(labels == y)
        entry, contexts = vocab[y], list(vocabulary.contexts(y))
        probs = softmax(attributor.scores(emb[members], class_emb))
        chosen = probs.argmax(1)  # first maximum: vocabulary order breaks exact ties
        for j, m in enumerate(members):
            r = picked[m]
            records.append({**{c: r[c] for c in ("index", "image_id", "label", "class_name", "prediction", "half")},
                            "context": contexts[chosen[j]], "context_index": int(chosen[j]),
                            "probability": float(probs[j, chosen[j]]), "contexts": contexts,
                            "probabilities": [float(p) for p in probs[j]]})
        if any(picked[m]["half"] == "seed" for m in members):
            seed = np.asarray([picked[m]["half"] == "seed" for m in members])
            classes.append({"label": int(y), "class_name": source.class_names[int(y)],
                            "prompt_name": entry.prompt_name, "n_seed_failures": int(seed.sum()),
                            "modes": top_k_modes(chosen[seed], probs[seed], contexts, k)})
    return Attribution(records, classes, attributor.ident, k)


def make_attributor(options: AttributionOptions | None = None, kind: str = "background", *,
                    features: FeatureOptions | None = None, dataset: str | None = None,
                    cache_dir: str | os.PathLike[str] | None = None) -> Attributor:
    """Build the attributor `options` name (CLIP ViT-B-32 / openai by default) with the image side of `features`
    (device, batch, workers, decoder, precision); its `from_context` takes what it uses of the vocabulary kind, the
    device, the `dataset` and the `cache_dir`, unless the options set them."""
    options = options or AttributionOptions()
    device = features.device if features is not None else None
    return construct(ATTRIBUTORS, options.attributor, options.factory_options(features),
                     BackendContext(device=device, kind=kind, dataset=dataset, cache_dir=cache_dir))


def attribute_failures(
    failures: str | os.PathLike[str],
    *,
    vocabulary: str,
    kind: str = "background",
    attributor: AttributionOptions | Attributor | None = None,
    k: int = 3,
    out_dir: str | os.PathLike[str] | None = None,
    features: FeatureOptions | None = None,
    dataset: str | None = None,
    split: str | None = None,
    halves: Sequence[str] = ("seed",),
) -> Path:
    """Attribute the seed failures of a failures.parquet; write attributions.parquet, modes.json, report.md and
    the failure records as a metadata-only dataset config; return the modes.json path.

    `out_dir` defaults to the folder of `failures`; `dataset`/`split` override where the images are read from
    (by default the dataset the failures were mined on). `attributor` is a loaded one or the options of one to make
    (default: CLIP ViT-B-32 / openai) reading images as `features` says (device, batch, workers, decoder,
    precision). Image embeddings are cached under `features.cache_dir` (default `default_cache_dir()`).
    """
    from failmode.io import default_cache_dir
    from failmode.mining.report import write_attribution

    rows, meta, vocab, source = check_attribution_inputs(failures, vocabulary, kind, k, dataset=dataset, split=split)
    features = features or FeatureOptions()
    cache_dir = Path(features.cache_dir or default_cache_dir())
    if not isinstance(attributor, Attributor):
        attributor = make_attributor(attributor, kind, features=features, dataset=dataset or meta["dataset"],
                                     cache_dir=cache_dir / "features")
    result = attribute(rows, source, vocab, attributor, k=k, cache_dir=cache_dir, halves=halves,
                       vocabulary_name=str(vocabulary))
    table = Path(failures)
    out = Path(out_dir) if out_dir is not None else table.parent if table.is_file() else table
    return write_attribution(out, result, meta, rows, vocab)


def check_attribution_inputs(failures: str | os.PathLike[str], vocabulary: str, kind: str, k: int, *,
                             dataset: str | None = None, split: str | None = None) -> tuple[Any, Any, Any, Any]:
    """(failure rows, their metadata, vocabulary, image source) once everything checkable without a model is
    checked: k, the vocabulary (its kind, its classes against the dataset's by name), the failures' images."""
    from failmode.data.sources import open_source
    from failmode.mining.failures import read_failures
    from failmode.vocab import load_vocabulary

    if k < 1:
        raise UsageError(f"k must be at least 1, not {k}")
    vocab = load_vocabulary(vocabulary, kind)
    if vocab.kind != kind:
        raise UsageError(f"vocabulary {vocabulary} is of kind {vocab.kind!r}, not {kind!r} (pass --kind {vocab.kind})")
    rows, meta = read_failures(failures)
    source = open_source(dataset or meta["dataset"], split if split is not None else meta.get("split"))
    check_same_images(rows, source, failures)
    vocab.check_classes(source.class_names, str(dataset or meta["dataset"]))
    return rows, meta, vocab, source


def check_same_images(rows: Sequence[dict[str, Any]], source: ImageSource, where: object) -> None:
    """The source must hold each failure's image id at its index (else the failures belong to other data)."""
    for r in rows:
        i = r["index"]
        if not 0 <= i < len(source) or source.ids[i] != r["image_id"]:
            raise ValidationError(f"{where}: image {r['image_id']!r} is not at index {i} of {source.ident}; "
                                  "pass the dataset the failures were mined on")
