"""BSVRB: exact multi-block hypergradients, unbiased block sampling, MSVR variance reduction."""

import pytest
import torch

from subspaces.bilevel import MultiTaskRidge, bsvrb, implicit_hypergradient, msvr_gamma, msvr_update
from subspaces.bilevel.bsvrb import _oracles

f64 = torch.float64


@pytest.fixture(scope="module")
def problem():
    return MultiTaskRidge.random(6, 3, 12, generator=torch.Generator().manual_seed(0))


def test_closed_form_hypergradient_matches_cg(problem):
    x = torch.tensor([0.2, -0.5, 0.1], dtype=f64)
    Y = problem.lower_solution(x)
    full = torch.arange(problem.samples_per_block)
    total = torch.zeros(3, dtype=f64)
    for i in range(problem.num_blocks):
        blk = torch.tensor([i])

        def F(a, y, blk=blk):
            return problem.upper(a, y[None], blk, full[None])

        def g(a, y, blk=blk):
            return problem.lower(a, y[None], blk, full[None])

        h, solve = implicit_hypergradient(F, g, x, Y[i], rtol=1e-13)
        assert solve.converged
        total += h / problem.num_blocks
    torch.testing.assert_close(total, problem.hypergradient(x), atol=1e-10, rtol=0)


def test_block_sampled_hypergradient_is_unbiased(problem):
    # At the exact y_i* and s_i* = H_i^-1 grad_y f_i, G = (1/I) sum_{i in I_t} grad_x f_i - J_i s_i
    # with I blocks and B samples drawn at random is an unbiased estimate of dF/dx (the
    # per-block terms are exact only in expectation over the samples; the lower-level gradient
    # has mean zero at y*). Checked with N draws against 5 standard errors per coordinate.
    x = torch.tensor([0.2, -0.5, 0.1], dtype=f64)
    Y = problem.lower_solution(x)
    m, n = problem.num_blocks, problem.samples_per_block
    r = torch.einsum("mnd,md->mn", problem.Av, Y) - problem.bv
    fy = torch.einsum("mnd,mn->md", problem.Av, r) / n
    S = torch.linalg.solve(problem._hessians(x), fy)
    gen = torch.Generator().manual_seed(1)
    I, B, N = 2, 4, 600
    Gs, gys = [], []
    for _ in range(N):
        blocks = torch.randperm(m, generator=gen)[:I]
        lo = torch.argsort(torch.rand(I, n, generator=gen), dim=1)[:, :B]
        up = torch.argsort(torch.rand(I, n, generator=gen), dim=1)[:, :B]
        gy, _, G = _oracles(problem, x, Y[blocks], S[blocks], blocks, lo, up)
        Gs.append(G / I)
        gys.append(gy.sum(0))
    Gs_t, gys_t = torch.stack(Gs), torch.stack(gys)
    se = Gs_t.std(0) / N**0.5
    assert bool(((Gs_t.mean(0) - problem.hypergradient(x)).abs() < 5 * se).all())
    assert bool((gys_t.mean(0).abs() < 5 * gys_t.std(0) / N**0.5).all())
    # negative control: the same statistic rejects a biased sampler (block 0 only)
    biased = []
    for _ in range(100):
        blocks = torch.tensor([0, 0])
        lo = torch.argsort(torch.rand(I, n, generator=gen), dim=1)[:, :B]
        up = torch.argsort(torch.rand(I, n, generator=gen), dim=1)[:, :B]
        biased.append(_oracles(problem, x, Y[blocks], S[blocks], blocks, lo, up)[2] / I)
    Gb = torch.stack(biased)
    assert bool(((Gb.mean(0) - problem.hypergradient(x)).abs() > 5 * Gb.std(0) / 10).any())


def test_msvr_variance_reduction_matches_theory():
    # At a fixed point (h(w_t) = h(w_{t-1}) on the same samples) MSVR is the moving average
    # u <- (1 - beta) u + beta h, whose stationary variance is beta / (2 - beta) * sigma^2
    # (plain: sigma^2). N independent chains give the variance with relative standard error
    # sqrt(2 / (N - 1)); the tolerance is 5 of those.
    beta, sigma, N = 0.2, 2.0, 4000
    gen = torch.Generator().manual_seed(3)
    u = torch.zeros(N, dtype=f64)
    for _ in range(300):
        h = 1.0 + sigma * torch.randn(N, generator=gen, dtype=f64)
        u = msvr_update(u, h, h, beta, msvr_gamma(10, 10, beta))
    expected = beta / (2 - beta) * sigma**2
    assert abs(float(u.var()) / expected - 1.0) < 5 * (2 / (N - 1)) ** 0.5
    assert abs(float(u.mean()) - 1.0) < 5 * (expected / N) ** 0.5


def test_msvr_gamma():
    assert msvr_gamma(10, 2, 0.5) == pytest.approx(8 / (2 * 0.5) + 0.5)
    with pytest.raises(ValueError, match="beta"):
        msvr_gamma(10, 2, 1.0)


def test_bad_input(problem):
    x0 = torch.zeros(3, dtype=f64)
    y0 = torch.zeros(6, 3, dtype=f64)
    with pytest.raises(ValueError, match="I=7"):
        bsvrb(problem, x0, y0, blocks_per_iter=7)
    with pytest.raises(ValueError, match="batch_size"):
        bsvrb(problem, x0, y0, batch_size=0)
    with pytest.raises(ValueError, match="B=13"):
        bsvrb(problem, x0, y0, batch_size=13)
    with pytest.raises(ValueError, match="lr"):
        bsvrb(problem, x0, y0, lr=-1.0)
    with pytest.raises(ValueError, match="beta"):
        bsvrb(problem, x0, y0, beta=1.5)
    with pytest.raises(ValueError, match="one row per block"):
        bsvrb(problem, x0, torch.zeros(5, 3, dtype=f64))
    with pytest.raises(ValueError, match="estimator"):
        bsvrb(problem, x0, y0, estimator="svrg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-finite"):
        bsvrb(problem, torch.full((3,), 1e6, dtype=f64) * 1e300, y0)
    bad = MultiTaskRidge(problem.A, problem.b * float("nan"), problem.Av, problem.bv)
    with pytest.raises(ValueError, match="non-finite"):
        bsvrb(bad, x0, y0, iters=2)
