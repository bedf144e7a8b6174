"""INT4/INT8 group quantization, stochastic rounding and Int8Linear (Q-GaLore pieces)."""

import copy
import gc
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from subspaces.optim.quantization import (
    Int8Linear,
    Int8Weight,
    int8_module_of,
    pack_int4,
    pack_int8,
    quantize_int8,
    quantize_linear_layers,
    stochastic_round,
    unpack_int4,
    unpack_int8,
)

F32_EPS = torch.finfo(torch.float32).eps


def _per_value(t, group_size, n):
    """Expand a per-group tensor to one entry per (flattened) value."""
    return t.repeat_interleave(group_size)[:n]


def _reference_codes(x, bits, group_size):
    """Float64 min-max quantization written directly: codes, scale, zero (no padding tricks)."""
    flat = x.detach().reshape(-1).double()
    codes, scales, zeros = [], [], []
    levels = 2**bits - 1
    for start in range(0, flat.numel(), group_size):
        g = flat[start : start + group_size]
        lo, hi = g.min(), g.max()
        s = (hi - lo) / levels
        scales.append(s)
        zeros.append(lo)
        codes.append(torch.zeros_like(g) if s == 0 else torch.round((g - lo) / s))
    return torch.cat(codes), torch.stack(scales), torch.stack(zeros)


# ----- INT4 ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "group_size"),
    [((7, 13), 16), ((1000,), 256), ((3, 5, 7), 4), ((1,), 256), ((2, 256), 256), ((9,), 1)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_int4_round_trip_error_at_most_half_step(shape, group_size, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1).to(dtype)
    x0 = x.clone()
    packed, scale, zero = pack_int4(x, group_size)
    n = x.numel()
    assert torch.equal(x, x0)  # input untouched
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(n / 2)  # really 4 bits per value
    assert scale.dtype == zero.dtype == torch.float32
    assert scale.numel() == zero.numel() == math.ceil(n / group_size)
    y = unpack_int4(packed, scale, zero, shape, group_size, dtype=dtype)
    assert y.shape == x.shape and y.dtype == dtype
    err = (x - y).abs().reshape(-1).double()
    bound = _per_value(scale.double(), group_size, n) / 2
    tol = 4 * F32_EPS * x.abs().max().double()  # float32 scale/zero storage
    assert bool((err <= bound + tol).all()), float((err - bound).max())
    # the scales are the min-max ones
    _, ref_scale, ref_zero = _reference_codes(x, 4, group_size)
    torch.testing.assert_close(scale.double(), ref_scale, rtol=2 * F32_EPS, atol=0)
    torch.testing.assert_close(zero.double(), ref_zero, rtol=F32_EPS, atol=0)


def test_int4_nibble_layout_low_first_and_codes_match_reference():
    # values exactly on a 16-level grid: codes are known
    codes = torch.tensor([0, 15, 3, 4, 7, 1, 9, 12, 5])  # odd numel
    x = codes.float() * 0.5 - 2.0
    packed, scale, zero = pack_int4(x, group_size=256)
    assert scale.item() == 0.5 and zero.item() == -2.0
    expected = [0 | (15 << 4), 3 | (4 << 4), 7 | (1 << 4), 9 | (12 << 4), 5]
    assert packed.tolist() == expected
    assert torch.equal(unpack_int4(packed, scale, zero, x.shape), x)


def test_int4_codes_equal_float64_reference():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(37, 11, generator=g, dtype=torch.float64)
    packed, _, _ = pack_int4(x, 64)
    ref_codes, _, _ = _reference_codes(x, 4, 64)
    codes = torch.stack([packed & 15, packed >> 4], 1).reshape(-1)[: x.numel()]
    # rounding ties / float32 storage may flip a code by one, but only at a half-step tie
    differ = codes.double() != ref_codes
    assert int(differ.sum()) <= 2


def test_int4_constant_groups_exact_no_nan():
    x = torch.cat([torch.full((16,), 3.25), torch.linspace(-1, 1, 16), torch.zeros(5)])
    packed, scale, zero = pack_int4(x, 16)
    assert scale.tolist()[0] == 0.0 and scale.tolist()[2] == 0.0
    y = unpack_int4(packed, scale, zero, x.shape, 16)
    assert bool(torch.isfinite(y).all())
    assert torch.equal(y[:16], x[:16]) and torch.equal(y[32:], x[32:])


def test_int4_empty_and_half_precision():
    packed, scale, zero = pack_int4(torch.zeros(0))
    assert packed.numel() == scale.numel() == 0
    assert unpack_int4(packed, scale, zero, (0, 3)).shape == (0, 3)
    x = torch.randn(50, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    y = unpack_int4(*pack_int4(x, 8), x.shape, 8, dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises(bad):
    x = torch.tensor([1.0, bad, 2.0])
    with pytest.raises(ValueError, match="non-finite"):
        pack_int4(x)
    with pytest.raises(ValueError, match="non-finite"):
        pack_int8(x)
    with pytest.raises(ValueError, match="non-finite"):
        quantize_int8(x, stochastic=True)


def test_bad_arguments():
    x = torch.randn(10)
    with pytest.raises(TypeError, match="floating"):
        pack_int4(torch.arange(4))
    with pytest.raises(ValueError, match="group_size"):
        pack_int4(x, 0)
    with pytest.raises(TypeError, match="group_size"):
        pack_int8(x, 2.5)
    with pytest.raises(TypeError, match="stochastic"):
        quantize_int8(x, stochastic=1)
    packed, scale, zero = pack_int4(x, 4)
    with pytest.raises(ValueError, match="bytes"):
        unpack_int4(packed, scale, zero, (11,), 4)
    with pytest.raises(ValueError, match="entries"):
        unpack_int4(packed, scale, zero, (10,), 5)
    with pytest.raises(TypeError, match="uint8"):
        unpack_int4(packed.to(torch.int8), scale, zero, (10,), 4)
    with pytest.raises(TypeError, match="shape"):
        unpack_int4(packed, scale, zero, "ten", 4)
    with pytest.raises(ValueError, match="overflows"):
        pack_int8(torch.tensor([-3e38, 3e38]))


# ----- INT8 ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "group_size"), [((33, 70), 256), ((5, 3), 4), ((512,), 128)])
def test_int8_round_trip_error_at_most_half_step(shape, group_size):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    codes, scale, zero = pack_int8(x, group_size)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    n = x.numel()
    y = unpack_int8(codes, scale, zero, group_size, dtype=torch.float64)
    err = (x - y).abs().reshape(-1)
    bound = _per_value(scale.double(), group_size, n) / 2 + 4 * F32_EPS * x.abs().max()
    assert bool((err <= bound).all())
    # every full group uses both ends of the range
    flat = codes.reshape(-1)
    for start in range(0, n, group_size):
        grp = flat[start : start + group_size]
        if grp.numel() > 1:
            assert grp.min().item() == 0 and grp.max().item() == 255
    with pytest.raises(ValueError, match="entries"):
        unpack_int8(codes, scale[:-1], zero[:-1], group_size)


def test_quantize_int8_stochastic_is_unbiased_and_brackets():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(256, generator=g, dtype=torch.float64)
    codes, scale, zero = pack_int8(x)
    pos = (x - zero.double()) / scale.double()  # exact position on the grid
    draws = 2000
    acc = torch.zeros(256, dtype=torch.float64)
    for _ in range(draws):
        c, s, z = quantize_int8(x, stochastic=True, generator=g)
        assert torch.equal(s, scale) and torch.equal(z, zero)  # grid depends on min/max only
        assert bool(((c.double() - torch.floor(pos)).abs() <= 1).all())  # floor or ceil
        acc += unpack_int8(c, s, z, dtype=torch.float64)
    mean = acc / draws
    frac = pos - torch.floor(pos)
    # binomial standard error of the mean, 5 sigma, plus float32 storage of the grid
    sigma = scale.double() * torch.sqrt(frac * (1 - frac) / draws)
    tol = 5 * sigma + 1e-6
    assert bool(((mean - x).abs() <= tol).all())
    # round-to-nearest is biased by up to half a step: it fails the same check
    nearest = unpack_int8(codes, scale, zero, dtype=torch.float64)
    assert int(((nearest - x).abs() > tol).sum()) > 100


# ----- stochastic rounding ------------------------------------------------------------------
def test_stochastic_round_unbiased_with_binomial_tolerance():
    x = torch.tensor([-2.7, -0.5, 0.1, 0.5, 0.93, 3.999, 1000.25, -7.0])
    n = 200_000
    g = torch.Generator().manual_seed(5)
    samples = stochastic_round(x.expand(n, -1).contiguous(), g)
    lo = torch.floor(x)
    assert bool(((samples == lo) | (samples == lo + 1)).all())
    frac = (x - lo).double()
    mean = samples.double().mean(0)
    # mean of n Bernoulli(frac) + floor: standard error sqrt(frac (1 - frac) / n); 5 sigma,
    # plus the float32 representation error of x and the 2^-24 granularity of torch.rand
    tol = 5 * torch.sqrt(frac * (1 - frac) / n) + 2**-20
    assert bool(((mean - x.double()).abs() <= tol).all()), (mean - x.double()).tolist()
    assert torch.equal(samples[:, -1], torch.full((n,), -7.0))  # integers stay put


def test_stochastic_round_reproducible_dtype_and_no_mutation():
    x = torch.tensor([0.3, 1.6, -2.2], dtype=torch.float16)
    x0 = x.clone()
    a = stochastic_round(x, torch.Generator().manual_seed(7))
    b = stochastic_round(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.float16
    assert torch.equal(x, x0)
    with pytest.raises(TypeError, match="floating"):
        stochastic_round(torch.arange(3))


# ----- Int8Linear ---------------------------------------------------------------------------
def _pair(in_f=40, out_f=12, bias=True, group_size=32, seed=0):
    torch.manual_seed(seed)
    dense = nn.Linear(in_f, out_f, bias=bias)
    return dense, Int8Linear.from_linear(dense, group_size=group_size)


def test_from_linear_layout_and_no_mutation():
    dense, layer = _pair()
    w0 = dense.weight.detach().clone()
    assert torch.equal(dense.weight, w0)
    assert isinstance(layer.weight, Int8Weight) and layer.weight.dtype == torch.float32
    assert layer.weight.requires_grad and layer.weight.shape == (12, 40)
    assert layer.weight.untyped_storage().nbytes() == 4  # one element: no float copy
    assert layer.weight_codes.dtype == torch.uint8 and layer.weight_codes.shape == (12, 40)
    assert isinstance(layer.bias, nn.Parameter) and layer.bias.requires_grad
    assert torch.equal(layer.bias, dense.bias) and layer.bias.data_ptr() != dense.bias.data_ptr()
    assert layer.weight_scale.shape == (15,)  # ceil(480 / 32)
    err = (layer.dequantized_weight() - dense.weight).abs().reshape(-1)
    assert bool((err <= _per_value(layer.weight_scale, 32, 480) / 2 + 1e-6).all())
    assert layer.weight.grad is None and layer.weight_grad is None
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"weight", "bias"}
    assert set(layer.state_dict()) == {"weight", "bias", "weight_scale", "weight_zero"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_equals_dense_exactly(dtype):
    _, layer = _pair()
    x = torch.randn(3, 5, 40, dtype=dtype)
    bias = layer.bias.to(dtype)
    ref = F.linear(x, layer.dequantized_weight(dtype), bias)
    out = layer.to(dtype)(x) if dtype == torch.float64 else layer(x)
    assert out.dtype == dtype
    assert torch.equal(out, ref)


def test_gradients_match_float_linear_float64():
    _, layer = _pair(bias=True)
    layer = layer.double()  # bias and gradient -> float64; codes stay uint8, the grid float32
    assert layer.weight_codes.dtype == torch.uint8 and layer.bias.dtype == torch.float64
    assert layer.weight.dtype == torch.float64
    assert layer.weight_scale.dtype == layer.weight_zero.dtype == torch.float32
    dense = nn.Linear(40, 12, dtype=torch.float64)
    with torch.no_grad():
        dense.weight.copy_(layer.dequantized_weight(torch.float64))
        dense.bias.copy_(layer.bias)
    x = torch.randn(4, 3, 40, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    up = torch.randn(4, 3, 12, dtype=torch.float64)
    (layer(x) * up).sum().backward()
    (dense(x_ref) * up).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-13, atol=1e-13)
    assert layer.weight.grad.dtype == torch.float64 and layer.weight_grad is layer.weight.grad
    torch.testing.assert_close(layer.weight.grad, dense.weight.grad, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(layer.bias.grad, dense.bias.grad, rtol=1e-13, atol=1e-13)


def test_gradients_float32_accumulate_and_zero():
    _, layer = _pair(bias=False)
    dense = nn.Linear(40, 12, bias=False)
    with torch.no_grad():
        dense.weight.copy_(layer.dequantized_weight())
    x = torch.randn(6, 40)  # no grad on the input, no bias: the weight grad must still come
    for _ in range(2):
        layer(x).pow(2).sum().backward()
        dense(x).pow(2).sum().backward()
    assert layer.weight_grad.dtype == torch.float32
    torch.testing.assert_close(layer.weight_grad, dense.weight.grad, rtol=1e-5, atol=1e-5)
    single = layer.weight_grad.clone()
    layer.zero_weight_grad(set_to_none=False)
    assert torch.equal(layer.weight_grad, torch.zeros_like(single))
    layer.zero_weight_grad()
    assert layer.weight_grad is None
    with torch.no_grad():
        layer(x)
    assert layer.weight_grad is None
    frozen = Int8Linear(torch.randn(3, 4), torch.zeros(3), requires_weight_grad=False)
    frozen(torch.randn(2, 4)).sum().backward()
    assert frozen.weight_grad is None and frozen.bias.grad is not None


def test_no_float_weight_saved_for_backward():
    _, layer = _pair(in_f=64, out_f=48, bias=True)
    saved = []

    def pack(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    x = torch.randn(5, 64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    assert (torch.uint8, (48, 64)) in saved
    assert not any(dt.is_floating_point and shape == (48, 64) for dt, shape in saved), saved
    y.sum().backward()


def test_half_keeps_the_grid():
    _, layer = _pair()
    w = layer.dequantized_weight()
    half = copy.deepcopy(layer).half()
    assert half.bias.dtype == torch.float16 and half.weight_scale.dtype == torch.float32
    assert torch.equal(half.dequantized_weight(), w)
    x = torch.randn(3, 40, dtype=torch.float16)
    assert torch.equal(half(x), F.linear(x, w.half(), half.bias))


def test_state_dict_weights_only_round_trip():
    _, layer = _pair()
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    other = Int8Linear(torch.zeros(12, 40), torch.zeros(12), group_size=32)
    other.load_state_dict(sd)
    assert torch.equal(other.dequantized_weight(), layer.dequantized_weight())
    assert int8_module_of(other.weight) is other


def test_registry_follows_copies_and_dies_with_module():
    _, layer = _pair()
    assert int8_module_of(layer.weight) is layer
    assert int8_module_of(layer.bias) is None
    assert int8_module_of(torch.zeros(3)) is None
    assert int8_module_of("weight") is None
    twin = copy.deepcopy(layer)
    assert int8_module_of(twin.weight) is twin and int8_module_of(layer.weight) is layer
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    q = quantize_linear_layers(model)
    found = [int8_module_of(p) for p in q.parameters()]
    assert [type(m).__name__ if m else None for m in found] == ["Int8Linear", None] * 2
    w = layer.weight
    del layer, found
    gc.collect()
    assert int8_module_of(w) is None


def test_apply_update_stochastic_small_steps_survive():
    """1000 updates of 0.1 quantization step: ~100 steps with stochastic rounding, 0 nearest."""
    rows, cols, step = 4, 256, 0.1
    codes = torch.arange(rows * cols).remainder(50).add(20).float().view(rows, cols)
    codes[:, 0], codes[:, -1] = 0, 255  # fixed extremes keep the grid of every row
    w = codes * step
    move = torch.zeros_like(w)
    move[:, 1:-1] = 0.1 * step
    g = torch.Generator().manual_seed(11)
    stoch = Int8Linear(w, group_size=cols)
    near = Int8Linear(w, group_size=cols)
    start = stoch.dequantized_weight().double()
    m0 = move.clone()
    for _ in range(1000):
        stoch.apply_update(move, g)
        near.apply_update(move, stochastic=False)
    assert torch.equal(move, m0)
    assert torch.equal(near.dequantized_weight().double(), start)  # nearest: all lost
    steps = ((stoch.dequantized_weight().double() - start) / step)[:, 1:-1]
    # expected 100 steps; per entry the rounding noise is a martingale with variance
    # <= 1000 * 1/4, so the mean over 1016 entries has sd <= 0.5 step: 6 sd = 3 steps
    assert abs(float(steps.mean()) - 100.0) <= 3.0, float(steps.mean())
    assert float(steps.min()) > 40 and float(steps.max()) < 160
    torch.testing.assert_close(stoch.weight_scale, torch.full((4,), step), rtol=1e-5, atol=0)


def test_apply_update_validation_and_pending_backward():
    _, layer = _pair()
    with pytest.raises(ValueError, match="shape"):
        layer.apply_update(torch.zeros(40, 12))
    with pytest.raises(ValueError, match="non-finite"):
        layer.apply_update(torch.full((12, 40), float("nan")))
    with pytest.raises(TypeError, match="floating"):
        layer.apply_update(torch.zeros(12, 40, dtype=torch.int32))
    x = torch.randn(2, 40, requires_grad=True)
    y = layer(x).sum()
    layer.apply_update(torch.full((12, 40), 1e-3))
    with pytest.raises(RuntimeError, match="inplace"):
        y.backward()


def test_training_with_apply_update_descends():
    torch.manual_seed(0)
    teacher = nn.Linear(32, 8)
    x = torch.randn(256, 32)
    target = teacher(x).detach()
    student = Int8Linear.from_linear(nn.Linear(32, 8), group_size=64)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(200):
        loss = F.mse_loss(student(x), target)
        losses.append(loss.item())
        loss.backward()
        student.apply_update(-0.05 * student.weight_grad, g)
        with torch.no_grad():
            student.bias -= 0.05 * student.bias.grad
        student.zero_weight_grad()
        student.bias.grad = None
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_layer_validation():
    with pytest.raises(ValueError, match="dimensions"):
        Int8Linear(torch.zeros(4))
    with pytest.raises(ValueError, match="bias"):
        Int8Linear(torch.zeros(3, 4), torch.zeros(4))
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        Int8Linear.from_linear(nn.Conv1d(1, 1, 1))
    layer = Int8Linear(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="in_features"):
        layer(torch.zeros(2, 5))
    assert "group_size=256" in repr(layer)


# ----- quantize_linear_layers ---------------------------------------------------------------
class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(16, 16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        h = x + self.attn(x)
        h = h + self.mha(h, h, h, need_weights=False)[0]
        return h + self.mlp(h)


def test_quantize_linear_layers_copy_pattern_and_output():
    torch.manual_seed(0)
    model = _Block()
    before = copy.deepcopy(model.state_dict())
    q = quantize_linear_layers(model, "mlp.*", group_size=64)
    assert type(model.mlp[0]) is nn.Linear  # the original is untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert type(q.attn) is nn.Linear
    assert type(q.mlp[0]) is Int8Linear and type(q.mlp[2]) is Int8Linear
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(q(x), model(x), rtol=0.05, atol=0.05)
    everything = quantize_linear_layers(model)  # MHA's out_proj (a Linear subclass) is skipped
    assert type(everything.attn) is Int8Linear
    assert type(everything.mha.out_proj) is not Int8Linear
    everything(x).sum().backward()
    assert everything.attn.weight_grad is not None
    by_callable = quantize_linear_layers(model, lambda name: name == "attn")
    assert type(by_callable.attn) is Int8Linear and type(by_callable.mlp[0]) is nn.Linear
    same = quantize_linear_layers(model, "attn", inplace=True)
    assert same is model and type(model.attn) is Int8Linear
    root = quantize_linear_layers(nn.Linear(4, 4))
    assert type(root) is Int8Linear


def test_quantize_linear_layers_errors():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="matched no"):
        quantize_linear_layers(model, "nothing*")
    tied = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match="tied"):
        quantize_linear_layers(tied)
    with pytest.raises(TypeError, match="pattern"):
        quantize_linear_layers(model, 3)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        quantize_linear_layers("model")
