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


# ----- issue 17: tolerances that hold in every dtype ---------------------------------------------
HALF = (torch.float16, torch.bfloat16)


def _same_span_other_basis(S, seed):
    """The span of ``S`` with a different orthonormal basis (rotated, then re-orthonormalized)."""
    R = random_orthogonal(S.dim, generator=gen(seed), dtype=F64).to(S.dtype)
    return Subspace(torch.linalg.qr(S.basis @ R).Q)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_intersection_dimension_of_random_subspaces(dtype):
    # the old code compared cosines with cos(angle_tol), which rounds to 1: in float32 most of
    # these self-intersections came out with a wrong dimension (or None)
    for seed in range(10):
        Q = random_orthogonal(30, generator=gen(seed), dtype=F64).to(dtype)
        S = Subspace(Q[:, :5])
        inter = S.intersection(_same_span_other_basis(S, seed + 100))
        assert inter is not None and inter.dim == 5
        assert S.overlap(inter) == pytest.approx(1.0, abs=10 * torch.finfo(dtype).eps ** 0.5)
        # two shared directions, the other angles well away from 0
        angles = torch.tensor([0.0, 0.0, 0.1, 0.7, 1.3], dtype=F64)
        A, B = tilted_pair(30, 5, angles, seed=seed)
        inter = A.to(dtype).intersection(B.to(dtype))
        assert inter is not None and inter.dim == 2
        assert A.overlap(inter.to(F64)) == pytest.approx(1.0, abs=1e-3)


def test_intersection_angle_tol_is_validated_and_used():
    A, B = tilted_pair(20, 3, [0.0, 1e-3, 0.5])
    assert A.intersection(B).dim == 1
    assert A.intersection(B, angle_tol=2e-3).dim == 2
    with pytest.raises(ValueError, match="angle_tol"):
        A.intersection(B, angle_tol=-1.0)
    with pytest.raises(ValueError, match="angle_tol"):
        A.intersection(B, angle_tol=2.0)


@pytest.mark.parametrize(("dtype", "err"), [(F64, 1e-7), (torch.float32, 1e-3)])
def test_basis_orthonormality_is_checked_to_the_stated_sqrt_eps(dtype, err):
    # between sqrt(eps) (the stated tolerance) and 10 sqrt(eps) (the old, enforced one)
    assert torch.finfo(dtype).eps ** 0.5 < err < 10 * torch.finfo(dtype).eps ** 0.5
    Q = random_orthogonal(10, generator=gen(0), dtype=F64)[:, :3]
    Q = (Q * torch.tensor([1.0, 1.0, (1 + err) ** 0.5], dtype=F64)).to(dtype)
    with pytest.raises(ValueError, match="not orthonormal"):
        Subspace(Q)
    # rounding an orthonormal basis to any dtype stays within the tolerance
    for dt in (torch.float32, *HALF):
        Q0 = random_orthogonal(200, generator=gen(1), dtype=F64)[:, :8]
        assert Subspace(Q0.to(dt)).dim == 8
        assert Subspace(torch.linalg.qr(torch.randn(500, 8, generator=gen(2))).Q).dim == 8


@pytest.mark.parametrize("rtol", [-1, -1e-9, 1.0, 2.0, float("nan"), float("inf")])
def test_from_vectors_rtol_is_validated(rtol):
    with pytest.raises(ValueError, match="rtol"):
        Subspace.from_vectors(torch.randn(5, 2, generator=gen(0), dtype=F64), rtol=rtol)


def test_from_vectors_rtol_type():
    with pytest.raises(TypeError, match="rtol"):
        Subspace.from_vectors(torch.randn(5, 2, generator=gen(0), dtype=F64), rtol="1e-3")


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_subspaces_work_in_float32(dtype):
    eps = torch.finfo(dtype).eps
    angles = torch.tensor([0.0, 0.3, 1.2], dtype=F64)
    A64, B64 = tilted_pair(40, 3, angles, seed=3)
    A, B = A64.to(dtype), B64.to(dtype)
    got = A.principal_angles(B)
    assert got.dtype == dtype
    # rounding the bases to the dtype moves the angles by O(eps); the result is cast to it
    torch.testing.assert_close(got.double(), angles, rtol=0, atol=8 * eps)
    assert A.distance(B) == pytest.approx(float(angles.norm()), abs=8 * eps)
    assert A.overlap(B) == pytest.approx(float(torch.cos(angles).pow(2).mean()), abs=8 * eps)
    inter = A.intersection(B)
    assert inter is not None and inter.dim == 1 and inter.dtype == dtype
    # the union of two planes sharing a line is 5-dimensional; the rank threshold must know that
    # the vectors were rounded to the half dtype (float32's eps alone counted a spurious 6th)
    U = A.union(_same_span_other_basis(B64, 7).to(dtype))  # the shared line in two bases
    assert U.dim == 5 and U.dtype == dtype
    M = torch.randn(12, 7, generator=gen(4), dtype=F64)
    S = Subspace.from_svd(M.to(dtype), 3)
    assert S.dtype == dtype
    assert S.to(F64).distance(Subspace.from_svd(M, 3)) < 0.1
    x = torch.randn(40, generator=gen(5), dtype=F64)
    assert float(A.captured_fraction(x.to(dtype))) == pytest.approx(
        float(A64.captured_fraction(x)), abs=8 * eps
    )


def test_empty_and_meta_inputs():
    with pytest.raises(ValueError, match="empty"):
        Subspace.from_svd(torch.zeros(0, 3, dtype=F64), 1)
    with pytest.raises(ValueError, match="empty"):
        Subspace.from_svd(torch.zeros(3, 0, dtype=F64), 1)
    with pytest.raises(ValueError, match="non-empty"):
        Subspace.from_vectors(torch.zeros(0, 2, dtype=F64))
    with pytest.raises(ValueError, match="meta"):
        Subspace(torch.eye(3, device="meta")[:, :1])
    with pytest.raises(ValueError, match="meta"):
        Subspace.from_vectors(torch.ones(3, 1, device="meta"))
    S = Subspace(torch.eye(3, dtype=F64)[:, :1])
    assert S.project(torch.zeros(3, 0, dtype=F64)).shape == (3, 0)
    with pytest.raises(ValueError, match="meta"):
        S.project(torch.ones(3, device="meta"))
