"""Directions: against scikit-learn / dense references in float64, sign and scale checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subspaces.steering import (
    ClusteredDirections,
    LDADirection,
    LogisticDirection,
    MeanDifference,
    PCACentered,
    PCADifference,
)

sklearn = pytest.importorskip("sklearn")


def data(n: int = 80, d: int = 6, seed: int = 0, shift: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    neg = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix
    delta = torch.randn(d, generator=g, dtype=torch.float64)
    noise = 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    pos = neg + shift * delta + noise
    return pos, neg


def unit(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    return x / x.norm()


def aligned(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() @ b.double()).abs() / (a.double().norm() * b.double().norm()))


def test_mean_difference_is_exact() -> None:
    pos, neg = data()
    md = MeanDifference().fit(pos, neg[:50])  # unpaired is fine
    diff = pos.mean(0) - neg[:50].mean(0)
    torch.testing.assert_close(md.vector(), diff, rtol=1e-12, atol=0)
    assert md.scale_ == pytest.approx(float(diff.norm()), rel=1e-12)
    torch.testing.assert_close(md.transform(pos).mean() - md.transform(neg[:50]).mean(),
                               torch.tensor(md.scale_, dtype=torch.float64))  # fmt: skip


def test_pca_difference_matches_sklearn_and_svd_with_sign_fixed() -> None:
    from sklearn.decomposition import PCA

    pos, neg = data()
    diffs = (pos - neg).numpy()
    centred = PCADifference(center=True).fit(pos, neg)
    ref = unit(PCA(n_components=1).fit(diffs).components_[0])
    assert aligned(centred.direction_, ref) > 1 - 1e-10
    uncentred = PCADifference().fit(pos, neg)
    _, _, vt = np.linalg.svd(diffs, full_matrices=False)
    assert aligned(uncentred.direction_, unit(vt[0])) > 1 - 1e-10
    for d in (centred, uncentred):  # sign: positives project higher
        assert float(d.transform(pos).mean()) > float(d.transform(neg).mean())
        assert d.scale_ == pytest.approx(float((d.transform(pos) - d.transform(neg)).mean()))
    # swapping the roles flips the direction
    swapped = PCADifference().fit(neg, pos)
    torch.testing.assert_close(swapped.direction_, -uncentred.direction_)


def test_pca_centered_matches_sklearn_on_pair_centred_rows() -> None:
    from sklearn.decomposition import PCA

    pos, neg = data(seed=1)
    m = (pos + neg) / 2
    rows = torch.cat([pos - m, neg - m]).numpy()
    ref = unit(PCA(n_components=1).fit(rows).components_[0])
    d = PCACentered().fit(pos, neg)
    assert aligned(d.direction_, ref) > 1 - 1e-10
    p, n = d.transform(pos), d.transform(neg)
    t = (p.mean() + n.mean()) / 2
    assert d.sign_check_ == (int((p > t).sum()) + int((n < t).sum())) / 160


def test_logistic_matches_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression

    pos, neg = data(seed=2, shift=0.5)
    d = LogisticDirection(C=0.5).fit(pos, neg[:60])
    X = torch.cat([pos, neg[:60]]).numpy()
    y = [1] * 80 + [0] * 60
    ref = unit(LogisticRegression(C=0.5, max_iter=1000).fit(X, y).coef_[0])
    torch.testing.assert_close(d.direction_, ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize("shrinkage", [0.0, 0.3])
def test_lda_matches_sklearn(shrinkage: float) -> None:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    pos, neg = data(seed=3, shift=0.5)
    d = LDADirection(shrinkage=shrinkage).fit(pos, neg[:70])
    X = torch.cat([pos, neg[:70]]).numpy()
    y = [1] * 80 + [0] * 70
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(X, y)
    torch.testing.assert_close(d.direction_, unit(lda.coef_[0]), rtol=0, atol=1e-8)


def test_clustered_directions_recover_planted_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    d, k, n = 10, 3, 90
    centres = 5 * torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64)).Q.T
    labels = torch.arange(n) % k
    neg = torch.randn(n, d, generator=g, dtype=torch.float64)
    pos = neg + centres[labels] + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    cd = ClusteredDirections(k, generator=torch.Generator().manual_seed(1)).fit(pos, neg)
    # each planted centre is matched by one fitted centroid, labels agree up to a permutation
    match = torch.cdist(centres, cd.centroids_).argmin(1)
    assert sorted(match.tolist()) == list(range(k))
    torch.testing.assert_close(cd.centroids_[match], centres, rtol=0, atol=0.1)
    assert torch.equal(cd.labels_, match[labels])
    assert cd.subspace_.dim == k
    assert cd.subspace_.overlap(type(cd.subspace_).from_vectors(centres.T)) > 0.999
    torch.testing.assert_close(cd.directions_.norm(dim=1), torch.ones(k, dtype=torch.float64))
    assert torch.equal(cd.predict(pos - neg), cd.labels_)
    again = ClusteredDirections(k, generator=torch.Generator().manual_seed(1)).fit(pos, neg)
    assert torch.equal(again.labels_, cd.labels_)  # seeded -> reproducible
    spherical = ClusteredDirections(k, normalize=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(spherical.fit(pos, neg).predict(pos - neg), spherical.labels_)


def test_float32_in_float32_out_and_state_naming() -> None:
    pos, neg = data()
    for est in (MeanDifference(), PCADifference(), PCACentered(), LogisticDirection(),
                LDADirection(0.1)):  # fmt: skip
        assert not hasattr(est, "direction_")
        with pytest.raises(ValueError, match="not fitted"):
            est.vector()
        fitted = est.fit(pos.float(), neg.float())
        assert fitted is est and est.direction_.dtype == torch.float32
        assert float(est.direction_.norm()) == pytest.approx(1.0, abs=1e-6)
        assert est.sign_check_ > 0.9 and est.scale_ > 0


def test_bad_input_and_warnings() -> None:
    pos, neg = data()
    with pytest.raises(ValueError, match="same dimension"):
        MeanDifference().fit(pos, neg[:, :3])
    with pytest.raises(ValueError, match="paired"):
        PCADifference().fit(pos, neg[:10])
    with pytest.raises(ValueError, match="at least one"):
        MeanDifference().fit(pos[:0], neg)
    with pytest.raises(ValueError, match="non-finite"):
        MeanDifference().fit(pos * float("nan"), neg)
    with pytest.raises(TypeError, match="floating"):
        MeanDifference().fit(pos.long(), neg.long())
    with pytest.raises(ValueError, match="direction is zero"):
        MeanDifference().fit(pos, pos)
    with pytest.raises(ValueError, match="at least n_clusters"):
        ClusteredDirections(5).fit(pos[:3], neg[:3])
    with pytest.raises(ValueError, match="shrinkage"):
        LDADirection(shrinkage=2.0).fit(pos, neg)
    with pytest.raises(ValueError, match="singular"):
        LDADirection().fit(pos[:3], neg[:3])
    # the means differ only because of one outlier per class: midpoint accuracy 2/8
    p = torch.tensor([[10.0], [-1.0], [-1.0], [-1.0]], dtype=torch.float64)
    with pytest.warns(UserWarning, match="no better than chance"):
        md = MeanDifference().fit(p, -p)
    assert md.sign_check_ == 0.25 and md.direction_.tolist() == [1.0]
