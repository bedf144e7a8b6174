"""Symmetric measurement operators read only the upper triangles: same maps as the full ones."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.recovery import Measurements, gaussian_measurements


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_packed_apply_and_adjoint_equal_full_contractions(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    meas = gaussian_measurements(37, 6, dtype=dtype, generator=g)
    assert meas.symmetric
    m = meas.num_measurements
    flat = meas.matrices.reshape(m, -1).double()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    M = torch.randn(3, 2, 6, 6, dtype=torch.float64, generator=g)  # batched, not symmetric
    full = (M.reshape(3, 2, 36) @ flat.T) / math.sqrt(m)
    got = meas.apply(M)
    assert got.shape == (3, 2, m) and got.dtype == dtype
    assert torch.allclose(got.double(), full, rtol=tol, atol=tol)
    z = torch.randn(4, m, dtype=torch.float64, generator=g)
    adj_full = ((z @ flat) / math.sqrt(m)).reshape(4, 6, 6)
    adj = meas.adjoint(z)
    assert adj.shape == (4, 6, 6) and torch.allclose(adj.double(), adj_full, rtol=tol, atol=tol)
    # adjoint identity <A(M), z> = <M, A*(z)> on single inputs
    M1, z1 = M[0, 0].to(dtype), z[0].to(dtype)
    lhs = float(meas.apply(M1) @ z1)
    rhs = float((M1 * meas.adjoint(z1)).sum())
    assert lhs == pytest.approx(rhs, rel=tol * 10)


def test_packed_matches_unflagged_operator_on_same_matrices() -> None:
    g = torch.Generator().manual_seed(1)
    sym = gaussian_measurements(50, 5, generator=g)
    plain = Measurements(sym.matrices, symmetric=False)  # full contraction path
    M = torch.randn(5, 5, dtype=torch.float64, generator=g)
    z = torch.randn(50, dtype=torch.float64, generator=g)
    assert torch.allclose(sym.apply(M), plain.apply(M), rtol=1e-12, atol=1e-12)
    assert torch.allclose(sym.adjoint(z), plain.adjoint(z), rtol=1e-12, atol=1e-12)
    # the cache does not alter the caller's matrices
    before = sym.matrices.clone()
    sym.apply(M)
    assert torch.equal(sym.matrices, before)
