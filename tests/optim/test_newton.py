"""Gradient-regularized Newton (P09): steps vs dense solves, operators vs dense matrices."""

from __future__ import annotations

import copy
import io
import itertools
import math

import pytest
import torch
from torch import nn

from subspaces._tensorlist import ParamLayout
from subspaces.optim import NewtonGR, newton_gr
from subspaces.optim import _newton_dense as newton_dense
from subspaces.optim import newton as newton_module
from subspaces.optim._newton_autograd import closure_curvature
from subspaces.optim._newton_dense import materialize
from subspaces.optim._newton_diag import DiagonalGGN
from subspaces.optim._newton_search import regularization
from subspaces.optim.newton import _operator
from subspaces.testing import dense_ggn, dense_hessian, finite_difference_hessian

D = torch.float64


def _data(n: int = 40, d: int = 4, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=D), torch.randint(0, k, (n,), generator=g)


def _mlp(norm: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 5), nn.Tanh()]
    if norm:
        layers.append(nn.LayerNorm(5))
    return nn.Sequential(*layers, nn.Linear(5, 3)).to(D)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _per_sample_grads(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    rows = []
    for i in range(X.shape[0]):
        loss = nn.functional.cross_entropy(model(X[i : i + 1]), y[i : i + 1])
        rows.append(
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
        )
    return torch.stack(rows)


def _dense(kind: str, model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "hessian":
        return dense_hessian(model, "cross_entropy", [(X, y)])
    if kind == "ggn":
        return dense_ggn(model, "cross_entropy", [(X, y)])
    G = _per_sample_grads(model, X, y)
    return G.T @ G / X.shape[0]


def test_dense_references_are_trustworthy() -> None:
    # the LayerNorm jacrev trap: the reference Hessian must be symmetric and match differences
    X, y = _data()
    model = _mlp(norm=True)
    H = dense_hessian(model, "cross_entropy", [(X, y)])
    assert torch.allclose(H, H.T, atol=1e-12)
    fd = finite_difference_hessian(model, "cross_entropy", [(X, y)])
    assert (H - fd).abs().max() < 1e-6 * max(1.0, float(H.abs().max()))


@pytest.mark.parametrize("kind", ["hessian", "ggn", "empirical_fisher"])
@pytest.mark.parametrize("norm", [False, True])
def test_closure_operator_equals_dense(kind: str, norm: bool) -> None:
    X, y = _data()
    model = _mlp(norm=norm)
    params = list(model.parameters())
    out = model(X)
    loss = nn.functional.cross_entropy(out, y)
    g, op = closure_curvature(kind, loss, params, out)
    want = _dense(kind, model, X, y)
    got = op.to_dense()
    assert (got - want).abs().max() < 1e-12 * max(1.0, float(want.abs().max()))
    ref_g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)])
    assert torch.allclose(g, ref_g, atol=1e-14)


def test_diagonal_ggn_equals_dense_diagonal() -> None:
    X, y = _data()
    model = _mlp(norm=True)
    data = [(X[:25], y[:25]), (X[25:], y[25:])]  # unequal batches: sample weighting
    op = DiagonalGGN(model, "cross_entropy", data)
    want = torch.diagonal(dense_ggn(model, "cross_entropy", data))
    assert torch.allclose(op.diagonal(), want, rtol=1e-12, atol=1e-15)
    v = torch.randn(want.shape[0], dtype=D)
    assert torch.allclose(op @ v, want * v, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("rule", ["gns", "sqrt"])
@pytest.mark.parametrize("curvature", ["hessian", "ggn", "empirical_fisher", "diag_ggn"])
def test_one_step_equals_dense_solve(rule: str, curvature: str, dense: bool) -> None:
    X, y = _data()
    model = _mlp()
    x0 = _flat(model)
    want_H = _dense("hessian" if curvature == "hessian" else "ggn", model, X, y)
    if curvature == "empirical_fisher":
        want_H = _dense("empirical_fisher", model, X, y)
    if curvature == "diag_ggn":
        want_H = torch.diag(torch.diagonal(want_H))
    loss = nn.functional.cross_entropy(model(X), y)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(model.parameters()))])
    c = 3.0
    lam = regularization(rule, c, float(g.norm()))
    want = x0 - torch.linalg.solve(want_H + lam * torch.eye(len(g), dtype=D), g)
    res = newton_gr(
        model, "cross_entropy", (X, y), curvature=curvature, c=c, rule=rule, adaptive=False,
        max_iters=1, gtol=0.0, cg_rtol=1e-14, dense=dense,
    )  # fmt: skip
    got = ParamLayout.from_params(res.params).flatten(res.params)
    assert res.dense == [dense and curvature != "diag_ggn"]
    assert res.iterations == 1 and res.lambdas == [pytest.approx(lam, rel=1e-14)]
    assert (got - want).abs().max() < 1e-10
    assert torch.equal(got, _flat(model))  # the model holds the final iterate


@pytest.mark.parametrize(
    ("curvature", "jacobian_cap"),
    [("hessian", None), ("ggn", None), ("ggn", 1), ("fisher", None), ("empirical_fisher", None)],
)
def test_materialized_curvature_equals_operator(
    curvature: str, jacobian_cap: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the dense fast path: the same matrix as the operator's products (the Fisher's sampled
    # labels included), to rounding, and exactly symmetric; jacobian_cap=1 forces the GGN's
    # fallback to products with identity columns
    if jacobian_cap is not None:
        monkeypatch.setattr(newton_dense, "_JACOBIAN_ENTRIES", jacobian_cap)
    X, y = _data()
    model = _mlp()
    op = _operator(curvature, model, "cross_entropy", (X, y), dict(model.named_parameters()),
                   "error", 2, torch.Generator().manual_seed(0))  # fmt: skip
    twin = _operator(curvature, model, "cross_entropy", (X, y), dict(model.named_parameters()),
                     "error", 2, torch.Generator().manual_seed(0))  # fmt: skip
    M = materialize(op).matrix
    assert torch.equal(M, M.T)
    V = torch.randn(M.shape[0], 3, dtype=D, generator=torch.Generator().manual_seed(1))
    want = twin @ V  # column by column through the operator, 16 at a time
    assert (M @ V - want).abs().max() < 1e-12 * max(1.0, float(want.abs().max()))
    if curvature != "fisher":  # the sampled Fisher has no independent reference
        ref = _dense(curvature, model, X, y)
        assert (M - ref).abs().max() < 1e-12 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("curvature", ["hessian", "ggn", "fisher"])
def test_dense_path_follows_the_matrix_free_path(curvature: str) -> None:
    # whole runs: same accepted steps, trials and shifts, iterates equal to 1e-10
    X, y = _data()
    runs = []
    for dense in (False, True):
        kw = {"fisher_samples": 2, "generator": torch.Generator().manual_seed(0), "dense": dense}
        res = newton_gr(_mlp(seed=1), "cross_entropy", (X, y), curvature=curvature, max_iters=4,
                        gtol=0.0, cg_rtol=1e-12, **kw)  # fmt: skip
        runs.append(res)
    free, fast = runs
    assert not any(free.dense) and fast.dense == [True] * 4
    assert fast.iterations == free.iterations == 4 and fast.trials == free.trials
    assert fast.lambdas == pytest.approx(free.lambdas, rel=1e-10)
    for name, p in free.params.items():
        assert (fast.params[name] - p).abs().max() < 1e-10


def test_dense_default_follows_cg_iterations_and_parameter_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # dense=None: matrix-free first, then dense once the last iteration's CG took at least
    # DENSE_CG_PER_BLOCK iterations per 64 parameters; never above DENSE_MAX_PARAMS parameters
    X, y = _data()
    P = sum(p.numel() for p in _mlp().parameters())
    monkeypatch.setattr(newton_module, "DENSE_CG_PER_BLOCK", 30)  # P = 43: one block
    res = newton_gr(_mlp(), "cross_entropy", (X, y), max_iters=6, gtol=0.0, cg_rtol=1e-10)
    want = [False] + [its >= 30 for its in res.cg_iterations[:-1]]
    assert res.dense == want and True in want and want.count(False) > 1  # both paths taken
    monkeypatch.setattr(newton_module, "DENSE_MAX_PARAMS", P - 1)
    res = newton_gr(_mlp(), "cross_entropy", (X, y), max_iters=3, gtol=0.0)
    assert res.dense == [False] * 3
    res = newton_gr(_mlp(), "cross_entropy", (X, y), max_iters=3, gtol=0.0, dense=True)
    assert res.dense == [True] * 3


def test_optimizer_step_equals_dense_solve() -> None:
    X, y = _data()
    model = _mlp()
    x0 = _flat(model)
    H = _dense("ggn", model, X, y)
    loss = nn.functional.cross_entropy(model(X), y)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(model.parameters()))])
    lam = regularization("gns", 2.0, float(g.norm()))
    want = x0 - 0.5 * torch.linalg.solve(H + lam * torch.eye(len(g), dtype=D), g)
    opt = NewtonGR(
        model.parameters(), lr=0.5, curvature="ggn", c=2.0, adaptive=False, cg_rtol=1e-14
    )

    def closure() -> tuple[torch.Tensor, torch.Tensor]:
        out = model(X)
        return nn.functional.cross_entropy(out, y), out

    opt.step(closure)
    assert (_flat(model) - want).abs().max() < 1e-10


def _logistic(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(60, 4, generator=g, dtype=D)
    y = (
        X @ torch.randn(4, generator=g, dtype=D) + torch.randn(60, generator=g, dtype=D) > 0
    ).long()
    torch.manual_seed(seed)
    return nn.Linear(4, 2).to(D), X, y


@pytest.mark.parametrize(
    "curvature",
    [
        "hessian",
        "ggn",
        "diag_ggn",
        pytest.param("fisher", marks=pytest.mark.slow),
        pytest.param("empirical_fisher", marks=pytest.mark.slow),
    ],
)
def test_converges_and_certifies_on_recomputed_gradient(curvature: str) -> None:
    model, X, y = _logistic()
    res = newton_gr(
        model, "cross_entropy", (X, y), curvature=curvature, gtol=1e-8, max_iters=200,
        fisher_samples=4, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert res.converged and res.status == "converged"
    # the reported norm is the gradient at the model's final parameters
    loss = nn.functional.cross_entropy(model(X), y)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(model.parameters()))])
    assert math.isclose(float(g.norm()), res.grad_norm, rel_tol=1e-8, abs_tol=1e-15)
    assert res.grad_norm <= 1e-8 and len(res.grad_norms) == res.iterations + 1
    assert all(b <= a for a, b in zip(res.losses, res.losses[1:], strict=False))  # monotone


def test_not_converged_is_reported() -> None:
    model, X, y = _logistic()
    res = newton_gr(model, "cross_entropy", (X, y), curvature="diag_ggn", max_iters=2, gtol=1e-12)
    assert not res.converged and res.status == "max_iters" and res.grad_norm > 1e-12


def test_adaptive_search_recovers_from_tiny_c_on_indefinite_hessian() -> None:
    X, y = _data()
    model = _mlp(seed=3)
    res = newton_gr(
        model, "cross_entropy", (X, y), curvature="hessian", c=1e-8, max_iters=15, gtol=0.0
    )
    assert res.iterations == 15 and max(res.trials) > 1  # failures doubled lambda
    assert all(b <= a for a, b in zip(res.losses, res.losses[1:], strict=False))


# ----- bad input ----------------------------------------------------------------------------------
def test_bad_input() -> None:
    model, X, y = _logistic()
    with pytest.raises(ValueError, match="c must be"):
        newton_gr(model, "cross_entropy", (X, y), c=0.0)
    with pytest.raises(ValueError, match="c must be"):
        NewtonGR(model.parameters(), c=-1.0)
    with pytest.raises(ValueError, match="curvature"):
        newton_gr(model, "cross_entropy", (X, y), curvature="bfgs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rule"):
        newton_gr(model, "cross_entropy", (X, y), rule="cubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gtol"):
        newton_gr(model, "cross_entropy", (X, y), gtol=float("nan"))
    with pytest.raises(TypeError, match="dense must be a bool or None, got str"):
        newton_gr(model, "cross_entropy", (X, y), dense="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no parameter"):
        newton_gr(nn.ReLU(), "cross_entropy", (X, y))
    with pytest.raises(TypeError, match="model"):
        newton_gr("model", "cross_entropy", (X, y))  # type: ignore[arg-type]
    Xbad = X.clone()
    Xbad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        newton_gr(model, "cross_entropy", (Xbad, y))
    opt = NewtonGR(model.parameters())
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="non-finite loss"):
        opt.step(lambda: torch.tensor(float("inf"), requires_grad=True) * model.weight.sum())

    def backward_closure() -> torch.Tensor:
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="without calling backward"):
        opt.step(backward_closure)
    with pytest.raises(ValueError, match="outputs"):
        NewtonGR(model.parameters(), curvature="ggn").step(
            lambda: nn.functional.cross_entropy(model(X), y)
        )
    with pytest.raises(ValueError, match="not positive definite"):
        newton_gr(
            _mlp(seed=3), "cross_entropy", _data(), curvature="hessian", c=1e-12, adaptive=False
        )


def test_gradient_nan_raises() -> None:
    w = nn.Parameter(torch.ones(2, dtype=D))
    opt = NewtonGR([w])
    with pytest.raises(ValueError, match="not finite"):
        opt.step(lambda: torch.sqrt((w - 1.0).abs()).sum())  # d/dw sqrt|w - 1| at 1 is inf


def test_state_dict_roundtrip_keeps_c_exactly() -> None:
    model, X, y = _logistic()
    opt = NewtonGR(model.parameters(), c=1e-3)
    for _ in range(3):
        opt.step(lambda: nn.functional.cross_entropy(model(X), y))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    clone = copy.deepcopy(model)
    opt2 = NewtonGR(clone.parameters(), c=1e-3)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert s2["log_c"].dtype == D and torch.equal(s1["log_c"], s2["log_c"])
    assert int(s1["log_c"]) != 0  # the search moved c


def test_optimizer_rejected_trials_rebuild_the_graph_and_never_increase_the_loss() -> None:
    # an indefinite Hessian and a tiny c: the first trials fail (non-PD or no decrease), the
    # closure is re-evaluated at x after each rejection, and accepted steps decrease the loss
    X, y = _data()
    model = _mlp(seed=3)
    opt = NewtonGR(model.parameters(), curvature="hessian", c=1e-8)
    losses = [float(opt.step(lambda: nn.functional.cross_entropy(model(X), y))) for _ in range(6)]
    losses.append(float(nn.functional.cross_entropy(model(X), y).detach()))
    assert all(b <= a for a, b in itertools.pairwise(losses))
    assert losses[-1] < losses[0]
    assert float(opt.state_dict()["state"][0]["log_c"]) > 0  # c grew from 1e-8
