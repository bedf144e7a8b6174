"""Properties of subspaces.intrinsic: random projections and the Walsh-Hadamard transform."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from prop_helpers import (
    DTYPES,
    F64,
    dtypes,
    eps,
    gen,
    lay_out,
    layouts,
    must_reject,
    outcome,
    seeds,
)
from torch import nn

from subspaces.intrinsic import (
    DenseProjection,
    FastfoodProjection,
    IdentityProjection,
    SparseProjection,
    fwht,
    make_projection,
    subspace_parameters,
)


def hadamard(n: int) -> torch.Tensor:
    H = torch.ones(1, 1, dtype=F64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


@given(n=st.integers(0, 20), batch=st.sampled_from(((), (3,), (2, 2))), dtype=dtypes, seed=seeds)
def test_fwht_is_the_hadamard_product(n, batch, dtype, seed):
    x = torch.randn(*batch, n, generator=gen(seed), dtype=F64).to(dtype)
    call = lambda: fwht(x)  # noqa: E731
    if n < 1 or n & (n - 1):
        must_reject(call, ["power of two", "x"])
        return
    y = outcome(call)
    assert y.shape == x.shape and y.dtype == dtype
    ref = x.to(F64) @ hadamard(n)
    x64 = x.to(F64)
    tol = 2 * eps(dtype) * math.log2(max(n, 2)) * float(x64.abs().sum(-1).max()) + 1e-300
    assert float((y.to(F64) - ref).abs().max()) <= tol
    z = fwht(fwht(x64)) / n
    assert float((z - x64).abs().max()) <= 1e-12 * (1 + float(x64.abs().max()))


def test_fwht_rejects_non_tensors_and_scalars():
    must_reject(lambda: fwht([1.0, 2.0]), ["x", "tensor"])
    must_reject(lambda: fwht(torch.tensor(1.0)), ["x", "dimension"])


KINDS = ("dense", "sparse", "fastfood", "identity")


@given(
    kind=st.sampled_from(KINDS),
    d=st.integers(0, 6),
    D=st.integers(0, 40),
    dtype=st.sampled_from((*DTYPES, torch.int64)),
    zdtype=dtypes,
    b=st.sampled_from((None, 1, 3)),
    seed=st.integers(0, 1000),
    layout=layouts,
)
def test_projection_against_its_dense_matrix(kind, d, D, dtype, zdtype, b, seed, layout):
    if kind == "identity":
        d = D
        make = lambda: IdentityProjection(D, seed, dtype=dtype)  # noqa: E731
    else:
        make = lambda: make_projection(kind, d, D, seed, dtype=dtype)  # noqa: E731
    reasons = []
    if d < 1:
        reasons += ["d", "D"]
    if D < 1:
        reasons += ["D"]
    if d > D:
        reasons += ["d", "D"]
    if not dtype.is_floating_point:
        reasons += ["dtype"]
    if reasons:
        must_reject(make, reasons)
        return
    P = outcome(make)
    assert (P.d, P.D) == (d, D)
    shape = (d,) if b is None else (d, b)
    z = torch.randn(*shape, generator=gen(seed), dtype=F64).to(zdtype)
    if z.ndim == 2:
        z = lay_out(z, layout)
    if zdtype != dtype:
        must_reject(lambda: P(z), ["dtype", "z"])
        return
    out = P(z)
    assert out.dtype == dtype and out.shape == ((D,) if b is None else (D, b))
    M = P.to_dense().to(F64)
    assert M.shape == (D, d)
    ref = M @ z.to(F64)
    tol = 20 * eps(dtype) * math.log2(max(D, 2)) * float(z.to(F64).abs().sum(0).max()) + 1e-300
    assert float((out.to(F64) - ref).abs().max()) <= tol, (
        kind,
        float((out.to(F64) - ref).abs().max()),
        tol,
    )
    norms = M.norm(dim=0)
    exact = kind in ("dense", "sparse", "identity") or (kind == "fastfood" and D % P.n == 0)
    if exact:  # unit columns, to the rounding of the stored dtype
        assert float((norms - 1).abs().max()) <= 4 * eps(dtype) * math.sqrt(D), norms
    if kind == "fastfood":
        ref_factors = P.dense_factors()
        assert float((M - ref_factors).abs().max()) <= 20 * eps(dtype) * math.sqrt(P.n), (
            M,
            ref_factors,
        )
    # the projection is determined by (d, D, seed)
    again = make()
    torch.testing.assert_close(again.to_dense(), P.to_dense(), rtol=0, atol=0)
    must_reject(lambda: P(torch.ones(d + 1, dtype=dtype)), ["z", "d"])


@given(kind=st.sampled_from(("dense", "sparse", "fastfood")), d=st.integers(1, 5), seed=seeds)
def test_subspace_parameters_are_theta0_plus_pz(kind, d, seed):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    theta0 = torch.cat([p.detach().flatten() for p in model.parameters()])
    D = theta0.numel()
    P = make_projection(kind, d, D, seed % 1000, dtype=F64)
    z = torch.randn(d, generator=gen(seed), dtype=F64)
    params = subspace_parameters(model, z, P)
    flat = torch.cat([params[name].flatten() for name, _ in model.named_parameters()])
    torch.testing.assert_close(flat, theta0 + P.to_dense() @ z, rtol=1e-12, atol=1e-12)
    other = make_projection(kind, d, D + 1, 0, dtype=F64)
    must_reject(lambda: subspace_parameters(model, z, other), ["d", "projection"])
    must_reject(lambda: SparseProjection(d, D, density=0.0), ["density"])
    assert DenseProjection(d, D, seed).d == d and FastfoodProjection(d, D, seed).D == D
