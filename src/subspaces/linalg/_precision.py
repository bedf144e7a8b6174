"""Working precision of the iterative algorithms: half-precision operators run in float32.

torch's CPU kernels for QR, SVD and ``eigh`` do not exist in float16/bfloat16, and a Krylov
recurrence kept in 8- or 11-bit mantissas loses orthogonality after a handful of steps. So an
operator whose products are half precision (a float16 or bfloat16 model's Hessian) is wrapped: its
products are taken in its own dtype (that is what the model computes) and the algorithm's algebra
(orthogonalization, the projected problem, recurrences) runs in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..linops import LinearOperator

HALF_DTYPES = (torch.float16, torch.bfloat16)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the algorithms compute in for products of ``dtype``.

    Returns:
        ``torch.float32`` for float16/bfloat16, else ``dtype``.
    """
    return torch.float32 if dtype in HALF_DTYPES else dtype


def to_working_dtype(x: Tensor) -> Tensor:
    """``x`` itself, or a float32 copy of a float16/bfloat16 tensor (CPU QR/SVD/eigh need it).

    Returns:
        ``x`` in :func:`working_dtype` ``(x.dtype)``.
    """
    return x.float() if x.dtype in HALF_DTYPES else x


def pow2_exponent(maxabs: float) -> int:
    """``e`` with ``maxabs / 2**e`` in ``[0.5, 1)`` (0 for 0 or non-finite), kept in +-1000.

    Dividing by ``2**e`` is exact, so scale-invariant (or -equivariant) computations can work on
    values of magnitude ~1, where squares and products neither overflow nor underflow.

    Returns:
        The exponent.

    Example:
        >>> pow2_exponent(1e200) == math.frexp(1e200)[1], pow2_exponent(0.0)
        (True, 0)
    """
    if maxabs == 0.0 or not math.isfinite(maxabs):
        return 0
    return max(-1000, min(1000, math.frexp(maxabs)[1]))


class _Upcast(LinearOperator):
    """``op`` seen in float32: inputs cast to ``op.dtype``, products cast back to float32."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.shape, torch.float32, op.device, op.layout)
        self.inner = op
        self.SELF_ADJOINT = op.SELF_ADJOINT

    def _matmat(self, X: Tensor) -> Tensor:
        return self.inner.matmat(X.to(self.inner.dtype)).to(torch.float32)

    def _adjoint(self) -> LinearOperator:
        return _Upcast(self.inner.T)


def in_working_precision(op: LinearOperator) -> LinearOperator:
    """``op`` itself, or for a half-precision operator a float32 view of it (products in half).

    Returns:
        A :class:`~subspaces.linops.LinearOperator` of dtype :func:`working_dtype` ``(op.dtype)``.

    Raises:
        ValueError: if the operator lives on the meta device (it has no values to compute with).
    """
    if op.device.type == "meta":
        raise ValueError(
            "A is on the meta device (shapes only, no values): move it to a real device"
        )
    return _Upcast(op) if op.dtype in HALF_DTYPES else op
