"""Grassmann class representation head and Riemannian SGD (P05, Wang, Li & Zhang 2023)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from subspaces.geometry import (
    GrassmannLinear,
    RiemannianSGD,
    grassmann_retract,
    orthonormality_error,
    orthonormalize,
    project_tangent,
    split_grassmann_parameters,
)

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_logits_match_dense_definition_and_are_bounded() -> None:
    head = GrassmannLinear(7, 4, 3, scale=2.5, generator=_gen(0), dtype=DT)
    x = torch.randn(5, 7, generator=_gen(1), dtype=DT)
    U = head.weight.detach()
    expected = torch.stack(
        [
            torch.stack([2.5 * torch.linalg.norm(U[c].T @ (xi / xi.norm())) for c in range(4)])
            for xi in x
        ]
    )
    out = head(x)
    assert out.shape == (5, 4)
    assert torch.allclose(out, expected, atol=1e-13)
    assert bool((out <= 2.5 + 1e-12).all()) and bool((out >= 0).all())
    # a feature inside class 2's subspace gets the maximal logit there
    inside = 3.0 * U[2] @ torch.tensor([0.3, -1.0, 0.5], dtype=DT)
    assert float(head(inside)[2].detach()) == pytest.approx(2.5, abs=1e-12)
    # batched leading dimensions
    assert head(x.reshape(5, 1, 7)).shape == (5, 1, 4)
    assert orthonormality_error(head.weight) < 1e-12


def test_logits_invariant_to_change_of_basis() -> None:
    head = GrassmannLinear(6, 3, 4, generator=_gen(2), dtype=DT)
    x = torch.randn(10, 6, generator=_gen(3), dtype=DT)
    before = head(x)
    R = torch.linalg.qr(torch.randn(3, 4, 4, generator=_gen(4), dtype=DT))[0]  # one per class
    with torch.no_grad():
        head.weight.copy_(head.weight @ R)
    assert torch.allclose(head(x), before, atol=1e-12)
    # but a different subspace changes them
    with torch.no_grad():
        head.weight.copy_(orthonormalize(torch.randn(3, 6, 4, generator=_gen(5), dtype=DT)))
    assert not torch.allclose(head(x), before, atol=1e-3)


def test_gradcheck_float64() -> None:
    head = GrassmannLinear(5, 3, 2, scale=3.0, generator=_gen(6), dtype=DT)
    x = torch.randn(4, 5, generator=_gen(7), dtype=DT, requires_grad=True)
    W = head.weight.detach().clone().requires_grad_(True)

    def f(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(head, {"weight": W}, (x,))

    assert torch.autograd.gradcheck(f, (x, W), eps=1e-6, atol=1e-8)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="subspace_dim"):
        GrassmannLinear(4, 2, 5)
    with pytest.raises(ValueError, match="subspace_dim"):
        GrassmannLinear(4, 2, 0)
    with pytest.raises(ValueError, match="subspace_dim"):
        GrassmannLinear(4, 2, -1)
    with pytest.raises(TypeError):
        GrassmannLinear(4, 2, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale"):
        GrassmannLinear(4, 2, 1, scale=0.0)
    head = GrassmannLinear(4, 2, 2)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        head(torch.randn(3, 5))
    with pytest.raises(ValueError, match="non-finite"):
        head(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(TypeError):
        head(torch.ones(2, 4, dtype=torch.long))
    U = nn.Parameter(orthonormalize(torch.randn(5, 2)))
    for kwargs in (
        {"lr": 0.0},
        {"momentum": 1.0},
        {"momentum": -0.1},
        {"retraction": "cayley"},
        {"reorth_every": -1},
        {"nesterov": True},
    ):
        with pytest.raises((ValueError, TypeError)):
            RiemannianSGD([U], **{"lr": 0.1, **kwargs})
    # a parameter without orthonormal columns, or with k > n, is refused at the first step
    P = nn.Parameter(torch.randn(5, 2) * 3)
    opt = RiemannianSGD([P], lr=0.1)
    P.grad = torch.ones_like(P)
    with pytest.raises(ValueError, match="orthonormal"):
        opt.step()
    Q = nn.Parameter(torch.randn(2, 5))
    Q.grad = torch.ones_like(Q)
    with pytest.raises(ValueError, match="k <= n"):
        RiemannianSGD([Q], lr=0.1).step()
    U.grad = torch.full_like(U, float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        RiemannianSGD([U], lr=0.1).step()


def test_tangent_projection_and_riemannian_gradient() -> None:
    U = orthonormalize(torch.randn(3, 8, 3, generator=_gen(8), dtype=DT))
    G = torch.randn(3, 8, 3, generator=_gen(9), dtype=DT)
    xi = project_tangent(U, G)
    assert torch.allclose(U.mT @ xi, torch.zeros(3, 3, 3, dtype=DT), atol=1e-14)
    assert torch.allclose(project_tangent(U, xi), xi, atol=1e-14)  # a projection
    # the Riemannian gradient of a subspace function is the Euclidean one minus its U-part:
    # f(U) = ||A U||^2 with its Euclidean gradient 2 A^T A U
    A = torch.randn(8, 8, generator=_gen(10), dtype=DT)
    Up = U.clone().requires_grad_(True)
    (A @ Up).pow(2).sum().backward()
    assert Up.grad is not None
    rg = project_tangent(U, Up.grad)
    eye = torch.eye(8, dtype=DT)
    assert torch.allclose(rg, (eye - U @ U.mT) @ (2 * A.T @ A @ U), atol=1e-12)
    # and it is what the optimizer's first step (no momentum) moves along, to first order
    P = nn.Parameter(U.clone())
    P.grad = Up.grad.clone()
    RiemannianSGD([P], lr=1e-8, retraction="polar").step()
    assert torch.allclose((P.detach() - U) / 1e-8, -rg, atol=1e-5)


@pytest.mark.parametrize("method", ["qr", "polar", "exp"])
def test_retractions_are_first_order_and_orthonormal(method: str) -> None:
    U = orthonormalize(torch.randn(7, 3, generator=_gen(11), dtype=DT))
    V = project_tangent(U, torch.randn(7, 3, generator=_gen(12), dtype=DT))
    assert torch.allclose(grassmann_retract(U, 0 * V, method), U, atol=1e-14)  # R_U(0) = U
    for t in (1e-3, 1e-4):
        step = grassmann_retract(U, t * V, method)
        assert orthonormality_error(step) < 1e-13
        assert float((step - U - t * V).norm()) < 10 * t**2 * float(V.norm()) ** 2 + 1e-13


def test_exp_retraction_is_the_geodesic() -> None:
    # the Grassmann geodesic keeps ||principal angles|| = t * ||V||_F (distance grows linearly)
    U = orthonormalize(torch.randn(6, 2, generator=_gen(13), dtype=DT))
    V = project_tangent(U, torch.randn(6, 2, generator=_gen(14), dtype=DT))
    V = 0.5 * V / V.norm()
    for t in (0.5, 1.0, 2.0):
        Y = grassmann_retract(U, t * V, "exp")
        cosines = torch.linalg.svdvals(U.T @ Y).clamp(max=1.0)
        angles = torch.arccos(cosines)
        assert float(angles.norm()) == pytest.approx(0.5 * t, abs=1e-10)


def test_qr_sign_fix_is_continuous() -> None:
    U = orthonormalize(torch.randn(5, 3, generator=_gen(15), dtype=DT))
    assert torch.allclose(orthonormalize(U), U, atol=1e-14)  # identity on orthonormal input
    flipped = U * torch.tensor([-1.0, 1.0, -1.0], dtype=DT)  # a plain QR could return this
    assert torch.allclose(orthonormalize(U + 1e-9 * flipped), U, atol=1e-8)


def test_orthonormality_preserved_over_1000_steps_float32() -> None:
    torch.manual_seed(0)
    head = GrassmannLinear(32, 6, 4, generator=_gen(16))
    body = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
    model = nn.Sequential(body, head)
    g, other = split_grassmann_parameters(model)
    assert len(g) == 1 and g[0] is head.weight and len(other) == 2
    opt_g = RiemannianSGD(g, lr=0.5, momentum=0.9, reorth_every=5)
    opt_o = torch.optim.AdamW(other, lr=1e-3)
    X = torch.randn(64, 10, generator=_gen(17))
    y = torch.randint(0, 6, (64,), generator=_gen(18))
    worst, first_loss = 0.0, math.nan
    for step in range(1000):
        opt_g.zero_grad()
        opt_o.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        if step == 0:
            first_loss = float(loss.detach())
        loss.backward()
        opt_g.step()
        opt_o.step()
        if step % 10 == 0:
            worst = max(worst, orthonormality_error(head.weight))
    worst = max(worst, orthonormality_error(head.weight))
    assert head.weight.dtype == torch.float32
    assert worst < 1e-5
    assert float(loss.detach()) < 0.5 * first_loss  # it learned


def test_momentum_buffer_is_tangent_and_state_dict_round_trip() -> None:
    U0 = orthonormalize(torch.randn(2, 6, 2, generator=_gen(19), dtype=DT))
    target = orthonormalize(torch.randn(6, 2, generator=_gen(20), dtype=DT))

    def loss_fn(P: torch.Tensor) -> torch.Tensor:
        return -(target.T @ P).pow(2).sum()

    def run(P: nn.Parameter, opt: RiemannianSGD, n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            loss_fn(P).backward()
            opt.step()

    P = nn.Parameter(U0.clone())
    opt = RiemannianSGD([P], lr=0.05, momentum=0.8, nesterov=True, retraction="exp")
    run(P, opt, 7)
    buf = opt.state[P]["momentum_buffer"]
    assert torch.allclose(P.detach().mT @ buf, torch.zeros(2, 2, 2, dtype=DT), atol=1e-12)
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    P2 = nn.Parameter(P.detach().clone())
    opt2 = RiemannianSGD([P2], lr=0.05, momentum=0.8, nesterov=True, retraction="exp")
    opt2.load_state_dict(state)
    run(P, opt, 5)
    run(P2, opt2, 5)
    assert torch.equal(P.detach(), P2.detach())  # bit-identical resume
    # and the optimizer converges to the target subspace
    run(P, opt, 300)
    overlap = (target.T @ P.detach()).pow(2).sum((-2, -1)) / 2
    assert torch.allclose(overlap, torch.ones(2, dtype=DT), atol=1e-8)


# --- regressions found by the property tests (tests/properties/test_props_geometry.py) ----------


def test_orthonormalize_rejects_nonfinite_and_rank_deficient() -> None:
    """A NaN or rank-deficient U used to give NaN columns or an arbitrary orthonormal basis."""
    with pytest.raises(ValueError, match="non-finite"):
        orthonormalize(torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="full column rank"):
        orthonormalize(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="full column rank"):
        orthonormalize(torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], dtype=DT))


def test_retract_rejects_nonfinite_and_exp_follows_the_tangent_part() -> None:
    """NaN tangent vectors used to raise torch's LinAlgError; a V with a normal component made
    "exp" return a non-orthonormal basis (error 0.8) without a word."""
    U = torch.eye(3, dtype=DT)[:, :2]
    for method in ("qr", "polar", "exp"):
        with pytest.raises(ValueError, match="non-finite"):
            grassmann_retract(U, torch.full((3, 2), float("nan"), dtype=DT), method)
    W = torch.ones(3, 2, dtype=DT)
    out = grassmann_retract(U, W, "exp")
    assert orthonormality_error(out) < 1e-12
    torch.testing.assert_close(out, grassmann_retract(U, project_tangent(U, W), "exp"))


def test_mismatched_dtypes_named() -> None:
    U = torch.eye(3)[:, :2]
    with pytest.raises(TypeError, match="dtype"):
        project_tangent(U, torch.ones(3, 2, dtype=DT))
    head = GrassmannLinear(3, 2, 1)
    with pytest.raises(TypeError, match="dtype"):
        head(torch.ones(2, 3, dtype=DT))
    with pytest.raises(TypeError, match="dtype"):
        GrassmannLinear(3, 2, 1, dtype=torch.int64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_head_trains(dtype: torch.dtype) -> None:
    """A bfloat16 head is orthonormal to its rounding (2.7e-3 > the old fixed 1e-3 threshold),
    so RiemannianSGD refused its own GrassmannLinear's weight."""
    head = GrassmannLinear(16, 3, 4, dtype=dtype, generator=_gen(0))
    opt = RiemannianSGD(head.parameters(), lr=0.1)
    head(torch.randn(5, 16, generator=_gen(1)).to(dtype)).sum().backward()
    opt.step()
    assert orthonormality_error(head.weight) < 10 * torch.finfo(dtype).eps * 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_zero_feature_has_zero_logits_in_every_dtype(dtype: torch.dtype) -> None:
    """eps = 1e-12 rounds to 0 in float16: a zero feature gave 0 / 0 = NaN logits."""
    head = GrassmannLinear(3, 2, 1, dtype=dtype, generator=_gen(0))
    x = torch.zeros(2, 3, dtype=dtype)
    x[1, 0] = 1.0
    out = head.projection_norms(x)
    assert bool(torch.isfinite(out).all()) and bool((out[0] == 0).all())
