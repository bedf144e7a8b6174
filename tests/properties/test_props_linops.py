"""Properties of subspaces.linops: every operator against its dense float64 matrix."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from prop_helpers import (
    F64,
    NONFINITE_WORDS,
    dtypes,
    eps,
    gen,
    general,
    lay_out,
    layouts,
    must_reject,
    nonfinite,
    norm2,
    outcome,
    poison,
    scales,
    seeds,
    slack,
)

from subspaces.linops import (
    Dense,
    Diagonal,
    Identity,
    LowRank,
    MatmatOperator,
    Projection,
    as_operator,
)


def assert_product(op, M64: torch.Tensor, X: torch.Tensor, dtype: torch.dtype, size=None):
    """``op @ X`` against ``M64 @ X64`` within the rounding of one product in ``dtype``.

    ``size`` is the norm the rounding is relative to when the operator is formed from factors
    whose norms exceed its own (``I - Q Q^T`` is tiny for a square ``Q``, its rounding is not).
    """
    out = op @ X
    assert out.dtype == dtype and tuple(out.shape) == (M64.shape[0], X.shape[1])
    ref = M64 @ X.to(F64)
    n = max(M64.shape[1], 1)
    size = norm2(M64) if size is None else size
    sl = 2 * slack(dtype, size * (norm2(X) if X.numel() else 0.0), n) + 1e-300
    err = float((out.to(F64) - ref).abs().max()) if out.numel() else 0.0
    assert err <= sl, (err, sl)


@st.composite
def dense_inputs(draw, max_n: int = 8):
    m, n = draw(st.integers(0, max_n)), draw(st.integers(0, max_n))
    dtype = draw(dtypes)
    g = gen(draw(seeds))
    M = lay_out(general(m, n, g, dtype, draw(scales)), draw(layouts))
    b = draw(st.integers(0, 3))
    X = lay_out(general(n, b, g, dtype), draw(layouts))
    return M, X


@given(inp=dense_inputs())
def test_dense_products_and_adjoint(inp):
    M, X = inp
    op = Dense(M)
    M64 = M.to(F64)
    assert torch.equal(op.to_dense(), M)
    assert_product(op, M64, X, M.dtype)
    Y = general(M.shape[0], 2, gen(1), M.dtype)
    assert_product(op.T, M64.T, Y, M.dtype)
    # x^T A is the adjoint product
    if M.shape[0]:
        out = Y.T @ op
        torch.testing.assert_close(out.T.to(F64), (op.T @ Y).to(F64), rtol=0, atol=0)


@given(inp=dense_inputs(), a=st.sampled_from((0.0, -1.5, 2.0)), seed=seeds)
def test_operator_algebra_matches_dense(inp, a, seed):
    M, X = inp
    m, n = M.shape
    g = gen(seed)
    N = general(m, n, g, M.dtype)
    C = general(n, n, g, M.dtype)
    op = a * Dense(M) + Dense(N) - Dense(M) @ Dense(C)
    M64, N64, C64 = M.to(F64), N.to(F64), C.to(F64)
    ref = a * M64 + N64 - M64 @ C64
    sl = slack(M.dtype, norm2(M64) * (1 + norm2(C64)) + norm2(N64), n) * 4 + 1e-300
    dense = op.to_dense().to(F64)
    assert tuple(dense.shape) == (m, n)
    if dense.numel():
        assert float((dense - ref).abs().max()) <= sl
        assert float((op.T.to_dense().to(F64) - ref.T).abs().max()) <= sl
    if X.shape[1]:
        out = (op @ X).to(F64)
        err = float((out - ref @ X.to(F64)).abs().max()) if out.numel() else 0.0
        assert err <= sl * (1 + norm2(X))


@given(inp=dense_inputs(), seed=seeds)
def test_to_scipy_keeps_complex_parts(inp, seed):
    M, _ = inp
    m, n = M.shape
    S = Dense(M).to_scipy()
    M64 = M.to(F64).numpy()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    y = rng.standard_normal(m) + 1j * rng.standard_normal(m)
    sl = (
        slack(M.dtype, norm2(M.to(F64)), max(n, m))
        * 4
        * (1 + np.abs(x).max(initial=0.0) + np.abs(y).max(initial=0.0))
    )
    out = S @ x
    assert np.iscomplexobj(out) and out.shape == (m,)
    assert np.abs(out - M64 @ x).max(initial=0.0) <= sl
    assert np.abs(S.H @ y - M64.T @ y).max(initial=0.0) <= sl
    xr = x.real
    assert np.abs(S @ xr - M64 @ xr).max(initial=0.0) <= sl


@given(
    n=st.integers(1, 8),
    dtype=dtypes,
    rel=st.sampled_from((0.0, 1e-9, 1e-6, 1e-3, 0.1, 1.0, 5.0)),
    seed=seeds,
)
def test_dense_declared_symmetric_is_checked(n, dtype, rel, seed):
    """``symmetric=True`` raises exactly when ``||M - M^T||_F / ||M||_F > 10 eps`` (of the values
    as stored), and a symmetric Dense passes ``check_symmetric``."""
    g = gen(seed)
    S = general(n, n, g, F64)
    S = S + S.T
    E = general(n, n, g, F64)
    M = (S + rel * float(S.norm()) / max(float((E - E.T).norm()), 1e-300) * E).to(dtype)
    M64 = M.to(F64)
    asym = float((M64 - M64.T).norm() / M64.norm()) if float(M64.norm()) else 0.0
    tol = 10 * eps(dtype)
    call = lambda: Dense(M, symmetric=True)  # noqa: E731
    if asym > 1.05 * tol:
        must_reject(call, ["symmetric"])
    elif asym < 0.95 * tol:
        op = outcome(call)
        assert op.SELF_ADJOINT
        op.check_symmetric(generator=gen(seed))


@given(
    kind=st.sampled_from(("diag", "lowrank", "lowrank_sym", "proj", "proj_c", "identity")),
    n=st.integers(0, 7),
    r=st.integers(0, 3),
    dtype=dtypes,
    seed=seeds,
    layout=layouts,
)
def test_structured_operators_match_dense(kind, n, r, dtype, seed, layout):
    g = gen(seed)
    if kind == "diag":
        d = lay_out(general(n, 1, g, dtype)[:, 0], layout)
        op, ref = Diagonal(d), torch.diag(d.to(F64))
        size = None
    elif kind in ("lowrank", "lowrank_sym"):
        m = n + 1
        U = lay_out(general(m, r, g, dtype), layout)
        S = general(r, 1, g, dtype)[:, 0]
        if kind == "lowrank":
            V = general(n, r, g, dtype)
            op, ref = LowRank(U, S, V), (U.to(F64) * S.to(F64)) @ V.to(F64).T
            size = norm2(U) * (float(S.abs().max()) if S.numel() else 0.0) * norm2(V)
        else:
            op, ref = LowRank(U, S), (U.to(F64) * S.to(F64)) @ U.to(F64).T
            size = norm2(U) ** 2 * (float(S.abs().max()) if S.numel() else 0.0)
    elif kind in ("proj", "proj_c"):
        k = min(r, n)
        Q = (
            torch.linalg.qr(general(n, k, g, F64)).Q.to(dtype)
            if k
            else torch.zeros(n, 0, dtype=dtype)
        )
        Q = lay_out(Q, layout)
        P = Q.to(F64) @ Q.to(F64).T
        comp = kind == "proj_c"
        op, ref = Projection(Q, complement=comp), (torch.eye(n, dtype=F64) - P) if comp else P
        size = 2.0
    else:
        op, ref = Identity(n, dtype=dtype), torch.eye(n, dtype=F64)
        size = None
    X = lay_out(general(op.shape[1], 3, g, dtype), layout)
    assert_product(op, ref, X, dtype, size)
    Y = general(op.shape[0], 2, g, dtype)
    assert_product(op.T, ref.T, Y, dtype, size)


@given(n=st.integers(1, 6), dtype=dtypes, bad=nonfinite, seed=seeds)
def test_constructors_reject_bad_input(n, dtype, bad, seed):
    g = gen(seed)
    M = general(n, n, g, dtype)
    must_reject(lambda: Dense(poison(M, bad, g)), NONFINITE_WORDS)
    must_reject(lambda: Dense(M[0]), ["matrix", "dimensions"])
    must_reject(lambda: Dense(M.to(torch.int64)), ["matrix", "dtype", "floating"])
    must_reject(lambda: Dense(torch.empty(n, n, device="meta", dtype=dtype)), ["meta"])
    must_reject(lambda: Diagonal(poison(M[0], bad, g)), NONFINITE_WORDS)
    must_reject(lambda: Diagonal(M), ["diagonal", "dimensions"])
    U = general(n, 2, g, dtype)
    must_reject(lambda: LowRank(U, torch.ones(3, dtype=dtype)), ["s"])
    must_reject(lambda: LowRank(U, V=general(n, 3, g, dtype)), ["v"])
    must_reject(lambda: LowRank(U, V=poison(general(n, 2, g, dtype), bad, g)), NONFINITE_WORDS)
    if n >= 2:
        must_reject(lambda: Projection(U * 2), ["orthonormal", "basis"])
    must_reject(lambda: Identity(-1), ["shape", "n"])
    must_reject(lambda: as_operator([[1.0]]), ["tensor", "linearoperator"])
    op = Dense(M)
    must_reject(lambda: op @ general(n + 1, 1, g, dtype), ["shape", "expected"])
    other = torch.float64 if dtype != torch.float64 else torch.float32
    must_reject(lambda: op @ general(n, 1, g, other), ["dtype"])


@given(n=st.integers(1, 5), seed=seeds)
def test_matmat_operator_contract(n, seed):
    g = gen(seed)
    M = general(n, n, g, F64)
    ok = MatmatOperator(lambda X: M @ X, (n, n), F64, rmatmat=lambda X: M.T @ X)
    assert_product(ok, M, general(n, 2, g, F64), F64)
    assert_product(ok.T, M.T, general(n, 2, g, F64), F64)
    bad = MatmatOperator(lambda X: X[:-1], (n, n), F64)
    must_reject(lambda: bad @ general(n, 1, g, F64), ["matmat", "shape"])
    must_reject(lambda: MatmatOperator("not callable", (n, n), F64), ["matmat", "callable"])
    must_reject(lambda: MatmatOperator(lambda X: X, (n, n), torch.int64), ["dtype", "floating"])
