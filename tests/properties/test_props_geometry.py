"""Properties of subspaces.geometry: SPD matrix functions, metrics and means; Grassmann maps.

References are float64 eigendecompositions of the same (rounded) values and closed forms for
commuting (diagonal) matrices.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from prop_helpers import (
    F64,
    HALF,
    NONFINITE_WORDS,
    Rejected,
    dtypes,
    eps,
    gen,
    general,
    lay_out,
    layouts,
    must_reject,
    nonfinite,
    outcome,
    poison,
    seeds,
    spectrum,
    symmetric,
    work_dtype,
)

from subspaces.geometry import (
    GrassmannLinear,
    RiemannianSGD,
    ai_distance,
    ai_exp,
    ai_karcher_mean,
    ai_log,
    bw_barycenter,
    bw_distance,
    bw_exp,
    bw_log,
    gbw_barycenter,
    grassmann_retract,
    is_spd,
    lyapunov,
    orthonormality_error,
    orthonormalize,
    project_tangent,
    spd_exp,
    spd_log,
    spd_power,
)

SPD_WORDS = ("positive", "definite", "semidefinite", "spd", "symmetric", "eigenvalue")


def eig_fn(X64: torch.Tensor, f) -> torch.Tensor:
    w, U = torch.linalg.eigh(X64)
    return (U * f(w)) @ U.T


@st.composite
def spd_like(draw, max_n: int = 6, kinds=("spd", "spd", "psd", "indefinite", "ill")):
    n = draw(st.integers(1, max_n))
    dtype = draw(dtypes)
    kind = draw(st.sampled_from(kinds))
    g = gen(draw(seeds))
    scale = draw(st.sampled_from((1.0, 1e-2, 1e2)))
    X = symmetric(spectrum(kind, n, g, scale), g, dtype)
    bad = draw(st.sampled_from(("none",) * 5 + ("nonfinite", "asymmetric")))
    if bad == "nonfinite":
        X = poison(X, draw(nonfinite), g, sym=True)
    elif bad == "asymmetric" and n >= 2:
        X = X.clone()
        X[0, 1] = X[0, 1] + 0.5 * float(X.abs().max().to(F64)) + 0.5 * scale
    return lay_out(X, draw(layouts)), bad


def classify(X: torch.Tensor, bad: str):
    """(finite, symmetric, lam_min, lam_max) of the stored values, in float64."""
    if bad == "nonfinite" or not bool(torch.isfinite(X).all()):
        return False, False, math.nan, math.nan
    X64 = X.to(F64)
    sym_ok = bool(torch.equal(X64, X64.T))
    lam = torch.linalg.eigvalsh((X64 + X64.T) / 2)
    return True, sym_ok, float(lam[0]), float(lam[-1])


@given(
    case=spd_like(),
    p=st.sampled_from((0.5, 2.0, -0.5, -1.0, 1.5)),
    fn=st.sampled_from(("pow", "log", "exp")),
)
def test_spd_matrix_functions(case, p, fn):
    X, bad = case
    n, dtype = X.shape[0], X.dtype
    finite, sym_ok, lo, hi = classify(X, bad)
    if fn == "exp" and finite:  # keep exp in range of every dtype: eigenvalues <= 3
        X = (X.to(F64) * (3.0 / max(abs(lo), abs(hi), 1e-300))).to(dtype)
        finite, sym_ok, lo, hi = classify(X, bad)
    call = {
        "pow": lambda: spd_power(X, p),
        "log": lambda: spd_log(X),
        "exp": lambda: spd_exp(X),
    }[fn]
    if not finite:
        must_reject(call, ["x", *NONFINITE_WORDS])
        return
    if not sym_ok and bad == "asymmetric":
        must_reject(call, ["x", "symmetric"])
        return
    e = eps(dtype)
    floor = n * e * max(abs(lo), abs(hi))  # rounding level of the eigenvalues
    needs_pd = fn == "log" or (fn == "pow" and p <= 0)
    res = outcome(call, may_reject=("x", *SPD_WORDS))
    if res is Rejected:
        assert (needs_pd and lo <= 10 * floor) or lo < 0, (fn, p, lo, hi)
        return
    # accepted: then it must be (semi)definite up to rounding where the function needs it
    if needs_pd:
        assert lo > 0, (fn, p, lo)
    elif fn == "pow":
        assert lo >= -10 * floor, (lo, floor)
    X64 = X.to(F64)
    if fn == "exp":
        ref = eig_fn(X64, torch.exp)
        tol = 50 * n * e * float(ref.abs().max())
    elif fn == "log":
        ref = eig_fn(X64, torch.log)
        tol = 50 * n * e * (hi / lo + abs(math.log(hi)))
    else:
        ref = eig_fn(X64, lambda w: w.clamp_min(0) ** p)
        cond = hi / lo if lo > 10 * floor else math.inf
        if p > 0 and not math.isfinite(cond):  # near-zero eigenvalues: Holder continuity
            tol = 50 * (n * e * hi) ** min(p, 1.0) * max(hi, 1e-300) ** max(p - 1, 0)
        else:
            tol = 50 * n * e * abs(p) * float(ref.abs().max()) * max(cond, 1.0)
    err = float((res.to(F64) - ref).abs().max())
    assert res.dtype == dtype
    assert err <= tol, (fn, p, err, tol)


@given(
    case=spd_like(kinds=("spd", "psd", "indefinite", "ill", "random")),
    rtol=st.sampled_from((None, None, 1e-2)),
)
def test_is_spd(case, rtol):
    X, bad = case
    n, dtype = X.shape[0], X.dtype
    res = outcome(lambda: is_spd(X, rtol))
    assert res.dtype == torch.bool and res.shape == ()
    finite, sym_ok, lo, hi = classify(X, bad)
    if not finite:
        assert not bool(res)
        return
    margin = 100 * n * eps(work_dtype(dtype)) * max(abs(lo), abs(hi))
    if sym_ok and lo > margin:
        assert bool(res), (lo, hi)
    if lo < -margin:
        assert not bool(res), (lo, hi)
    if bad == "asymmetric" and n >= 2:  # asymmetric by half its largest entry
        assert not bool(res)


@st.composite
def spd_pairs(draw, max_n: int = 5):
    n = draw(st.integers(1, max_n))
    dtype = draw(dtypes)
    g = gen(draw(seeds))
    diag = draw(st.booleans())
    mats = []
    for _ in range(2):
        lam = torch.rand(n, generator=g, dtype=F64) * 3 + 0.2
        mats.append(torch.diag(lam).to(dtype) if diag else symmetric(lam, g, dtype))
    return mats[0], mats[1], diag


@given(pair=spd_pairs())
def test_bw_and_ai_distances(pair):
    A, B, diag = pair
    n, dtype = A.shape[0], A.dtype
    A64, B64 = A.to(F64), B.to(F64)
    e = eps(dtype)
    # Bures-Wasserstein: tr A + tr B - 2 tr (A^1/2 B A^1/2)^1/2
    Ah = eig_fn(A64, torch.sqrt)
    cross = torch.linalg.eigvalsh(Ah @ B64 @ Ah).clamp_min(0).sqrt().sum()
    d2 = float(A64.trace() + B64.trace() - 2 * cross)
    ref_bw = math.sqrt(max(d2, 0.0))
    tr = float(A64.trace() + B64.trace())
    got = float(bw_distance(A, B))
    assert abs(got - ref_bw) <= math.sqrt(200 * n * e * tr) + 100 * e * ref_bw, (got, ref_bw)
    # affine-invariant: ||log eig(A^-1 B)||
    L = torch.linalg.cholesky(A64)
    Li = torch.linalg.inv(L)
    lam = torch.linalg.eigvalsh(Li @ B64 @ Li.T)
    ref_ai = float(lam.log().norm())
    got_ai = float(ai_distance(A, B))
    cond = float(torch.linalg.cond(A64) + torch.linalg.cond(B64))
    assert abs(got_ai - ref_ai) <= 100 * n * e * cond, (got_ai, ref_ai)
    if diag:  # commuting: closed forms
        a, b = torch.diagonal(A64), torch.diagonal(B64)
        assert abs(ref_bw - float((a.sqrt() - b.sqrt()).norm())) <= 1e-10
        assert abs(ref_ai - float((a / b).log().norm())) <= 1e-10
    # a distance to itself is 0
    assert float(ai_distance(A, A)) <= 100 * n * e * cond


@given(pair=spd_pairs())
def test_log_exp_round_trips_and_lyapunov(pair):
    S, X, _ = pair
    n, dtype = S.shape[0], S.dtype
    S64, X64 = S.to(F64), X.to(F64)
    e = eps(dtype)
    cond = float(torch.linalg.cond(S64) * torch.linalg.cond(X64))
    scale = float(X64.abs().max())
    for log, exp in ((bw_log, bw_exp), (ai_log, ai_exp)):
        V = outcome(lambda log=log: log(S, X))
        back = outcome(lambda exp=exp, V=V: exp(S, V))
        err = float((back.to(F64) - X64).abs().max())
        assert err <= 200 * n * e * cond * scale, (log.__name__, err)
    V = general(n, n, gen(1), F64)
    V = ((V + V.T) / 2).to(dtype)
    L = lyapunov(S, V).to(F64)
    resid = S64 @ L + L @ S64 - V.to(F64)
    assert float(resid.abs().max()) <= 100 * n * e * float(torch.linalg.cond(S64)) * (
        1 + float(V.abs().max().to(F64))
    )


@given(
    n=st.integers(1, 4),
    k=st.integers(1, 4),
    dtype=dtypes,
    diag=st.booleans(),
    theta=st.sampled_from((1.0, 0.5, -1.0)),
    seed=seeds,
)
def test_means(n, k, dtype, diag, theta, seed):
    """Means of commuting matrices have closed forms; every mean of copies of one matrix is it;
    a claimed convergence is re-verified from the returned mean."""
    g = gen(seed)
    lam = torch.rand(k, n, generator=g, dtype=F64) * 3 + 0.3
    if diag:
        X = torch.diag_embed(lam).to(dtype)
    else:
        Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64)).Q
        X = (Q * lam[:, None, :]) @ Q.T
        X = ((X + X.mT) / 2).to(dtype)
    w = torch.rand(k, generator=g, dtype=F64) + 0.1
    X64 = X.to(F64)
    e = eps(dtype)
    tol = 1e-12 if dtype == F64 else 1e-6
    wn = w / w.sum()
    for name, fn in (
        ("bw", lambda: bw_barycenter(X, w.to(dtype), return_info=True)),
        ("ai", lambda: ai_karcher_mean(X, w.to(dtype), return_info=True)),
        ("gbw", lambda: gbw_barycenter(X, theta, w.to(dtype), return_info=True)),
    ):
        info = outcome(fn)
        M64 = info.mean.to(F64)
        assert info.mean.dtype == dtype and info.mean.shape == (n, n)
        if diag:
            d = lam
            if name == "bw":
                ref = (wn[:, None] * d.sqrt()).sum(0) ** 2
            elif name == "ai":
                ref = ((wn[:, None] * d.log()).sum(0)).exp()
            else:
                ref = ((wn[:, None] * d.pow(theta / 2)).sum(0) ** 2) ** (1 / theta)
            err = float((torch.diagonal(M64) - ref).abs().max())
            assert err <= 1e3 * n * e * float(ref.max()) + (tol * 10 if info.converged else 1e9), (
                name,
                err,
            )
        if info.converged and name == "ai":
            Mih = eig_fn(M64, lambda v: v.rsqrt())
            G = sum(float(wn[i]) * eig_fn(Mih @ X64[i] @ Mih, torch.log) for i in range(k))
            gnorm = float(torch.linalg.matrix_norm(G))
            cond = float(torch.linalg.cond(M64))
            assert gnorm <= info.tol + 100 * n * e * cond * (1 + float(lam.log().abs().max())), (
                gnorm,
                info.tol,
            )
        if info.converged and name == "bw":
            Mh = eig_fn(M64, torch.sqrt)
            Mih = eig_fn(M64, lambda v: v.rsqrt())
            T = sum(
                float(wn[i]) * (Mih @ eig_fn(Mh @ X64[i] @ Mh, torch.sqrt) @ Mih) for i in range(k)
            )
            r = float(torch.linalg.matrix_norm(T - torch.eye(n, dtype=F64)))
            cond = float(torch.linalg.cond(M64))
            assert r <= info.tol + 100 * n * e * cond, (r, info.tol)
    same = X[:1].expand(3, n, n)
    for fn in (bw_barycenter, ai_karcher_mean):
        M = fn(same).to(F64)
        assert float((M - X64[0]).abs().max()) <= 1e3 * n * e * float(X64[0].abs().max())


@given(case=spd_like(kinds=("indefinite", "psd", "random")), which=st.sampled_from(("bw", "ai")))
def test_metrics_reject_non_spd(case, which):
    X, bad = case
    n, dtype = X.shape[0], X.dtype
    finite, sym_ok, lo, hi = classify(X, bad)
    I = torch.eye(n, dtype=dtype)
    call = (lambda: bw_distance(I, X)) if which == "bw" else (lambda: ai_distance(X, I))
    name = "b" if which == "bw" else "a"
    margin = 100 * n * eps(work_dtype(dtype)) * max(abs(lo), abs(hi), 1e-300) if finite else 0
    if not finite or not sym_ok or lo < -margin:
        must_reject(call, [name, *NONFINITE_WORDS, *SPD_WORDS])


# ----- Grassmann ----------------------------------------------------------------------------------
@st.composite
def stiefel(draw, max_n: int = 7):
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(1, n))
    dtype = draw(dtypes)
    batch = draw(st.sampled_from(((), (2,))))
    g = gen(draw(seeds))
    U = orthonormalize(torch.randn(*batch, n, k, generator=g, dtype=F64)).to(dtype)
    return U, g


@given(
    n=st.integers(0, 6),
    k=st.integers(0, 6),
    dtype=dtypes,
    kind=st.sampled_from(("full", "full", "deficient", "nan")),
    seed=seeds,
    layout=layouts,
)
def test_orthonormalize(n, k, dtype, kind, seed, layout):
    g = gen(seed)
    U = general(n, k, g, F64)
    if kind == "deficient" and k >= 2:
        U[:, 1] = 2 * U[:, 0]
    U = lay_out(U.to(dtype), layout)
    if kind == "nan":
        U = poison(U, float("nan"), g)
    call = lambda: orthonormalize(U)  # noqa: E731
    if not 1 <= k <= n:
        must_reject(call, ["u", "k", "shape"])
        return
    if kind == "nan":
        must_reject(call, ["u", *NONFINITE_WORDS])
        return
    U64 = U.to(F64)
    s = torch.linalg.svdvals(U64)
    res = outcome(call, may_reject=("rank",))
    if res is Rejected:
        assert float(s[-1]) <= 1e3 * n * eps(work_dtype(dtype)) * float(s[0]), s
        return
    Q = res.to(F64)
    assert orthonormality_error(Q) <= 10 * k * eps(dtype) * math.sqrt(n)
    R = Q.T @ U64  # upper triangular with a positive diagonal (the sign fix)
    tol = 50 * n * eps(dtype) * float(s[0])
    assert float(torch.tril(R, -1).abs().max()) <= tol
    assert bool((torch.diagonal(R) > -tol).all())
    if float(s[-1]) > 1e-3 * float(s[0]):  # well-conditioned: the same span
        assert float((U64 - Q @ R).abs().max()) <= tol


@given(
    case=stiefel(),
    method=st.sampled_from(("qr", "polar", "exp")),
    size=st.sampled_from((0.0, 1e-3, 0.5, 1.2)),
    tangent=st.booleans(),
)
def test_retractions(case, method, size, tangent):
    U, g = case
    dtype = U.dtype
    n, k = U.shape[-2:]
    W = torch.randn(U.shape, generator=g, dtype=F64).to(dtype) * size
    V = project_tangent(U, W) if tangent else W
    # the projection makes V tangent (to the basis's rounding)
    Vt = project_tangent(U, W)
    normal = float((U.to(F64).mT @ Vt.to(F64)).abs().max())
    assert normal <= 20 * eps(dtype) * math.sqrt(n) * (1 + float(W.abs().max().to(F64)))
    res = outcome(lambda: grassmann_retract(U, V, method), may_reject=("rank",))
    if res is Rejected:
        assert method == "qr" and not tangent
        return
    assert res.dtype == dtype and res.shape == U.shape
    assert orthonormality_error(res) <= 20 * k * eps(dtype) * math.sqrt(n)
    if size == 0.0:  # R_U(0) spans U
        P = res.to(F64) @ res.to(F64).mT - U.to(F64) @ U.to(F64).mT
        assert float(P.abs().max()) <= 50 * k * eps(dtype) * math.sqrt(n)
    if method == "exp" and dtype not in HALF:
        # the geodesic: principal angles between span U and the result are the singular
        # values of the tangent part of V (while they stay below pi/2)
        Vt64 = V.to(F64) - U.to(F64) @ (U.to(F64).mT @ V.to(F64))
        sv = torch.linalg.svdvals(Vt64)
        if float(sv.max()) < 1.4:
            C = torch.linalg.svdvals(U.to(F64).mT @ res.to(F64))
            ang = torch.arccos(C.clamp(-1, 1)).sort().values
            ref = sv.sort().values
            assert float((ang - ref).abs().max()) <= 1e3 * eps(dtype) ** 0.5, (ang, ref)


def test_grassmann_inputs_named():
    U = torch.eye(4)[:, :2]
    must_reject(lambda: project_tangent(U, torch.ones(4, 2, dtype=F64)), ["dtype"])
    must_reject(lambda: project_tangent(U, torch.ones(4, 3)), ["shape", "v"])
    must_reject(
        lambda: grassmann_retract(U, torch.full((4, 2), float("inf"))), ["v", *NONFINITE_WORDS]
    )
    must_reject(lambda: grassmann_retract(U, torch.ones(4, 2), "cayley"), ["method"])
    must_reject(lambda: orthonormalize(torch.ones(2, 3)), ["u", "shape"])
    must_reject(lambda: GrassmannLinear(3, 2, 1, dtype=torch.int64), ["dtype"])
    must_reject(lambda: GrassmannLinear(3, 2, 1)(torch.ones(2, 3, dtype=F64)), ["dtype", "x"])


@given(
    n=st.integers(1, 6),
    C=st.integers(1, 3),
    k=st.integers(1, 6),
    dtype=dtypes,
    seed=seeds,
    zero_row=st.booleans(),
)
def test_grassmann_head_and_optimizer(n, C, k, dtype, seed, zero_row):
    call = lambda: GrassmannLinear(n, C, k, scale=1.0, dtype=dtype, generator=gen(seed))  # noqa: E731
    if k > n:
        must_reject(call, ["subspace_dim"])
        return
    head = outcome(call)
    x = torch.randn(4, n, generator=gen(seed), dtype=F64).to(dtype)
    if zero_row:
        x[0] = 0
    out = head.projection_norms(x).detach().to(F64)
    W = head.weight.detach().to(F64)
    xh = x.to(F64) / x.to(F64).norm(dim=-1, keepdim=True).clamp_min(head.eps)
    ref = torch.einsum("bn,cnk->bck", xh, W).norm(dim=-1)
    tol = 20 * eps(dtype) * math.sqrt(n * k)
    assert float((out - ref).abs().max()) <= tol and float(out.max()) <= 1 + tol
    opt = RiemannianSGD(head.parameters(), lr=0.3, momentum=0.5, reorth_every=2)
    for _ in range(3):
        opt.zero_grad()
        head(x).pow(2).sum().backward()
        opt.step()
    assert orthonormality_error(head.weight) <= 50 * k * eps(dtype) * math.sqrt(n)


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
