"""SubspaceAdamW on INT8 weights (Q-GaLore): training, checkpoints, stochastic rounding."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from subspaces.optim import SubspaceAdamW
from subspaces.optim.quantization import Int8Linear, quantize_linear_layers


def _setup(rank: int | None, seed: int = 0):
    torch.manual_seed(seed)
    model = quantize_linear_layers(
        nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4)), group_size=64
    )
    mats = [m.weight for m in model.modules() if isinstance(m, Int8Linear)]
    rest = [p for p in model.parameters() if all(p is not w for w in mats)]
    group = {"params": mats} if rank is None else {"params": mats, "rank": rank}
    opt = SubspaceAdamW(
        [{"params": rest}, {**group, "update_proj_gap": 5}], lr=5e-3, weight_decay=0.01
    )
    return model, opt


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    teacher = torch.randn(16, 4, generator=g)
    return x, torch.tanh(x @ teacher)


def _train(model, opt, steps, x, y):
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return float(nn.functional.mse_loss(model(x), y).detach())


@pytest.mark.parametrize("rank", [None, 4])
def test_int8_weights_train_and_stay_int8(rank):
    x, y = _data()
    model, opt = _setup(rank)
    start = float(nn.functional.mse_loss(model(x), y).detach())
    end = _train(model, opt, 80, x, y)
    assert end < 0.6 * start
    for m in model.modules():
        if isinstance(m, Int8Linear):
            assert m.weight_codes.dtype == torch.uint8 and m.weight.untyped_storage().nbytes() == 4
    if rank is not None:
        assert opt.state[model[0].weight]["exp_avg"].shape == (32, 4)


def test_int8_resume_is_bit_identical_and_weights_only():
    x, y = _data()
    ref, ref_opt = _setup(4)
    _train(ref, ref_opt, 12, x, y)
    model, opt = _setup(4)
    _train(model, opt, 5, x, y)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2, opt2 = _setup(4, seed=7)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    _train(model2, opt2, 7, x, y)
    for a, b in zip(ref.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("stochastic", [True, False])
def test_small_updates_survive_through_stochastic_rounding(stochastic):
    # Constant gradient: Adam moves every weight by lr * sign(g) per step, far below the INT8
    # step. Stochastic rounding keeps the drift in expectation; round-to-nearest loses it.
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(nn.Linear(64, 64), group_size=4096)
    lr, steps = 4e-5, 100
    opt = SubspaceAdamW([layer.weight], lr=lr)
    q_step = float(layer.weight_scale.max())
    assert lr < q_step / 10
    sign = torch.sign(torch.randn(64, 64, generator=torch.Generator().manual_seed(1)))
    before = layer.dequantized_weight()
    if not stochastic:
        orig = layer.apply_update
        layer.apply_update = lambda d, g=None: orig(d, g, stochastic=False)  # type: ignore
    for _ in range(steps):
        layer.weight_grad = -sign.clone()  # descent direction +sign
        opt.step()
    drift = float(((layer.dequantized_weight() - before) * sign).mean())
    if stochastic:
        assert drift == pytest.approx(lr * steps, rel=0.25)
    else:
        assert abs(drift) < 0.25 * lr * steps
