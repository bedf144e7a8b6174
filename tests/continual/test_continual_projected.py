"""The projected-gradient wrapper: old outputs unchanged, identity with an empty memory."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from subspaces.continual import (
    GPMMemory,
    ProjectedOptimizer,
    collect_representations,
    project_gradient,
)

F64 = torch.float64
EPS = torch.finfo(F64).eps
NEAR_ONE = 1 - 1e-9  # keep every direction with energy: exact protection of the stored inputs


def _low_rank_inputs(n: int, d: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, rank, generator=g, dtype=F64) @ torch.randn(
        rank, d, generator=g, dtype=F64
    )


def _train(opt, net, X, y, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, X.shape[0], (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(X[idx]), y[idx]).backward()
        opt.step()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_projected_sgd_leaves_old_task_outputs_unchanged_float64(momentum):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(10, 16, bias=False), nn.ReLU(), nn.Linear(16, 4, bias=False)
    ).double()
    X_old = _low_rank_inputs(30, 10, 3, seed=1)  # old inputs span 3 of 10 dimensions
    reps = collect_representations(net, X_old, ["0"])
    memory = GPMMemory(NEAR_ONE).update(reps)
    assert memory.bases_["0"].shape == (10, 3)
    base = torch.optim.SGD(net.parameters(), lr=0.1, momentum=momentum, nesterov=momentum > 0)
    # protect only layer "0": the check is the layer output on the stored inputs
    opt = ProjectedOptimizer(base, net, memory)
    W0 = net[0].weight.detach().clone()
    before = net[0](X_old).detach()
    g = torch.Generator().manual_seed(2)
    X_new = torch.randn(64, 10, generator=g, dtype=F64)
    y_new = torch.randint(0, 4, (64,), generator=g)
    _train(opt, net, X_new, y_new, steps=50, seed=3)
    after = net[0](X_old).detach()
    assert float((net[0].weight.detach() - W0).norm()) > 0.1  # the layer did learn
    scale = float(W0.norm() * torch.linalg.matrix_norm(X_old))
    err = float((after - before).abs().max())
    assert err <= 1e-6 * scale  # the 1e-6 in float64 ...
    assert err <= 50 * 10 * EPS * scale  # ... and in fact rounding only (steps x d x eps)


def test_projected_conv_layer_leaves_old_outputs_unchanged_float64():
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False).double()
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 2, bias=False)).double()
    g = torch.Generator().manual_seed(0)
    X_old = torch.randn(12, 2, 6, 6, generator=g, dtype=F64)
    X_old[:, 1] = 0.0  # the old task never uses channel 1: its patches span 9 of 18 dimensions
    memory = GPMMemory(NEAR_ONE).update(collect_representations(net, X_old, ["0"]))
    assert memory.bases_["0"].shape == (18, 9)
    opt = ProjectedOptimizer(torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9), net, memory)
    before = conv(X_old).detach()
    X_new = torch.randn(40, 2, 6, 6, generator=g, dtype=F64)
    y_new = torch.randint(0, 2, (40,), generator=g)
    _train(opt, net, X_new, y_new, steps=30, seed=4)
    scale = float(conv.weight.detach().norm() * X_old.norm())
    assert float((conv(X_old).detach() - before).abs().max()) <= 1e-6 * scale


def _twin(seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    return net, copy.deepcopy(net)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["SGD", "Adam", "AdamW"],
)
@pytest.mark.parametrize("memory_kind", ["empty", "zero-inputs"])
def test_wrapper_with_no_memory_is_the_bare_optimizer_bit_for_bit(make, memory_kind):
    a, b = _twin(0)
    memory = GPMMemory(0.9)
    if memory_kind == "zero-inputs":  # layers known to the memory but holding no direction
        memory.update({"0": torch.zeros(6, 4), "2": torch.zeros(5, 4)})
    bare = make(a.parameters())
    wrapped = ProjectedOptimizer(make(b.parameters()), b, memory)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(7, 6, generator=g)
        for net, opt in ((a, bare), (b, wrapped)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    sa, sb = bare.state_dict(), wrapped.state_dict()
    for k in sa["state"]:
        for key, value in sa["state"][k].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][k][key]))


def test_wrapper_reads_memory_updates_and_overrides():
    net = nn.Sequential(nn.Linear(3, 2, bias=False)).double()
    memory = GPMMemory(0.99)
    opt = ProjectedOptimizer(torch.optim.SGD(net.parameters(), lr=1.0), net, memory)
    e0 = torch.tensor([[1.0], [0.0], [0.0]], dtype=F64)
    memory.update({"0": e0})  # after the wrapper was built
    net[0].weight.grad = torch.ones(2, 3, dtype=F64)
    opt.project_()
    assert net[0].weight.grad.tolist() == [[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]
    opt.set_basis("0", None)  # released: no projection
    net[0].weight.grad = torch.ones(2, 3, dtype=F64)
    opt.project_()
    assert net[0].weight.grad.tolist() == [[1.0, 1.0, 1.0]] * 2
    opt.clear_bases()
    net[0].weight.grad = torch.ones(2, 3, dtype=F64)
    opt.project_()
    assert net[0].weight.grad[:, 0].abs().max() == 0


def test_complement_path_equals_direct_projection():
    g = torch.Generator().manual_seed(5)
    M = torch.linalg.qr(torch.randn(20, 15, generator=g, dtype=F64)).Q  # k > d/2
    net = nn.Sequential(nn.Linear(20, 4, bias=False)).double()
    memory = GPMMemory(0.99)
    memory.bases_ = {"0": M}
    memory.task_bases_ = [{"0": M}]
    memory.history_ = [{"0": (15, 20)}]
    memory.version += 1
    opt = ProjectedOptimizer(torch.optim.SGD(net.parameters(), lr=1.0), net, memory)
    G = torch.randn(4, 20, generator=g, dtype=F64)
    net[0].weight.grad = G.clone()
    opt.project_()
    expected = project_gradient(G, M)
    assert float((net[0].weight.grad - expected).abs().max()) <= 100 * EPS * float(G.norm())


def test_closure_and_delegation():
    net = nn.Sequential(nn.Linear(2, 1, bias=False))
    opt = ProjectedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), net, GPMMemory(0.9))

    def closure():
        opt.zero_grad()
        loss = net(torch.ones(1, 2)).sum()
        loss.backward()
        return loss

    assert isinstance(opt.step(closure), torch.Tensor)
    assert opt.param_groups[0]["lr"] == 0.1
    opt.load_state_dict(opt.state_dict())
    assert "SGD" in repr(opt)


def test_bad_arguments():
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        ProjectedOptimizer(object(), net, GPMMemory(0.9))
    with pytest.raises(TypeError, match="LBFGS"):
        ProjectedOptimizer(torch.optim.LBFGS(net.parameters()), net, GPMMemory(0.9))
    with pytest.raises(TypeError, match="GPMMemory"):
        ProjectedOptimizer(sgd, net, {"0": torch.eye(3)})
    with pytest.raises(ValueError, match="not a module of the model"):
        ProjectedOptimizer(sgd, net, GPMMemory(0.9).update({"9": torch.eye(3)}))
    opt = ProjectedOptimizer(sgd, net, GPMMemory(0.9))
    with pytest.raises(ValueError, match=r"must be \(3, k\)"):
        opt.set_basis("0", torch.eye(4))
    with pytest.raises(TypeError, match="ReLU"):
        opt.set_basis("1", None)
    with pytest.raises(ValueError, match="dimension 3"):
        project_gradient(torch.ones(2, 3), torch.eye(4)[:, :1])
