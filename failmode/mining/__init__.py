"""Failure mining, CLIP attribution of failures to contexts, failure reports and cross-model overlap.

High level (names in, files out): `mine_failures`, `attribute_failures`, `failure_overlap`.
Low level (in-memory objects, e.g. the offline world with its stand-in attributor): `predict`,
`failures_from_predictions`, `write_failures`, `read_failures`, `attribute`, `write_attribution`, `top_k_modes`.
"""

from failmode.mining.attribution import (
    MODES_FORMAT,
    Attribution,
    ClipAttributor,
    attribute,
    attribute_failures,
    make_attributor,
    top_k_modes,
)
from failmode.mining.failures import (
    Predictions,
    assign_halves,
    failures_from_predictions,
    predict,
    read_failures,
    write_failures,
)
from failmode.mining.mine import mine_failures
from failmode.mining.overlap import failure_overlap, iou_matrix, model_family
from failmode.mining.report import write_attribution

__all__ = [
    "MODES_FORMAT", "Attribution", "ClipAttributor", "Predictions", "assign_halves", "attribute",
    "attribute_failures", "failure_overlap", "failures_from_predictions", "iou_matrix",
"make_attributor", "mine_failures", "model_family", "predict", "read_failures", "top_k_modes",
    "write_attribution", "write_failures",
]
