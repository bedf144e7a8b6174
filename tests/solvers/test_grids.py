"""Tests of the grid diffusion operators (subspaces.solvers.grids)."""

import inspect
import math

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from subspaces.linalg import cg
from subspaces.solvers import (
    GridDiffusion,
    box_mask,
    disk_mask,
    flexible_cg,
    poisson_2d,
    random_obstacles,
)

F64 = torch.float64


def _variable_operator() -> GridDiffusion:
    g = torch.Generator().manual_seed(0)
    k = 0.5 + torch.rand(7, 9, generator=g, dtype=F64)
    return GridDiffusion((7, 9), obstacle=disk_mask((7, 9), (0.5, 0.4), 0.2), coefficient=k)


def test_operator_equals_its_sparse_matrix_and_is_spd():
    A = _variable_operator()
    D = A.to_dense()
    S = torch.as_tensor(A.to_scipy_sparse().toarray())
    scale = float(D.abs().max())
    assert float((D - S).abs().max()) <= 1e-13 * scale
    assert torch.equal(D, D.T)
    assert float(torch.linalg.eigvalsh(D)[0]) > 0
    assert torch.allclose(A.diagonal(), D.diagonal(), rtol=1e-14, atol=0)


def test_poisson_spectrum_matches_closed_form_on_rectangle():
    ny, nx = 5, 8
    A = poisson_2d((ny, nx))
    hy, hx = 1 / (ny + 1), 1 / (nx + 1)
    p = torch.arange(1, ny + 1, dtype=F64)
    q = torch.arange(1, nx + 1, dtype=F64)
    lam_y = 4 / hy**2 * torch.sin(p * math.pi * hy / 2) ** 2
    lam_x = 4 / hx**2 * torch.sin(q * math.pi * hx / 2) ** 2
    exact = (lam_y[:, None] + lam_x[None, :]).reshape(-1).sort().values
    got = torch.linalg.eigvalsh(A.to_dense())
    assert torch.allclose(got, exact, rtol=1e-12, atol=0)


def test_obstacles_are_dirichlet_nodes():
    mask = box_mask((6, 6), 2, 4, 2, 4)
    A = poisson_2d(6, obstacle=mask)
    full = poisson_2d(6).to_dense()
    keep = (~mask).reshape(-1)
    assert A.n == 32
    assert torch.equal(A.to_dense(), full[keep][:, keep])


def test_grid_round_trip_and_batched_products():
    A = _variable_operator()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(A.n, 3, generator=g, dtype=F64)
    U = A.to_grid(X)
    assert U.shape == (3, 7, 9)
    assert bool((U[:, ~A.fluid] == 0).all())
    assert torch.equal(A.from_grid(U), X)
    assert torch.equal(A.from_grid(A.to_grid(X[:, 0])), X[:, 0])
    cols = torch.stack([A @ X[:, j] for j in range(3)], dim=1)
    assert torch.allclose(A @ X, cols, rtol=1e-14, atol=0)


def _max_error(n: int, variable: bool) -> float:
    h = 1 / (n + 1)
    t = torch.arange(1, n + 1, dtype=F64) * h
    y, x = torch.meshgrid(t, t, indexing="ij")
    u = torch.sin(math.pi * x) * torch.sin(math.pi * y)
    if variable:  # k = 1 + x + y: -div(k grad u) = 2 pi^2 k u - (u_x + u_y)
        k = 1 + x + y
        ux = math.pi * torch.cos(math.pi * x) * torch.sin(math.pi * y)
        uy = math.pi * torch.sin(math.pi * x) * torch.cos(math.pi * y)
        f = 2 * math.pi**2 * k * u - ux - uy
        A = GridDiffusion((n, n), coefficient=k)
    else:
        f = 2 * math.pi**2 * u
        A = poisson_2d(n)
    sol = spla.spsolve(A.to_scipy_sparse().tocsc(), A.from_grid(f).numpy())
    return float(np.abs(sol - A.from_grid(u).numpy()).max())


@pytest.mark.parametrize("variable", [False, True])
def test_manufactured_solution_converges_at_second_order(variable):
    e1, e2 = _max_error(15, variable), _max_error(31, variable)
    assert e2 < 5e-3
    # h halves: a second-order scheme divides the error by ~4 (asymptotically exactly 4).
    assert 3.6 < e1 / e2 < 4.4


def _scipy_iterations(A: GridDiffusion, b: np.ndarray, rtol: float) -> int:
    count = [0]

    def cb(_x):
        count[0] += 1

    # scipy < 1.12 calls the relative tolerance `tol` (the floor in pyproject is 1.11)
    key = "rtol" if "rtol" in inspect.signature(spla.cg).parameters else "tol"
    _, info = spla.cg(
        A.to_scipy_sparse(), b, **{key: rtol}, atol=0.0, maxiter=10 * A.n, callback=cb
    )
    assert info == 0
    return count[0]


@pytest.mark.parametrize("n", [16, 24])
def test_cg_iteration_counts_match_scipy(n):
    obstacle = random_obstacles((n, n), 3, generator=torch.Generator().manual_seed(n))
    A = poisson_2d(n, obstacle=obstacle)
    b = torch.randn(A.n, generator=torch.Generator().manual_seed(0), dtype=F64)
    for rtol in (1e-6, 1e-8):
        ref = _scipy_iterations(A, b.numpy(), rtol)
        ours = cg(A, b, rtol=rtol)
        flex = flexible_cg(A, b, rtol=rtol, beta="fletcher_reeves")
        pr = flexible_cg(A, b, rtol=rtol)
        assert ours.converged and flex.converged and pr.converged
        assert abs(ours.iterations - ref) <= 1, (ours.iterations, ref)
        assert abs(flex.iterations - ref) <= 1, (flex.iterations, ref)
        assert abs(pr.iterations - ref) <= 1, (pr.iterations, ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_product_equals_the_stencil_bit_for_bit(dtype):
    # The CPU fast path (scipy's CSR kernel, rows in the stencil's order) must round exactly like
    # the matrix-free stencil: solver iterates, and so iteration counts, do not depend on it.
    g = torch.Generator().manual_seed(3)
    k = (0.1 + torch.rand(13, 17, generator=g, dtype=F64)).to(dtype)
    A = GridDiffusion((13, 17), obstacle=random_obstacles((13, 17), 3, generator=g), coefficient=k)
    X = torch.randn(A.n, 3, generator=g, dtype=F64).to(dtype)
    for V in (X[:, :1], X, X.T.contiguous().T, X[:, 1:2]):  # one column, a block, strided
        stencil = A.from_grid(A._stencil(A.to_grid(V)))
        fast = A.matmat(V)
        assert A._csr is not None and fast.dtype == dtype
        assert torch.equal(fast, stencil)
    # with autograd the stencil runs (differentiable): d/dX <g, A X> = A g (A symmetric)
    Xg = X.clone().requires_grad_()
    G = torch.randn(A.n, 3, generator=g, dtype=F64).to(dtype)
    (A.matmat(Xg) * G).sum().backward()
    D = A.to_dense().double()
    ref = D @ G.double()
    # the backward pass sums the stencil's terms in another order: rounding bounded entrywise
    # by a few eps times |A| |G| (5 terms)
    bound = 8 * torch.finfo(dtype).eps * (D.abs() @ G.double().abs())
    assert Xg.grad is not None and bool(((Xg.grad.double() - ref).abs() <= bound).all())


@pytest.mark.parametrize("n", [16, 40])
def test_cg_iteration_counts_equal_scipy_on_the_benchmark_problem(n):
    # benchmarks/solvers_poisson.py's problem (disk obstacle, Gaussian b): same counts as scipy
    A = poisson_2d(n, obstacle=disk_mask((n, n), (0.5, 0.5), 0.2))
    b = torch.randn(A.n, generator=torch.Generator().manual_seed(0), dtype=F64)
    for rtol in (1e-6, 1e-8):
        ours = cg(A, b, rtol=rtol)
        assert ours.converged and ours.iterations == _scipy_iterations(A, b.numpy(), rtol)
        true = float((b - A @ ours.x).norm())
        assert true == pytest.approx(float(ours.residual_norm), rel=1e-12)
        assert true <= rtol * float(b.norm())


def test_masks():
    assert int(box_mask((5, 6), 0, 2, 1, 4).sum()) == 6
    m16 = disk_mask((15, 15), (0.5, 0.5), 0.25)
    m32 = disk_mask((31, 31), (0.5, 0.5), 0.25)
    # Same geometry at two resolutions: covered area fractions agree with pi r^2 to O(h).
    for m, n in ((m16, 15), (m32, 31)):
        assert abs(float(m.sum()) / n**2 - math.pi * 0.25**2) < 3 / n
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(
        random_obstacles((9, 9), 2, generator=g1), random_obstacles((9, 9), 2, generator=g2)
    )
    assert not bool(random_obstacles((9, 9), 0).any())


def test_bad_input():
    with pytest.raises(ValueError, match="grid shape"):
        GridDiffusion((4,))
    with pytest.raises(ValueError, match="nx must be >= 1"):
        poisson_2d((4, 0))
    with pytest.raises(ValueError, match=r"obstacle mask must have the grid shape \(4, 4\)"):
        poisson_2d(4, obstacle=torch.zeros(4, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="obstacle must be a boolean tensor"):
        poisson_2d(4, obstacle=torch.zeros(4, 4))
    with pytest.raises(ValueError, match="covers every node"):
        poisson_2d(3, obstacle=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="coefficient must be positive"):
        GridDiffusion((3, 3), coefficient=-torch.ones(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="non-finite"):
        GridDiffusion((3, 3), coefficient=torch.full((3, 3), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match=r"coefficient must have the grid shape"):
        GridDiffusion((3, 3), coefficient=torch.ones(3, 4, dtype=F64))
    with pytest.raises(ValueError, match="inside"):
        box_mask((4, 4), 2, 6, 0, 1)
    with pytest.raises(ValueError, match="radius must be positive"):
        disk_mask((4, 4), (0.5, 0.5), 0.0)
    with pytest.raises(ValueError, match="radius range"):
        random_obstacles((4, 4), 1, radius=(0.2, 0.1))
    A = poisson_2d(4)
    with pytest.raises(ValueError, match=r"expected \(16,\)"):
        A.to_grid(torch.zeros(15, dtype=F64))
    with pytest.raises(ValueError, match=r"grids ending in \(4, 4\)"):
        A.from_grid(torch.zeros(4, 5, dtype=F64))
    with pytest.raises(ValueError, match="expected a matrix of shape"):
        A @ torch.zeros(15, 2, dtype=F64)
