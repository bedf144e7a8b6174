"""Byte counts of weights and optimizer state against hand-computed values."""

import pytest
import torch
from torch import nn

from subspaces.optim import SubspaceAdamW
from subspaces.optim.memory import (
    MemoryReport,
    memory_report,
    model_bytes,
    optimizer_state_bytes,
    tensor_bytes,
)
from subspaces.optim.quantization import Int8Linear


def test_tensor_bytes_storage_and_dedup():
    t = torch.zeros(6, 5, dtype=torch.float64)
    assert tensor_bytes(t) == 240
    assert tensor_bytes(t[1:2, :2]) == 240  # a view holds the whole storage
    assert tensor_bytes([t, t.T, t[3], {"a": t.view(-1)}]) == 240
    assert tensor_bytes([t, t.clone()]) == 480
    assert (
        tensor_bytes([torch.zeros(7, dtype=torch.uint8), torch.zeros(3, dtype=torch.bfloat16)])
        == 13
    )
    assert tensor_bytes([]) == 0
    assert tensor_bytes([torch.zeros(0), torch.zeros(0)]) == 0
    assert tensor_bytes(torch.zeros(10).expand(4, 10)) == 40
    sparse = torch.sparse_coo_tensor(
        torch.tensor([[0, 2]]), torch.tensor([1.0, 2.0]), (5,), check_invariants=True
    )
    assert tensor_bytes(sparse) == 2 * 8 + 2 * 4  # int64 indices + float32 values
    with pytest.raises(TypeError, match="iterable"):
        tensor_bytes(3)


@pytest.mark.parametrize("impl", [{"foreach": True}, {"foreach": False}, {"fused": True}])
def test_adamw_state_bytes_on_1024_linear(impl):
    torch.manual_seed(0)
    model = nn.Linear(1024, 1024)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **impl)
    assert optimizer_state_bytes(opt) == 0
    model(torch.randn(4, 1024)).sum().backward()
    opt.step()
    n = 1024 * 1024 + 1024
    # exp_avg + exp_avg_sq in float32 for each of the 2 params, + one float32 step scalar each
    assert optimizer_state_bytes(opt) == 8 * n + 2 * 4
    report = memory_report(model, opt)
    assert report.num_parameters == n
    assert report.weight_bytes == 4 * n
    assert report.weight_bytes_per_param == 4.0
    assert report.optimizer_bytes_per_param == pytest.approx(8.0 + 8 / n, rel=1e-12)
    assert report.total_bytes == 12 * n + 8


def test_sgd_and_amsgrad_state():
    w = nn.Parameter(torch.zeros(100, 30))
    w.grad = torch.ones_like(w)
    plain = torch.optim.SGD([w], lr=0.1)
    plain.step()
    assert optimizer_state_bytes(plain) == 0
    mom = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    mom.step()
    assert optimizer_state_bytes(mom) == 4 * 3000
    ams = torch.optim.Adam([w], amsgrad=True)
    ams.step()
    assert optimizer_state_bytes(ams) == 3 * 4 * 3000 + 4
    # shared state tensors count once
    ams.state[w]["alias"] = ams.state[w]["exp_avg"].view(-1)
    assert optimizer_state_bytes(ams) == 3 * 4 * 3000 + 4

    # tensors held by a plain object in the state (GaLore's projector) are counted, cycles too
    class Projector:
        def __init__(self):
            self.ortho_matrix = torch.zeros(30, 8)
            self.rank = 8
            self.me = self

    ams.state[w]["projector"] = Projector()
    assert optimizer_state_bytes(ams) == 3 * 4 * 3000 + 4 + 4 * 240
    with pytest.raises(TypeError, match="Optimizer"):
        optimizer_state_bytes({"state": {}})


def test_model_bytes_tied_buffers_and_int8():
    tied = nn.Sequential(nn.Linear(10, 10, bias=False), nn.Linear(10, 10, bias=False))
    tied[1].weight = tied[0].weight
    assert model_bytes(tied) == 400
    bn = nn.BatchNorm1d(8)  # weight, bias, running_mean, running_var float32 + int64 counter
    assert model_bytes(bn) == 4 * 8 * 4 + 8
    layer = Int8Linear.from_linear(nn.Linear(1024, 1024), group_size=256)
    groups = 1024 * 1024 // 256
    # uint8 codes, fp32 bias, scale + zero, and the one-element float weight Parameter
    expected = 1024 * 1024 + 4 * 1024 + 2 * 4 * groups + 4
    assert model_bytes(layer) == expected
    r = memory_report(layer)
    assert r.optimizer_state_bytes == 0
    assert r.weight_bytes_per_param == pytest.approx(expected / (1024 * 1024 + 1024))
    assert 1.0 < r.weight_bytes_per_param < 1.04
    with pytest.raises(TypeError, match=r"nn\.Module"):
        model_bytes(torch.zeros(3))


def test_report_str_and_empty_model():
    r = MemoryReport(num_parameters=1000, weight_bytes=4000, optimizer_state_bytes=8004)
    text = str(r)
    lines = text.splitlines()
    assert lines[1].split() == ["weights", "4,000", "0.00", "4.000"]
    assert lines[2].split()[:3] == ["optimizer", "state", "8,004"]
    assert lines[2].split()[-1] == "8.004"
    assert lines[3].split()[-1] == "12.004"
    assert "parameters: 1,000" in text
    empty = memory_report(nn.ReLU())
    assert empty.num_parameters == 0
    assert empty.weight_bytes_per_param != empty.weight_bytes_per_param  # nan
    with pytest.raises(TypeError, match=r"nn\.Module"):
        memory_report("model")


def _resident_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor reachable from the optimizer object (state, projector caches, ...)
    other than its parameters and their gradients."""
    from subspaces.optim.memory import _iter_tensors, _storage_key_and_bytes

    params = [p for g in opt.param_groups for p in g["params"]]
    skip = {_storage_key_and_bytes(t)[0] for p in params for t in (p, p.grad) if t is not None}
    seen, total = set(), 0
    for t in _iter_tensors(vars(opt)):
        key, nbytes = _storage_key_and_bytes(t)
        if key not in skip and key not in seen:
            seen.add(key)
            total += nbytes
    return total


@pytest.mark.parametrize("projector", ["svd", "rsvd"])
def test_int4_basis_holds_less_resident_memory_than_a_float_basis(projector):
    # Q-GaLore's point: a 4-bit basis costs 1/8 of a float32 one. Every tensor the optimizer
    # keeps alive counts, including caches (a float basis cached per layer undoes the saving).
    g = torch.Generator().manual_seed(0)
    resident, state = {}, {}
    for bits in (None, 4):
        torch.manual_seed(0)
        ws = [nn.Parameter(torch.randn(256, 128)) for _ in range(4)]
        opt = SubspaceAdamW(
            [
                {
                    "params": ws,
                    "rank": 16,
                    "update_proj_gap": 2,
                    "projector": projector,
                    "proj_bits": bits,
                    "proj_group_size": 256,
                }
            ],
            lr=1e-3,
        )
        for _ in range(7):  # four refreshes
            for w in ws:
                w.grad = torch.randn(w.shape, generator=g)
            opt.step()
        n = sum(w.numel() for w in ws)
        resident[bits] = _resident_bytes(opt) / n
        state[bits] = optimizer_state_bytes(opt) / n
    # nothing beyond the state is kept: no cache of old or dequantized bases
    assert resident == state, (resident, state)
    # moments 2 * 256 * 16 * 4 B; basis 128 * 16 * 4 B (float) or 128 * 16 / 2 B + 8 B/group
    moments = 2 * 256 * 16 * 4 / (256 * 128)
    assert state[None] == pytest.approx(moments + 128 * 16 * 4 / (256 * 128), abs=0.01)
    assert state[4] == pytest.approx(moments + (128 * 16 / 2 + 8 * 8) / (256 * 128), abs=0.01)
    assert state[4] < state[None]
