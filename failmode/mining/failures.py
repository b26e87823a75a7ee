"""Failure mining: predictions on the debug split, misclassified images, and their seed / heldout halves.

Halves rule: within each class the failures (in source order) are permuted by a generator seeded with
(split_seed, 3, label); the first ceil(n / 2) are `seed` (attributed, they define failure modes), the rest are
`heldout` (kept for evaluating the fix). A class with one failure puts it in `seed`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from failmode.data.sources import ImageSource
from failmode.errors import UsageError, ValidationError
from failmode.io import write_json

if TYPE_CHECKING:
    from failmode.features import FeatureExtractor

log = logging.getLogger(__name__)

FAILURES_FORMAT = "failmode-failures/1"
FAILURE_COLUMNS = ("index", "image_id", "label", "class_name", "prediction", "predicted_class", "confidence", "half")
HALVES = ("seed", "heldout")


@dataclass
class Predictions:
    """A model's predictions on `source[indices]`: labels, predicted labels, confidence of the prediction."""

    indices: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    confidences: np.ndarray | None = None
    cached: bool = False

    @property
    def accuracy(self) -> float:
        """Fraction of correct predictions (1.0 for an empty set)."""
        return float((self.labels == self.predictions).mean()) if len(self.labels) else 1.0


def softmax_confidence(logits: np.ndarray) -> np.ndarray:
    """Softmax probability of each row's arg-max class."""
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    return (p.max(1) / p.sum(1)).astype(np.float32)


def predict(extractor: FeatureExtractor, source: ImageSource, indices: Sequence[int] | np.ndarray, *,
            head: Any | None = None) -> Predictions:
    """Predict `source[indices]` with the extractor's model: its own logits, or `head` on its frozen features.

    Features and logits come from the extractor (batched, mixed precision, disk cache); with a head, the model's
    own logits are not computed.
    """
    from failmode.head import apply_head

    idx = np.asarray(indices, dtype=np.int64)
    feats = extractor(source, idx, with_logits=head is None, desc=f"predict {extractor.model_key}")
    n_classes = len(source.class_names)
    if head is not None:
        preds, logits = apply_head(head, feats.features, n_classes)
    elif feats.logits is not None and feats.logits.shape[1] == n_classes:
        preds, logits = feats.logits.argmax(1), feats.logits
    else:
        outputs = "no classifier" if feats.logits is None else f"{feats.logits.shape[1]} outputs"
        raise UsageError(f"{extractor.model_key} has {outputs} but the dataset has {n_classes} classes: pass a head "
                         "(--head FILE, or --head train to fit one on the train split)")
    conf = softmax_confidence(logits) if logits is not None else None
    return Predictions(idx, source.labels[idx], np.asarray(preds, np.int64), conf, feats.cached)


def assign_halves(labels: np.ndarray, seed: int) -> np.ndarray:
    """"seed" / "heldout" for each failure, per class as the module docstring says (deterministic in `seed`)."""
    labels = np.asarray(labels, dtype=np.int64)
    halves = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        order = np.random.default_rng([seed, 3, int(c)]).permutation(len(pos))
        n_seed = (len(pos) + 1) // 2
        halves[pos[order[:n_seed]]] = "seed"
        halves[pos[order[n_seed:]]] = "heldout"
    return halves


def failures_from_predictions(source: ImageSource, predictions: Predictions, *, seed: int = 0) -> list[dict[str, Any]]:
    """One record per misclassified image (columns `FAILURE_COLUMNS`), in source order, halves assigned."""
    wrong = np.flatnonzero(predictions.labels != predictions.predictions)
    order = wrong[np.argsort(predictions.indices[wrong], kind="stable")]
    labels = predictions.labels[order]
    halves = assign_halves(labels, seed)
    names = source.class_names
    rows = []
    for j, half in zip(order, halves):
        i, y, p = int(predictions.indices[j]), int(predictions.labels[j]), int(predictions.predictions[j])
        conf = None if predictions.confidences is None else float(predictions.confidences[j])
        rows.append({"index": i, "image_id": source.ids[i], "label": y, "class_name": names[y], "prediction": p,
                     "predicted_class": names[p] if 0 <= p < len(names) else str(p), "confidence": conf,
                     "half": str(half)})
    return rows


def failures_schema() -> Any:
    """The pyarrow schema of failures.parquet."""
    import pyarrow as pa

    return pa.schema([("index", pa.int64()), ("image_id", pa.string()), ("label", pa.int64()),
                      ("class_name", pa.string()), ("prediction", pa.int64()), ("predicted_class", pa.string()),
                      ("confidence", pa.float32()), ("half", pa.string())])


def write_failures(out_dir: str | os.PathLike[str], rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Write out_dir/failures.parquet (records + metadata) and a readable mining.json summary; return the parquet."""
    from failmode.mining.tables import write_table

    out = Path(out_dir)
    meta = {"format": FAILURES_FORMAT, **meta, "n_failures": len(rows),
            "n_seed": sum(r["half"] == "seed" for r in rows), "n_heldout": sum(r["half"] == "heldout" for r in rows)}
    path = write_table(out / "failures.parquet", rows, meta, schema=failures_schema())
    write_json(out / "mining.json", {k: v for k, v in meta.items() if k != "class_names"})
    return path


def read_failures(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records and metadata of a failures.parquet (a directory holding one is accepted)."""
    from failmode.mining.tables import read_table

    path = Path(path)
    if path.is_dir():
        path = path / "failures.parquet"
    rows, meta = read_table(path, required=FAILURE_COLUMNS)
    if meta.get("format") != FAILURES_FORMAT:
        raise ValidationError(f"{path}: not a failmode failures table (format {meta.get('format')!r})")
    return rows, meta


def write_predictions(path: str | os.PathLike[str], predictions: Predictions) -> None:
    """Save debug-split predictions (indices, labels, predictions, confidences) as .npz, atomically."""
    from failmode.io import atomic_path

    arrays = {"indices": predictions.indices, "labels": predictions.labels, "predictions": predictions.predictions}
    if predictions.confidences is not None:
        arrays["confidences"] = predictions.confidences
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_predictions(path: str | os.PathLike[str]) -> Predictions:
    """The predictions.npz of a mined run (indices, labels, predictions, optional confidences)."""
    try:
        with np.load(path) as z:
            conf = z["confidences"] if "confidences" in z.files else None
            return Predictions(z["indices"].astype(np.int64), z["labels"].astype(np.int64),
                               z["predictions"].astype(np.int64), conf)
    except (OSError, KeyError, ValueError) as e:
        raise ValidationError(f"{path}: not a predictions file of failmode mine ({type(e).__name__}: {e})") from None
