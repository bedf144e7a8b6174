"""Properties of the representation similarity measures against float64 reference formulas."""

from __future__ import annotations

import math

import pytest
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
    lay_out,
    layouts,
    must_reject,
    nonfinite,
    outcome,
    poison,
    seeds,
)

from subspaces.representations import (
    cka_matrix,
    linear_cka,
    procrustes_distance,
    pwcca,
    rbf_cka,
    subspace_similarity,
    svcca,
)

# scales at which a float16 value is still finite and normal are limited
SCALES = {
    torch.float16: (1.0, 1e-2, 1e3),
    torch.bfloat16: (1.0, 1e-25, 1e20),
    torch.float32: (1.0, 1e-25, 1e20),
    torch.float64: (1.0, 1e-150, 1e150),
}


@st.composite
def reps(draw, max_n: int = 10, max_p: int = 4):
    """``(X, Y, info)``: two representations of the same inputs, possibly defective."""
    N = draw(st.integers(0, max_n))
    p, q = draw(st.integers(0, max_p)), draw(st.integers(0, max_p))
    dtype = draw(dtypes)
    g = gen(draw(seeds))
    rel = draw(st.sampled_from(("independent", "linear", "same", "rank1")))
    X64 = torch.randn(N, p, generator=g, dtype=F64)
    if rel == "linear" and p:
        Y64 = X64 @ torch.randn(p, q, generator=g, dtype=F64) + 0.1 * torch.randn(
            N, q, generator=g, dtype=F64
        )
    elif rel == "same":
        Y64, q = X64.clone(), p
    elif rel == "rank1":
        Y64 = torch.randn(N, 1, generator=g, dtype=F64) * torch.ones(1, q, dtype=F64)
        X64 = torch.cat([Y64, Y64], 1)[:, :p] if q else X64
    else:
        Y64 = torch.randn(N, q, generator=g, dtype=F64)
    sx, sy = draw(st.sampled_from(SCALES[dtype])), draw(st.sampled_from(SCALES[dtype]))
    X = (X64 * sx).to(dtype)
    Y = (Y64 * sy).to(dtype)
    defect = draw(st.sampled_from(("none",) * 6 + ("nonfinite", "constant", "rows")))
    if defect == "nonfinite" and X.numel():
        X = poison(X, draw(nonfinite), g)
    elif defect == "constant" and Y.numel():
        Y = torch.ones_like(Y) * Y[:1]
    elif defect == "rows":
        Y = torch.cat([Y, Y[:1]], 0) if Y.shape[0] else torch.ones(1, max(q, 1), dtype=dtype)
    return lay_out(X, draw(layouts)), lay_out(Y, draw(layouts)), defect


def basic_reasons(X, Y, defect, min_rows: int) -> list[str]:
    reasons = []
    if X.shape[1] == 0 or Y.shape[1] == 0:
        reasons += ["column", "columns"]
    if X.shape[0] != Y.shape[0]:
        reasons += ["rows"]
    elif X.shape[0] < min_rows:
        reasons += ["rows", "n"]
    if not bool(torch.isfinite(X).all()) or not bool(torch.isfinite(Y).all()):
        reasons += list(NONFINITE_WORDS)
    return reasons


def centered(X: torch.Tensor) -> torch.Tensor:
    X = X.to(F64)
    X = X / max(float(X.abs().max()), 1e-300)  # scale out (every measure is scale invariant)
    return X - X.mean(0, keepdim=True)


def hsic(K: torch.Tensor, L: torch.Tensor, unbiased: bool) -> float:
    n = K.shape[0]
    if not unbiased:
        H = torch.eye(n, dtype=F64) - 1.0 / n
        return float((H @ K @ H * L).sum()) / (n - 1) ** 2
    Kt, Lt = K.clone(), L.clone()
    Kt.fill_diagonal_(0)
    Lt.fill_diagonal_(0)
    one = torch.ones(n, dtype=F64)
    val = (
        float((Kt * Lt).sum())
        + float(one @ Kt @ one) * float(one @ Lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * float(one @ Kt @ Lt @ one)
    )
    return val / (n * (n - 3))


def cka_ref(K, L, unbiased):
    hxx, hyy = hsic(K, K, unbiased), hsic(L, L, unbiased)
    return hsic(K, L, unbiased), hxx, hyy


def check_cka(got, K, L, unbiased, reasons, call, what):
    hxy, hxx, hyy = cka_ref(K, L, unbiased)
    scale = float(K.abs().max()) * float(L.abs().max()) + 1e-300
    tiny = 1e-9 * scale
    if hxx <= -tiny or hyy <= -tiny or (not unbiased and (hxx <= tiny or hyy <= tiny)):
        must_reject(call, ["constant", "undefined", "x", "y"])
        return
    if min(hxx, hyy) <= tiny:
        return  # at the edge of definedness: either answer is fine
    res = got()
    ref = hxy / math.sqrt(hxx * hyy)
    cond = math.sqrt(scale * scale / (hxx * hyy))
    assert abs(res - ref) <= 1e-9 * max(cond, 1.0), (what, res, ref)
    if not unbiased:
        assert -1e-12 <= res <= 1 + 1e-12


@given(case=reps(), unbiased=st.booleans())
def test_linear_cka(case, unbiased):
    X, Y, defect = case
    call = lambda: linear_cka(X, Y, unbiased=unbiased)  # noqa: E731
    reasons = basic_reasons(X, Y, defect, 4 if unbiased else 2)
    if reasons:
        must_reject(call, reasons)
        return
    Xc, Yc = centered(X), centered(Y)
    check_cka(call, Xc @ Xc.T, Yc @ Yc.T, unbiased, reasons, call, "linear")


@given(
    case=reps(),
    unbiased=st.booleans(),
    matmul=st.sampled_from((None, torch.float64, torch.float32)),
)
def test_cka_matrix_matches_pairwise(case, unbiased, matmul):
    """Every entry of cka_matrix is linear_cka of the pair (products in float32 when asked:
    about 1e-6 from float64, at every activation scale)."""
    X, Y, defect = case
    call = lambda: cka_matrix([X, Y], unbiased=unbiased, matmul_dtype=matmul)  # noqa: E731
    reasons = basic_reasons(X, Y, defect, 4 if unbiased else 2)
    if reasons:
        must_reject(call, reasons)
        return
    Xc, Yc = centered(X), centered(Y)
    K, L = Xc @ Xc.T, Yc @ Yc.T
    hxy, hxx, hyy = cka_ref(K, L, unbiased)
    scale = float(K.abs().max()) * float(L.abs().max()) + 1e-300
    if min(hxx, hyy) <= 1e-6 * math.sqrt(scale):
        outcome(call, may_reject=("constant", "undefined", "x", "y", "reps_a"))
        return
    S = outcome(call)
    ref = hxy / math.sqrt(hxx * hyy)
    prod = matmul if matmul is not None else (torch.float64 if X.dtype == F64 else torch.float32)
    cond = math.sqrt(scale * scale / (hxx * hyy))
    tol = 1e-9 if prod == F64 else 1e3 * eps(torch.float32)
    assert S.dtype == F64 and S.shape == (2, 2)
    assert bool(torch.isfinite(S).all()), S
    assert abs(float(S[0, 1]) - ref) <= tol * max(cond, 1.0), (float(S[0, 1]), ref)
    assert abs(float(S[0, 0]) - 1.0) <= tol * max(cond, 1.0), float(S[0, 0])


@given(case=reps(max_n=8), unbiased=st.booleans(), sigma=st.sampled_from((None, None, 1.0, -1.0)))
def test_rbf_cka(case, unbiased, sigma):
    X, Y, defect = case
    call = lambda: rbf_cka(X, Y, sigma=sigma, unbiased=unbiased)  # noqa: E731
    reasons = basic_reasons(X, Y, defect, 4 if unbiased else 2)
    if sigma is not None and sigma <= 0:
        reasons += ["sigma"]
    if reasons:
        must_reject(call, reasons)
        return

    def gram(Z):
        Z = Z.to(F64)
        if sigma is None:
            Z = Z / max(float(Z.abs().max()), 1e-300)
        sq = torch.cdist(Z, Z).pow(2)
        if sigma is None:
            n = Z.shape[0]
            iu = torch.triu_indices(n, n, 1)
            med = float(torch.quantile(sq[iu[0], iu[1]], 0.5))
            if med <= 0:
                return None
            return torch.exp(-sq / (2 * med))
        return torch.exp(-sq / (2 * sigma**2))

    K, L = gram(X), gram(Y)
    if K is None or L is None:
        must_reject(call, ["sigma", "median", "constant"])
        return
    check_cka(call, K, L, unbiased, reasons, call, "rbf")


@given(case=reps(), metric=st.sampled_from(("euclidean", "angular", "cosine")))
def test_procrustes_distance(case, metric):
    X, Y, defect = case
    call = lambda: procrustes_distance(X, Y, metric=metric)  # noqa: E731
    reasons = basic_reasons(X, Y, defect, 2)
    if metric == "cosine":
        reasons += ["metric"]
    if reasons:
        must_reject(call, reasons)
        return
    Xc, Yc = centered(X), centered(Y)
    nx, ny = float(Xc.norm()), float(Yc.norm())
    if nx <= 1e-12 or ny <= 1e-12:
        must_reject(call, ["constant", "x", "y"])
        return
    nuc = float(torch.linalg.matrix_norm((Xc / nx).T @ (Yc / ny), ord="nuc"))
    ref = math.sqrt(max(2 - 2 * nuc, 0.0)) if metric == "euclidean" else math.acos(min(nuc, 1.0))
    got = outcome(call)
    assert abs(got - ref) <= 1e-6, (got, ref)


@given(
    case=reps(max_n=12),
    keep=st.sampled_from((0.99, 1.0, 0.0, 1.5)),
    which=st.sampled_from(("svcca", "pwcca")),
)
def test_cca_measures_in_range(case, keep, which):
    X, Y, defect = case
    call = (lambda: svcca(X, Y, keep=keep)) if which == "svcca" else (lambda: pwcca(X, Y))
    reasons = basic_reasons(X, Y, defect, 2)
    if which == "svcca" and not 0 < keep <= 1:
        reasons += ["keep"]
    if reasons:
        must_reject(call, reasons)
        return
    res = outcome(call, may_reject=("constant", "x", "y"))
    if res is Rejected:
        Xc, Yc = centered(X), centered(Y)
        assert min(float(Xc.norm()), float(Yc.norm())) <= 1e-6
        return
    assert -1e-9 <= res.mean <= 1 + 1e-9, res.mean


@given(case=reps(), k=st.integers(0, 5))
def test_subspace_similarity(case, k):
    """Angles between top-k principal subspaces against a float64 SVD; identical data give
    similarity 1 whatever its rank."""
    X, Y, defect = case
    call = lambda: subspace_similarity(X, Y, k)  # noqa: E731
    reasons = basic_reasons(X, Y, defect, 2)
    if not reasons and not 1 <= k <= min(X.shape[0], X.shape[1], Y.shape[1]):
        reasons += ["k"]
    if reasons:
        must_reject(call, reasons + (["k"] if k < 1 else []))
        return
    res = outcome(call, may_reject=("constant", "x", "y"))
    Xc, Yc = centered(X), centered(Y)
    if res is Rejected:
        assert min(float(Xc.norm()), float(Yc.norm())) <= 1e-6
        return
    assert 0 <= res.similarity <= 1 + 1e-9
    # identical representations: the same principal subspace, similarity 1 (any rank)
    same = outcome(lambda: subspace_similarity(X, X, k), may_reject=("constant", "x", "y"))
    if same is not Rejected:
        assert abs(same.similarity - 1.0) <= 1e-6, same.similarity
        assert float(same.angles.max()) <= 1e-3


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
