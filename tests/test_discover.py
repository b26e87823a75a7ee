"""Tagging calibration and discover's statistics on synthetic data (no world, no models)."""

from __future__ import annotations

import numpy as np
import pytest

from failmode.discovery.discover import DiscoverParams, spherical_kmeans
from failmode.discovery.tagging import TagScores, apply_thresholds, calibrate, tag_precision_threshold, truth_matrix
from failmode.errors import UsageError
from failmode.stats import two_proportion_p


def scores_two_classes() -> TagScores:
    rng = np.random.default_rng(0)
    n = 400
    labels = np.repeat([0, 1], n // 2)
    s = rng.normal(0, 0.01, size=(n, 2)).astype(np.float32)
    s[:20, 0] += 0.1  # class 0: 20 images really "in a forest"
    s[200:230, 1] += 0.1  # class 1: 30 images really "on gravel"
    names = {0: ["in a forest", "on gravel"], 1: ["in a forest", "on gravel"]}
    return TagScores(np.arange(n), labels, s, names, {0: ["background"] * 2, 1: ["background"] * 2})


def test_robust_z_calibration_tags_the_outliers_pooled_over_classes():
    sc = scores_two_classes()
    thr = calibrate(sc, "robust-z", z=4.0)
    assert set(thr) == {"in a forest", "on gravel"}
    tags = apply_thresholds(sc, thr)
    assert tags[:20, 0].all() and tags[200:230, 1].all()
    assert tags[20:200].sum() + tags[230:, 1].sum() <= 3


def test_tag_precision_calibration_uses_ground_truth():
    sc = scores_two_classes()
    contexts = [["in a forest"] if i < 20 else ["on gravel"] if 200 <= i < 230 else [] for i in range(400)]
    truth = truth_matrix(sc, contexts)
    assert truth.sum() == 50
    thr = calibrate(sc, "tag-precision", truth=truth, tag_precision=0.95)
    tags = apply_thresholds(sc, thr)
    prec = (tags & truth).sum() / tags.sum()
    assert prec >= 0.95 and (tags & truth).sum() >= 45
    with pytest.raises(UsageError, match="calibration 'tag-precision' needs images with known contexts"):
        calibrate(sc, "tag-precision")
    with pytest.raises(UsageError):
        calibrate(sc, "no-such-method")


def test_tag_precision_threshold_unreachable_is_infinite_and_ties_are_not_split():
    assert tag_precision_threshold(np.array([0.3, 0.2, 0.1]), np.array([False, False, True])) == float("inf")
    # two tied top scores, one true: precision 0.5 at the tie, so no threshold reaches 0.9
    assert tag_precision_threshold(np.array([0.5, 0.5, 0.1]), np.array([True, False, False]), min_support=1) == float("inf")
    assert tag_precision_threshold(np.array([0.9, 0.5, 0.1]), np.array([True, True, False]), min_support=1) == 0.5


def test_spherical_kmeans_separates_directions_deterministically():
    rng = np.random.default_rng(1)
    a = rng.normal([1, 0, 0], 0.05, size=(15, 3))
    b = rng.normal([0, 1, 0], 0.05, size=(10, 3))
    x = np.concatenate([a, b])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assign = spherical_kmeans(x, 2, seed=3)
    assert len(set(assign[:15])) == 1 and len(set(assign[15:])) == 1 and assign[0] != assign[-1]
    np.testing.assert_array_equal(assign, spherical_kmeans(x, 2, seed=3))


def test_two_proportion_p_values():
    assert two_proportion_p(30, 32, 2, 32) < 1e-10
    assert two_proportion_p(5, 32, 5, 32) == pytest.approx(0.5)
    assert two_proportion_p(1, 32, 20, 32) > 0.99
    assert two_proportion_p(0, 0, 1, 10) == 1.0


def test_discover_params_are_checked():
    with pytest.raises(UsageError):
        DiscoverParams(base="median").check()
    with pytest.raises(UsageError):
        DiscoverParams(plain_prompt=False, base="plain").check()
    with pytest.raises(UsageError):
        DiscoverParams(confirm_images=0).check()
    assert DiscoverParams(plain_prompt=False, base="pooled").check().base == "pooled"


def test_default_prompt_fills_the_template_as_vocabularies_do():
    from failmode.discovery.discover import default_prompt

    prompt = default_prompt("apple")
    assert prompt(0, "") == "a photo of an apple"
    assert prompt(0, "in  a forest") == "a photo of an apple in a forest"
