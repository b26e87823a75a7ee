"""The minimal-slice search core on synthetic tags (no world, no models)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from failmode.errors import UsageError
from failmode.slices import (
    SliceParams,
    class_slices,
    find_slices,
    frequent_sets,
    minimal_mask,
    pack_columns,
    slice_members,
)
from failmode.stats import pearson, spearman, wilson_interval


def brute_force(tags: np.ndarray, correct: np.ndarray, p: SliceParams) -> dict[tuple[int, ...], tuple[int, int]]:
    """Reference: every combination by itertools, then the minimality rule written out literally."""
    n, k = tags.shape
    class_acc = correct.mean()
    stats = {}
    for order in range(1, p.max_order + 1):
        for combo in itertools.combinations(range(k), order):
            rows = tags[:, list(combo)].all(axis=1)
            if rows.sum() >= p.min_size:
                stats[combo] = (int(rows.sum()), int(correct[rows].sum()))
    out = {}
    for combo, (size, ok) in stats.items():
        acc = ok / size
        if class_acc - acc < p.min_drop - 1e-12 or class_acc - acc < p.min_gain - 1e-12:
            continue
        subs = [tuple(t for t in combo if t != drop) for drop in combo] if len(combo) > 1 else []
        if all(stats[s][1] / stats[s][0] - acc >= p.min_gain - 1e-12 for s in subs):
            out[combo] = (size, ok)
    return out


def test_pack_columns_bits_roundtrip():
    rng = np.random.default_rng(0)
    mask = rng.random((130, 5)) < 0.4
    bits = pack_columns(mask)
    assert bits.shape == (5, 3) and bits.dtype == np.uint64
    unpacked = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :130].T.astype(bool)
    np.testing.assert_array_equal(unpacked, mask)


@pytest.mark.parametrize("seed", range(6))
def test_search_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(50, 400)), int(rng.integers(3, 9))
    tags = rng.random((n, k)) < rng.uniform(0.2, 0.7, size=k)
    correct = rng.random(n) < 0.8
    # plant a hard pair so minimal multi-tag slices exist
    hard = tags[:, 0] & tags[:, 1]
    correct[hard] = rng.random(hard.sum()) < 0.2
    p = SliceParams(max_order=3, min_size=int(rng.integers(5, 20)), min_drop=0.1, min_gain=0.05)
    sets = frequent_sets(tags, correct, p.max_order, p.min_size)
    got_all = {tuple(int(t) for t in m if t >= 0): (int(s), int(c)) for m, s, c in zip(sets.members, sets.size, sets.correct)}
    want_all = {}
    for order in range(1, 4):
        for combo in itertools.combinations(range(k), order):
            rows = tags[:, list(combo)].all(axis=1)
            if rows.sum() >= p.min_size:
                want_all[combo] = (int(rows.sum()), int(correct[rows].sum()))
    assert got_all == want_all
    mask = minimal_mask(sets, float(correct.mean()), p)
    got = {tuple(int(t) for t in m if t >= 0): (int(s), int(c))
           for m, s, c, keep in zip(sets.members, sets.size, sets.correct, mask) if keep}
    assert got == brute_force(tags, correct, p)


def test_search_order_four_matches_brute_force():
    rng = np.random.default_rng(11)
    tags = rng.random((300, 7)) < 0.6
    correct = rng.random(300) < 0.85
    p = SliceParams(max_order=4, min_size=8, min_drop=0.1, min_gain=0.05)
    sets = frequent_sets(tags, correct, 4, 8)
    mask = minimal_mask(sets, float(correct.mean()), p)
    got = {tuple(int(t) for t in m if t >= 0) for m, keep in zip(sets.members, mask) if keep}
    assert got == set(brute_force(tags, correct, p))
    assert int(sets.order.max()) == 4


def planted(seed: int = 0, n: int = 2000) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Tags: 'in a forest' (20 %), 'red' (30 %), 'at night' (25 %), 5 noise tags; the forest+red pair fails."""
    rng = np.random.default_rng(seed)
    names = ["in a forest", "red", "at night", "n1", "n2", "n3", "n4", "n5"]
    density = np.array([0.2, 0.3, 0.25, 0.3, 0.3, 0.3, 0.3, 0.3])
    tags = rng.random((n, len(names))) < density
    correct = rng.random(n) < 0.92
    pair = tags[:, 0] & tags[:, 1]
    correct[pair] = rng.random(pair.sum()) < 0.25
    return tags, correct, names


def test_planted_pair_is_the_top_slice_and_supersets_are_not_minimal():
    tags, correct, names = planted()
    found = class_slices(tags, correct, names, SliceParams(3, 25, 0.2, 0.1), label=3, class_name="coat")
    top = found[0]
    assert top.tags == ["in a forest", "red"] and top.rank == 1 and top.label == 3
    rows = tags[:, 0] & tags[:, 1]
    assert top.size == rows.sum() and top.correct == correct[rows].sum()
    assert top.accuracy == pytest.approx(correct[rows].mean())
    assert top.class_accuracy == pytest.approx(correct.mean())
    assert top.description == "a photo of a coat in a forest red"
    assert top.accuracy_low < top.accuracy < top.accuracy_high
    assert top.score == pytest.approx(top.class_accuracy - top.accuracy_high)
    # adding 'at night' to the pair keeps it failing but not clearly harder: not minimal
    assert not any(set(s.tags) > {"in a forest", "red"} for s in found)
    # neither single tag is a failure slice on its own at d = 0.2
    assert not any(s.tags in (["in a forest"], ["red"]) for s in found)


def test_failing_single_tag_suppresses_its_supersets():
    rng = np.random.default_rng(3)
    tags = rng.random((1500, 4)) < 0.4
    correct = rng.random(1500) < 0.9
    correct[tags[:, 2]] = rng.random(tags[:, 2].sum()) < 0.4
    found = class_slices(tags, correct, ["a", "b", "c", "d"], SliceParams(3, 20, 0.2, 0.1))
    assert [s.tags for s in found] == [["c"]]


def test_find_slices_per_class_tag_names_and_ranking():
    t1, c1, names = planted(seed=1)
    t2, c2, _ = planted(seed=2, n=600)
    c2[:] = True  # class 1 never fails
    tags = np.concatenate([t1, t2])
    correct = np.concatenate([c1, c2])
    labels = np.array([0] * len(t1) + [1] * len(t2))
    per_class = [names, [f"x{k}" for k in range(len(names))]]
    found = find_slices(tags, labels, correct, per_class, ["coat", "bag"], SliceParams(3, 25, 0.2, 0.1))
    assert found and all(s.label == 0 for s in found)
    assert [s.rank for s in found] == list(range(1, len(found) + 1))
    assert all(a.score >= b.score for a, b in zip(found, found[1:]))
    row = found[0].to_row()
    assert row["tags"] == "in a forest + red" and row["order"] == 2 and row["class_name"] == "coat"


def test_params_are_checked():
    tags, correct, names = planted()
    for bad in (SliceParams(max_order=0), SliceParams(min_size=0), SliceParams(min_drop=0.0), SliceParams(min_gain=2)):
        with pytest.raises(UsageError):
            class_slices(tags, correct, names, bad)


def test_empty_and_no_frequent_tags():
    assert class_slices(np.zeros((0, 3), bool), np.zeros(0, bool), ["a", "b", "c"], SliceParams()) == []
    tags = np.zeros((40, 3), bool)
    assert class_slices(tags, np.zeros(40, bool), ["a", "b", "c"], SliceParams(min_size=5)) == []


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(np.array([0, 5, 10]), np.array([10, 10, 10]))
    assert lo[0] == 0.0 and hi[0] == pytest.approx(0.2775, abs=1e-4)
    assert lo[1] == pytest.approx(0.2366, abs=1e-4) and hi[1] == pytest.approx(0.7634, abs=1e-4)
    assert hi[2] == pytest.approx(1.0) and lo[2] == pytest.approx(0.7225, abs=1e-4)
    lo, hi = wilson_interval(0, 0)
    assert (float(lo), float(hi)) == (0.0, 1.0)


def test_members_and_correlations():
    tags = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], bool)
    np.testing.assert_array_equal(slice_members(tags, ["a", "b", "c"], ["a", "b"]), [True, False, True])
    assert not slice_members(tags, ["a", "b", "c"], ["zzz"]).any()
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 2], [3, 4]))
