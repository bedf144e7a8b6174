"""P05: Grassmann class representation on digits (Wang, Li & Zhang 2023): pieces and fast run."""

from __future__ import annotations

import itertools

import pytest
import torch

from subspaces.experiments import get
from subspaces.experiments.P05_grassmann_classes import (
    KS,
    MAIN_K,
    Net,
    probe_accuracy,
    symmetric_clusters,
    train_net,
    within_class_share,
)
from subspaces.geometry import GrassmannLinear, orthonormality_error


def test_within_class_share_reference() -> None:
    g = torch.Generator().manual_seed(0)
    F = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.arange(30) % 3
    x = F / F.norm(dim=1, keepdim=True)
    total = ((x - x.mean(0)) ** 2).sum()
    within = sum(((x[y == c] - x[y == c].mean(0)) ** 2).sum() for c in range(3))
    assert within_class_share(F, y) == pytest.approx(float(within / total), rel=1e-12)
    assert within_class_share(3.0 * F, y) == pytest.approx(within_class_share(F, y), rel=1e-12)
    single = torch.zeros(30, dtype=torch.long)
    assert within_class_share(F, single) == pytest.approx(1.0)


def test_probe_accuracy_separable_and_chance() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(100) % 2
    assert probe_accuracy(torch.randn(100, 3, generator=g) + 5.0 * y[:, None], y, seed=0) > 0.95
    assert probe_accuracy(torch.randn(100, 3, generator=g), y, seed=0) < 0.8


def test_net_heads_and_training_keep_bases_orthonormal() -> None:
    soft, gcr = Net(10, "softmax", 1, seed=3), Net(10, "gcr", 4, seed=3)
    for a, b in zip(soft.extractor.parameters(), gcr.extractor.parameters(), strict=True):
        assert torch.equal(a, b)  # the same extractor initialization for both heads
    assert isinstance(gcr.head, GrassmannLinear) and gcr.head.weight.shape == (10, 64, 4)
    g = torch.Generator().manual_seed(2)
    X = torch.randn(256, 64, generator=g)
    y = torch.randint(0, 10, (256,), generator=g)
    info = train_net(gcr, X, y, epochs=3, seed=0)
    assert info["steps"] == 12 and info["max_orthonormality_error"] < 1e-5
    assert orthonormality_error(gcr.head.weight) < 1e-5


def test_symmetric_clusters_hide_classes_from_a_linear_probe() -> None:
    Xs, ys, Xt, yt = symmetric_clusters(3, n_source=6, n_target=4, per_class=40)
    assert Xs.shape == (240, 64) and Xt.shape == (160, 64)
    assert torch.equal(ys.bincount(), torch.full((6,), 40)) and int(yt.max()) == 3
    torch.testing.assert_close(Xs.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(Xs.std(0), torch.ones(64), atol=1e-5, rtol=0)
    again = symmetric_clusters(3, n_source=6, n_target=4, per_class=40)
    assert all(torch.equal(a, b) for a, b in zip((Xs, ys, Xt, yt), again, strict=True))
    # antipodal clusters (class means ~0): a linear probe on raw inputs stays near chance 0.25
    assert probe_accuracy(Xt, yt, seed=0) < 0.5


@pytest.mark.slow
def test_p05_fast_run() -> None:
    result = get("P05").run(True, 0)
    m = result.measured
    variants = {"softmax"} | {f"gcr_k{k}" for k in KS}
    assert set(m["mean_test_accuracy"]) == variants == set(m["mean_within_class_share"])
    assert set(m["mean_probe_accuracy"]) == {"softmax", f"gcr_k{MAIN_K}"}
    assert all(len(v) == m["n_seeds"] == 2 for v in m["test_accuracy"].values())
    # the networks learn (digits is easy); the probe is far above chance (0.2)
    assert min(m["mean_test_accuracy"].values()) > 0.93
    assert min(m["mean_probe_accuracy"].values()) > 0.7
    assert all(0.0 < s < 1.0 for s in m["mean_within_class_share"].values())
    assert m["max_orthonormality_error"] < 1e-5 and m["checks"]["orthonormal"]
    # the verdict is computed from the measurements
    shares = [m["mean_within_class_share"][f"gcr_k{k}"] for k in KS]
    assert m["checks"]["variability_increases"] == all(b > a for a, b in itertools.pairwise(shares))
    assert m["checks"]["accuracy"] == (
        m["mean_test_accuracy"][f"gcr_k{MAIN_K}"] >= m["mean_test_accuracy"]["softmax"]
    )
    t = m["transfer_probe_accuracy"]
    assert t["raw"]["n"] == t["softmax"]["n"] == t[f"gcr_k{MAIN_K}"]["n"] == 3
    assert m["checks"]["transfer"] == (m["transfer_gcr_minus_softmax"]["ci95"][0] > 0)
    assert m["checks"]["raw_probe_below_both_heads"] == all(
        r < min(a, b)
        for r, a, b in zip(
            t["raw"]["per_seed"],
            t["softmax"]["per_seed"],
            t[f"gcr_k{MAIN_K}"]["per_seed"],
            strict=True,
        )
    )
    assert result.passed == all(m["checks"].values())
    assert result.headline == ("transfer_gcr_minus_softmax",)
    assert m["old_criterion"]["checks"]["transfer"] == (
        m["mean_probe_accuracy"][f"gcr_k{MAIN_K}"] > m["mean_probe_accuracy"]["softmax"]
    )
    assert result.figures["gcr"].startswith(b"\x89PNG")
