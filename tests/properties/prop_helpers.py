"""Shared strategies and checks of the property-based tests.

Matrices are drawn from a seed plus a few structural choices (shape, dtype, spectrum, scale,
memory layout, a non-finite entry), not entry by entry: every example is a realistic input and
Hypothesis still shrinks shapes, dtypes and structure to a minimal failing case.

Each property ends in one of two outcomes: a result checked against a dense float64 reference
(eigh / svd / solve / lstsq of the same values, or a closed form), with tolerances derived from
the input dtype; or a documented ``ValueError``/``TypeError`` whose message names the offending
argument or value. Any other exception fails the test.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
from hypothesis import strategies as st

F64 = torch.float64
HALF = (torch.float16, torch.bfloat16)
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

dtypes = st.sampled_from(DTYPES)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
layouts = st.sampled_from(("contiguous", "transposed", "strided"))
scales = st.sampled_from((1.0, 1e-3, 1e3))
SPECTRA = ("random", "psd", "spd", "clustered", "low_rank", "indefinite", "ill", "zero")
spectra = st.sampled_from(SPECTRA)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the library computes in for inputs of ``dtype`` (half -> float32)."""
    return torch.float32 if dtype in HALF else dtype


def slack(dtype: torch.dtype, norm: float, n: int) -> float:
    """Rounding slack of a product in ``dtype``: ``10 eps(dtype) ||A|| sqrt(n)``."""
    return 10.0 * eps(dtype) * float(norm) * math.sqrt(max(n, 1))


def norm2(A: torch.Tensor) -> float:
    """Spectral norm of ``A`` in float64 (0 for an empty matrix)."""
    A = A.to(F64)
    if A.numel() == 0:
        return 0.0
    return float(torch.linalg.matrix_norm(A, ord=2))


def lay_out(M: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``M`` in another memory layout (transposed view or strided slice)."""
    if layout == "transposed" and M.ndim == 2:
        out = M.T.contiguous().T
    elif layout == "strided" and M.ndim == 2:
        big = torch.zeros(M.shape[0], 2 * M.shape[1], dtype=M.dtype)
        big[:, ::2] = M
        out = big[:, ::2]
    elif layout == "strided" and M.ndim == 1:
        big = torch.zeros(2 * M.shape[0], dtype=M.dtype)
        big[::2] = M
        out = big[::2]
    else:
        out = M.contiguous()
    torch.testing.assert_close(out, M, rtol=0, atol=0, equal_nan=True)
    return out


def spectrum(kind: str, n: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Eigenvalues (float64, length ``n``) of the requested kind."""
    if n == 0:
        return torch.zeros(0, dtype=F64)
    r = torch.randn(n, generator=g, dtype=F64)
    if kind == "random":
        lam = r
    elif kind == "psd":
        lam = r.abs()
        lam[: n // 3] = 0.0
    elif kind == "spd":
        lam = r.abs() + 0.5
    elif kind == "clustered":
        lam = torch.tensor([1.0, -0.5, 2.0], dtype=F64)[torch.arange(n) % 3]
    elif kind == "low_rank":
        lam = torch.zeros(n, dtype=F64)
        lam[: max(1, n // 3)] = r[: max(1, n // 3)].abs() + 1.0
    elif kind == "indefinite":
        lam = r.sign() * (r.abs() + 0.1)
    elif kind == "ill":  # condition 1e6
        lam = torch.logspace(0, -6, n, dtype=F64)
    elif kind == "zero":
        lam = torch.zeros(n, dtype=F64)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return lam * scale


def orthogonal(n: int, g: torch.Generator) -> torch.Tensor:
    if n == 0:
        return torch.zeros(0, 0, dtype=F64)
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return Q * torch.where(torch.diagonal(R) < 0, -1.0, 1.0)


def symmetric(lam: torch.Tensor, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """``Q diag(lam) Q^T`` rounded to ``dtype``, exactly symmetric in ``dtype``."""
    Q = orthogonal(lam.shape[0], g)
    A = (Q * lam) @ Q.T
    return ((A + A.T) / 2).to(dtype)


def general(m: int, n: int, g: torch.Generator, dtype: torch.dtype, scale: float = 1.0):
    return (torch.randn(m, n, generator=g, dtype=F64) * scale).to(dtype)


def poison(M: torch.Tensor, value: float, g: torch.Generator, *, sym: bool = False):
    """A copy of ``M`` with one entry (two mirrored ones if ``sym``) set to ``value``."""
    M = M.clone()
    if M.numel() == 0:
        return M
    flat = int(torch.randint(0, M.numel(), (1,), generator=g))
    idx = list(torch.unravel_index(torch.tensor(flat), M.shape))
    M[tuple(int(i) for i in idx)] = value
    if sym and M.ndim == 2:
        M[int(idx[1]), int(idx[0])] = value
    return M


nonfinite = st.sampled_from((float("nan"), float("inf"), float("-inf")))


# ----- outcomes -----------------------------------------------------------------------------------
class Rejected(Exception):
    """Raised by :func:`outcome` when the library rejected the input with a documented error."""


def _names_in(message: str, names: Iterable[str]) -> bool:
    low = message.lower()
    for name in names:
        if re.search(r"(?<![a-z0-9_])" + re.escape(name.lower()) + r"(?![a-z0-9_])", low):
            return True
    return False


def outcome(fn: Callable[[], Any], *, may_reject: Iterable[str] = ()) -> Any:
    """Run ``fn``; return its result, or ``Rejected`` for a documented, named error.

    A ``ValueError``/``TypeError`` counts as a documented rejection only if ``may_reject`` is
    non-empty and the message names one of those words (argument names or what was wrong);
    anything else (another exception type, or a message that names none of them) is re-raised
    and fails the test.

    Returns:
        ``fn()``, or the class :class:`Rejected`.
    """
    names = tuple(may_reject)
    try:
        return fn()
    except (ValueError, TypeError) as err:
        if names and _names_in(str(err), names):
            return Rejected
        raise AssertionError(
            f"unexpected {type(err).__name__} (allowed to name one of {names}): {err}"
        ) from err


def must_reject(fn: Callable[[], Any], names: Iterable[str]) -> str:
    """``fn`` must raise ValueError/TypeError whose message names one of ``names``.

    Returns:
        The error message.
    """
    names = tuple(names)
    try:
        result = fn()
    except (ValueError, TypeError) as err:
        assert _names_in(str(err), names), f"message does not name any of {names}: {err}"
        return str(err)
    raise AssertionError(f"expected a ValueError/TypeError naming one of {names}, got {result!r}")


NONFINITE_WORDS = ("nan", "inf", "non-finite", "finite", "nonfinite")
