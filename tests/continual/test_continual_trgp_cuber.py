"""TRGP trust region and scaled projection; CUBER regimes and released bases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from subspaces.continual import (
    GPMMemory,
    Regime,
    ScaledProjection,
    layer_regimes,
    projection_ratio,
    projection_ratios,
    regime,
    transfer_basis,
    trust_region,
)

F64 = torch.float64
EPS = torch.finfo(F64).eps


def _e(d: int, *idx: int) -> torch.Tensor:
    return torch.eye(d, dtype=F64)[:, list(idx)]


def _memory_of_axes(d: int, tasks: list[list[int]]) -> GPMMemory:
    memory = GPMMemory(0.999)
    for axes in tasks:  # task inputs span the given coordinate axes, equal energy
        memory.update({"fc": _e(d, *axes) * 2.0})
    return memory


def test_projection_ratio_matches_dense():
    g = torch.Generator().manual_seed(0)
    G = torch.randn(4, 6, generator=g, dtype=F64)
    S = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=F64)).Q
    expected = torch.linalg.matrix_norm(G @ S @ S.T) / torch.linalg.matrix_norm(G)
    assert projection_ratio(G, S) == pytest.approx(float(expected), rel=100 * EPS)
    assert projection_ratio(torch.zeros(4, 6, dtype=F64), S) == 0.0
    assert projection_ratio(G, S[:, :0]) == 0.0
    with pytest.raises(ValueError, match="dimension"):
        projection_ratio(G, torch.eye(5, dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        projection_ratio(torch.full((2, 6), float("nan")), S)


def test_trust_region_threshold_and_top_k():
    memory = _memory_of_axes(4, [[0], [1], [2], [3]])
    # gradient energy shares per task (axis): 0.5^2, 0.6^2, 0.1^2, 0.62^2 of a unit vector
    G = torch.tensor([[0.5, 0.6, 0.1, 0.0]], dtype=F64)
    G[0, 3] = (1 - (G**2).sum()).sqrt()
    ratios = projection_ratios({"fc": G}, memory)["fc"]
    assert ratios == pytest.approx([0.5, 0.6, 0.1, float(G[0, 3])], abs=1e-12)
    assert trust_region({"fc": G}, memory, epsilon=0.45, top_k=2) == {"fc": [3, 1]}
    assert trust_region({"fc": G}, memory, epsilon=0.45, top_k=3) == {"fc": [3, 1, 0]}
    assert trust_region({"fc": G}, memory, epsilon=0.7) == {"fc": []}
    with pytest.raises(ValueError, match="epsilon"):
        trust_region({"fc": G}, memory, epsilon=1.0)
    with pytest.raises(ValueError, match="top_k"):
        trust_region({"fc": G}, memory, top_k=0)
    with pytest.raises(ValueError, match="no gradient"):
        trust_region({}, memory)


def test_scaled_projection_formula_and_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(5, 3, bias=False), nn.Tanh(), nn.Linear(3, 2, bias=False)
    ).double()
    g = torch.Generator().manual_seed(1)
    S1 = torch.linalg.qr(torch.randn(5, 2, generator=g, dtype=F64)).Q
    S2 = torch.linalg.qr(torch.randn(5, 1, generator=g, dtype=F64)).Q
    scaled = ScaledProjection({"0": [S1, S2]})
    x = torch.randn(4, 5, generator=g, dtype=F64)
    torch.testing.assert_close(scaled(net, x), net(x), rtol=0, atol=10 * EPS)  # Q = I
    with torch.no_grad():
        scaled.scale("0", 0).copy_(torch.tensor([[2.0, 0.5], [-1.0, 1.0]], dtype=F64))
        scaled.scale("0", 1).fill_(3.0)
    W = net[0].weight.detach()
    W_eff = W + W @ S1 @ (scaled.scale("0", 0).detach() - torch.eye(2, dtype=F64)) @ S1.T
    W_eff = W_eff + W @ S2 @ (scaled.scale("0", 1).detach() - 1.0) @ S2.T
    expected = net[2](torch.tanh(x @ W_eff.T))
    torch.testing.assert_close(scaled(net, x), expected, rtol=0, atol=100 * EPS)
    # the model's own weight is untouched, and gradients reach W and the scales
    assert torch.equal(net[0].weight.detach(), W)
    scaled(net, x).sum().backward()
    assert net[0].weight.grad is not None and scaled.scale("0", 0).grad is not None
    with pytest.raises(ValueError, match="basis 1 has shape"):
        ScaledProjection({"0": [S1, torch.eye(4, dtype=F64)]})
    with pytest.raises(ValueError, match="empty list"):
        ScaledProjection({"0": []})


@pytest.mark.parametrize(
    ("grad", "old", "expected"),
    [
        ([[1.0, 0.2, 0.0]], [[1.0, -3.0, 0.0]], Regime.TRANSFER),  # inside and aligned
        ([[1.0, 0.2, 0.0]], [[-1.0, 3.0, 0.0]], Regime.SCALED),  # inside, opposed
        ([[0.2, 0.0, 1.0]], [[1.0, 0.0, 0.0]], Regime.INSUFFICIENT),  # mostly outside
        ([[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]], Regime.SCALED),  # old gradient outside S: 0
    ],
)
def test_regime_constructed_cases(grad, old, expected):
    S = _e(3, 0)
    assert regime(torch.tensor(grad, dtype=F64), S, torch.tensor(old, dtype=F64)) == expected


def test_regime_correlation_threshold_and_bad_input():
    S = _e(3, 0, 1)
    G = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    old = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)  # cosine inside S: 1/sqrt(2)
    assert regime(G, S, old, correlation=0.7) == Regime.TRANSFER
    assert regime(G, S, old, correlation=0.72) == Regime.SCALED
    with pytest.raises(ValueError, match="epsilon"):
        regime(G, S, old, epsilon=-0.1)
    with pytest.raises(ValueError, match="correlation"):
        regime(G, S, old, correlation=1.0)
    with pytest.raises(ValueError, match="one shape"):
        regime(G, S, torch.ones(2, 3, dtype=F64))


def test_layer_regimes_per_task():
    memory = _memory_of_axes(3, [[0], [1]])
    G = {"fc": torch.tensor([[1.0, 1.0, 0.1]], dtype=F64)}
    olds = [
        {"fc": torch.tensor([[2.0, 0.0, 0.0]], dtype=F64)},
        {"fc": torch.tensor([[0.0, -2.0, 0.0]], dtype=F64)},
    ]
    assert layer_regimes(G, memory, olds) == {"fc": [Regime.TRANSFER, Regime.SCALED]}
    with pytest.raises(ValueError, match="old_grads has 1 entries"):
        layer_regimes(G, memory, olds[:1])


def test_transfer_basis_releases_only_the_tasks_own_directions():
    # task 0 owns axes 0, 1; task 1 owns axes 1, 2 (axis 1 shared); task 2 owns axis 3
    memory = GPMMemory(0.999)
    memory.update({"fc": _e(6, 0, 1) * 2.0})
    memory.update({"fc": _e(6, 1, 2) * 2.0})
    memory.update({"fc": _e(6, 3) * 2.0})
    M = memory.bases_["fc"]
    assert M.shape == (6, 4)
    assert torch.equal(transfer_basis(memory, "fc", []), M)  # nothing released: GPM
    B = transfer_basis(memory, "fc", [0])  # release task 0: only axis 0 becomes free
    P = B @ B.T
    torch.testing.assert_close(P, _e(6, 1, 2, 3) @ _e(6, 1, 2, 3).T, rtol=0, atol=1e-12)
    B = transfer_basis(memory, "fc", [0, 1])  # axes 0, 1, 2 free; axis 3 stays
    torch.testing.assert_close(B @ B.T, _e(6, 3) @ _e(6, 3).T, rtol=0, atol=1e-12)
    assert transfer_basis(memory, "fc", [0, 1, 2]) is None
    with pytest.raises(ValueError, match="out of range"):
        transfer_basis(memory, "fc", [3])
    with pytest.raises(ValueError, match="unknown layer"):
        transfer_basis(memory, "nope", [0])
