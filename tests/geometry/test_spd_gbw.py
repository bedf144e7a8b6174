"""Generalized Bures-Wasserstein metric with metric parameter M and the GBW batch-norm layer."""

import pytest
import torch

from subspaces.geometry import (
    SPDBatchNorm,
    ai_distance,
    ai_karcher_mean,
    bw_barycenter,
    bw_distance,
    gbw_barycenter,
    gbw_deform,
    gbw_distance,
    gbw_undeform,
    is_spd,
    spd_sqrt,
    sym,
)
from subspaces.geometry.spd import _pair_kernel, gbw_geodesic

D = torch.float64
EPS = torch.finfo(D).eps


def rand_spd(*batch, n=4, seed=0, cond=10.0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(*batch, n, n, generator=g, dtype=D))[0]
    lam = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=D)
    lam = lam * torch.exp(0.2 * torch.randn(*batch, n, generator=g, dtype=D))
    return sym(Q * lam.unsqueeze(-2) @ Q.mT)


def sqrtm(A):
    w, U = torch.linalg.eigh(A)
    return U @ torch.diag_embed(w.sqrt()) @ U.mT


def test_gbw_distance_matches_han_closed_form_and_reduces_to_bw():
    A, B, M = rand_spd(seed=1, cond=100), rand_spd(seed=2, cond=100), rand_spd(seed=3, cond=20)
    Mi = torch.linalg.inv(M)
    Ah = sqrtm(A)
    d2 = (
        torch.trace(Mi @ A)
        + torch.trace(Mi @ B)
        - 2 * torch.trace(sqrtm(sym(Ah @ Mi @ B @ Mi @ Ah)))
    )
    d = gbw_distance(A, B, M=M)
    tol = 1e3 * EPS * float(torch.linalg.cond(M)) * float(d2.sqrt())
    assert abs(float(d) - float(d2.sqrt())) <= tol
    assert abs(float(gbw_distance(A, B, M=torch.eye(4, dtype=D)) - bw_distance(A, B))) <= 1e3 * EPS
    # with the power: d_BW(M^-1/2 A^t M^-1/2, M^-1/2 B^t M^-1/2) / t
    t = 0.5
    ref = gbw_distance(gbw_deform(A, t), gbw_deform(B, t), M=M) / t
    assert abs(float(gbw_distance(A, B, t, M=M) - ref)) <= 1e3 * EPS * float(ref)


def test_gbw_commuting_closed_forms():
    a = torch.tensor([0.01, 1.0, 30.0], dtype=D)
    b = torch.tensor([2.0, 0.5, 4.0], dtype=D)
    m = torch.tensor([0.3, 2.0, 5.0], dtype=D)
    A, B, M = torch.diag(a), torch.diag(b), torch.diag(m)
    for t in (1.0, 0.5, -0.7):
        exact = (((a ** (t / 2) - b ** (t / 2)) ** 2 / m).sum() / t**2).sqrt()
        assert abs(float(gbw_distance(A, B, t, M=M) - exact)) <= 1e3 * EPS * float(exact)
        # geodesic and barycenter of commuting matrices do not depend on a commuting M
        g = gbw_geodesic(A, B, 0.3, t, M=M)
        g_exact = (0.7 * a ** (t / 2) + 0.3 * b ** (t / 2)) ** (2 / t)
        assert torch.allclose(g, torch.diag(g_exact), rtol=1e3 * EPS, atol=0)
        X = torch.stack([A, B])
        mean = gbw_barycenter(X, t, M=M)
        assert torch.allclose(mean, torch.diag(((a ** (t / 2) + b ** (t / 2)) / 2) ** (2 / t)))


def test_gbw_geodesic_properties_2x2():
    A = torch.tensor([[2.0, 0.3], [0.3, 0.5]], dtype=D)
    B = torch.tensor([[1.0, -0.4], [-0.4, 3.0]], dtype=D)
    M = torch.tensor([[1.5, 0.2], [0.2, 0.7]], dtype=D)
    for t in (1.0, 0.5):
        d = gbw_distance(A, B, t, M=M)
        assert torch.allclose(gbw_geodesic(A, B, 0.0, t, M=M), A, atol=1e3 * EPS)
        assert torch.allclose(gbw_geodesic(A, B, 1.0, t, M=M), B, atol=1e3 * EPS)
        P = gbw_geodesic(A, B, 0.25, t, M=M)  # constant speed: d(A, P) = d / 4, d(P, B) = 3d / 4
        assert abs(float(gbw_distance(A, P, t, M=M) - d / 4)) <= 1e5 * EPS * float(d)
        assert abs(float(gbw_distance(P, B, t, M=M) - 3 * d / 4)) <= 1e5 * EPS * float(d)
    assert torch.allclose(gbw_undeform(gbw_deform(A, 0.5, M), 0.5, M), A, atol=1e3 * EPS)


def test_gbw_barycenter_with_metric_parameter_minimizes_the_frechet_function():
    X, M, t = rand_spd(6, seed=4, cond=50), rand_spd(seed=5, cond=10), 0.5
    mean = gbw_barycenter(X, t, M=M)
    assert torch.allclose(gbw_barycenter(X, 1.0, M=torch.eye(4, dtype=D)), bw_barycenter(X))

    def frechet(P):
        return float(gbw_distance(P.expand_as(X), X, t, M=M).pow(2).mean())

    f0 = frechet(mean)
    for seed in range(4):  # first-order optimality: small geodesic steps do not decrease it
        P = gbw_geodesic(mean, rand_spd(seed=10 + seed, cond=5), 1e-3, t, M=M)
        assert frechet(P) >= f0 - 1e3 * EPS * f0
    # the mean depends on M (non-commuting data)
    assert not torch.allclose(mean, gbw_barycenter(X, t), atol=1e-6)


def test_gbw_bad_inputs():
    A = rand_spd(seed=6)
    with pytest.raises(ValueError, match="M must be symmetric positive definite"):
        gbw_distance(A, A, M=-A)
    with pytest.raises(ValueError, match=r"M must have shape \(\.\.\., 4, 4\)"):
        gbw_distance(A, A, M=torch.eye(3, dtype=D))
    with pytest.raises(ValueError, match="non-finite"):
        gbw_geodesic(A, torch.full_like(A, float("nan")), 0.5)
    with pytest.raises(ValueError, match=r"t must be a number in \[0, 1\], got 1.5"):
        gbw_geodesic(A, A, 1.5)
    with pytest.raises(ValueError, match="theta must be a finite nonzero number"):
        gbw_barycenter(torch.stack([A, A]), 0.0)
    with pytest.raises(ValueError, match="B must be symmetric positive definite"):
        gbw_distance(A, -A, 0.5)


def test_pair_kernel_gradient_is_finite_and_correct_on_repeated_eigenvalues():
    V = sym(torch.randn(3, 3, dtype=D, generator=torch.Generator().manual_seed(0)))
    for S in (torch.eye(3, dtype=D), torch.diag(torch.tensor([1.0, 1.0, 2.0], dtype=D))):
        for p in (0.5, -0.5):
            assert torch.autograd.gradcheck(
                lambda S_, V_, p=p: _pair_kernel(sym(S_), sym(V_), p),
                (S.clone().requires_grad_(), V.clone().requires_grad_()),
            )


def _perturbed_bn(metric, seed, n=4, **kw):
    bn = SPDBatchNorm(n, metric=metric, theta=0.5, max_iter=60, **kw).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.bias_log.copy_(sym(0.3 * torch.randn(n, n, generator=g, dtype=D)))
        if bn.metric_log is not None:
            bn.metric_log.copy_(sym(0.3 * torch.randn(n, n, generator=g, dtype=D)))
        if bn.log_scale is not None:
            bn.log_scale.fill_(-0.4)
    return bn


@pytest.mark.parametrize("metric", ["gbw", "bw", "ai"])
def test_batchnorm_output_has_bias_mean_and_requested_dispersion(metric):
    X = rand_spd(12, n=4, seed=7, cond=1e3) * 3.0
    bn = _perturbed_bn(metric, seed=8)
    Y = bn(X)
    assert is_spd(Y).all()
    B, M, s = bn.bias.detach(), bn.metric_parameter, float(bn.scale.detach())
    M = None if M is None else M.detach()
    if metric == "ai":
        mean_in = ai_karcher_mean(X, max_iter=200)
        v = float(ai_distance(mean_in.expand_as(X), X).pow(2).mean())
        mean_out = ai_karcher_mean(Y.detach(), max_iter=200)
        v_out = float(ai_distance(B.expand_as(Y), Y.detach()).pow(2).mean())
    else:
        t = 0.5 if metric == "gbw" else 1.0
        mean_in = gbw_barycenter(X, t, M=M)
        v = float(gbw_distance(mean_in.expand_as(X), X, t, M=M).pow(2).mean())
        mean_out = gbw_barycenter(Y.detach(), t, M=M)
        v_out = float(gbw_distance(B.expand_as(Y), Y.detach(), t, M=M).pow(2).mean())
    tol = 1e-7 * float(torch.linalg.cond(B))
    assert (mean_out - B).abs().max() <= tol * B.abs().max()
    target = s**2 * v / (v + bn.eps)
    assert abs(v_out - target) <= 1e-7 * target
    assert abs(float(bn.running_var) - v) <= 1e-7 * v  # warm start: the first batch's variance


@pytest.mark.parametrize("metric", ["gbw", "ai"])
def test_batchnorm_eval_uses_running_statistics(metric):
    X1 = rand_spd(10, n=4, seed=9, cond=1e2)
    X2 = 2.0 * rand_spd(10, n=4, seed=10, cond=1e2)
    bn = _perturbed_bn(metric, seed=11, momentum=0.3)
    Y1 = bn(X1)
    R1 = bn.running_mean.clone()
    bn.eval()  # warm start: the running statistics are those of the first batch
    assert torch.allclose(bn(X1), Y1, atol=1e-9)
    bn.train()
    bn(X2)
    M = bn.metric_parameter
    if metric == "gbw":
        mean2 = gbw_barycenter(X2, 0.5, M=M.detach())
        expected = gbw_geodesic(R1, mean2, 0.3, 0.5, M=M.detach())
    else:
        mean2 = ai_karcher_mean(X2, max_iter=200)
        Rh = spd_sqrt(R1)
        Rih = torch.linalg.inv(Rh)
        w, U = torch.linalg.eigh(sym(Rih @ mean2 @ Rih))
        expected = Rh @ (U * w**0.3) @ U.T @ Rh
    assert torch.allclose(bn.running_mean, expected, atol=1e-8)
    bn.eval()
    Y = bn(X2[:1])  # a single matrix is fine in evaluation
    assert Y.shape == (1, 4, 4) and is_spd(Y).all()


@pytest.mark.parametrize(("metric", "at_init"), [("gbw", True), ("gbw", False), ("ai", False)])
def test_batchnorm_gradients_match_finite_differences(metric, at_init):
    X = rand_spd(3, n=3, seed=12, cond=20)
    bn = SPDBatchNorm(3, metric=metric, theta=0.5, max_iter=20).double()
    names = [k for k, _ in bn.named_parameters()]
    params = [p.detach().clone() for p in bn.parameters()]
    if not at_init:  # at init B = M = I: repeated eigenvalues, the case eigh's backward fails
        g = torch.Generator().manual_seed(1)
        params = [
            sym(0.2 * torch.randn(p.shape, dtype=D, generator=g)) if p.ndim else p - 0.3
            for p in params
        ]

    def f(Xin, *ps):
        return torch.func.functional_call(bn, dict(zip(names, ps, strict=True)), (sym(Xin),))

    inputs = (X.clone().requires_grad_(), *(p.requires_grad_() for p in params))
    assert torch.autograd.gradcheck(f, inputs, atol=1e-6)


def test_batchnorm_bad_inputs():
    with pytest.raises(ValueError, match="metric"):
        SPDBatchNorm(3, metric="euclid")
    with pytest.raises(ValueError, match=r"theta must be a finite nonzero number, got 0\.0"):
        SPDBatchNorm(3, theta=0.0)
    with pytest.raises(ValueError, match=r"momentum must be in \(0, 1\], got 1.5"):
        SPDBatchNorm(3, momentum=1.5)
    bn = SPDBatchNorm(3).double()
    with pytest.raises(ValueError, match=r"X must have shape \(\.\.\., 3, 3\)"):
        bn(torch.eye(4, dtype=D).expand(2, 4, 4))
    with pytest.raises(ValueError, match="non-finite"):
        bn(torch.full((2, 3, 3), float("nan"), dtype=D))
    with pytest.raises(ValueError, match="k >= 2"):
        bn(torch.eye(3, dtype=D)[None])
    with pytest.raises(ValueError, match=r"X must have shape \(k, 3, 3\)"):
        bn(torch.eye(3, dtype=D).expand(2, 2, 3, 3))
