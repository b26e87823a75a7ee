"""Attribute tags for every image of a split: the vocabulary contexts whose attributor score passes a threshold.

Scores. For an image of class c and each vocabulary kind (background, color, ...), the attributor scores the image
against every context the vocabulary lists for c. Each score is *centred on the image*: the image's mean score
over that kind's contexts is subtracted, so an image that is similar to everything (a plain, washed-out photo) does
not get every tag. A tag is the context phrase itself ("in a forest", "that is bright pink").

Thresholds are calibrated per tag, pooled over the classes that list it (see `CALIBRATIONS`):
  - "robust-z" (default, unsupervised): a context is present in a minority of images, so its centred scores are
    mostly "absent" scores; threshold = median + z * 1.4826 * MAD of the tag's scores on the calibration images
    (z = 3 by default: a one-sided outlier test against the "absent" bulk). No labels needed.
  - "tag-precision" (supervised): on held-out images whose true contexts are known (a labelled split, or images
    generated from "a photo of a {class} {context}" prompts), the lowest threshold whose precision reaches the
    target (0.9 by default) with at least `min_support` true positives; a tag that never reaches it is never set.
  - "fixed": one threshold on the centred score for every tag.
Measured on the fashion-scenes world (exemplar attributor, 600 debug images): oracle "tag-precision" at 0.9 gave
precision 0.91 / recall 0.69 per (image, context); "robust-z" with z = 3 gave precision 0.87 / recall 0.60.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from failmode.backends import Attributor
from failmode.data.sources import ImageSource
from failmode.errors import UsageError, ValidationError
from failmode.registry import Registry

log = logging.getLogger(__name__)

MAD_TO_SIGMA = 1.4826


class ContextVocabulary(Protocol):
    """What tagging needs of a vocabulary (`failmode.vocab.Vocabulary` fits): its kind and per-class contexts."""

    kind: str

    def contexts(self, label: int) -> list[str]:
        """The contexts of class `label`."""


@dataclass
class TagScores:
    """Centred attributor scores of images against their class's tags.

    `scores` [N, K] (K = the most tags any class has; NaN in a class's unused columns); column k of an image of
    class c means tag `tag_names[c][k]` of kind `tag_kinds[c][k]`. `indices` are positions in the source.
    """

    indices: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    tag_names: dict[int, list[str]]
    tag_kinds: dict[int, list[str]]

    def column_names(self) -> list[list[str]]:
        """Per class label 0..max, its tag names (empty for a class with no images here)."""
        top = max([*self.tag_names, -1]) + 1
        return [self.tag_names.get(c, []) for c in range(top)]


def class_tags(vocabularies: Sequence[ContextVocabulary], label: int) -> tuple[list[str], list[str]]:
    """(tag names, their kinds) of class `label` over all vocabularies; a phrase listed twice is an error."""
    names: list[str] = []
    kinds: list[str] = []
    for vocab in vocabularies:
        for ctx in vocab.contexts(label):
            if ctx in names:
                raise ValidationError(f"context {ctx!r} of class {label} appears in two vocabularies")
            names.append(ctx)
            kinds.append(vocab.kind)
    return names, kinds


def prompt_name(vocabularies: Sequence[ContextVocabulary], label: int, default: str) -> str:
    """The class name used in context prompts: the first vocabulary's `prompt_name` for `label` (vocabularies of
    `failmode.vocab` have one; "goldfish" rather than the dataset's "goldfish, Carassius auratus"), else `default`."""
    get = getattr(vocabularies[0], "get", None) if vocabularies else None
    return str(get(label).prompt_name) if callable(get) else default


def score_tags(attributor: Attributor, source: ImageSource, vocabularies: Sequence[ContextVocabulary],
               indices: Sequence[int] | np.ndarray | None = None) -> TagScores:
    """Score `source[indices]` (all images by default) against their class's contexts, centred per image and kind."""
    if not vocabularies:
        raise UsageError("tagging needs at least one vocabulary")
    idx = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    labels = source.labels[idx]
    emb = attributor.encode_images(source, idx) if len(idx) else np.zeros((0, 1), np.float32)
    names: dict[int, list[str]] = {}
    kinds: dict[int, list[str]] = {}
    for c in np.unique(labels):
        names[int(c)], kinds[int(c)] = class_tags(vocabularies, int(c))
    width = max((len(v) for v in names.values()), default=0)
    scores = np.full((len(idx), width), np.nan, dtype=np.float32)
    for c in names:
        rows = np.flatnonzero(labels == c)
        class_name = prompt_name(vocabularies, c, source.class_names[c])
        col = 0
        for vocab in vocabularies:
            ctx = vocab.contexts(c)
            s = attributor.scores(emb[rows], attributor.encode_contexts(class_name, ctx))
            scores[rows, col:col + len(ctx)] = s - s.mean(axis=1, keepdims=True)
            col += len(ctx)
    return TagScores(idx, labels, scores, names, kinds)


Calibrator = Callable[..., float]
#: name -> f(scores [n], truth [n] bool or None, **options) -> threshold on the centred score
CALIBRATIONS: Registry[Calibrator] = Registry("tag calibration")


@CALIBRATIONS.register("robust-z")
def robust_z_threshold(scores: np.ndarray, truth: np.ndarray | None = None, *, z: float = 3.0, **_: Any) -> float:
    """median + z * 1.4826 * MAD of the scores (unsupervised)."""
    med = float(np.median(scores))
    return med + z * MAD_TO_SIGMA * float(np.median(np.abs(scores - med)))


@CALIBRATIONS.register("tag-precision")
def tag_precision_threshold(scores: np.ndarray, truth: np.ndarray | None = None, *, tag_precision: float = 0.9,
                            min_support: int = 3, **_: Any) -> float:
    """Lowest threshold whose precision on labelled images reaches `tag_precision` (inf when none does)."""
    if truth is None:
        raise UsageError("calibration 'tag-precision' needs images with known contexts (ground truth)")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(truth[order])
    prec = tp / np.arange(1, len(order) + 1)
    # a threshold must not split tied scores: only positions where the next score is strictly lower
    s = scores[order]
    cut = np.append(s[1:] < s[:-1], True)
    ok = np.flatnonzero((prec >= tag_precision) & (tp >= min_support) & cut)
    return float(s[ok.max()]) if len(ok) else float("inf")


@CALIBRATIONS.register("fixed")
def fixed_threshold(scores: np.ndarray, truth: np.ndarray | None = None, *, value: float = 0.05, **_: Any) -> float:
    """The same threshold for every tag."""
    return float(value)


def _tag_columns(scores: TagScores) -> dict[str, list[tuple[np.ndarray, int]]]:
    """Tag name -> [(rows of a class, column of the tag in that class)]."""
    out: dict[str, list[tuple[np.ndarray, int]]] = {}
    for c, names in scores.tag_names.items():
        rows = np.flatnonzero(scores.labels == c)
        for k, name in enumerate(names):
            out.setdefault(name, []).append((rows, k))
    return out


def calibrate(scores: TagScores, method: str = "robust-z", *, truth: np.ndarray | None = None,
              **options: Any) -> dict[str, float]:
    """Per-tag thresholds (pooled over classes) from calibration images; `truth` [N, K] like `scores.scores`."""
    fn = CALIBRATIONS.get(method)
    out = {}
    for name, parts in sorted(_tag_columns(scores).items()):
        s = np.concatenate([scores.scores[rows, k] for rows, k in parts])
        t = None if truth is None else np.concatenate([truth[rows, k] for rows, k in parts]).astype(bool)
        out[name] = fn(s, t, **options) if len(s) else float("inf")
    return out


def apply_thresholds(scores: TagScores, thresholds: Mapping[str, float]) -> np.ndarray:
    """Boolean tags [N, K]: score >= its tag's threshold (a tag without a threshold is never set)."""
    tags = np.zeros(scores.scores.shape, dtype=bool)
    for name, parts in _tag_columns(scores).items():
        thr = thresholds.get(name, float("inf"))
        for rows, k in parts:
            tags[rows, k] = scores.scores[rows, k] >= thr
    return tags


def truth_matrix(scores: TagScores, contexts: Sequence[Sequence[str]]) -> np.ndarray:
    """Ground truth [N, K] for `scores` from each image's true contexts (one list per image, any kinds)."""
    if len(contexts) != len(scores.labels):
        raise ValidationError(f"{len(contexts)} context lists for {len(scores.labels)} images")
    truth = np.zeros(scores.scores.shape, dtype=bool)
    for i, (c, have) in enumerate(zip(scores.labels, contexts)):
        names = scores.tag_names[int(c)]
        for ctx in have:
            if ctx in names:
                truth[i, names.index(ctx)] = True
    return truth
