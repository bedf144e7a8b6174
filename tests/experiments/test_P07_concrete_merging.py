"""P07: Concrete subspace merging on digits x 8 dihedral transforms: pieces and the fast run."""

from __future__ import annotations

import pytest
import torch

from subspaces.experiments import get
from subspaces.experiments.P07_concrete_merging import (
    METHODS,
    RandomBatches,
    dihedral_permutations,
    ordering_checks,
)


def test_dihedral_permutations_are_the_eight_symmetries_of_the_square():
    img = torch.arange(64.0).view(8, 8)
    perms = dihedral_permutations()
    got = {tuple(img.flatten()[p].tolist()) for p in perms}
    expected = set()
    for m in (img, img.T):
        for k in range(4):
            expected.add(tuple(torch.rot90(m, k).flatten().tolist()))
    assert got == expected and len(got) == 8
    for p in perms:  # each is a permutation
        assert sorted(p.tolist()) == list(range(64))


def test_ordering_checks_detect_each_violation():
    good = dict(zip(METHODS, [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.9], strict=True))
    good["concrete_task_arithmetic"] = 0.33
    assert all(ordering_checks(good).values())
    bad = dict(good, concrete_task_arithmetic=0.329)  # TA + 0.029: not 3 points
    assert ordering_checks(bad) == {**ordering_checks(good), "Concrete TA >= TA + 0.03": False}
    bad = dict(good, ties=0.3)  # TA == TIES is not TA < TIES
    assert not ordering_checks(bad)["TA < TIES"]
    bad = dict(good, concrete_adamerging_layer=0.49)
    assert not ordering_checks(bad)["AdaMerging(layer) <= Concrete AdaMerging(layer)"]


def test_random_batches_are_endless_subsets():
    X = torch.arange(20.0)[:, None]
    it = iter(RandomBatches(X, 8, seed=0))
    for _ in range(5):
        b = next(it)
        assert b.shape == (8, 1) and len(set(b.flatten().tolist())) == 8


@pytest.mark.slow
def test_p07_fast_run():
    result = get("P07").run(True, 0)
    m = result.measured
    assert m["n_seeds"] == 3
    assert set(m["mean_accuracy"]) >= set(METHODS) | {"concrete_task_arithmetic"}
    assert set(m["checks"]) == set(ordering_checks(m["mean_accuracy"]))
    assert result.passed == all(m["checks"].values())
    assert m["mean_accuracy"]["individual"] > m["mean_accuracy"]["pretrained"]


def test_reason_names_the_measured_mechanism():
    from subspaces.experiments.P07_concrete_merging import _reason

    means = dict(zip(METHODS, [0.38, 0.46, 0.53, 0.49, 0.33, 0.29, 0.96], strict=True))
    means["concrete_task_arithmetic"] = 0.41
    failed = [k for k, ok in ordering_checks(means).items() if not ok]
    text = _reason(failed, means, 0.96)
    assert "entropy minimisation" in text and "0.330 vs TA 0.530" in text
    assert "96% of the entries" in text
    assert _reason([], means, 0.5) == ""
