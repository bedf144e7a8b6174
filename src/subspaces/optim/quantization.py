"""Group-wise INT4/INT8 quantization, stochastic rounding and an INT8-weight ``nn.Linear``.

The low-precision pieces of Q-GaLore (Zhang et al. 2024), built from tensors only so that they can
live in optimizer state and in ``state_dict()`` (loadable with ``torch.load(weights_only=True)``):

* :func:`pack_int4` / :func:`unpack_int4`: asymmetric min-max quantization to 16 levels per group
  of ``group_size`` consecutive values (row-major order), **really 4 bits per value**: two codes
  per ``uint8`` byte, low nibble first (the reference Q-GaLore code stores one 4-bit code per byte).
* :func:`pack_int8` / :func:`unpack_int8` / :func:`quantize_int8`: the same with 256 levels, one
  ``uint8`` code per value, optionally with stochastic rounding.
* :func:`stochastic_round`: ``floor(x + U)``, ``U ~ Uniform[0, 1)``, unbiased.
* :class:`Int8Linear`: a drop-in replacement of ``nn.Linear`` whose weight is stored as INT8 codes
  and dequantized on the fly; its float weight gradient lands in ``weight.grad`` as for any
  parameter (``weight`` is a one-element float :class:`Int8Weight`), and
  :meth:`Int8Linear.apply_update` re-quantizes with stochastic rounding, so that updates smaller
  than one quantization step survive in expectation. :func:`quantize_linear_layers` converts a
  model, :func:`int8_module_of` lets an optimizer recognize the INT8 weights among
  ``model.parameters()``.

Quantization grid. Every group ``g`` stores a float32 ``scale[g] = (max - min) / (2^b - 1)`` and a
float32 ``zero[g] = min`` (the group minimum, a float offset), and code ``q`` means
``zero + scale * q``. Q-GaLore instead rounds the zero point to an integer code, which shifts the
grid by up to half a step and can clip the group's extremes; with a float offset the rounding
error is at most ``scale / 2`` for every value (up to float32 rounding of ``scale`` and ``zero``).
A constant group has ``scale = 0`` and is reproduced exactly. Storage per value: 4 bits (INT4) or
8 bits (INT8) plus 8 bytes per group (0.03125 B/value at ``group_size=256``).

Reference:
    Zhang, Jaiswal, Yin, Liu, Zhao, Tian, Wang. "Q-GaLore: Quantized GaLore with INT4 Projection
    and Layer-Adaptive Low-Rank Gradients." arXiv:2407.08296, 2024.
"""

from __future__ import annotations

import copy
import fnmatch
import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from .._checks import check_finite, check_float_tensor, check_positive_int, check_tensor

__all__ = [
    "Int8Linear",
    "Int8Weight",
    "int8_module_of",
    "pack_int4",
    "pack_int8",
    "quantize_int8",
    "quantize_linear_layers",
    "stochastic_round",
    "unpack_int4",
    "unpack_int8",
]

#: dtype of the stored per-group scales and zero points
SCALE_DTYPE = torch.float32


# ----- stochastic rounding -------------------------------------------------------------------
def stochastic_round(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Round each entry to one of its two neighbouring integers, unbiased: ``floor(x + U)``.

    ``x`` goes up to ``ceil(x)`` with probability ``x - floor(x)`` and down to ``floor(x)``
    otherwise, so ``E[stochastic_round(x)] = x`` (up to the ``2^-24`` granularity of
    ``torch.rand``). Computed as ``floor(x) + (U < x - floor(x))`` with ``U ~ Uniform[0, 1)``,
    which has the same distribution as ``floor(x + U)`` without the rounding of ``x + U``. Half
    precision inputs are rounded in float32. Q-GaLore (Zhang et al. 2024) uses it to re-quantize
    INT8 weights so that small updates survive in expectation.

    Args:
        x: real floating-point tensor (not modified).
        generator: source of the uniform draws (its device must match ``x``); ``None`` uses the
            global generator.

    Returns:
        A new tensor of ``x``'s shape and dtype holding integers.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> r = stochastic_round(torch.full((100_000,), 2.25), g)
        >>> sorted(set(r.tolist())), abs(r.mean().item() - 2.25) < 0.01
        ([2.0, 3.0], True)
    """
    check_float_tensor(x, "x")
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    low = torch.floor(work)
    u = torch.rand(work.shape, generator=generator, dtype=work.dtype, device=work.device)
    return (low + (u < work - low).to(work.dtype)).to(x.dtype)


# ----- group-wise quantization core ----------------------------------------------------------
def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _quantize(
    x: Tensor,
    bits: int,
    group_size: int,
    stochastic: bool,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric min-max quantization of ``x.reshape(-1)`` in groups; codes as flat ``uint8``."""
    check_float_tensor(x, "x")
    group_size = check_positive_int(group_size, "group_size")
    if not isinstance(stochastic, bool):
        raise TypeError(f"stochastic must be a bool, got {type(stochastic).__name__}")
    work = _work_dtype(x.dtype)
    flat = x.detach().reshape(-1).to(work)
    n = flat.numel()
    num_groups = -(-n // group_size)
    pad = num_groups * group_size - n
    if pad:  # repeat the last value: the last group's min and max do not change
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    groups = flat.view(num_groups, group_size)
    levels = 2**bits - 1
    if n:
        lo, hi = groups.amin(dim=1), groups.amax(dim=1)
    else:
        lo = hi = groups.new_zeros(0)
    if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
        check_finite(x, "x")  # NaN and Inf reach the group min/max; the slow check names them
    scale = ((hi - lo) / levels).to(SCALE_DTYPE)
    zero = lo.to(SCALE_DTYPE)
    if not bool(torch.isfinite(scale).all()):
        raise ValueError(
            "x has a group whose range max - min overflows float32; rescale x before quantizing"
        )
    s = scale.to(work).unsqueeze(1)
    z = zero.to(work).unsqueeze(1)
    positive = s > 0
    v = torch.where(positive, (groups - z) / torch.where(positive, s, torch.ones_like(s)), 0.0)
    q = stochastic_round(v, generator) if stochastic else torch.round(v)
    codes = q.clamp_(0, levels).to(torch.uint8).reshape(-1)[:n]
    return codes, scale, zero


def _check_groups(scale: Tensor, zero: Tensor, n: int, group_size: int) -> int:
    group_size = check_positive_int(group_size, "group_size")
    check_float_tensor(scale, "scale", ndim=1)
    check_float_tensor(zero, "zero", ndim=1)
    num_groups = -(-n // group_size)
    if scale.numel() != num_groups or zero.numel() != num_groups:
        raise ValueError(
            f"scale and zero must have ceil({n} / {group_size}) = {num_groups} entries, got "
            f"{scale.numel()} and {zero.numel()}"
        )
    return group_size


def _dequantize(
    codes: Tensor, scale: Tensor, zero: Tensor, group_size: int, dtype: torch.dtype
) -> Tensor:
    """``zero + scale * codes`` group by group on flat codes, computed in float32 or float64."""
    n = codes.numel()
    work = _work_dtype(dtype)
    num_groups = scale.numel()
    if n == num_groups * group_size:  # whole groups: no padded copy
        groups = codes.reshape(num_groups, group_size).to(work)
    else:
        padded = torch.zeros(num_groups * group_size, dtype=work, device=codes.device)
        padded[:n] = codes.reshape(-1).to(work)
        groups = padded.view(num_groups, group_size)
    out = groups * scale.to(work).unsqueeze(1) + zero.to(work).unsqueeze(1)
    return out.reshape(-1)[:n].to(dtype)


def _check_shape(shape: Any) -> torch.Size:
    try:
        size = torch.Size(shape)
    except (TypeError, ValueError) as err:
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}") from err
    if any(d < 0 for d in size):
        raise ValueError(f"shape must have non-negative sizes, got {tuple(size)}")
    return size


# ----- INT4 ----------------------------------------------------------------------------------
def pack_int4(
    x: Tensor,
    group_size: int = 256,
    *,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Quantize ``x`` to 4-bit codes per group and pack two codes per byte.

    The flattened (row-major) tensor is cut into groups of ``group_size`` values (the last one
    may be shorter); each group is mapped to 16 levels between its minimum and maximum
    (asymmetric min-max, as the INT4 projection matrices of Q-GaLore, Zhang et al. 2024). The
    rounding error of every value is at most half of its group's ``scale``.

    Args:
        x: real floating-point tensor of any shape (not modified); must be finite.
        group_size: number of consecutive values sharing one scale and zero point.
        stochastic: round stochastically (unbiased, :func:`stochastic_round`) instead of to
            the nearest level.
        generator: random source for ``stochastic=True``.

    Returns:
        ``(packed, scale, zero)``: ``packed`` is a ``uint8`` tensor of ``ceil(numel / 2)`` bytes,
        code ``2i`` in the low and code ``2i + 1`` in the high nibble of byte ``i`` (an odd
        ``numel`` leaves the last high nibble 0); ``scale`` and ``zero`` are float32 tensors of
        ``ceil(numel / group_size)`` entries, value = ``zero + scale * code``.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor or ``group_size`` not an int.
        ValueError: if ``x`` holds NaN/Inf, ``group_size < 1`` or a group's range overflows.

    Example:
        >>> x = torch.linspace(-1, 1, 7)
        >>> packed, scale, zero = pack_int4(x, group_size=4)
        >>> packed.dtype, packed.numel(), scale.numel()
        (torch.uint8, 4, 2)
        >>> y = unpack_int4(packed, scale, zero, x.shape, group_size=4)
        >>> bool(((x - y).abs() <= scale.repeat_interleave(4)[:7] / 2 + 1e-7).all())
        True
    """
    codes, scale, zero = _quantize(x, 4, group_size, stochastic, generator)
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    pairs = codes.view(-1, 2)
    packed = pairs[:, 0] | (pairs[:, 1] << 4)
    return packed, scale, zero


def unpack_int4(
    packed: Tensor,
    scale: Tensor,
    zero: Tensor,
    shape: Sequence[int] | torch.Size,
    group_size: int = 256,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Inverse of :func:`pack_int4`: unpack the nibbles and dequantize ``zero + scale * code``.

    Args:
        packed: ``uint8`` tensor of ``ceil(prod(shape) / 2)`` bytes from :func:`pack_int4`.
        scale: per-group scales from :func:`pack_int4`.
        zero: per-group zero points (group minima) from :func:`pack_int4`.
        shape: shape of the original tensor.
        group_size: the ``group_size`` used to pack.
        dtype: floating dtype of the result (computed in float32, or float64 for float64).

    Returns:
        The dequantized tensor of the given shape and dtype.

    Raises:
        TypeError: on a non-``uint8`` ``packed``, non-float ``scale``/``zero`` or bad ``shape``.
        ValueError: if the sizes of ``packed``, ``scale`` or ``zero`` do not match ``shape``.

    Example:
        >>> x = torch.tensor([0.0, 1.0, 2.0, 15.0])
        >>> unpack_int4(*pack_int4(x), x.shape).tolist()
        [0.0, 1.0, 2.0, 15.0]
    """
    check_tensor(packed, "packed")
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {packed.dtype}")
    size = _check_shape(shape)
    n = size.numel()
    if packed.numel() != (n + 1) // 2:
        raise ValueError(
            f"packed must have ceil({n} / 2) = {(n + 1) // 2} bytes for shape {tuple(size)}, "
            f"got {packed.numel()}"
        )
    group_size = _check_groups(scale, zero, n, group_size)
    flat = packed.reshape(-1)
    codes = torch.stack([flat & 0x0F, flat >> 4], dim=1).reshape(-1)[:n]
    return _dequantize(codes, scale, zero, group_size, dtype).reshape(size)


# ----- INT8 ----------------------------------------------------------------------------------
def quantize_int8(
    x: Tensor,
    group_size: int = 256,
    *,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Quantize ``x`` to 8-bit codes per group, by nearest or stochastic rounding.

    Asymmetric min-max per group of ``group_size`` consecutive (row-major) values, 256 levels.
    With ``stochastic=True`` the codes are :func:`stochastic_round` of the exact positions on
    the grid, so ``E[dequantized] = x`` (the re-quantization of Q-GaLore's INT8 weights,
    Zhang et al. 2024).

    Args:
        x: real floating-point tensor (not modified); must be finite.
        group_size: number of consecutive values sharing one scale and zero point.
        stochastic: stochastic (unbiased) instead of round-to-nearest.
        generator: random source for ``stochastic=True``.

    Returns:
        ``(codes, scale, zero)``: ``uint8`` codes of ``x``'s shape and float32 per-group scales
        and zero points (``ceil(numel / group_size)`` each); value = ``zero + scale * code``.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor or an option has the wrong type.
        ValueError: if ``x`` holds NaN/Inf, ``group_size < 1`` or a group's range overflows.

    Example:
        >>> x = torch.tensor([0.0, 0.1, 0.3, 25.5])
        >>> codes, scale, zero = quantize_int8(x)
        >>> codes.tolist(), round(scale.item(), 6), zero.item()
        ([0, 1, 3, 255], 0.1, 0.0)
    """
    codes, scale, zero = _quantize(x, 8, group_size, stochastic, generator)
    return codes.reshape(x.shape), scale, zero


def pack_int8(x: Tensor, group_size: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """Quantize ``x`` to 8-bit codes per group by round-to-nearest (see :func:`quantize_int8`).

    Args:
        x: real floating-point tensor (not modified); must be finite.
        group_size: number of consecutive values sharing one scale and zero point.

    Returns:
        ``(codes, scale, zero)`` as :func:`quantize_int8` with ``stochastic=False``: ``uint8``
        codes of ``x``'s shape, float32 per-group scales and zero points (group minima). The
        error of every value is at most half its group's scale (Zhang et al. 2024, Q-GaLore).

    Example:
        >>> x = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
        >>> codes, scale, zero = pack_int8(x, group_size=64)
        >>> codes.shape, scale.shape
        (torch.Size([3, 100]), torch.Size([5]))
        >>> err = (unpack_int8(codes, scale, zero, group_size=64) - x).abs().reshape(-1)
        >>> bool((err <= scale.repeat_interleave(64)[:300] / 2 + 1e-6).all())
        True
    """
    return quantize_int8(x, group_size)


def unpack_int8(
    codes: Tensor,
    scale: Tensor,
    zero: Tensor,
    group_size: int = 256,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Dequantize 8-bit codes from :func:`pack_int8`/:func:`quantize_int8`: ``zero + scale * q``.

    Args:
        codes: ``uint8`` codes; the result has their shape.
        scale: per-group scales.
        zero: per-group zero points (group minima).
        group_size: the ``group_size`` used to quantize.
        dtype: floating dtype of the result (computed in float32, or float64 for float64).

    Returns:
        The dequantized tensor, shape ``codes.shape``.

    Raises:
        TypeError: on non-``uint8`` codes or non-float scales.
        ValueError: if ``scale``/``zero`` do not have one entry per group.

    Example:
        >>> unpack_int8(*pack_int8(torch.tensor([1.0, 2.0, 3.0]))).tolist()
        [1.0, 2.0, 3.0]
    """
    check_tensor(codes, "codes")
    if codes.dtype != torch.uint8:
        raise TypeError(f"codes must be a uint8 tensor, got {codes.dtype}")
    group_size = _check_groups(scale, zero, codes.numel(), group_size)
    return _dequantize(codes, scale, zero, group_size, dtype).reshape(codes.shape)


# ----- INT8 linear layer ---------------------------------------------------------------------
#: INT8 weight parameter -> weak reference to the Int8Linear that owns it
_INT8_OWNERS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _holder_data(shape: torch.Size, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """A zero tensor of ``shape`` backed by a single element (all strides 0)."""
    return torch.empty_strided(shape, (0,) * len(shape), dtype=dtype, device=device).zero_()


def _rebuild_int8_weight(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, requires_grad: bool
) -> Int8Weight:
    return Int8Weight(_holder_data(torch.Size(shape), dtype, device), requires_grad)


class Int8Weight(nn.Parameter):
    """The float ``weight`` Parameter of an :class:`Int8Linear`: it carries the gradient.

    Torch's gradient utilities (``model.zero_grad()``, ``optimizer.zero_grad()``,
    ``clip_grad_norm_``, ``GradScaler.unscale_`` and its inf checks, ``requires_grad_``,
    post-accumulate-grad hooks) all act on ``p.grad`` of the parameters they are given, and an
    integer tensor cannot hold a float gradient. So the layer's ``weight`` is this float
    Parameter of shape ``(out_features, in_features)`` whose ``.grad`` autograd fills with the
    gradient of the dequantized weight, exactly as for ``nn.Linear``; its *values* are not the
    weight: it is a zero tensor backed by one element (all strides 0, 4 or 8 bytes), and the
    weight itself lives in the layer's ``uint8`` buffer ``weight_codes`` with its group scales
    and zero points. Deep copies and pickling rebuild the one-element storage instead of
    materializing the full matrix. Its dtype is float32 (float64 after ``.double()``).

    Example:
        >>> layer = Int8Linear(torch.randn(4, 3))
        >>> w = layer.weight
        >>> isinstance(w, nn.Parameter), w.shape, w.dtype, w.untyped_storage().nbytes()
        (True, torch.Size([4, 3]), torch.float32, 4)
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> Int8Weight:
        if id(self) in memo:
            return cast(Int8Weight, memo[id(self)])
        out = _rebuild_int8_weight(tuple(self.shape), self.dtype, self.device, self.requires_grad)
        memo[id(self)] = out
        return out

    def __reduce_ex__(self, proto: Any) -> Any:
        return (
            _rebuild_int8_weight,
            (tuple(self.shape), self.dtype, self.device, self.requires_grad),
        )

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        return (
            f"Int8Weight(shape={tuple(self.shape)}, dtype={self.dtype}, "
            f"requires_grad={self.requires_grad}; values in the layer's weight_codes)"
        )


def int8_module_of(param: Tensor) -> Int8Linear | None:
    """Return the :class:`Int8Linear` whose ``weight`` is ``param``, or ``None``.

    Lets an optimizer that receives ``model.parameters()`` recognize the quantized weights (it
    must call :meth:`Int8Linear.apply_update` for them instead of changing ``param`` in place,
    as Q-GaLore's optimizer does for its INT8 layers; Zhang et al. 2024). The lookup holds no
    strong reference to the parameter or the module.

    Args:
        param: any tensor.

    Returns:
        The owning module, or ``None`` for every other tensor.

    Example:
        >>> layer = Int8Linear.from_linear(nn.Linear(4, 3))
        >>> int8_module_of(layer.weight) is layer, int8_module_of(layer.bias)
        (True, None)
    """
    if not isinstance(param, Int8Weight):
        return None
    ref = _INT8_OWNERS.get(param)
    module = ref() if ref is not None else None
    if module is None or module.weight is not param:
        return None
    return module


class _Int8LinearFunction(torch.autograd.Function):
    """``y = x W^T + b`` with ``W`` dequantized from INT8 codes in forward and again in backward.

    Only the codes, scales and zero points are saved, never the float weight. The gradient
    ``grad_out^T x`` of the dequantized weight is returned for ``weight`` (the layer's
    :class:`Int8Weight`), so autograd accumulates it into ``weight.grad`` like any parameter's.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        codes: Tensor,
        scale: Tensor,
        zero: Tensor,
        bias: Tensor | None,
        group_size: int,
    ) -> Tensor:
        dense = _dequantize(codes, scale, zero, group_size, x.dtype).view(codes.shape)
        ctx.group_size = group_size
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, codes, scale, zero)
        return F.linear(x, dense, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, codes, scale, zero = ctx.saved_tensors
        grad_x = grad_w = grad_bias = None
        if ctx.needs_input_grad[0]:
            dense = _dequantize(codes, scale, zero, ctx.group_size, grad_out.dtype)
            grad_x = grad_out @ dense.view(codes.shape)
        go = grad_out.reshape(-1, codes.shape[0])
        if ctx.has_bias and ctx.needs_input_grad[5]:
            grad_bias = go.sum(dim=0)
        if ctx.needs_input_grad[1]:
            acc = torch.promote_types(grad_out.dtype, torch.float32)
            grad_w = go.to(acc).T @ x.reshape(-1, codes.shape[1]).to(acc)
        return grad_x, grad_w, None, None, None, grad_bias, None


class Int8Linear(nn.Module):
    """``nn.Linear`` with its weight stored as INT8 codes, dequantized on the fly (Q-GaLore).

    The weight is kept as ``uint8`` codes (buffer ``weight_codes``) with a float32 scale and
    zero point per group of ``group_size`` consecutive row-major entries (1 byte + 8/``group_size``
    bytes per weight instead of 4), as the INT8 weights of Q-GaLore (Zhang et al. 2024).
    ``forward`` equals ``F.linear(x, W, bias)`` with ``W = dequantized_weight()`` cast to ``x``'s
    dtype; a custom autograd function recomputes ``W`` in backward instead of keeping it.

    Gradients: ``weight`` is an :class:`Int8Weight`, a float ``nn.Parameter`` of the weight's
    shape backed by a single element, whose ``.grad`` receives the float gradient of the
    dequantized weight (float32, float64 after ``.double()``). So the weight behaves as an
    ordinary parameter for every torch utility: ``model.zero_grad()`` and
    ``optimizer.zero_grad()`` clear it, ``clip_grad_norm_`` counts and clips it,
    ``GradScaler`` unscales it and checks it for Inf/NaN, ``requires_grad_(False)`` freezes it,
    and ``torch.autograd.grad`` returns it instead of accumulating. Its values are not the weight
    (read :meth:`dequantized_weight`); an optimizer must update the layer through
    :meth:`apply_update`, which re-quantizes with stochastic rounding
    (:class:`~subspaces.optim.SubspaceAdamW` does, recognizing the weight with
    :func:`int8_module_of`; an optimizer that writes into ``weight`` in place fails with torch's
    "more than one element ... refers to a single memory location" error). The bias is an
    ordinary float ``nn.Parameter``.

    ``state_dict()`` stores the codes under ``weight`` (``uint8``) with ``weight_scale`` and
    ``weight_zero``; ``.half()``, ``.double()`` and ``.to(dtype)`` cast the bias and never the
    codes or the quantization grid. Under ``DistributedDataParallel`` the weight gradient is
    averaged like any other, but DDP's initial broadcast cannot write into the one-element
    ``weight``: build or load the model identically on every rank and pass ``init_sync=False``.

    Args:
        weight: ``(out_features, in_features)`` float weight to quantize (not modified).
        bias: optional ``(out_features,)`` float bias (copied into a new Parameter).
        group_size: entries per quantization group.
        requires_weight_grad: initial ``weight.requires_grad`` (``False`` freezes the weight and
            saves the weight-gradient matmul).

    Attributes:
        weight: the :class:`Int8Weight` gradient carrier, shape ``(out_features, in_features)``.
        weight_codes: ``uint8`` codes, shape ``(out_features, in_features)``.
        bias: float bias Parameter or ``None``.
        weight_scale: float32 buffer, one scale per group.
        weight_zero: float32 buffer, one zero point (group minimum) per group.

    Raises:
        TypeError: if ``weight``/``bias`` are not floating-point tensors.
        ValueError: on a non-2-D weight, a bias of the wrong shape or non-finite weights.

    Example:
        >>> torch.manual_seed(0) is not None
        True
        >>> dense = nn.Linear(8, 4)
        >>> layer = Int8Linear.from_linear(dense, group_size=16)
        >>> x = torch.randn(5, 8, requires_grad=True)
        >>> y = layer(x)
        >>> torch.equal(y, F.linear(x, layer.dequantized_weight(), layer.bias))
        True
        >>> y.sum().backward()
        >>> layer.weight.grad.shape, layer.weight_codes.dtype
        (torch.Size([4, 8]), torch.uint8)
        >>> layer.zero_grad(); layer.weight.grad is None
        True
    """

    weight: Int8Weight
    bias: nn.Parameter | None
    weight_codes: Tensor
    weight_scale: Tensor
    weight_zero: Tensor

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None = None,
        group_size: int = 256,
        *,
        requires_weight_grad: bool = True,
    ) -> None:
        super().__init__()
        check_float_tensor(weight, "weight", ndim=2)
        self.group_size = check_positive_int(group_size, "group_size")
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        codes, scale, zero = quantize_int8(weight, self.group_size)
        holder_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        self.weight = Int8Weight(
            _holder_data(codes.shape, holder_dtype, codes.device), bool(requires_weight_grad)
        )
        if bias is not None:
            check_float_tensor(bias, "bias", ndim=1)
            if bias.shape[0] != self.out_features:
                raise ValueError(
                    f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}"
                )
            self.bias = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias", None)
        # the codes are saved under "weight" by _save_to_state_dict (the INT8 checkpoint format)
        self.register_buffer("weight_codes", codes, persistent=False)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero", zero)

    # the registry follows the weight Parameter through assignment, deepcopy and pickling
    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "weight" and isinstance(value, Int8Weight):
            _INT8_OWNERS[value] = weakref.ref(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        weight = self._parameters.get("weight")
        if weight is not None and not isinstance(weight, Int8Weight):  # unpickled as Parameter
            weight = Int8Weight(
                _holder_data(weight.shape, weight.dtype, weight.device), weight.requires_grad
            )
            self._parameters["weight"] = weight
        if weight is not None:
            _INT8_OWNERS[weight] = weakref.ref(self)

    @property
    def requires_weight_grad(self) -> bool:
        """Whether backward computes the weight's gradient (``weight.requires_grad``)."""
        return bool(self.weight.requires_grad)

    @property
    def weight_grad(self) -> Tensor | None:
        """The weight's float gradient: an alias of ``weight.grad`` (kept for compatibility)."""
        return self.weight.grad

    @weight_grad.setter
    def weight_grad(self, value: Tensor | None) -> None:
        self.weight.grad = value

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Int8Linear:
        # ``.half()``/``.double()`` cast the bias but never the quantization grid: a float16 zero
        # point would move every weight by more than half a step. Devices still change. The
        # weight Parameter is kept out of ``fn`` (which would materialize its full matrix) and
        # rebuilt with one element on the new device: float64 after ``.double()``, else float32.
        scale, zero = self.weight_scale, self.weight_zero
        weight = self._parameters["weight"]
        self._parameters["weight"] = None
        try:
            super()._apply(fn, recurse)
        finally:
            self._parameters["weight"] = weight
        for name, kept in (("weight_scale", scale), ("weight_zero", zero)):
            now = self._buffers[name]
            if now is not None and now.dtype != kept.dtype:
                self._buffers[name] = kept.to(device=now.device)
        if weight is not None:
            probe = fn(torch.zeros((), dtype=weight.dtype, device=weight.device))
            dtype = torch.float64 if probe.dtype == torch.float64 else torch.float32
            if dtype != weight.dtype or probe.device != weight.device:
                grad = weight.grad
                data = _holder_data(weight.shape, dtype, probe.device)
                in_place = torch._has_compatible_shallow_copy_type(weight, data) and not (
                    torch.__future__.get_overwrite_module_params_on_conversion()
                )
                if in_place:  # keep the Parameter object, as Module._apply does
                    weight.grad = None
                    weight.data = data
                else:  # e.g. to or from the meta device: a new Parameter, as torch does
                    weight = Int8Weight(data, weight.requires_grad)
                    self._parameters["weight"] = weight
                    _INT8_OWNERS[weight] = weakref.ref(self)
                if grad is not None:
                    weight.grad = grad.to(device=probe.device, dtype=dtype)
        return self

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        codes = self.weight_codes
        destination[prefix + "weight"] = codes if keep_vars else codes.detach()

    def _load_from_state_dict(
        self,
        state_dict: Any,
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "weight"
        rest = {k: v for k, v in state_dict.items() if k != key}
        weight = self._parameters["weight"]
        self._parameters["weight"] = None  # the saved "weight" is the codes, loaded below
        try:
            super()._load_from_state_dict(
                rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
        finally:
            self._parameters["weight"] = weight
        if key not in state_dict:
            missing_keys.append(key)
            return
        codes = state_dict[key]
        if not isinstance(codes, Tensor) or codes.dtype != torch.uint8:
            got = codes.dtype if isinstance(codes, Tensor) else type(codes).__name__
            error_msgs.append(
                f"{key} of an Int8Linear must hold uint8 INT8 codes, got {got}; quantize a float "
                "nn.Linear with Int8Linear.from_linear or quantize_linear_layers instead"
            )
            return
        if codes.shape != self.weight_codes.shape:
            error_msgs.append(
                f"size mismatch for {key}: copying codes of shape {tuple(codes.shape)}, the "
                f"layer has {tuple(self.weight_codes.shape)}"
            )
            return
        with torch.no_grad():
            self.weight_codes.copy_(codes)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 256) -> Int8Linear:
        """Quantize an ``nn.Linear`` (not modified) into a new :class:`Int8Linear`.

        Args:
            linear: the float layer.
            group_size: entries per quantization group (Q-GaLore uses 256; Zhang et al. 2024).

        Returns:
            The INT8 layer on the same device, with a copy of the bias; the weight and the bias
            keep the ``requires_grad`` of the originals.

        Raises:
            TypeError: if ``linear`` is not an ``nn.Linear``.

        Example:
            >>> layer = Int8Linear.from_linear(nn.Linear(300, 2), group_size=256)
            >>> layer.weight_scale.shape, layer.in_features
            (torch.Size([3]), 300)
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        bias = linear.bias
        out = cls(linear.weight, bias, group_size, requires_weight_grad=linear.weight.requires_grad)
        if bias is not None and out.bias is not None:
            out.bias.requires_grad_(bias.requires_grad)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``F.linear(x, W, bias)`` with ``W`` dequantized from the INT8 codes.

        Args:
            x: ``(..., in_features)`` floating-point input.

        Returns:
            ``(..., out_features)`` output.

        Raises:
            ValueError: if the last dimension of ``x`` is not ``in_features``.
        """
        check_float_tensor(x, "x")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have last dimension in_features={self.in_features}, "
                f"got shape {tuple(x.shape)}"
            )
        out: Tensor = _Int8LinearFunction.apply(
            x,
            self.weight,
            self.weight_codes,
            self.weight_scale,
            self.weight_zero,
            self.bias,
            self.group_size,
        )
        return out

    def zero_weight_grad(self, set_to_none: bool = True) -> None:
        """Clear ``weight.grad`` (as ``model.zero_grad()`` does; kept for compatibility).

        Args:
            set_to_none: set it to ``None`` (default) instead of filling it with zeros.
        """
        grad = self.weight.grad
        if set_to_none or grad is None:
            self.weight.grad = None
        else:
            grad.detach_().zero_()

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The float weight the layer computes with: ``zero + scale * code`` per group.

        Args:
            dtype: floating dtype of the result.

        Returns:
            A new ``(out_features, in_features)`` tensor.
        """
        return _dequantize(
            self.weight_codes, self.weight_scale, self.weight_zero, self.group_size, dtype
        ).view(self.weight_codes.shape)

    @torch.no_grad()
    def apply_update(
        self,
        delta: Tensor,
        generator: torch.Generator | None = None,
        *,
        stochastic: bool = True,
    ) -> None:
        """Set ``W <- quantize(dequantized(W) + delta)``, by default with stochastic rounding.

        The new per-group scales and zero points come from the updated weight's min and max;
        stochastic rounding makes the stored weight an unbiased estimate of the float update, so
        steps much smaller than the quantization step still move it in expectation (with
        round-to-nearest they are lost). This is Q-GaLore's weight update (Zhang et al. 2024).
        Codes, scales and zero points are overwritten in place (a backward pending on the old
        weight then raises the usual in-place modification error).

        Args:
            delta: float update of the weight's shape (already scaled by the learning rate,
                sign included: ``W + delta``); not modified.
            generator: random source for the stochastic rounding.
            stochastic: ``False`` rounds to nearest instead.

        Raises:
            TypeError: if ``delta`` is not a floating-point tensor.
            ValueError: if ``delta`` has the wrong shape or holds NaN/Inf.

        Example:
            >>> layer = Int8Linear(torch.tensor([[0.0, 1.0, 25.5]]))
            >>> layer.apply_update(torch.tensor([[0.0, 0.2, 0.0]]))
            >>> [round(v, 4) for v in layer.dequantized_weight().tolist()[0]]
            [0.0, 1.2, 25.5]
        """
        check_float_tensor(delta, "delta")
        if delta.shape != self.weight_codes.shape:
            raise ValueError(
                f"delta must have the weight's shape {tuple(self.weight_codes.shape)}, "
                f"got {tuple(delta.shape)}"
            )
        check_finite(delta, "delta")
        work = torch.promote_types(delta.dtype, torch.float32)
        new = self.dequantized_weight(work) + delta.to(device=self.weight_codes.device, dtype=work)
        codes, scale, zero = quantize_int8(
            new, self.group_size, stochastic=stochastic, generator=generator
        )
        self.weight_codes.copy_(codes)
        self.weight_scale.copy_(scale)
        self.weight_zero.copy_(zero)

    def extra_repr(self) -> str:
        """Sizes, bias and group size for ``repr``."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, group_size={self.group_size}"
        )


def quantize_linear_layers(
    model: nn.Module,
    pattern: str | Callable[[str], bool] = "*",
    group_size: int = 256,
    inplace: bool = False,
) -> nn.Module:
    """Replace the ``nn.Linear`` modules whose names match ``pattern`` by :class:`Int8Linear`.

    Only modules whose type is exactly ``nn.Linear`` are converted (subclasses such as the
    output projection of ``nn.MultiheadAttention`` read ``.weight`` directly and would break).
    Q-GaLore (Zhang et al. 2024) quantizes the attention and MLP projections this way.

    Args:
        model: the model (left untouched unless ``inplace=True``).
        pattern: ``fnmatch`` glob matched against the names of ``model.named_modules()``
            (e.g. ``"*attn*"``, ``"layers.*.mlp.*"``), or a callable ``name -> bool``.
        group_size: entries per quantization group.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The model with the matched layers replaced (a deep copy unless ``inplace``). If ``model``
        itself is a matched ``nn.Linear``, a new :class:`Int8Linear` is returned in both cases.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``pattern`` has the wrong type.
        ValueError: if no ``nn.Linear`` matches, or a matched layer's weight is shared with
            another module (tied weights cannot be quantized separately).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> q = quantize_linear_layers(net, "2")
        >>> type(q[0]).__name__, type(q[2]).__name__, type(net[2]).__name__
        ('Linear', 'Int8Linear', 'Linear')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    match: Callable[[str], bool]
    if isinstance(pattern, str):
        glob = pattern

        def match(name: str) -> bool:
            return fnmatch.fnmatchcase(name, glob)

    elif callable(pattern):
        match = pattern
    else:
        raise TypeError(f"pattern must be a str or a callable, got {type(pattern).__name__}")
    group_size = check_positive_int(group_size, "group_size")
    target = model if inplace else copy.deepcopy(model)

    uses: dict[int, int] = {}
    for _, p in target.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    matched = [
        (name, mod)
        for name, mod in target.named_modules()
        if type(mod) is nn.Linear and bool(match(name))
    ]
    if not matched:
        raise ValueError(f"pattern {pattern!r} matched no nn.Linear module of the model")
    for name, mod in matched:
        if uses.get(id(mod.weight), 0) > 1:
            raise ValueError(
                f"the weight of {name or 'the model'!r} is shared with another module (tied "
                "weights); it cannot be quantized on its own"
            )
    for name, mod in matched:
        new = Int8Linear.from_linear(mod, group_size)
        if name == "":
            return new
        parent_name, _, child = name.rpartition(".")
        parent = target.get_submodule(parent_name) if parent_name else target
        setattr(parent, child, new)
    return target
