"""Attention SVM solvers and attention GD (P16, Tarzanagh, Li, Thrampoulidis & Oymak 2023)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from subspaces.representations import (
    attention_gd,
    attention_svm,
    directional_correlation,
    is_locally_optimal,
    make_attention_data,
    token_scores,
)

DT = torch.float64


def _problem(seed: int, n: int = 3, T: int = 4, d: int = 6) -> dict[str, torch.Tensor]:
    return make_attention_data(n, T, d, generator=torch.Generator().manual_seed(seed))


def _constraints(X: torch.Tensor, Z: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(n, T, d, d) constraint matrices (x_alpha - x_t) z^T (zero at t = alpha)."""
    a = X[torch.arange(X.shape[0]), alpha][:, None, :] - X
    return a[..., :, None] * Z[:, None, None, :]


def _off_alpha(alpha: torch.Tensor, T: int) -> torch.Tensor:
    mask = torch.ones(alpha.shape[0], T, dtype=torch.bool)
    mask[torch.arange(alpha.shape[0]), alpha] = False
    return mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frobenius_svm_kkt_float64(seed: int) -> None:
    data = _problem(seed)
    X, Z, alpha = data["X"], data["Z"], data["alpha"]
    sol = attention_svm(X, Z, alpha)
    A = _constraints(X, Z, alpha)
    mask = _off_alpha(alpha, X.shape[1])
    lam = sol.multipliers
    # margins are what they claim to be
    assert torch.allclose(sol.margins, torch.einsum("ntab,ab->nt", A, sol.W), atol=1e-13)
    # primal feasibility, dual feasibility, stationarity, complementary slackness
    assert bool((sol.margins[mask] >= 1 - 1e-12).all())
    assert bool((lam >= 0).all()) and bool((lam[~mask] == 0).all())
    assert torch.allclose(sol.W, torch.einsum("nt,ntab->ab", lam, A), atol=1e-12)
    assert float((lam * (sol.margins - 1))[mask].abs().max()) < 1e-12
    # equality on the support vectors, and some support exists
    assert bool(sol.support.any())
    assert float((sol.margins[sol.support] - 1).abs().max()) < 1e-12
    assert abs(sol.gap) < 1e-12 and sol.norm == pytest.approx(float(sol.W.norm()), rel=1e-14)


def test_frobenius_svm_matches_scipy_slsqp() -> None:
    from scipy.optimize import minimize

    data = _problem(3, n=2, T=3, d=4)
    X, Z, alpha = data["X"], data["Z"], data["alpha"]
    A = _constraints(X, Z, alpha)[_off_alpha(alpha, 3)].reshape(-1, 16).numpy()
    res = minimize(
        lambda w: 0.5 * w @ w,
        np.zeros(16),
        jac=lambda w: w,
        constraints=[{"type": "ineq", "fun": lambda w: A @ w - 1, "jac": lambda w: A}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 500},
    )
    sol = attention_svm(X, Z, alpha)
    assert np.allclose(sol.W.numpy().ravel(), res.x, atol=1e-6)


def test_two_token_closed_form_both_norms() -> None:
    g = torch.Generator().manual_seed(4)
    X = torch.randn(1, 2, 5, generator=g, dtype=DT)
    Z = torch.randn(1, 5, generator=g, dtype=DT)
    a, z = X[0, 1] - X[0, 0], Z[0]
    expected = torch.outer(a, z) / (a.dot(a) * z.dot(z))
    for norm in ("fro", "nuclear"):
        sol = attention_svm(X, Z, torch.tensor([1]), norm)
        assert torch.allclose(sol.W, expected, atol=1e-9), norm
        assert sol.norm == pytest.approx(1 / float(a.norm() * z.norm()), rel=1e-9)
        assert float(sol.margins[0, 0]) == pytest.approx(1.0, abs=1e-9)
    # n sequences of two tokens with orthonormal queries and orthogonal differences decouple:
    # W = sum_i a_i z_i^T / ||a_i||^2, Frobenius norm sqrt(sum 1/||a_i||^2), nuclear sum 1/||a_i||
    Q = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=DT))[0]
    scales = torch.tensor([0.5, 1.0, 3.0], dtype=DT)
    diffs = Q[:, :3].T * scales[:, None]  # a_i, orthogonal
    X = torch.stack([torch.stack([d, torch.zeros(6, dtype=DT)]) for d in diffs])
    Z = Q[:, 3:].T.contiguous()  # orthonormal, orthogonal to the a_i
    W = sum(torch.outer(d, z) / d.dot(d) for d, z in zip(diffs, Z, strict=True))
    fro = attention_svm(X, Z, torch.zeros(3, dtype=torch.long))
    nuc = attention_svm(X, Z, torch.zeros(3, dtype=torch.long), "nuclear")
    assert torch.allclose(fro.W, W, atol=1e-12) and torch.allclose(nuc.W, W, atol=1e-7)
    assert fro.norm == pytest.approx(float((1 / scales**2).sum().sqrt()), rel=1e-12)
    assert nuc.norm == pytest.approx(float((1 / scales).sum()), rel=1e-7)


@pytest.mark.parametrize("seed", [0, 5])
def test_nuclear_svm_certificate_and_brute_force(seed: int) -> None:
    from scipy.optimize import minimize

    data = _problem(seed, n=2, T=3, d=3)
    X, Z, alpha = data["X"], data["Z"], data["alpha"]
    nuc = attention_svm(X, Z, alpha, "nuclear")
    fro = attention_svm(X, Z, alpha, "fro")
    mask = _off_alpha(alpha, 3)
    assert bool((nuc.margins[mask] >= 1 - 1e-9).all())
    nuc_norm = float(torch.linalg.matrix_norm(nuc.W, "nuc"))
    assert nuc.norm == pytest.approx(nuc_norm, rel=1e-9)
    assert 0 <= nuc.gap < 1e-7  # weak duality makes this a proof of optimality
    # dual certificate recomputed here: lambda >= 0 with ||sum lambda A||_2 <= 1
    A = _constraints(X, Z, alpha)
    M = torch.einsum("nt,ntab->ab", nuc.multipliers, A)
    assert bool((nuc.multipliers >= 0).all())
    assert float(torch.linalg.matrix_norm(M, 2)) <= 1 + 1e-9
    assert float(nuc.multipliers.sum()) == pytest.approx(nuc_norm, rel=1e-7)
    # brute force: full 3x3 Burer-Monteiro factorization, many random starts
    G = A[mask].reshape(-1, 9).numpy()
    rng = np.random.default_rng(seed)
    best = math.inf
    At = G.reshape(-1, 3, 3)

    def jac(x: np.ndarray) -> np.ndarray:
        K, Q = x[:9].reshape(3, 3), x[9:].reshape(3, 3)
        JK = np.einsum("mab,br->mar", At, Q).reshape(-1, 9)
        JQ = np.einsum("mab,ar->mbr", At, K).reshape(-1, 9)
        return np.hstack([JK, JQ])

    for _ in range(5):
        res = minimize(
            lambda x: 0.5 * x @ x,
            rng.standard_normal(18),
            jac=lambda x: x,
            constraints=[
                {
                    "type": "ineq",
                    "fun": lambda x: G @ (x[:9].reshape(3, 3) @ x[9:].reshape(3, 3).T).ravel() - 1,
                    "jac": jac,
                }
            ],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 1000},
        )
        Wb = res.x[:9].reshape(3, 3) @ res.x[9:].reshape(3, 3).T
        if res.success and (G @ Wb.ravel() >= 1 - 1e-9).all():
            best = min(best, float(np.linalg.svd(Wb, compute_uv=False).sum()))
    assert nuc_norm == pytest.approx(best, rel=1e-5)
    # each solution is best in its own norm
    assert nuc_norm <= float(torch.linalg.matrix_norm(fro.W, "nuc")) + 1e-9
    assert float(fro.W.norm()) <= float(nuc.W.norm()) + 1e-9


def test_locally_optimal_and_scores() -> None:
    data = _problem(6, n=3, T=4, d=12)
    X, Z, alpha, scores = data["X"], data["Z"], data["alpha"], data["scores"]
    assert torch.allclose(scores, token_scores(X, data["v"], data["y"]))
    assert is_locally_optimal(X, Z, alpha, scores)  # the global optimum
    worst = scores.argmin(1)  # the lowest-scoring tokens: every support token scores higher
    assert not is_locally_optimal(X, Z, worst, scores)


def test_gd_direction_converges_to_frobenius_svm() -> None:
    data = _problem(0, n=4, T=3, d=16)
    X, Z, y, v, alpha = data["X"], data["Z"], data["y"], data["v"], data["alpha"]
    svm = attention_svm(X, Z, alpha)
    gd = attention_gd(X, Z, y, v, steps=400, record_every=50)
    corr = [directional_correlation(W, svm.W) for W in gd.checkpoints]
    assert gd.steps == list(range(50, 401, 50))
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(corr[1:]))  # increasing
    assert corr[-1] > corr[0] + 0.02 and corr[-1] > 0.99
    assert bool((gd.selected == alpha).all()) and not gd.stopped_early
    assert gd.loss[-1] < gd.loss[0]


def test_gd_gradient_matches_autograd() -> None:
    data = _problem(7, n=3, T=4, d=5)
    X, Z, y, v = data["X"], data["Z"], data["y"], data["v"]
    for par in ("W", "KQ"):
        for loss in ("logistic", "exponential"):
            one = attention_gd(
                X,
                Z,
                y,
                v,
                parameterization=par,
                steps=1,
                lr=0.3,
                normalized=False,
                loss=loss,
                init_scale=0.5,
                generator=torch.Generator().manual_seed(1),
                record_every=1,
            )
            g = torch.Generator().manual_seed(1)
            if par == "W":
                params = [(0.5 * torch.randn(5, 5, generator=g, dtype=DT)).requires_grad_()]
            else:
                params = [
                    (0.5 * torch.randn(5, 5, generator=g, dtype=DT)).requires_grad_()
                    for _ in range(2)
                ]
            W = params[0] if par == "W" else params[0] @ params[1].T
            s = torch.softmax(torch.einsum("ntd,de,ne->nt", X, W, Z), -1)
            u = y * (s * (X @ v)).sum(-1)
            value = torch.nn.functional.softplus(-u) if loss == "logistic" else torch.exp(-u)
            grads = torch.autograd.grad(value.mean(), params)
            new = [p.detach() - 0.3 * gr for p, gr in zip(params, grads, strict=True)]
            W1 = new[0] if par == "W" else new[0] @ new[1].T
            assert torch.allclose(one.W, W1, atol=1e-12), (par, loss)
            assert one.loss[0] == pytest.approx(float(value.mean().detach()), rel=1e-12)


def test_saturated_gradient_direction_is_exact() -> None:
    # logits in the thousands: the softmax weights of non-selected tokens underflow float64;
    # the normalized step must still follow the exact gradient direction (checked with mpmath)
    import mpmath

    mpmath.mp.dps = 60
    data = _problem(8, n=2, T=3, d=4)
    X, Z, y, v = data["X"], data["Z"], data["y"], data["v"]
    gd = attention_gd(
        X,
        Z,
        y,
        v,
        steps=1,
        lr=1.0,
        init_scale=1500.0,
        generator=torch.Generator().manual_seed(2),
        record_every=1,
    )
    W0 = 1500.0 * torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=DT)
    logits = torch.einsum("ntd,de,ne->nt", X, W0, Z)
    assert float((logits.max(1).values[:, None] - logits).max()) > 800  # really saturated
    scores = token_scores(X, v, y)
    G = [[mpmath.mpf(0)] * 4 for _ in range(4)]
    for i in range(2):
        ls = [mpmath.mpf(float(t)) for t in logits[i]]
        m = max(ls)
        e = [mpmath.exp(t - m) for t in ls]
        s = [t / sum(e) for t in e]
        g = [mpmath.mpf(float(t)) for t in scores[i]]
        u = sum(a * b for a, b in zip(s, g, strict=True))
        dl = 1 / (1 + mpmath.exp(u))  # -l'(u) for the logistic loss
        for t in range(3):
            inner = sum(s[k] * (g[t] - g[k]) for k in range(3))  # = g_t - u, without cancellation
            c = -dl * s[t] * inner / 2
            for a in range(4):
                for b in range(4):
                    G[a][b] += c * float(X[i, t, a]) * float(Z[i, b])
    big = max(abs(G[a][b]) for a in range(4) for b in range(4))
    assert big < 1e-300  # the true gradient is below the float64 range
    Gn = torch.tensor([[float(G[a][b] / big) for b in range(4)] for a in range(4)], dtype=DT)
    step = W0 - gd.W
    assert directional_correlation(step, Gn) > 1 - 1e-12
    assert float(step.norm()) == pytest.approx(1.0, rel=1e-12)


def test_kq_gd_prefers_nuclear_solution() -> None:
    data = _problem(1, n=4, T=3, d=16)
    X, Z, y, v, alpha = data["X"], data["Z"], data["y"], data["v"], data["alpha"]
    fro, nuc = attention_svm(X, Z, alpha), attention_svm(X, Z, alpha, "nuclear")
    gd = attention_gd(
        X, Z, y, v, parameterization="KQ", steps=400, generator=torch.Generator().manual_seed(0)
    )
    assert gd.K is not None and gd.Q is not None
    assert torch.allclose(gd.W, gd.K @ gd.Q.T)
    assert directional_correlation(gd.W, nuc.W) > directional_correlation(gd.W, fro.W) + 0.1


def test_bad_inputs() -> None:
    data = _problem(0)
    X, Z, alpha = data["X"], data["Z"], data["alpha"]
    with pytest.raises(ValueError, match="Z must have shape"):
        attention_svm(X, Z[:2], alpha)
    with pytest.raises(ValueError, match="3 dimensions"):
        attention_svm(X[0], Z, alpha)
    with pytest.raises(ValueError, match="token indices"):
        attention_svm(X, Z, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="integer tensor"):
        attention_svm(X, Z, alpha.double())
    with pytest.raises(ValueError, match="non-finite"):
        attention_svm(
            X.clone().index_put_((torch.tensor([0]),), torch.tensor(math.nan, dtype=DT)), Z, alpha
        )
    with pytest.raises(ValueError, match="norm"):
        attention_svm(X, Z, alpha, "spectral")
    with pytest.raises(ValueError, match="T >= 2"):
        attention_svm(X[:, :1], Z, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError):
        attention_svm(X.long(), Z, alpha)
    # infeasible: a selected token repeated in its sequence, or a zero query
    Xd = X.clone()
    Xd[0, 1] = Xd[0, int(alpha[0])] if int(alpha[0]) != 1 else Xd[0, 0]
    Xd[0, int(alpha[0])] = Xd[0, 1 if int(alpha[0]) != 1 else 0]
    with pytest.raises(ValueError, match="infeasible"):
        attention_svm(Xd, Z, alpha)
    with pytest.raises(ValueError, match="infeasible"):
        attention_svm(X, torch.zeros_like(Z), alpha)
    with pytest.raises(ValueError, match="zero tensor"):
        directional_correlation(torch.zeros(2, 2), torch.eye(2))
    with pytest.raises(ValueError, match="same shape"):
        directional_correlation(torch.eye(2), torch.eye(3))
    y, v = data["y"], data["v"]
    with pytest.raises(ValueError, match="init_scale"):
        attention_gd(X, Z, y, v, parameterization="KQ", init_scale=0.0)
    with pytest.raises(ValueError, match="parameterization"):
        attention_gd(X, Z, y, v, parameterization="QK")
    with pytest.raises(ValueError, match="shape"):
        attention_gd(X, Z, y[:2], v)
    with pytest.raises(ValueError, match="lr"):
        attention_gd(X, Z, y, v, lr=-1.0)
