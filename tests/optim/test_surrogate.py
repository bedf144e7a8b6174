"""Target-based surrogates (SSO, P10): exact equivalences and the surrogate's closed form."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from subspaces.optim import TargetSurrogate

D = torch.float64
ce = nn.functional.cross_entropy


def _setup(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(32, 4, generator=g, dtype=D)
    y = torch.randint(0, 3, (32,), generator=g)
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(D), X, y


@pytest.mark.parametrize("eta", [0.1, 7.0])
def test_one_inner_sgd_step_equals_sgd_on_the_loss(eta: float) -> None:
    # at theta_t, f(theta_t) = z_t: the proximal term has zero gradient and the linear term's
    # gradient is J^T grad_z l(z_t) = grad L(theta_t), whatever eta
    model, X, y = _setup()
    ref = copy.deepcopy(model)
    sso = TargetSurrogate(
        model, ce, torch.optim.SGD(model.parameters(), lr=0.3), inner_steps=1, eta=eta
    )
    sgd = torch.optim.SGD(ref.parameters(), lr=0.3)
    for _ in range(5):
        out = sso.step(X, y)
        sgd.zero_grad()
        loss = ce(ref(X), y)
        assert out.loss == pytest.approx(float(loss.detach()), rel=1e-13)
        loss.backward()
        sgd.step()
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert (sso.num_expensive, sso.num_cheap) == (5, 5)


class _Targets(nn.Module):
    """f(theta) = theta: the model is its own targets."""

    def __init__(self, z0: torch.Tensor) -> None:
        super().__init__()
        self.z = nn.Parameter(z0.clone())

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        return self.z


@pytest.mark.parametrize("m", [1, 4])
def test_identity_targets_give_target_space_sgd(m: int) -> None:
    # inner SGD with lr = eta on l(z_t) + <g, z - z_t> + |z - z_t|^2/(2 eta) lands on
    # z_t - eta g in one step and stays there (the surrogate's gradient vanishes)
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(16, 3, generator=g, dtype=D)
    y = torch.randint(0, 3, (16,), generator=g)
    eta = 2.5
    model = _Targets(z0)
    sso = TargetSurrogate(
        model, ce, torch.optim.SGD(model.parameters(), lr=eta), inner_steps=m, eta=eta
    )
    z = z0.clone()
    for _ in range(6):
        sso.step(torch.empty(0), y)
        zz = z.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(ce(zz, y), zz)
        z = z - eta * grad
    assert torch.allclose(model.z.detach(), z, rtol=1e-13, atol=1e-14)
    assert (sso.num_expensive, sso.num_cheap) == (6, 6 * m)


def test_many_inner_steps_reach_the_surrogate_minimizer() -> None:
    # f(theta) = X theta (linear, full column rank): argmin of the surrogate is
    # theta_t - eta (X^T X)^{-1} X^T grad_z l(z_t)
    g = torch.Generator().manual_seed(2)
    X = torch.randn(40, 3, generator=g, dtype=D)
    t = torch.randn(40, 2, generator=g, dtype=D)
    model = nn.Linear(3, 2, bias=False).to(D)
    eta = 0.5

    def loss(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((z - target) ** 4).mean()

    W0 = model.weight.detach().clone()
    z0 = (X @ W0.T).requires_grad_(True)
    (gz,) = torch.autograd.grad(loss(z0, t), z0)
    want = W0.T - eta * torch.linalg.solve(X.T @ X, X.T @ gz)
    lbfgs = torch.optim.LBFGS(
        model.parameters(),
        lr=1.0,
        max_iter=50,
        tolerance_grad=1e-14,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )
    sso = TargetSurrogate(model, loss, lbfgs, inner_steps=1, eta=eta)
    out = sso.step(X, t)
    assert torch.allclose(model.weight.detach().T, want, rtol=1e-9, atol=1e-12)
    # the surrogate's optimal value: l(z_t) - (eta/2) |P grad|^2 with P the projection onto range(X)
    P = X @ torch.linalg.solve(X.T @ X, X.T)
    best = float(loss(z0.detach(), t)) - 0.5 * eta * float((P @ gz).pow(2).sum())
    assert out.surrogate == pytest.approx(best, rel=1e-10)
    assert sso.num_expensive == 1 and sso.num_cheap > 1  # L-BFGS evaluates the closure often


def test_state_dict_roundtrip_weights_only() -> None:
    model, X, y = _setup()
    sso = TargetSurrogate(model, ce, torch.optim.Adam(model.parameters(), lr=1e-2), inner_steps=3)
    sso.step(X, y)
    buf = io.BytesIO()
    torch.save(sso.state_dict(), buf)
    buf.seek(0)
    twin = copy.deepcopy(model)
    sso2 = TargetSurrogate(twin, ce, torch.optim.Adam(twin.parameters(), lr=1e-2), inner_steps=3)
    sso2.load_state_dict(torch.load(buf, weights_only=True))
    assert (sso2.num_expensive, sso2.num_cheap) == (1, 3)
    sso.step(X, y)
    sso2.step(X, y)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="missing"):
        sso2.load_state_dict({"num_cheap": 0})
    assert "inner_steps=3" in repr(sso2)


def test_bad_input() -> None:
    model, X, y = _setup()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no trainable parameters"):
        TargetSurrogate(nn.ReLU(), ce, sgd)
    with pytest.raises(ValueError, match="eta"):
        TargetSurrogate(model, ce, sgd, eta=0.0)
    with pytest.raises(ValueError, match="inner_steps"):
        TargetSurrogate(model, ce, sgd, inner_steps=0)
    with pytest.raises(TypeError, match="inner_optimizer"):
        TargetSurrogate(model, ce, "sgd")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="target_loss"):
        TargetSurrogate(model, 3, sgd)  # type: ignore[arg-type]
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="not trainable parameters of the model"):
        TargetSurrogate(model, ce, torch.optim.SGD(other.parameters(), lr=0.1))
    sso = TargetSurrogate(model, ce, sgd)
    with pytest.raises(ValueError, match="non-finite"):
        sso.step(X, y, torch.full((3,), float("nan"), dtype=D))  # NaN class weights
    with pytest.raises(ValueError, match="scalar"):
        TargetSurrogate(model, lambda z, t: z.sum(1), sgd).step(X, y)
    with pytest.raises(ValueError, match="not finite"):
        TargetSurrogate(
            model, lambda z, t: z.abs().sqrt().sum() * 0 + (z - z.detach()).pow(0.5).sum(), sgd
        ).step(X, y)
    assert sso.num_expensive == 0 and sso.num_cheap == 0  # nothing counted for failed calls
