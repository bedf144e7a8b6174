"""Properties of ``Subspace``: construction, angles, distances, sums and intersections.

References are computed in float64 from the stored bases (re-orthonormalized by a float64 QR, so
the reference does not inherit the basis's rounding); tolerances follow the basis dtype.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from prop_helpers import (
    F64,
    NONFINITE_WORDS,
    Rejected,
    dtypes,
    eps,
    gen,
    general,
    lay_out,
    layouts,
    must_reject,
    outcome,
    poison,
    seeds,
    work_dtype,
)

from subspaces.linalg import Subspace


def orth64(Q: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(Q.to(F64)).Q


def ref_angles(Q1: torch.Tensor, Q2: torch.Tensor) -> torch.Tensor:
    """Principal angles in float64 (Knyazev-Argentati: sines for small angles)."""
    A, B = orth64(Q1), orth64(Q2)
    if A.shape[1] < B.shape[1]:
        A, B = B, A
    C = A.T @ B
    cos = torch.linalg.svdvals(C).clamp(0, 1)
    sin = torch.linalg.svdvals(B - A @ C).clamp(0, 1).flip(0)
    return torch.where(cos**2 >= 0.5, torch.arcsin(sin), torch.arccos(cos))


def angle_tol(dtype: torch.dtype, n: int) -> float:
    """Angles of bases orthonormal to sqrt(n) eps(dtype), computed in the working dtype."""
    return 20 * math.sqrt(max(n, 1)) * eps(dtype) + 100 * eps(work_dtype(dtype))


@st.composite
def subspaces(draw, n: int | None = None, dtype=None, max_n: int = 8):
    n = draw(st.integers(1, max_n)) if n is None else n
    k = draw(st.integers(1, n))
    dtype = draw(dtypes) if dtype is None else dtype
    g = gen(draw(seeds))
    Q = torch.linalg.qr(general(n, k, g, F64)).Q.to(dtype)
    return Subspace(lay_out(Q, draw(layouts)))


@given(
    n=st.integers(0, 7),
    k=st.integers(0, 8),
    dtype=dtypes,
    delta=st.sampled_from((0.0, 1e-12, 1e-7, 1e-4, 1e-2, 0.3)),
    seed=seeds,
    bad=st.sampled_from((None, None, None, float("nan"))),
)
def test_subspace_checks_orthonormality(n, k, dtype, delta, seed, bad):
    """Accepted exactly when max |Q^T Q - I| <= sqrt(eps) (of the stored values)."""
    g = gen(seed)
    if 0 < k <= n:
        Q = torch.linalg.qr(general(n, k, g, F64)).Q
        Q = (Q + delta * general(n, k, g, F64)).to(dtype)
    else:
        Q = general(n, k, g, dtype)
    if bad is not None:
        Q = poison(Q, bad, g)
    call = lambda: Subspace(Q)  # noqa: E731
    if not 0 < k <= n:
        must_reject(call, ["k", "columns", "shape", *(NONFINITE_WORDS if bad is not None else ())])
        return
    if bad is not None:
        must_reject(call, NONFINITE_WORDS)
        return
    Q64 = Q.to(F64)
    err = float((Q64.T @ Q64 - torch.eye(k, dtype=F64)).abs().max())
    tol = eps(dtype) ** 0.5
    if err > 1.05 * tol:
        must_reject(call, ["orthonormal"])
    elif err < 0.95 * tol:
        S = outcome(call)
        assert S.dim == k and S.ambient_dim == n and S.dtype == dtype


@given(
    n=st.integers(0, 8),
    m=st.integers(0, 5),
    r=st.integers(0, 5),
    dtype=dtypes,
    rtol=st.sampled_from((None, None, 0.0, 1e-3, -1.0, 1.0, float("nan"))),
    allow=st.booleans(),
    seed=seeds,
    layout=layouts,
)
def test_from_vectors_spans_the_vectors(n, m, r, dtype, rtol, allow, seed, layout):
    g = gen(seed)
    r = min(r, m, n)
    V64 = general(n, r, g, F64) @ general(r, m, g, F64) if r else torch.zeros(n, m, dtype=F64)
    V = lay_out(V64.to(dtype), layout)
    call = lambda: Subspace.from_vectors(V, rtol=rtol, allow_rank_deficient=allow)  # noqa: E731
    reasons = []
    if n == 0 or m == 0:
        reasons += ["empty", "vector", "shape"]
    if rtol is not None and not (0 <= rtol < 1):  # NaN fails this too
        reasons += ["rtol"]
    if reasons:
        must_reject(call, reasons)
        return
    Vd = V.to(F64)
    s = torch.linalg.svdvals(Vd)
    if float(s[0]) == 0:
        must_reject(call, ["zero"])
        return
    wd = work_dtype(dtype)
    tol = max(max(n, m) * eps(wd), math.sqrt(m) * eps(dtype)) if rtol is None else rtol
    thresh = tol * float(s[0])
    rank_ref = int((s > thresh).sum())
    ambiguous = bool(((s > thresh / 10) & (s < thresh * 10)).any())
    S = outcome(call, may_reject=("rank",))
    if S is Rejected:
        # refused as rank deficient: only allowed when it is (numerically) and not allowed
        assert not allow and (rank_ref < m or ambiguous), (rank_ref, m, s)
        return
    Q = S.basis.to(F64)
    assert float((Q.T @ Q - torch.eye(S.dim, dtype=F64)).abs().max()) <= eps(dtype) ** 0.5
    if not ambiguous:
        assert S.dim == rank_ref, (S.dim, rank_ref, s, tol)
    # the basis spans the vectors up to the discarded singular values and rounding
    resid = float(torch.linalg.matrix_norm(Vd - Q @ (Q.T @ Vd), ord=2))
    bound = math.sqrt(m) * thresh * 10 + 10 * math.sqrt(n * m) * eps(dtype) * float(s[0])
    assert resid <= bound, (resid, bound)


@given(data=st.data(), n=st.integers(1, 8))
def test_principal_angles_overlap_distance(data, n):
    S1 = data.draw(subspaces(n=n))
    S2 = data.draw(subspaces(n=n))
    th = S1.principal_angles(S2)
    ref = ref_angles(S1.basis, S2.basis)
    kmin = min(S1.dim, S2.dim)
    assert th.shape == (kmin,) and th.dtype == S1.dtype
    th64 = th.to(F64)
    tol = angle_tol(S1.dtype, n) + angle_tol(S2.dtype, n) + eps(S1.dtype) * 4
    assert bool((th64 >= 0).all()) and bool((th64 <= math.pi / 2 + tol).all())
    assert float((th64 - ref).abs().max()) <= tol, (th64, ref, tol)
    ov = S1.overlap(S2)
    ov_ref = float(torch.cos(ref).pow(2).sum()) / kmin
    assert abs(ov - ov_ref) <= 4 * tol, (ov, ov_ref)
    if S1.dim == S2.dim:
        for metric, f in (
            ("geodesic", lambda t: t.norm()),
            ("chordal", lambda t: torch.sin(t).norm()),
            ("projection", lambda t: torch.sin(t).max()),
        ):
            d = S1.distance(S2, metric)
            assert abs(d - float(f(ref))) <= tol * math.sqrt(kmin) * 2, (metric, d, float(f(ref)))
        must_reject(lambda: S1.distance(S2, "nope"), ["metric"])
    else:
        must_reject(lambda: S1.distance(S2), ["dimension"])
    # a subspace has zero angles to itself
    self_angles = S1.principal_angles(S1).to(F64)
    assert float(self_angles.max()) <= angle_tol(S1.dtype, n), self_angles


@given(
    data=st.data(),
    n=st.integers(2, 9),
    c=st.integers(0, 3),
    a1=st.integers(0, 3),
    a2=st.integers(0, 3),
    dtype=dtypes,
    seed=seeds,
)
def test_intersection_and_union_dimensions(data, n, c, a1, a2, dtype, seed):
    """Spans [C, A1] and [C, A2] with random A1, A2: they meet in span C (generically), their sum
    has dimension c + a1 + a2 when that fits in R^n."""
    g = gen(seed)
    k1, k2 = c + a1, c + a2
    if not (1 <= k1 <= n and 1 <= k2 <= n):
        return
    C = general(n, c, g, F64)
    B1 = torch.cat([C, general(n, a1, g, F64)], 1)
    B2 = torch.cat([C, general(n, a2, g, F64)], 1)
    S1 = Subspace(torch.linalg.qr(B1).Q.to(dtype))
    S2 = Subspace(torch.linalg.qr(B2).Q.to(dtype))
    ref = ref_angles(S1.basis, S2.basis)
    tol_default = max(eps(S1.dtype), eps(S2.dtype)) ** 0.5
    inter = outcome(lambda: S1.intersection(S2))
    shared = int((ref <= tol_default / 10).sum())
    apart = int((ref >= tol_default * 10).sum())
    if shared + apart == ref.numel():  # no angle near the threshold: the answer is determined
        assert (0 if inter is None else inter.dim) == shared, (ref, tol_default)
    # self-intersection is the whole subspace, in every dtype
    self_inter = outcome(lambda: S1.intersection(S1))
    assert self_inter is not None and self_inter.dim == S1.dim
    U = outcome(lambda: S1.union(S2))
    want = min(c + a1 + a2, n)
    s = torch.linalg.svdvals(torch.cat([S1.basis, S2.basis], 1).to(F64))
    # from_vectors' default rank threshold for the k1 + k2 stacked vectors
    rule = max(max(k1 + k2, n) * eps(work_dtype(dtype)), math.sqrt(k1 + k2) * eps(dtype))
    t = rule * float(s[0])
    if float(s[want - 1]) > 10 * t and (want == s.numel() or float(s[want]) < t / 10):
        assert U.dim == want, (U.dim, want, s)
    # the union contains both subspaces
    Qu = U.basis.to(F64)
    for S in (S1, S2):
        Q = S.basis.to(F64)
        assert float((Q - Qu @ (Qu.T @ Q)).abs().max()) <= 100 * math.sqrt(n) * eps(dtype) ** 0.5
    must_reject(lambda: S1.intersection(S2, angle_tol=-1.0), ["angle_tol"])
    must_reject(lambda: S1.intersection(S2, angle_tol=2.0), ["angle_tol"])
    must_reject(
        lambda: S1.union(Subspace(torch.eye(n + 1, dtype=dtype)[:, :1])), ["spaces", "different"]
    )


@given(data=st.data(), b=st.sampled_from((None, 1, 3)), zero=st.booleans(), seed=seeds)
def test_project_reject_captured_fraction(data, b, zero, seed):
    S = data.draw(subspaces())
    n, dtype = S.ambient_dim, S.dtype
    g = gen(seed)
    X = general(n, 1 if b is None else b, g, dtype)
    if zero:
        X[:, 0] = 0
    x = X[:, 0] if b is None else X
    Q64 = orth64(S.basis)
    X64 = X.to(F64)
    P = S.project(x).to(F64)
    R = S.reject(x).to(F64)
    P = P.unsqueeze(1) if P.ndim == 1 else P
    R = R.unsqueeze(1) if R.ndim == 1 else R
    sl = 20 * math.sqrt(n) * eps(dtype) * (1 + float(X64.abs().max()))
    assert float((P + R - X64).abs().max()) <= sl
    assert float((Q64.T @ R).abs().max()) <= 10 * sl
    call = lambda: S.captured_fraction(x)  # noqa: E731
    if zero:
        must_reject(call, ["zero"])
        return
    f = outcome(call).to(F64).reshape(-1)
    ref = (Q64.T @ X64).pow(2).sum(0) / X64.pow(2).sum(0)
    assert float((f - ref).abs().max()) <= 10 * sl + 4 * eps(dtype), (f, ref)
    must_reject(lambda: S.project(torch.ones(n + 1, dtype=dtype)), ["dimension", "x"])


@given(
    m=st.integers(0, 7),
    n=st.integers(0, 7),
    k=st.integers(-1, 8),
    side=st.sampled_from(("left", "right")),
    dtype=dtypes,
    seed=seeds,
    bad=st.sampled_from((None, None, None, float("inf"))),
)
def test_from_svd(m, n, k, side, dtype, seed, bad):
    g = gen(seed)
    M = general(m, n, g, dtype)
    if bad is not None:
        M = poison(M, bad, g)
    call = lambda: Subspace.from_svd(M, k, side)  # noqa: E731
    reasons = []
    if not 1 <= k <= min(m, n):
        reasons += ["k", "empty"]
    if bad is not None and M.numel():
        reasons += NONFINITE_WORDS
    if reasons:
        must_reject(call, reasons)
        return
    S = outcome(call)
    M64 = M.to(F64)
    U, s, Vh = torch.linalg.svd(M64, full_matrices=False)
    ref = U[:, :k] if side == "left" else Vh[:k].T
    assert S.dim == k and S.ambient_dim == (m if side == "left" else n)
    gap = float(s[k - 1] - (s[k] if k < s.numel() else 0.0))
    if gap > 0.1 * float(s[0]):
        th = ref_angles(S.basis, ref)
        assert float(th.max()) <= 100 * eps(dtype) * float(s[0]) / gap + angle_tol(dtype, m + n)


@given(S=subspaces(), dtype=dtypes)
def test_subspace_to_dtype(S, dtype):
    T = outcome(lambda: S.to(dtype))
    assert T.dtype == dtype and T.dim == S.dim
    th = ref_angles(S.basis, T.basis)
    assert float(th.max()) <= angle_tol(S.dtype, S.ambient_dim) + angle_tol(dtype, S.ambient_dim)


def test_nonfinite_and_meta_vectors_rejected():
    for bad in (float("nan"), float("inf")):
        V = torch.ones(3, 2, dtype=F64)
        V[1, 1] = bad
        must_reject(lambda V=V: Subspace.from_vectors(V), NONFINITE_WORDS)
    must_reject(lambda: Subspace(torch.empty(3, 1, device="meta")), ["meta"])
    must_reject(
        lambda: Subspace.from_vectors(torch.ones(3, dtype=torch.int64)), ["vectors", "dtype"]
    )
