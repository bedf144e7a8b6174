"""Input validation shared by the whole library.

Every public function validates user input through these helpers so that errors are uniform:
a ``ValueError`` or ``TypeError`` that names the offending argument, its value and what was
expected. Nothing here is public API.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(x: Any, name: str) -> Tensor:
    """Return ``x`` if it is a tensor, else raise ``TypeError``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_float_tensor(x: Any, name: str, *, ndim: int | tuple[int, ...] | None = None) -> Tensor:
    """Check that ``x`` is a real floating-point tensor with the given number of dimensions."""
    x = check_tensor(x, name)
    if x.device.type == "meta":
        raise ValueError(
            f"{name} is on the meta device (a shape without values): move it to a real device"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have a real floating dtype, got {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.ndim not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimensions, "
                f"got shape {tuple(x.shape)}"
            )
    return x


def all_finite(x: Tensor) -> bool:
    """Whether every entry of ``x`` is finite, from one reduction.

    ``aminmax`` propagates NaN and +-Inf, so its two values are finite exactly when every entry
    is: one pass and one host sync instead of ``torch.isfinite(x).all()``'s elementwise passes
    and boolean temporary (on an FNO's hidden state 0.33 ms against 6.9 ms). Integer and boolean
    tensors are always finite; complex ones are checked through their real view.

    Returns:
        ``True`` if no entry is NaN or +-Inf (also for an empty tensor).
    """
    if not x.numel() or not (x.is_floating_point() or x.is_complex()):
        return True
    x = torch.view_as_real(x.detach()) if x.is_complex() else x.detach()
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_finite(x: Tensor, name: str) -> Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf (one reduction when it does not)."""
    if not all_finite(x):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")
    return x


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_positive_float(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float if it is finite and positive (or zero when allowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        expected = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {expected}, got {value}")
    return value


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return str(value)


def default_tol(dtype: torch.dtype) -> float:
    """Default relative residual tolerance for iterative solvers in ``dtype``.

    float64 gets 1e-8; float32 gets 1e-5 (about 100 machine epsilons, what a Krylov method
    with full reorthogonalization reliably certifies in single precision). Half precision
    operators (their products rounded to 11 or 8 bits) get 1e-2 (float16) and 5e-2 (bfloat16):
    a few units of their epsilon times the growth of rounding over a product.

    Returns:
        The tolerance for ``dtype``.
    """
    if dtype == torch.float64:
        return 1e-8
    if dtype == torch.float16:
        return 1e-2
    if dtype == torch.bfloat16:
        return 5e-2
    return 1e-5
