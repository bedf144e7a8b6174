"""Curvature on the models users have: frozen and unused parameters, any loss, changing loaders
(issue 21)."""

import pytest
import torch
from cases import gen
from torch import nn

from subspaces.curvature import FisherOperator, GGNOperator, HessianOperator
from subspaces.testing import assert_matches_dense, dense_ggn, dense_hessian

F64 = torch.float64
EPS = torch.finfo(F64).eps


class PartlyUsed(nn.Module):
    """A frozen layer, an unused head, an unused loose parameter (fine-tuning, HF models)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)
        self.unused_head = nn.Linear(5, 2)
        self.unused = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def _partly_used():
    torch.manual_seed(6)
    model = PartlyUsed().double()
    model.body.weight.requires_grad_(False)
    X = torch.randn(11, 4, generator=gen(40), dtype=F64)
    y = torch.randint(0, 3, (11,), generator=gen(41))
    return model, [(X[:6], y[:6]), (X[6:], y[6:])]


OPERATORS = {
    "hessian_vmap": lambda m, d, **kw: HessianOperator(m, "cross_entropy", d, method="vmap", **kw),
    "hessian_double_backward": lambda m, d, **kw: HessianOperator(
        m, "cross_entropy", d[:1], method="double_backward", **kw
    ),
    "ggn": lambda m, d, **kw: GGNOperator(m, "cross_entropy", d, **kw),
    "fisher_mc": lambda m, d, **kw: FisherOperator(
        m, "cross_entropy", d, generator=torch.Generator().manual_seed(0), mc_samples=500, **kw
    ),
    "fisher_empirical": lambda m, d, **kw: FisherOperator(
        m, "cross_entropy", d, kind="empirical", **kw
    ),
}


@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_frozen_excluded_and_unused_get_zero_rows(op):
    model, data = _partly_used()
    A = OPERATORS[op](model, data)
    assert "body.weight" not in A.param_names  # frozen: excluded by default
    assert {"unused_head.weight", "unused_head.bias", "unused"} <= set(A.param_names)
    D = A @ torch.eye(A.shape[0], dtype=F64)  # block products
    cols = torch.stack([A @ e for e in torch.eye(A.shape[0], dtype=F64)], 1)  # single vectors
    assert float((D - cols).abs().max()) <= 1e3 * EPS * float(D.abs().max())
    sizes = dict(zip(A.layout.names, A.layout.sizes, strict=True))
    offsets, start = {}, 0
    for n in A.layout.names:
        offsets[n] = (start, start + sizes[n])
        start += sizes[n]
    for n in ("unused_head.weight", "unused_head.bias", "unused"):
        a, b = offsets[n]
        assert torch.equal(D[a:b], torch.zeros_like(D[a:b]))
        assert torch.equal(D[:, a:b], torch.zeros_like(D[:, a:b]))
    if op.startswith("hessian"):
        ref = dense_hessian(model, "cross_entropy", data[:1] if "double" in op else data)
    elif op in ("ggn", "fisher_mc"):
        ref = dense_ggn(model, "cross_entropy", data)
    else:
        return  # the empirical Fisher has its own test; here: zero rows and no crash
    if op == "fisher_mc":  # Monte Carlo: close to the GGN on the used block
        assert float((D - ref).norm() / ref.norm()) < 0.1
        return
    assert float((D - ref).abs().max()) <= 1e6 * EPS * float(ref.abs().max())


def test_frozen_parameters_selectable_by_pattern():
    model, data = _partly_used()
    H = HessianOperator(model, "cross_entropy", data, params="body.*")
    assert H.param_names == ("body.weight", "body.bias")
    assert_matches_dense(H, dense_hessian(model, "cross_entropy", data, "body.*"))


def _regression():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    X = torch.randn(13, 4, generator=gen(42), dtype=F64)
    y = torch.randn(13, 2, generator=gen(43), dtype=F64)
    return model, [(X[:9], y[:9]), (X[9:], y[9:])]


CALLABLES = {
    # F.mse_loss's backward has no working forward-mode derivative ("ZeroTensors are immutable")
    "mse_lambda": lambda o, t: torch.nn.functional.mse_loss(o, t),  # noqa: PLW0108
    # huber_loss_backward has no forward AD at all
    "huber_module": nn.HuberLoss(),
    # linear in the last layer's bias: constant gradient entries
    "linear_in_outputs": lambda o, t: (o * t).mean(),
    "l1_module": nn.L1Loss(),
}


@pytest.mark.parametrize("loss", sorted(CALLABLES))
@pytest.mark.parametrize("method", ["vmap", "double_backward"])
def test_any_loss_callable_hessian(loss, method):
    model, data = _regression()
    if method == "double_backward":
        data = data[:1]
    fn = CALLABLES[loss]
    H = HessianOperator(model, fn, data, method=method)
    ref = dense_hessian(model, fn, data)
    assert_matches_dense(H, ref, rtol=1e6 * EPS, atol=1e6 * EPS * float(ref.abs().max()))


@pytest.mark.parametrize("loss", sorted(CALLABLES))
def test_any_loss_callable_ggn(loss):
    model, data = _regression()
    fn = CALLABLES[loss]
    ref = dense_ggn(model, fn, data)
    G = GGNOperator(model, fn, data)
    assert_matches_dense(G, ref, rtol=1e6 * EPS, atol=1e6 * EPS * max(float(ref.abs().max()), 1))


@pytest.mark.parametrize("method", ["vmap", "double_backward"])
def test_loss_linear_in_the_parameters_has_a_zero_hessian(method):
    model = nn.Linear(4, 2).double()
    X = torch.randn(6, 4, generator=gen(44), dtype=F64)
    H = HessianOperator(model, lambda o, t: o.sum(), [(X, X[:, :2])], method=method)
    assert torch.equal(
        H @ torch.ones(H.shape[0], 3, dtype=F64), torch.zeros(H.shape[0], 3, dtype=F64)
    )
    assert torch.equal(H @ torch.ones(H.shape[0], dtype=F64), torch.zeros(H.shape[0], dtype=F64))


@pytest.mark.parametrize("op", ["hessian", "ggn"])
def test_sum_reduction_is_independent_of_batching(op):
    """A callable that sums, stated once with reduction="sum": one batch or two, same matrix."""
    model, data = _regression()
    X = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])

    def total(o, t):
        return ((o - t) ** 2).sum()

    cls = HessianOperator if op == "hessian" else GGNOperator
    split = cls(model, total, data, reduction="sum").to_dense()
    whole = cls(model, total, [(X, y)], reduction="sum").to_dense()
    ref = (dense_hessian if op == "hessian" else dense_ggn)(model, total, [(X, y)], reduction="sum")
    scale = float(ref.abs().max())
    assert float((split - ref).abs().max()) <= 1e6 * EPS * scale
    assert float((whole - ref).abs().max()) <= 1e6 * EPS * scale


def _loader(shuffle, drop_last, seed=0):
    X = torch.randn(23, 5, generator=gen(50), dtype=F64)
    y = torch.randint(0, 3, (23,), generator=gen(51))
    ds = torch.utils.data.TensorDataset(X, y)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=5,
        shuffle=shuffle,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )


def _mlp():
    torch.manual_seed(8)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()


@pytest.mark.parametrize("op", ["hessian", "ggn", "fisher_empirical"])
def test_a_loader_that_changes_between_passes_is_refused(op):
    make = {
        "hessian": lambda m, d: HessianOperator(m, "cross_entropy", d),
        "ggn": lambda m, d: GGNOperator(m, "cross_entropy", d),
        "fisher_empirical": lambda m, d: FisherOperator(m, "cross_entropy", d, kind="empirical"),
    }[op]
    A = make(_mlp(), _loader(shuffle=True, drop_last=True))  # a different 20 of 23 each pass
    v = torch.ones(A.shape[0], dtype=F64)
    with pytest.raises(ValueError, match="changed between two passes"):
        for _ in range(6):  # the chance that 6 passes drop the same 3 samples is negligible
            A @ v


def test_a_shuffled_loader_without_drop_last_is_the_same_operator():
    A = HessianOperator(_mlp(), "cross_entropy", _loader(shuffle=True, drop_last=False))
    V = torch.randn(A.shape[0], 2, generator=gen(52), dtype=F64)
    first = A @ V
    for _ in range(3):
        assert float((A @ V - first).abs().max()) <= 1e3 * EPS * float(first.abs().max())


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_mc_fisher_is_fixed_under_shuffling(loss):
    """Labels come from a seed fixed per sample: the batch a sample lands in does not matter."""
    model = _mlp()
    if loss == "mse":
        X = torch.randn(23, 5, generator=gen(50), dtype=F64)
        ds = torch.utils.data.TensorDataset(X, torch.randn(23, 3, generator=gen(53), dtype=F64))
        loader = torch.utils.data.DataLoader(
            ds, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
        fixed = [tuple(t for t in ds.tensors)]
    else:
        loader = _loader(shuffle=True, drop_last=False)
        fixed = [tuple(loader.dataset.tensors)]
    kw = {"mc_samples": 2}
    F = FisherOperator(model, loss, loader, generator=torch.Generator().manual_seed(3), **kw)
    V = torch.randn(F.shape[0], 2, generator=gen(54), dtype=F64)
    first = F @ V
    for _ in range(3):  # each pass shuffles the batches
        assert float((F @ V - first).abs().max()) <= 1e3 * EPS * float(first.abs().max())
    # and it is the operator of the same data in one fixed batch, with the same seed
    one = FisherOperator(model, loss, fixed, generator=torch.Generator().manual_seed(3), **kw)
    assert float((one @ V - first).abs().max()) <= 1e3 * EPS * float(first.abs().max())
