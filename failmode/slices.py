"""Minimal failure slices over attribute tags (after PRIME, Rezaei et al. 2023).

Every image of a split carries a set of tags (contexts of each vocabulary kind whose attributor score passes a
calibrated threshold, see `failmode.tagging`). Per class, `find_slices` searches every combination of up to `s`
tags whose group has at least `m` images and whose accuracy is at least `d` below the class's accuracy, and keeps
only *minimal* slices: removing any one tag makes the group clearly easier (accuracy up by at least `min_gain`).

The search is exhaustive and vectorised: each tag is a packed bitset over the class's images (64 images per
uint64 word); a level of the search ANDs every frequent set of the previous level with every frequent single tag
in one numpy operation and counts members and correct members with `np.bitwise_count`. Sets smaller than `m` are
dropped before the next level (a superset is never larger than its subsets), which keeps the work near the number
of frequent combinations.

Ranking: by the lower confidence bound of the accuracy drop, `class_accuracy - wilson_upper(slice accuracy)`,
so a large, clearly failing slice outranks a tiny one with the same point estimate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from failmode.errors import UsageError
from failmode.stats import wilson_interval

log = logging.getLogger(__name__)

WORD_BITS = 64
#: Bytes of intermediate bitsets one vectorised step may allocate (chunks of sets are processed in turn).
CHUNK_BYTES = 32 << 20


@dataclass(frozen=True)
class SliceParams:
    """The search parameters: at most `max_order` tags (s), at least `min_size` images (m), an accuracy drop of
    at least `min_drop` (d) below the class's accuracy, and `min_gain`: how much easier every one-tag-smaller
    group must be for a slice to count as minimal."""

    max_order: int = 3
    min_size: int = 25
    min_drop: float = 0.2
    min_gain: float = 0.1

    def check(self) -> SliceParams:
        """Raise UsageError on impossible values; return self."""
        if self.max_order < 1:
            raise UsageError(f"slice order s must be >= 1, got {self.max_order}")
        if self.min_size < 1:
            raise UsageError(f"minimum slice size m must be >= 1, got {self.min_size}")
        if not 0 < self.min_drop <= 1:
            raise UsageError(f"accuracy drop d must lie in (0, 1], got {self.min_drop}")
        if not 0 <= self.min_gain <= 1:
            raise UsageError(f"minimality gain must lie in [0, 1], got {self.min_gain}")
        return self


@dataclass
class TagSets:
    """Every frequent tag combination of one class: members [M, s] (tag columns, -1 padded, ascending),
    group sizes and correct counts [M]."""

    members: np.ndarray
    size: np.ndarray
    correct: np.ndarray

    @property
    def order(self) -> np.ndarray:
        """Number of tags of each combination [M]."""
        return (self.members >= 0).sum(axis=1)


def pack_columns(mask: np.ndarray) -> np.ndarray:
    """Boolean [N, K] -> packed bitsets [K, ceil(N / 64)] uint64 (bit i of column k = mask[i, k])."""
    mask = np.asarray(mask, dtype=bool)
    n = mask.shape[0]
    words = max(1, -(-n // WORD_BITS))
    padded = np.zeros((mask.shape[1], words * WORD_BITS), dtype=bool)
    padded[:, :n] = mask.T
    return np.packbits(padded, axis=1, bitorder="little").view(np.uint64)


def _popcount(bits: np.ndarray) -> np.ndarray:
    return np.bitwise_count(bits).sum(axis=-1, dtype=np.int64)


def frequent_sets(tags: np.ndarray, correct: np.ndarray, max_order: int, min_size: int) -> TagSets:
    """All tag combinations of up to `max_order` tags with at least `min_size` images (level-wise, bitsets)."""
    tags = np.asarray(tags, dtype=bool)
    if tags.ndim != 2 or len(correct) != tags.shape[0]:
        raise ValueError(f"tags must be [N, K] and correct [N]; got {tags.shape} and {np.shape(correct)}")
    bits = pack_columns(tags)
    ok_bits = pack_columns(np.asarray(correct, dtype=bool)[:, None])[0]
    size1, correct1 = _popcount(bits), _popcount(bits & ok_bits)
    single = np.flatnonzero(size1 >= min_size)
    members = [single[:, None]]
    sizes, corrects = [size1[single]], [correct1[single]]
    level_members, level_bits = single[:, None], bits[single]
    for order in range(2, max_order + 1):
        if len(level_members) == 0 or len(single) == 0:
            break
        level_members, level_bits, size, ok = _extend(level_members, level_bits, bits[single], single, ok_bits,
                                                      min_size, keep_bits=order < max_order)
        members.append(level_members)
        sizes.append(size)
        corrects.append(ok)
    width = max(1, max_order)
    padded = [np.pad(m, ((0, 0), (0, width - m.shape[1])), constant_values=-1) for m in members]
    return TagSets(np.concatenate(padded).astype(np.int64), np.concatenate(sizes), np.concatenate(corrects))


def _extend(members: np.ndarray, set_bits: np.ndarray, single_bits: np.ndarray, single: np.ndarray,
            ok_bits: np.ndarray, min_size: int, keep_bits: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One level up: every set AND every single tag with a larger column, kept when the group has `min_size`."""
    words = set_bits.shape[1]
    chunk = max(1, CHUNK_BYTES // max(1, len(single) * words * 8))
    out_members, out_bits, out_size, out_ok = [], [], [], []
    for start in range(0, len(members), chunk):
        m = members[start:start + chunk]
        inter = set_bits[start:start + chunk, None, :] & single_bits[None, :, :]
        size = _popcount(inter)
        keep = (single[None, :] > m[:, -1:]) & (size >= min_size)
        rows, cols = np.nonzero(keep)
        if len(rows) == 0:
            continue
        kept = inter[rows, cols]
        out_members.append(np.concatenate([m[rows], single[cols, None]], axis=1))
        out_size.append(size[rows, cols])
        out_ok.append(_popcount(kept & ok_bits))
        if keep_bits:
            out_bits.append(kept)
    order = members.shape[1] + 1
    if not out_members:
        empty = np.zeros((0, order), dtype=np.int64)
        return empty, np.zeros((0, words), dtype=np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    bits = np.concatenate(out_bits) if keep_bits else np.zeros((0, words), dtype=np.uint64)
    return np.concatenate(out_members), bits, np.concatenate(out_size), np.concatenate(out_ok)


def _set_keys(members: np.ndarray, base: int) -> np.ndarray:
    """One integer per tag combination (members ascending, -1 padded); equal sets give equal keys."""
    key = np.zeros(len(members), dtype=np.int64)
    for j in range(members.shape[1]):
        key = key * (base + 1) + (members[:, j] + 1)
    return key


def minimal_mask(sets: TagSets, class_accuracy: float, params: SliceParams) -> np.ndarray:
    """Boolean [M]: the combination is a failure slice (size, drop) and every one-tag-smaller group is easier
    by at least `min_gain` (the empty group is the whole class)."""
    acc = sets.correct / np.maximum(sets.size, 1)
    failing = (sets.size >= params.min_size) & (class_accuracy - acc >= params.min_drop - 1e-12)
    minimal = failing & (class_accuracy - acc >= params.min_gain - 1e-12)
    if len(sets.members) == 0:
        return minimal
    base = int(sets.members.max()) + 1
    keys = _set_keys(sets.members, base)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    width = sets.members.shape[1]
    for drop_j in range(width):
        has = failing & (sets.members[:, drop_j] >= 0) & (sets.order >= 2)
        rows = np.flatnonzero(has)
        if len(rows) == 0:
            continue
        sub = np.delete(sets.members[rows], drop_j, axis=1)
        sub = np.concatenate([sub, np.full((len(rows), 1), -1)], axis=1)
        pos = np.searchsorted(sorted_keys, _set_keys(sub, base))
        pos = np.minimum(pos, len(sorted_keys) - 1)
        found = sorted_keys[pos] == _set_keys(sub, base)
        if not found.all():
            raise AssertionError("a subset of a frequent set is missing from the search table")
        sub_acc = acc[order[pos]]
        minimal[rows] &= sub_acc - acc[rows] >= params.min_gain - 1e-12
    return minimal


@dataclass
class Slice:
    """One minimal failure slice of one class, with its accuracy, the class's, and a description in words."""

    label: int
    class_name: str
    tags: list[str]
    size: int
    correct: int
    accuracy: float
    class_accuracy: float
    drop: float
    accuracy_low: float
    accuracy_high: float
    score: float
    description: str
    rank: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """A flat dict (one row of the slice table; `tags` joined by ' + ')."""
        row = asdict(self)
        extra = row.pop("extra")
        row["tags"] = " + ".join(self.tags)
        row["order"] = len(self.tags)
        return {**row, **extra}


def class_slices(tags: np.ndarray, correct: np.ndarray, tag_names: Sequence[str], params: SliceParams, *,
                 label: int = 0, class_name: str = "", describe: Any = None) -> list[Slice]:
    """The minimal failure slices of one class's images (`tags` [N, K] boolean, `correct` [N] boolean)."""
    params.check()
    correct = np.asarray(correct, dtype=bool)
    if len(tag_names) != np.shape(tags)[1]:
        raise ValueError(f"{len(tag_names)} tag names for {np.shape(tags)[1]} tag columns")
    if len(correct) == 0:
        return []
    class_acc = float(correct.mean())
    sets = frequent_sets(tags, correct, params.max_order, params.min_size)
    keep = np.flatnonzero(minimal_mask(sets, class_acc, params))
    lo, hi = wilson_interval(sets.correct[keep], sets.size[keep])
    out = []
    for j, row in enumerate(keep):
        names = [str(tag_names[t]) for t in sets.members[row] if t >= 0]
        acc = float(sets.correct[row] / sets.size[row])
        text = describe(class_name, names) if describe else f"a photo of a {class_name} {' '.join(names)}".strip()
        out.append(Slice(label, class_name, names, int(sets.size[row]), int(sets.correct[row]), acc, class_acc,
                         class_acc - acc, float(lo[j]), float(hi[j]), class_acc - float(hi[j]), text))
    return rank_slices(out)


def rank_slices(slices: Sequence[Slice]) -> list[Slice]:
    """Slices by score (lower bound of the drop), then size, then tags; `rank` set from 1."""
    ordered = sorted(slices, key=lambda s: (-s.score, -s.size, s.label, s.tags))
    for i, s in enumerate(ordered, 1):
        s.rank = i
    return list(ordered)


def find_slices(tags: np.ndarray, labels: np.ndarray, correct: np.ndarray, tag_names: Sequence[Sequence[str]] | Sequence[str],
                class_names: Sequence[str], params: SliceParams = SliceParams(), describe: Any = None) -> list[Slice]:
    """Minimal failure slices of every class, ranked together.

    `tags` [N, K] boolean over all images; `tag_names` is one list for all classes, or one list per class (then
    column k of `tags` means `tag_names[label][k]` for an image of that class, unused columns False).
    """
    params.check()
    labels = np.asarray(labels)
    tags = np.asarray(tags, dtype=bool)
    correct = np.asarray(correct, dtype=bool)
    if not (len(tags) == len(labels) == len(correct)):
        raise ValueError(f"tags, labels and correct differ in length: {len(tags)}, {len(labels)}, {len(correct)}")
    per_class = bool(tag_names) and not isinstance(tag_names[0], str)
    out: list[Slice] = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        names = list(tag_names[int(label)]) if per_class else list(tag_names)  # type: ignore[arg-type]
        found = class_slices(tags[rows][:, :len(names)], correct[rows], names, params, label=int(label),
                             class_name=str(class_names[int(label)]), describe=describe)
        log.debug("class %s: %d images, %d minimal slices", class_names[int(label)], len(rows), len(found))
        out += found
    return rank_slices(out)


def slice_members(tags: np.ndarray, tag_names: Sequence[str], slice_tags: Sequence[str]) -> np.ndarray:
    """Boolean [N]: the images carrying every tag of `slice_tags` (a tag unknown to `tag_names` matches nothing)."""
    index = {name: k for k, name in enumerate(tag_names)}
    out = np.ones(len(tags), dtype=bool)
    for t in slice_tags:
        if t not in index:
            return np.zeros(len(tags), dtype=bool)
        out &= np.asarray(tags[:, index[t]], dtype=bool)
    return out
