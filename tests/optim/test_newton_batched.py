"""NewtonGR's dense mini-batch path: the closure's curvature built once per step (P09)."""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch
from torch import nn

from subspaces.optim import NewtonGR
from subspaces.optim import _newton_dense as newton_dense
from subspaces.optim import _newton_optimizer as newton_optimizer
from subspaces.optim._newton_dense import closure_matrix
from subspaces.optim._newton_search import regularization
from subspaces.testing import dense_ggn, dense_hessian

D = torch.float64


def _data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=D), torch.randint(0, 3, (n,), generator=g)


def _mlp(norm: bool = False, seed: int = 0, dtype: torch.dtype = D) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 5), nn.Tanh()]
    if norm:
        layers.append(nn.LayerNorm(5))
    return nn.Sequential(*layers, nn.Linear(5, 3)).to(dtype)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _reference(kind: str, model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "hessian":
        return dense_hessian(model, "cross_entropy", [(X, y)])
    if kind == "ggn":
        return dense_ggn(model, "cross_entropy", [(X, y)])
    rows = []  # empirical Fisher: mean of per-sample gradient outer products
    for i in range(X.shape[0]):
        loss = nn.functional.cross_entropy(model(X[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        rows.append(torch.cat([t.reshape(-1) for t in grads]))
    G = torch.stack(rows)
    return G.T @ G / X.shape[0]


def _closure(model: nn.Module, X: torch.Tensor, y: torch.Tensor):  # type: ignore[no-untyped-def]
    def closure() -> tuple[torch.Tensor, torch.Tensor]:
        out = model(X)
        return nn.functional.cross_entropy(out, y), out

    return closure


# ----- the matrix ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["hessian", "ggn", "empirical_fisher"])
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("route", ["default", "blocks", "loop"])
def test_closure_matrix_equals_dense_reference(
    kind: str, norm: bool, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y = _data()
    model = _mlp(norm=norm)
    if route == "blocks":  # J too large for the Fisher's per-sample gradients: block products
        monkeypatch.setattr(newton_dense, "_JACOBIAN_ENTRIES", 1)
    if route == "loop":  # no vmap rule: the column loop
        grad = torch.autograd.grad

        def no_batching(*args, **kwargs):  # type: ignore[no-untyped-def]
            if kwargs.get("is_grads_batched"):
                raise RuntimeError("no batching rule")
            return grad(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", no_batching)
    params = list(model.parameters())
    out = model(X)
    loss = nn.functional.cross_entropy(out, y)
    g, M = closure_matrix(kind, loss, params, out)
    want = _reference(kind, model, X, y)
    assert M.SELF_ADJOINT and torch.equal(M.matrix, M.matrix.T)
    # float64 products of O(1) entries over 40 samples: rounding ~1e-15
    assert (M.matrix - want).abs().max() < 1e-12 * max(1.0, float(want.abs().max()))
    ref_g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)])
    assert torch.allclose(g, ref_g, rtol=0.0, atol=1e-14)


def test_closure_matrix_unused_parameter_and_linear_loss() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0], dtype=D))
    unused = nn.Parameter(torch.ones(3, dtype=D))
    b = torch.tensor([3.0, -1.0], dtype=D)
    loss = (w**3).sum() / 3 + b @ w  # Hessian diag(2 w), zero for the unused parameter
    g, M = closure_matrix("hessian", loss, [w, unused], None)
    want = torch.zeros(5, 5, dtype=D)
    want[0, 0], want[1, 1] = 2.0, 4.0
    assert torch.equal(M.matrix, want)
    assert torch.equal(g, torch.tensor([4.0, 3.0, 0.0, 0.0, 0.0], dtype=D))
    _, M = closure_matrix("hessian", b @ w, [w], None)  # a gradient constant in w
    assert torch.equal(M.matrix, torch.zeros(2, 2, dtype=D))


def test_closure_matrix_bad_input() -> None:
    X, y = _data()
    model = _mlp()
    params = list(model.parameters())
    with pytest.raises(ValueError, match="needs the closure to return"):
        closure_matrix("ggn", nn.functional.cross_entropy(model(X), y), params, None)
    loss = nn.functional.cross_entropy(model(X), y)
    loss.backward()
    with pytest.raises(ValueError, match="without calling backward"):
        closure_matrix("hessian", loss, params, None)
    w = nn.Parameter(torch.ones(2, dtype=D))
    with pytest.raises(ValueError, match="gradient of the closure's loss is not finite"):
        closure_matrix("hessian", torch.sqrt((w - 1.0).abs()).sum(), [w], None)


# ----- the optimizer ------------------------------------------------------------------------------
def test_dense_step_equals_dense_solve() -> None:
    X, y = _data()
    model = _mlp()
    x0 = _flat(model)
    H = _reference("ggn", model, X, y)
    loss = nn.functional.cross_entropy(model(X), y)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(model.parameters()))])
    lam = regularization("gns", 2.0, float(g.norm()))
    want = x0 - 0.5 * torch.linalg.solve(H + lam * torch.eye(len(g), dtype=D), g)
    opt = NewtonGR(
        model.parameters(), lr=0.5, curvature="ggn", c=2.0, adaptive=False, cg_rtol=1e-14,
        dense=True,
    )  # fmt: skip
    opt.step(_closure(model, X, y))
    assert (_flat(model) - want).abs().max() < 1e-10


@pytest.mark.parametrize(
    ("curvature", "c", "seed"),
    [("hessian", 1e-8, 3), ("ggn", 1.0, 0), ("empirical_fisher", 1.0, 0)],
)
def test_dense_and_matrix_free_paths_take_the_same_steps(
    curvature: str, c: float, seed: int
) -> None:
    # the Hessian case starts from a tiny c on an indefinite Hessian: rejected trials, which the
    # matrix-free path follows by re-evaluating the closure and the dense path does not need
    X, y = _data()
    paths = {}
    for dense in (True, False):
        model = _mlp(seed=seed)
        opt = NewtonGR(model.parameters(), curvature=curvature, c=c, cg_rtol=1e-13, dense=dense)
        for _ in range(5):
            opt.step(_closure(model, X, y))
        paths[dense] = (_flat(model), opt.state_dict()["state"][0])
    (xd, sd), (xm, sm) = paths[True], paths[False]
    assert (xd - xm).abs().max() < 1e-10
    assert torch.equal(sd["log_c"], sm["log_c"]) and torch.equal(sd["step"], sm["step"])
    if curvature == "hessian":
        assert float(sd["log_c"]) > 0  # the search did reject trials (c grew from 1e-8)


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = newton_optimizer.closure_matrix

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(newton_optimizer, "closure_matrix", counted)
    return calls


def test_dense_default_follows_cg_iterations_and_parameter_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    X, y = _data()
    model = _mlp()  # 43 parameters: the cutoff is 24 CG iterations (one block of 64)
    calls = _counting(monkeypatch)
    opt = NewtonGR(model.parameters(), curvature="ggn", cg_rtol=1e-12)
    flags = []
    for _ in range(3):  # these steps take 14, 21 and 52 CG iterations (all trials)
        opt.step(_closure(model, X, y))
        flags.append(float(opt.state_dict()["state"][0]["many_cg"]))
    assert flags == [0.0, 0.0, 1.0] and calls == []  # matrix-free so far
    opt.step(_closure(model, X, y))
    assert calls == [1]
    few = NewtonGR(model.parameters(), curvature="ggn", cg_max_iters=3)  # under the cutoff
    for _ in range(3):
        few.step(_closure(model, X, y))
    assert calls == [1]
    monkeypatch.setattr(newton_optimizer, "CLOSURE_DENSE_MAX_PARAMS", 42)  # one too many
    fresh = _mlp()
    big = NewtonGR(fresh.parameters(), curvature="ggn", c=1e-3, cg_rtol=1e-12)
    for _ in range(2):  # the first step takes hundreds of CG iterations
        big.step(_closure(fresh, X, y))
    assert float(big.state_dict()["state"][0]["many_cg"]) == 1.0 and calls == [1]
    forced = NewtonGR(model.parameters(), curvature="ggn", dense=True)
    forced.step(_closure(model, X, y))
    assert calls == [1, 1]


def test_resume_across_the_switch_is_bit_identical() -> None:
    X, y = _data()
    model = _mlp()
    opt = NewtonGR(model.parameters(), curvature="ggn", cg_rtol=1e-12)
    for _ in range(3):  # matrix-free; the next step is dense
        opt.step(_closure(model, X, y))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    clone = copy.deepcopy(model)
    opt2 = NewtonGR(clone.parameters(), curvature="ggn", cg_rtol=1e-12)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(opt2.state_dict()["state"][0]["many_cg"], torch.ones((), dtype=D))
    for _ in range(2):
        opt.step(_closure(model, X, y))
        opt2.step(_closure(clone, X, y))
    assert torch.equal(_flat(model), _flat(clone))


def test_dense_float32_decreases_the_loss() -> None:
    X, y = _data()
    model = _mlp(dtype=torch.float32)
    Xf = X.float()
    opt = NewtonGR(model.parameters(), curvature="ggn", dense=True)
    losses = [float(opt.step(_closure(model, Xf, y))) for _ in range(4)]
    assert all(b <= a for a, b in itertools.pairwise(losses)) and losses[-1] < losses[0]


def test_dense_bad_input() -> None:
    model = _mlp()
    with pytest.raises(TypeError, match="dense must be a bool or None, got str"):
        NewtonGR(model.parameters(), dense="yes")  # type: ignore[arg-type]
    groups = [
        {"params": [model[0].weight], "dense": True},
        {"params": [model[0].bias], "dense": False},
    ]
    with pytest.raises(ValueError, match="'dense' must be equal in every group"):
        NewtonGR(groups).step(model[0].weight.sum)
    w = nn.Parameter(torch.ones(2, dtype=D))
    with pytest.raises(ValueError, match="not finite"):
        NewtonGR([w], dense=True).step(lambda: torch.sqrt((w - 1.0).abs()).sum())
    with pytest.raises(ValueError, match="outputs"):
        X, y = _data()
        NewtonGR(model.parameters(), curvature="ggn", dense=True).step(
            lambda: nn.functional.cross_entropy(model(X), y)
        )
