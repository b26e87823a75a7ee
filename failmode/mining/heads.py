"""Classification heads for mining on datasets the model was not trained for (CIFAR, custom folders).

A head maps frozen features [N, D] to class scores. Accepted forms, in order of preference:
  - an object with `weight` [C, D] and `bias` [C] (a `failmode.linear.LinearHead`: `train_head`'s result, or one
    read from a file by `LinearHead.load`),
  - a callable `features -> logits [N, C]`,
  - an object with `predict(features) -> labels [N]` (then no confidences are recorded).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from failmode.errors import ValidationError
from failmode.linear import LinearHead

#: where `mine_failures(head="train")` saves the head it fitted (beside failures.parquet)
HEAD_FILE = "head.safetensors"


def apply_head(head: Any, features: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(predicted labels, logits or None) of `head` on `features`; the head must output `num_classes` classes."""
    if hasattr(head, "weight") and hasattr(head, "bias"):
        w, b = (np.asarray(_numpy(t), np.float32) for t in (head.weight, head.bias))
        head = LinearHead(w, b)
        if w.shape[1] != features.shape[1]:
            raise ValidationError(f"the head expects {w.shape[1]}-d features, the model gives {features.shape[1]}-d")
    if isinstance(head, LinearHead) or (callable(head) and not hasattr(head, "predict")):
        logits = np.asarray(_numpy(head.logits(features) if isinstance(head, LinearHead) else head(features)))
        if logits.ndim != 2 or logits.shape[1] != num_classes:
            raise ValidationError(f"the head outputs {logits.shape[-1]} classes, the dataset has {num_classes}")
        return logits.argmax(1), logits
    if hasattr(head, "predict"):
        return np.asarray(_numpy(head.predict(features)), np.int64), None
    raise ValidationError(f"a head must be linear (weight, bias), callable, or have predict(); "
                          f"got {type(head).__name__}")


def _numpy(x: Any) -> Any:
    """A torch tensor as a numpy array (detached, on CPU); anything else unchanged."""
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else x
