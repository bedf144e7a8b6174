"""Coding rate, class-conditional rate, MCR² gradient and Sinkhorn (P04 core)."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.clustering import (
    class_conditional_rate,
    coding_rate,
    mcr2_loss,
    rate_reduction,
    rate_reduction_grad,
    sinkhorn,
    sinkhorn_log,
)


def _direct_rate(Z: torch.Tensor, eps: float) -> float:
    """1/2 logdet(I + d/(n eps^2) Z^T Z) straight from the eigenvalues, float64."""
    Z = Z.double()
    n, d = Z.shape
    M = torch.eye(d, dtype=torch.float64) + d / (n * eps**2) * Z.T @ Z
    return 0.5 * float(torch.linalg.eigvalsh(M).log().sum())


@pytest.mark.parametrize("shape", [(40, 6), (5, 12)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coding_rate_matches_direct_logdet(shape, dtype):
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(*shape, generator=g, dtype=torch.float64)
    ref = _direct_rate(Z, 0.5)
    got = float(coding_rate(Z.to(dtype), 0.5))
    # rounding of Z^T Z and of the Cholesky: a few eps times the condition number of I + aZ^TZ
    n, d = shape
    cond = float(torch.linalg.cond(torch.eye(d, dtype=torch.float64) + d / (n * 0.25) * Z.T @ Z))
    tol = 50 * torch.finfo(dtype).eps * max(d, n) * cond
    assert abs(got - ref) <= tol * max(1.0, abs(ref))


def test_coding_rate_batched_equals_loop():
    g = torch.Generator().manual_seed(1)
    Z = torch.randn(3, 20, 4, generator=g, dtype=torch.float64)
    batched = coding_rate(Z, 0.3)
    looped = torch.stack([coding_rate(z, 0.3) for z in Z])
    assert torch.allclose(batched, looped, rtol=1e-12, atol=0)


def test_class_conditional_rate_matches_direct_sum():
    g = torch.Generator().manual_seed(2)
    Z = torch.randn(30, 5, generator=g, dtype=torch.float64)
    y = torch.arange(30) % 3
    ref = sum(
        (y == j).sum().item() / 30 * _direct_rate(Z[y == j], 0.5) for j in range(3)
    )  # n_j/n * R(Z_j)
    assert float(class_conditional_rate(Z, y, 0.5)) == pytest.approx(ref, rel=1e-12)
    soft = torch.nn.functional.one_hot(y, 3).double()
    assert float(class_conditional_rate(Z, soft, 0.5)) == pytest.approx(ref, rel=1e-12)
    # an empty class contributes nothing
    assert float(class_conditional_rate(Z, y, 0.5, num_classes=5)) == pytest.approx(ref, rel=1e-12)


def test_doubly_stochastic_block_membership_equals_hard_labels():
    # MLC's n x n membership with 1/n_k on the class blocks is MCR²'s hard-label R_c
    g = torch.Generator().manual_seed(3)
    Z = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0] * 5 + [1] * 7)
    Pi = torch.zeros(12, 12, dtype=torch.float64)
    for c in (0, 1):
        idx = torch.nonzero(y == c).flatten()
        Pi[idx[:, None], idx[None, :]] = 1.0 / idx.numel()
    assert float(class_conditional_rate(Z, Pi)) == pytest.approx(
        float(class_conditional_rate(Z, y)), rel=1e-12
    )


@pytest.mark.parametrize("shape", [(24, 4), (6, 10)])
def test_rate_reduction_gradient_finite_differences(shape):
    g = torch.Generator().manual_seed(4)
    Z = torch.randn(*shape, generator=g, dtype=torch.float64)
    W = torch.rand(shape[0], 3, generator=g, dtype=torch.float64)  # soft membership
    grad = rate_reduction_grad(Z, W, 0.5, gamma=0.7)
    h = 1e-6
    fd = torch.zeros_like(Z)
    for i in range(Z.shape[0]):
        for j in range(Z.shape[1]):
            E = torch.zeros_like(Z)
            E[i, j] = h
            fd[i, j] = (
                rate_reduction(Z + E, W, 0.5, gamma=0.7) - rate_reduction(Z - E, W, 0.5, gamma=0.7)
            ) / (2 * h)
    # central differences: O(h^2) truncation + eps/h rounding
    assert torch.allclose(grad, fd, atol=1e-7 * max(1.0, float(grad.abs().max())), rtol=0)
    Zr = Z.clone().requires_grad_(True)
    rate_reduction(Zr, W, 0.5, gamma=0.7).backward()
    assert torch.allclose(grad, Zr.grad, rtol=1e-10, atol=1e-12)


def test_float32_loss_trains_and_matches_float64():
    g = torch.Generator().manual_seed(5)
    Z = torch.randn(64, 8, generator=g, dtype=torch.float64)
    y = torch.arange(64) % 4
    l64 = float(mcr2_loss(Z, y))
    l32 = float(mcr2_loss(Z.float(), y))
    assert abs(l32 - l64) <= 1e3 * torch.finfo(torch.float32).eps * abs(l64)


def test_mcr2_maximizer_makes_classes_orthogonal():
    # orthogonal class subspaces have a larger rate reduction than overlapping ones
    e = torch.eye(6, dtype=torch.float64)
    y = torch.arange(60) % 3
    g = torch.Generator().manual_seed(6)
    coef = torch.randn(60, 2, generator=g, dtype=torch.float64)
    ortho = torch.stack([coef[i] @ e[2 * y[i] : 2 * y[i] + 2] for i in range(60)])
    shared = torch.stack([coef[i] @ e[:2] for i in range(60)])
    assert float(rate_reduction(ortho, y)) > float(rate_reduction(shared, y)) + 1.0


def test_bad_inputs():
    Z = torch.randn(5, 3)
    with pytest.raises(ValueError, match="eps"):
        coding_rate(Z, 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        coding_rate(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="labels must lie"):
        class_conditional_rate(Z, torch.tensor([0, 1, 2, 3, -1]))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 5\)"):
        class_conditional_rate(Z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=">= 0"):
        class_conditional_rate(Z, -torch.ones(5, 2))
    with pytest.raises(TypeError, match="float32 or float64"):
        coding_rate(Z.half())
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        coding_rate([[1.0]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sinkhorn_doubly_stochastic(dtype):
    g = torch.Generator().manual_seed(7)
    S = torch.randn(4, 60, 60, generator=g, dtype=torch.float64).to(dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-6
    P = sinkhorn(S, eta=0.5, tol=tol)
    assert bool((P >= 0).all())
    one = torch.ones(60, dtype=dtype)
    atol = 1e-6 if dtype == torch.float32 else 1e-9
    assert torch.allclose(P.sum(-1), one.expand(4, 60), atol=atol, rtol=0)
    assert torch.allclose(P.sum(-2), one.expand(4, 60), atol=atol, rtol=0)


def test_sinkhorn_log_domain_stable_for_huge_scores_and_matches_formula():
    S = torch.tensor([[500.0, 0.0, 0.0], [0.0, 500.0, 0.0], [0.0, 0.0, 500.0]], dtype=torch.float64)
    logP = sinkhorn_log(S, eta=0.01)
    assert bool(torch.isfinite(logP).all())
    assert torch.allclose(logP.exp(), torch.eye(3, dtype=torch.float64), atol=1e-12)
    # solution has the form diag(a) exp(S/eta) diag(b): log P - S/eta has rank-1 additive form
    g = torch.Generator().manual_seed(8)
    S = torch.randn(5, 5, generator=g, dtype=torch.float64)
    R = sinkhorn_log(S, eta=0.7) - S / 0.7
    assert torch.allclose(
        R - R[:, :1] - R[:1, :] + R[0, 0], torch.zeros(5, 5, dtype=torch.float64), atol=1e-10
    )


def test_sinkhorn_rectangular_and_differentiable():
    g = torch.Generator().manual_seed(9)
    S = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    P = sinkhorn(S, eta=1.0)
    assert torch.allclose(P.sum(1), torch.ones(6, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(P.sum(0), torch.full((3,), 2.0, dtype=torch.float64), atol=1e-9)
    (P * torch.arange(18.0, dtype=torch.float64).view(6, 3)).sum().backward()
    assert S.grad is not None and bool(torch.isfinite(S.grad).all())


def test_sinkhorn_warns_when_not_converged_and_rejects_bad_input():
    S = torch.randn(30, 30, generator=torch.Generator().manual_seed(10), dtype=torch.float64) * 20
    with pytest.warns(RuntimeWarning, match="did not reach"):
        sinkhorn(S, eta=0.01, max_iter=20)
    with pytest.raises(ValueError, match="eta"):
        sinkhorn(S, eta=-1.0)
    with pytest.raises(ValueError, match="non-finite"):
        sinkhorn(torch.full((2, 2), math.inf))


def test_sinkhorn_kernel_and_log_domain_paths_agree():
    from subspaces.clustering.sinkhorn import KERNEL_SPAN, _sinkhorn_kernel, _sinkhorn_logsumexp

    g = torch.Generator().manual_seed(11)
    S = torch.randn(2, 40, 30, generator=g, dtype=torch.float64)
    a, conv_a = _sinkhorn_kernel(S, 0.5, 2000, 1e-12, 10)
    b, conv_b = _sinkhorn_logsumexp(S, 0.5, 2000, 1e-12, 10)
    assert conv_a and conv_b
    assert torch.allclose(a, b, atol=1e-9, rtol=0)
    # the public function takes the kernel path here and the log path for spread-out scores
    assert float((S.max() - S.min()) / 0.5) <= KERNEL_SPAN[torch.float64]
    assert torch.allclose(sinkhorn_log(S, 0.5), b, atol=1e-8, rtol=0)
    wide = 400.0 * torch.eye(30, dtype=torch.float64)  # spread 400 > 300: the log path
    logP = sinkhorn_log(wide, 1.0)
    assert bool(torch.isfinite(logP).all())
    assert torch.allclose(logP.exp(), torch.eye(30, dtype=torch.float64), atol=1e-12)
