"""Clustering metrics against scikit-learn, and their bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subspaces.clustering import (
    adjusted_rand_index,
    clustering_accuracy,
    contingency_matrix,
    match_labels,
    normalized_mutual_info,
)

sk = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(5))
def test_nmi_ari_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.6, t, rng.integers(0, 6, 200))
    assert normalized_mutual_info(t, p) == pytest.approx(
        sk.normalized_mutual_info_score(t, p), abs=1e-12
    )
    assert adjusted_rand_index(t, p) == pytest.approx(sk.adjusted_rand_score(t, p), abs=1e-12)
    assert adjusted_rand_index(torch.from_numpy(t), torch.from_numpy(p)) == pytest.approx(
        sk.adjusted_rand_score(t, p), abs=1e-12
    )


def test_special_cases_match_sklearn():
    for t, p in [
        ([0, 0, 0], [1, 1, 1]),
        ([0, 1, 2], [2, 1, 0]),
        ([0, 0, 1], [0, 1, 2]),
        ([0], [0]),
    ]:
        assert normalized_mutual_info(t, p) == pytest.approx(sk.normalized_mutual_info_score(t, p))
        assert adjusted_rand_index(t, p) == pytest.approx(sk.adjusted_rand_score(t, p))


def test_accuracy_brute_force_matching():
    import itertools

    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 50)
    p = rng.integers(0, 4, 50)
    best = max(np.mean(np.array(perm)[p] == t) for perm in itertools.permutations(range(4)))
    assert clustering_accuracy(t, p) == pytest.approx(best)
    mapping = match_labels(t, p)
    assert np.mean(np.array([mapping[v] for v in p]) == t) == pytest.approx(best)


def test_accuracy_with_more_clusters_than_classes():
    assert clustering_accuracy([0, 0, 1, 1], [0, 1, 2, 3]) == 0.5
    assert contingency_matrix([0, 0, 1, 1], [0, 1, 2, 3]).sum() == 4


def test_bad_inputs():
    with pytest.raises(ValueError, match="labels_pred must be 1-D with 3 entries"):
        clustering_accuracy([0, 1, 2], [0, 1])
    with pytest.raises(TypeError, match="integer labels"):
        normalized_mutual_info([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        adjusted_rand_index([], [])
