"""INT8 weights (``Int8Linear``) behave as ordinary parameters for torch's gradient utilities.

``model.zero_grad()`` (called by the HF ``Trainer``), ``optimizer.zero_grad()``,
``torch.nn.utils.clip_grad_norm_`` and ``torch.amp.GradScaler`` all work on ``p.grad`` of the
parameters they are given, so the float gradient of an INT8 weight must live there. The
references are float ``nn.Linear`` models holding the dequantized weights.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from subspaces.optim import SubspaceAdamW
from subspaces.optim.memory import model_bytes, tensor_bytes
from subspaces.optim.quantization import Int8Linear, int8_module_of, quantize_linear_layers

EPS32 = torch.finfo(torch.float32).eps


def _models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """An INT8 model and a float model holding exactly its dequantized weights."""
    torch.manual_seed(seed)
    dense = nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 3))
    q = quantize_linear_layers(dense, group_size=32)
    with torch.no_grad():
        for d, m in zip(dense, q, strict=True):
            if isinstance(m, Int8Linear):
                d.weight.copy_(m.dequantized_weight())
    return q, dense


def _data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 12, generator=g), torch.randn(32, 3, generator=g)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(x), y)


def _grad_tol(grads: list[torch.Tensor], fan_in: int = 32) -> float:
    """float32 rounding bound of gradients computed by two summation orders."""
    return 8 * fan_in * EPS32 * max(float(g.abs().max()) for g in grads)


def test_int8_weight_gradient_lives_in_grad_and_matches_dense():
    q, dense = _models()
    x, y = _data()
    _loss(q, x, y).backward()
    _loss(dense, x, y).backward()
    for m, d in zip(q, dense, strict=True):
        if isinstance(m, Int8Linear):
            assert m.weight.grad is not None and m.weight.grad.dtype == torch.float32
            tol = _grad_tol([d.weight.grad])
            assert float((m.weight.grad - d.weight.grad).abs().max()) <= tol
    # the INT8 storage is all that is resident: the float parameter has a one-element storage
    layer = q[0]
    assert layer.weight_codes.dtype == torch.uint8
    assert tensor_bytes(layer.weight) <= 8
    assert model_bytes(layer) <= layer.weight.numel() + 8 * layer.weight_scale.numel() + 4 * 24 + 8


def test_model_zero_grad_clears_int8_gradients_so_steps_do_not_grow():
    # The HF Trainer calls model.zero_grad(), not optimizer.zero_grad(): both must give the same
    # training (before the fix the INT8 gradient grew 1x, 2x, 3x ... under model.zero_grad()).
    x, y = _data()
    runs = []
    for clear in ("model", "optimizer"):
        q, _ = _models()
        opt = SubspaceAdamW(q.parameters(), lr=1e-2, seed=3)
        for _ in range(4):
            if clear == "model":
                q.zero_grad()
            else:
                opt.zero_grad()
            _loss(q, x, y).backward()
            opt.step()
        runs.append(q)
    for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    q = runs[0]
    assert all(p.grad is not None for p in q.parameters())
    q.zero_grad()
    assert all(p.grad is None for p in q.parameters())


def test_clip_grad_norm_sees_and_clips_int8_gradients():
    q, dense = _models()
    x, y = _data()
    _loss(q, x, y).backward()
    _loss(dense, x, y).backward()
    ref_total = float(torch.cat([p.grad.reshape(-1) for p in dense.parameters()]).norm())
    before = q[0].weight.grad.clone()
    max_norm = 0.1 * ref_total
    total = float(torch.nn.utils.clip_grad_norm_(q.parameters(), max_norm))
    assert abs(total - ref_total) <= _grad_tol([p.grad for p in dense.parameters()]) * math.sqrt(
        sum(p.numel() for p in dense.parameters())
    )
    coef = max_norm / (total + 1e-6)
    torch.testing.assert_close(q[0].weight.grad, before * coef, rtol=4 * EPS32, atol=0.0)
    clipped = float(torch.cat([p.grad.reshape(-1) for p in q.parameters()]).norm())
    assert clipped <= max_norm * (1 + 16 * EPS32)


def test_grad_scaler_unscales_and_inf_checks_int8_gradients():
    q, dense = _models()
    x, y = _data()
    opt = SubspaceAdamW(q.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaler.scale(_loss(q, x, y)).backward()
    _loss(dense, x, y).backward()
    scaler.unscale_(opt)
    tol = _grad_tol([dense[0].weight.grad])
    assert float((q[0].weight.grad - dense[0].weight.grad).abs().max()) <= tol
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**12  # finite: the step ran and the scale was kept

    # an Inf only in an INT8 weight's gradient must skip the step and back off the scale
    before = copy.deepcopy(q.state_dict())
    opt.zero_grad()
    scaler.scale(_loss(q, x, y)).backward()
    q[2].weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**11
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_frozen_and_requires_grad_false_int8_weights_get_no_gradient():
    q, _ = _models()
    x, y = _data()
    q.requires_grad_(False)
    q[0].bias.requires_grad_(True)
    _loss(q, x, y).backward()
    assert q[0].weight.grad is None and q[0].weight_grad is None and q[0].bias.grad is not None


@pytest.mark.parametrize("cast", ["double", "half"])
def test_casts_keep_codes_and_a_one_element_float_parameter(cast):
    q, _ = _models()
    layer = q[0]
    w = layer.dequantized_weight()
    weight = layer.weight
    getattr(q, cast)()
    assert layer.weight is weight  # the same Parameter object: optimizers keep their reference
    assert layer.weight_codes.dtype == torch.uint8
    assert torch.equal(layer.dequantized_weight(), w)
    assert tensor_bytes(layer.weight) <= 8
    assert layer.weight.dtype == (torch.float64 if cast == "double" else torch.float32)


def test_deepcopy_and_state_dict_keep_the_int8_format():
    q, _ = _models()
    layer = q[0]
    twin = copy.deepcopy(layer)
    assert tensor_bytes(twin.weight) <= 8 and torch.equal(twin.weight_codes, layer.weight_codes)
    sd = layer.state_dict()
    assert sd["weight"].dtype == torch.uint8 and sd["weight"].shape == (24, 12)
    other = Int8Linear(torch.zeros(24, 12), torch.zeros(24), group_size=32)
    other.load_state_dict(sd)
    assert torch.equal(other.dequantized_weight(), layer.dequantized_weight())
    bad = dict(sd)
    bad["weight"] = torch.zeros(24, 12)
    with pytest.raises(RuntimeError, match="uint8"):
        other.load_state_dict(bad)


def test_meta_round_trip_rebuilds_the_one_element_weight():
    q, _ = _models()
    q = q.to("meta").to_empty(device="cpu")
    layer = q[0]
    assert layer.weight.device.type == "cpu" and tensor_bytes(layer.weight) <= 8
    assert int8_module_of(layer.weight) is layer
    q(torch.randn(2, 12)).sum().backward()
    assert layer.weight.grad.shape == (24, 12)
