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
