"""Subspace: construction, projections, principal angles (vs scipy), distances, errors."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from subspaces.linalg.subspace import Subspace
from subspaces.linops import Projection
from subspaces.testing import random_orthogonal

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_subspace(n, k, seed):
    return Subspace(random_orthogonal(n, generator=gen(seed))[:, :k])


def tilted_pair(n, k, angles, seed=0):
    """Two k-subspaces with exactly the given principal angles."""
    Q = random_orthogonal(n, generator=gen(seed))
    A = Q[:, :k]
    c, s = (
        torch.cos(torch.as_tensor(angles, dtype=F64)),
        torch.sin(torch.as_tensor(angles, dtype=F64)),
    )
    B = A * c + Q[:, k : 2 * k] * s
    return Subspace(A), Subspace(B)


@pytest.mark.parametrize(
    ("n", "k1", "k2", "seed"), [(10, 3, 3, 0), (50, 5, 2, 1), (50, 2, 7, 2), (200, 10, 10, 3)]
)
def test_principal_angles_match_scipy(n, k1, k2, seed):
    S1, S2 = random_subspace(n, k1, seed), random_subspace(n, k2, seed + 100)
    ours = S1.principal_angles(S2).numpy()
    ref = np.sort(scipy.linalg.subspace_angles(S1.basis.numpy(), S2.basis.numpy()))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)
    assert np.all(np.diff(ours) >= 0) and len(ours) == min(k1, k2)


def test_tiny_and_right_angles_are_accurate():
    angles = [1e-12, 1e-7, 0.3, math.pi / 2 - 1e-9]
    S1, S2 = tilted_pair(30, 4, angles)
    got = S1.principal_angles(S2).numpy()
    np.testing.assert_allclose(got, angles, rtol=1e-6, atol=1e-15)
    # scipy.linalg.subspace_angles returns 0 and pi/2 here (it pairs its sine/cosine choice
    # with the wrong angles); ours keeps both extremes to six digits.


def test_overlap_and_distances_closed_forms():
    angles = torch.tensor([0.1, 0.5, 1.2], dtype=F64)
    S1, S2 = tilted_pair(20, 3, angles)
    assert S1.overlap(S2) == pytest.approx(float((torch.cos(angles) ** 2).sum()) / 3, abs=1e-12)
    assert S1.distance(S2) == pytest.approx(float(angles.norm()), abs=1e-12)
    assert S1.distance(S2, "chordal") == pytest.approx(float(torch.sin(angles).norm()), abs=1e-12)
    assert S1.distance(S2, "projection") == pytest.approx(math.sin(1.2), abs=1e-12)
    P1, P2 = S1.basis @ S1.basis.T, S2.basis @ S2.basis.T
    assert S1.distance(S2, "chordal") == pytest.approx(
        float((P1 - P2).norm()) / math.sqrt(2), abs=1e-12
    )
    assert S1.distance(S1) == pytest.approx(0.0, abs=1e-7)
    assert S1.overlap(S1) == pytest.approx(1.0, abs=1e-12)


def test_overlap_of_random_subspaces_is_about_k_over_n():
    vals = [
        random_subspace(400, 10, s).overlap(random_subspace(400, 10, s + 50)) for s in range(20)
    ]
    assert np.mean(vals) == pytest.approx(10 / 400, rel=0.2)


def test_from_vectors_qr_order_and_rank():
    V = torch.randn(8, 3, generator=gen(0), dtype=F64)
    S = Subspace.from_vectors(V)
    assert S.dim == 3
    cos = float(S.basis[:, 0] @ V[:, 0] / V[:, 0].norm())
    assert abs(cos) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(S.project(V), V)
    dep = torch.cat([V, V[:, :1] + V[:, 1:2]], 1)
    with pytest.raises(ValueError, match="rank deficient: numerical rank 3 < 4"):
        Subspace.from_vectors(dep)
    assert Subspace.from_vectors(dep, allow_rank_deficient=True).dim == 3
    near = torch.cat([V, V[:, :1] + 1e-9 * torch.randn(8, 1, generator=gen(1), dtype=F64)], 1)
    assert Subspace.from_vectors(near).dim == 4  # independent at machine precision
    with pytest.raises(ValueError, match="rank deficient"):
        Subspace.from_vectors(near, rtol=1e-6)


def test_project_reject_coordinates_captured_fraction():
    S = random_subspace(12, 4, 0)
    x = torch.randn(12, generator=gen(1), dtype=F64)
    X = torch.randn(12, 5, generator=gen(2), dtype=F64)
    torch.testing.assert_close(S.project(x) + S.reject(x), x)
    assert float(S.project(x) @ S.reject(x)) == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(S.project(S.project(X)), S.project(X))
    torch.testing.assert_close(S.basis @ S.coordinates(X), S.project(X))
    frac = S.captured_fraction(X)
    torch.testing.assert_close(frac, S.project(X).norm(dim=0) ** 2 / X.norm(dim=0) ** 2)
    assert Projection(S.basis) is not None
    torch.testing.assert_close(S.projector() @ X, S.project(X))
    torch.testing.assert_close(S.projector(complement=True) @ X, S.reject(X))


def test_union_intersection():
    e = torch.eye(6, dtype=F64)
    A, B = Subspace(e[:, :3]), Subspace(e[:, 2:5])
    U = A.union(B)
    assert U.dim == 5
    assert A.overlap(U) == pytest.approx(1.0) and B.overlap(U) == pytest.approx(1.0)
    inter = A.intersection(B)
    assert inter is not None and inter.dim == 1
    assert abs(float(inter.basis[2, 0])) == pytest.approx(1.0)
    assert Subspace(e[:, :2]).intersection(Subspace(e[:, 3:5])) is None


def test_from_svd_and_dtype_moves():
    M = torch.randn(7, 5, generator=gen(0), dtype=F64)
    U, _, Vh = torch.linalg.svd(M)
    assert Subspace.from_svd(M, 2).distance(Subspace(U[:, :2])) < 1e-7
    assert Subspace.from_svd(M, 2, "right").distance(Subspace(Vh[:2].T.contiguous())) < 1e-7
    S32 = Subspace.from_svd(M, 2).to(torch.float32)
    assert S32.dtype == torch.float32 and S32.dim == 2
    assert "dim=2" in repr(S32)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: Subspace(torch.randn(5, 2, dtype=F64)), ValueError, "not orthonormal"),
        (lambda: Subspace(torch.eye(3, dtype=F64)[:, :0]), ValueError, "0 < k <= n"),
        (lambda: Subspace(torch.ones(3, 4, dtype=F64)), ValueError, "0 < k <= n"),
        (lambda: Subspace(torch.ones(3)), ValueError, "2 dimensions"),
        (lambda: Subspace(torch.eye(3, dtype=torch.int64)), TypeError, "floating"),
        (
            lambda: Subspace.from_vectors(torch.tensor([[1.0, float("nan")]]).T),
            ValueError,
            "non-finite",
        ),
        (lambda: Subspace.from_vectors(torch.zeros(4, 2)), ValueError, "all zero"),
        (lambda: Subspace.from_svd(torch.ones(3, 2), 3), ValueError, "k must be <= min"),
        (
            lambda: random_subspace(5, 2, 0).principal_angles(random_subspace(6, 2, 0)),
            ValueError,
            "different spaces",
        ),
        (
            lambda: random_subspace(5, 2, 0).distance(random_subspace(5, 3, 0)),
            ValueError,
            "equal dimension",
        ),
        (
            lambda: random_subspace(5, 2, 0).distance(random_subspace(5, 2, 1), "l2"),
            ValueError,
            "metric",
        ),
        (
            lambda: random_subspace(5, 2, 0).project(torch.ones(4, dtype=F64)),
            ValueError,
            "dimension 4",
        ),
        (lambda: random_subspace(5, 2, 0).overlap(torch.eye(5)), TypeError, "Subspace"),
        (
            lambda: random_subspace(5, 2, 0).captured_fraction(torch.zeros(5, dtype=F64)),
            ValueError,
            "zero vector",
        ),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
