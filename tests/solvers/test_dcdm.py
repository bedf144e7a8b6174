"""Tests of the deep conjugate direction method (subspaces.solvers.dcdm)."""

import inspect

import pytest
import scipy.sparse.linalg as spla
import torch
from torch import nn

from subspaces.linalg import cg
from subspaces.solvers import (
    DirectionNet,
    IncompleteCholesky,
    dcdm,
    dcdm_loss,
    disk_mask,
    poisson_2d,
    ritz_rhs,
    train_direction_net,
)

F64 = torch.float64


def _problem(n=16):
    A = poisson_2d(n, obstacle=disk_mask((n, n), (0.4, 0.6), 0.2))
    b = torch.randn(A.n, generator=torch.Generator().manual_seed(0), dtype=F64)
    return A, b


class _GridOracle(nn.Module):
    """A 'network' on grids returning A^{-1} r exactly (dense solve)."""

    def __init__(self, A):
        super().__init__()
        self.A, self.dense = A, A.to_dense()

    def forward(self, u):
        x = torch.linalg.solve(self.dense, self.A.from_grid(u[:, 0].to(F64)))
        return self.A.to_grid(x)[:, None]


def test_oracle_converges_in_one_step():
    A, b = _problem()
    dense = A.to_dense()
    for model in (lambda r: torch.linalg.solve(dense, r), _GridOracle(A)):
        res = dcdm(A, b, model, rtol=1e-10)
        assert res.iterations == 1 and res.converged
        assert float((b - A @ res.x).norm()) <= 1e-10 * float(b.norm())


def test_identity_direction_is_cg_and_preconditioner_direction_is_pcg():
    A, b = _problem(20)
    count = [0]
    key = "rtol" if "rtol" in inspect.signature(spla.cg).parameters else "tol"  # scipy < 1.12
    spla.cg(
        A.to_scipy_sparse(),
        b.numpy(),
        **{key: 1e-8},
        atol=0.0,
        callback=lambda x: count.__setitem__(0, count[0] + 1),
    )
    plain = dcdm(A, b, lambda r: r, rtol=1e-8)
    assert plain.converged and abs(plain.iterations - count[0]) <= 1
    M = IncompleteCholesky(A)
    pcg = cg(A, b, M=M, rtol=1e-8)
    pre = dcdm(A, b, lambda r: M @ r, rtol=1e-8)
    assert pre.converged and abs(pre.iterations - pcg.iterations) <= 1
    assert pre.iterations < plain.iterations


def test_result_is_certified_and_history_recorded():
    A, b = _problem()
    res = dcdm(A, b, lambda r: r / A.diagonal(), rtol=1e-9)
    true = float((b - A @ res.x).norm())
    assert res.converged == (true <= 1e-9 * float(b.norm()))
    assert res.converged
    assert float(res.residual_norm) == pytest.approx(true, rel=1e-12)
    h = res.residual_history
    assert h is not None and h.shape == (res.iterations + 1,)
    assert float(h[0]) == pytest.approx(float(b.norm()), rel=1e-14)
    short = dcdm(A, b, lambda r: r, rtol=1e-12, max_iters=3)
    assert not short.converged and short.status == "max_iters" and short.iterations == 3


def test_degenerate_direction_falls_back_to_the_residual():
    A, b = _problem(10)
    res = dcdm(A, b, torch.zeros_like, rtol=1e-8)
    ref = cg(A, b, rtol=1e-8)
    assert res.converged and abs(res.iterations - ref.iterations) <= 1


def test_block_rhs():
    A, b = _problem(8)
    B = torch.stack([b, b.flip(0)], dim=1)
    res = dcdm(A, B, lambda r: r, rtol=1e-9)
    assert res.converged and res.x.shape == B.shape
    assert torch.allclose(
        res.x[:, 1], dcdm(A, B[:, 1], lambda r: r, rtol=1e-9).x, atol=1e-13, rtol=0
    )


def test_loss_closed_form():
    A = poisson_2d(6, obstacle=disk_mask((6, 6), (0.5, 0.5), 0.2))
    B = ritz_rhs(A, 4, generator=torch.Generator().manual_seed(1))
    D = A.to_dense()
    alpha = (B * B).sum(0) / (B * (D @ B)).sum(0)
    expected = ((B - alpha * (D @ B)) ** 2).sum(0).mean()
    grids = A.to_grid(B)[:, None]
    assert torch.allclose(dcdm_loss(A, nn.Identity(), grids), expected, rtol=1e-12, atol=0)
    assert float(dcdm_loss(A, _GridOracle(A), grids)) < 1e-24

    # Scale invariance of the line search: 5 q gives the same loss as q.
    class Five(nn.Module):
        def forward(self, u):
            return 5 * u

    assert torch.allclose(dcdm_loss(A, Five(), grids), expected, rtol=1e-12, atol=0)


def test_ritz_rhs_lies_in_the_low_eigenspace():
    A = poisson_2d(10)
    g = torch.Generator().manual_seed(0)
    m = 20
    B = ritz_rhs(A, 50, num_vectors=m, theta=0, generator=g)
    V = torch.linalg.eigh(A.to_dense()).eigenvectors[:, :m]
    assert torch.allclose(B.norm(dim=0), torch.ones(50, dtype=F64), rtol=1e-12)
    assert float((B - V @ (V.T @ B)).norm(dim=0).max()) < 1e-8
    # 9x weights on the lowest m/2 eigenvectors: expected energy share 81 / 82 there.
    low = ((V[:, : m // 2].T @ B) ** 2).sum(0).mean()
    assert 0.95 < float(low) < 1.0


def test_training_reduces_loss_and_iterations():
    torch.manual_seed(0)
    A = poisson_2d(12, obstacle=disk_mask((12, 12), (0.5, 0.5), 0.2))
    g = torch.Generator().manual_seed(0)
    net = DirectionNet(4, 1, 1)
    rhs = ritz_rhs(A, 256, generator=g)
    out = train_direction_net(A, net, rhs, steps=80, batch_size=16, lr=1e-2, generator=g)
    assert out.steps == 80 and len(out.losses) == 80
    first, last = sum(out.losses[:5]) / 5, sum(out.losses[-5:]) / 5
    assert last < 0.5 * first
    b = torch.randn(A.n, generator=torch.Generator().manual_seed(5), dtype=F64)
    learned = dcdm(A, b, net, rtol=1e-6)
    assert learned.converged
    assert learned.iterations < cg(A, b, rtol=1e-6).iterations


def test_direction_net_shapes_and_homogeneity():
    net = DirectionNet(4, 1, 2)
    r = torch.randn(3, 1, 9, 13)
    assert net(r).shape == r.shape
    assert torch.allclose(net(2.5 * r), 2.5 * net(r), atol=1e-5)
    with pytest.raises(ValueError, match="expected residual grids"):
        net(torch.randn(9, 13))
    with pytest.raises(ValueError, match="channels must be >= 1"):
        DirectionNet(0)


def test_bad_input():
    A, b = _problem(6)
    ind = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=F64))
    with pytest.raises(ValueError, match="not positive definite"):
        dcdm(ind, torch.ones(3, dtype=F64), lambda r: r)
    with pytest.raises(ValueError, match="returned \\(3,\\); expected shape"):
        dcdm(A, b, lambda r: r[:3])
    with pytest.raises(ValueError, match="non-finite"):
        dcdm(A, b, lambda r: r * float("nan"))
    with pytest.raises(ValueError, match=f"b must have {A.n} rows"):
        dcdm(A, b[:-2], lambda r: r)
    with pytest.raises(ValueError, match="non-finite"):
        dcdm(A, torch.full_like(b, float("inf")), lambda r: r)
    with pytest.raises(TypeError, match="needs a grid operator"):
        dcdm(A.to_dense(), b, DirectionNet(2, 1, 0))
    with pytest.raises(TypeError, match=r"nn\.Module or a callable"):
        dcdm(A, b, 3)
    with pytest.raises(TypeError, match="GridDiffusion"):
        ritz_rhs(A.to_dense(), 3)
    with pytest.raises(ValueError, match="num_vectors must be <="):
        ritz_rhs(A, 3, num_vectors=A.n + 1)
    with pytest.raises(ValueError, match="rhs must have shape"):
        train_direction_net(A, DirectionNet(2, 1, 0), torch.zeros(A.n + 1, 4))
    with pytest.raises(ValueError, match="rhs contains non-finite"):
        train_direction_net(A, DirectionNet(2, 1, 0), torch.full((A.n, 4), float("nan")))
    with pytest.raises(ValueError, match="B must have shape"):
        dcdm_loss(A, nn.Identity(), torch.zeros(2, 6, 6))
