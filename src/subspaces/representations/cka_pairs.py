r"""Exact linear CKA between every pair of many representations, streaming over rows.

One engine (:class:`StreamingCKAMatrix`) accumulates feature-space sums chunk by chunk, so no
``N x N`` Gram is formed and the products are shared by all pairs of layers; :func:`cka_matrix`
runs it on tensors held in memory.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_int
from ..linalg._precision import pow2_exponent

__all__ = ["StreamingCKAMatrix", "cka_matrix"]


def _inv_pow2_scales(reps: list[Tensor]) -> list[float]:
    """The factor (a power of two) that brings each representation's largest entry near 1.

    Returns:
        One float per representation (1.0 for a zero or non-finite one).
    """
    device = reps[0].device
    maxabs = torch.stack(
        [torch.linalg.vector_norm(R, ord=math.inf).to(device, torch.float64) for R in reps]
    ).tolist()
    return [math.ldexp(1.0, -pow2_exponent(v)) for v in maxabs]


_MATMUL_DTYPES = (torch.float32, torch.float64)


def _check_matmul_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"matmul_dtype must be None or a torch.dtype, got {type(dtype).__name__}")
    if dtype not in _MATMUL_DTYPES:
        raise ValueError(f"matmul_dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def _hsic1_from_sums(
    n: int, cross: Tensor, s1: Tensor, s2: Tensor, sa: Tensor, sb: Tensor, sab: Tensor,
    a_on_2: Tensor, b_on_1: Tensor,
) -> Tensor:  # fmt: skip
    r"""Unbiased HSIC_1 (Song et al. 2012) from feature-space sums (see StreamingCKAMatrix)."""
    trace = torch.linalg.vector_norm(cross) ** 2 - sab
    k1 = s1 @ s1 - sa
    l1 = s2 @ s2 - sb
    kl1 = s1 @ (cross @ s2) - s2 @ a_on_2 - s1 @ b_on_1 + sab
    return (trace + k1 * l1 / ((n - 1) * (n - 2)) - 2.0 * kl1 / (n - 2)) / (n * (n - 3))


def _hsic0_from_sums(n: int, cross: Tensor, s1: Tensor, s2: Tensor) -> Tensor:
    """Biased HSIC times ``(N - 1)^2``: ``||X^T Y - s_x s_y^T / N||_F^2 = ||X_c^T Y_c||_F^2``."""
    return torch.linalg.vector_norm(cross - torch.outer(s1, s2) / n) ** 2


def _as_reps(reps: Any, name: str) -> list[Tensor]:
    """Validate a non-empty sequence of 2-D finite floating tensors with equal row counts."""
    if isinstance(reps, Tensor) or not isinstance(reps, (list, tuple)) or not reps:
        raise TypeError(
            f"{name} must be a non-empty list or tuple of (N, p_i) tensors, got "
            f"{type(reps).__name__}"
        )
    out = []
    for i, rep in enumerate(reps):
        label = f"{name}[{i}]"
        R = check_float_tensor(rep, label, ndim=2)  # NaN/Inf: one check per chunk, later
        if R.shape[1] == 0:
            raise ValueError(f"{label} must have at least one column, got shape {tuple(R.shape)}")
        out.append(R)
    rows = {int(R.shape[0]) for R in out}
    if len(rows) != 1:
        shapes = [tuple(R.shape) for R in out]
        raise ValueError(f"every tensor of {name} must have the same number of rows, got {shapes}")
    return out


class StreamingCKAMatrix:
    r"""Exact linear CKA between every pair of many representations, streaming over rows.

    Given ``L_a`` representations :math:`X_1, \dots, X_{L_a}` (e.g. the layers of one network,
    ``(N, p_i)`` each) and ``L_b`` representations :math:`Y_1, \dots, Y_{L_b}` of the same ``N``
    inputs (the layers of another network), :meth:`value` returns the ``L_a x L_b`` matrix of
    linear CKA (Kornblith et al., ICML 2019), biased or unbiased (HSIC_1 of Song et al., JMLR
    2012; Nguyen, Raghu & Kornblith, ICLR 2021), equal to :func:`linear_cka` on the concatenated
    rows of every pair. Without ``reps_b`` it is the symmetric ``L_a x L_a`` self-similarity
    matrix of the ``X_i``.

    Every term of HSIC is a sum over rows of feature-space quantities (see
    :class:`StreamingLinearCKA` for the formulas), so rows are accumulated chunk by chunk: the
    cross products :math:`X_i^TY_j` of all pairs come from one product
    :math:`X_i^T[Y_1, \dots, Y_{L_b}]` per ``i`` and the self products :math:`X_i^TX_i`,
    :math:`Y_j^TY_j` are shared by all pairs (for the symmetric matrix only the
    :math:`X_i^TX_j`, ``j >= i``, are formed). Time ``O(N (P_a P_b + sum p_i^2 + sum q_j^2))``,
    memory ``O(P_a P_b + sum p_i^2 + sum q_j^2)`` with ``P_a = sum p_i``, ``P_b = sum q_j``,
    independent of ``N``: never an ``N x N`` Gram, never all activations at once.

    Batches are buffered up to ``chunk_rows`` rows, so small batches do not pay the
    ``O(P_a P_b)`` accumulation cost each. Each representation is divided by a power of two
    near its largest magnitude in the first batch (exact, and CKA is invariant to it), so
    activations of any scale (``1e-25`` or ``1e20`` in float32) neither overflow nor underflow
    in the products; a later batch more than about ``1e18`` times larger than the first could
    still overflow, which :meth:`value` reports. Rows are shifted by the first chunk's mean (both
    estimators are shift invariant). Products run in ``matmul_dtype`` and are accumulated in
    float64 across chunks: ``torch.float64`` is exact to float64 rounding; ``torch.float32`` is
    about 4x faster on CPUs (single-precision GEMM, inputs rounded to float32) and agrees with the
    float64 result to about 1e-7 on float32 activations. ``None`` (default) takes the inputs'
    precision: float64 if the first batch holds a float64 tensor, else float32.

    Args:
        matmul_dtype: ``None`` (the inputs' precision), ``torch.float64`` or ``torch.float32``,
            the dtype of the per-chunk products.
        chunk_rows: rows buffered before they are accumulated (larger: faster, more memory).

    Raises:
        TypeError: if ``matmul_dtype`` is not a dtype or ``chunk_rows`` not an int.
        ValueError: if ``matmul_dtype`` is not float32/float64 or ``chunk_rows < 1``.

    Example:
        >>> import torch
        >>> from subspaces.representations import linear_cka
        >>> g = torch.Generator().manual_seed(0)
        >>> X = [torch.randn(60, 5, generator=g) for _ in range(3)]
        >>> Y = [X[0] @ torch.randn(5, 4, generator=g), torch.randn(60, 2, generator=g)]
        >>> acc = StreamingCKAMatrix()  # float32 inputs: float32 products, float64 sums
        >>> for i in range(0, 60, 16):
        ...     _ = acc.update([x[i : i + 16] for x in X], [y[i : i + 16] for y in Y])
        >>> S = acc.value(unbiased=True)
        >>> S.shape, abs(float(S[0, 1]) - linear_cka(X[0], Y[1], unbiased=True)) < 1e-6
        (torch.Size([3, 2]), True)
    """

    def __init__(self, *, matmul_dtype: torch.dtype | None = None, chunk_rows: int = 4096) -> None:
        self.matmul_dtype = _check_matmul_dtype(matmul_dtype)
        self.chunk_rows = check_positive_int(chunk_rows, "chunk_rows")
        self.reset()

    @property
    def _dt(self) -> torch.dtype:
        """The dtype of the products (resolved from the first batch when ``matmul_dtype=None``)."""
        assert self._resolved_dtype is not None
        return self._resolved_dtype

    def reset(self) -> StreamingCKAMatrix:
        """Forget every batch seen so far.

        Returns:
            ``self``.
        """
        self.n_samples_ = 0
        self._resolved_dtype: torch.dtype | None = self.matmul_dtype
        self._widths: tuple[list[int], list[int] | None] | None = None
        self._buf_a: Tensor | None = None  # chunk buffers of (chunk_rows, P_a), (chunk_rows, P_b)
        self._buf_b: Tensor | None = None
        self._pending_rows = 0
        self._acc: dict[str, Any] = {}
        # per representation: the power of two each is multiplied by (fixed by the first rows)
        self._inv_scales: tuple[list[float], list[float] | None] | None = None
        return self

    def _set_scales(self, A: list[Tensor], B: list[Tensor] | None) -> None:
        """Fix each representation's scale factor from ``A``/``B`` (no-op once fixed or empty)."""
        if self._inv_scales is not None or A[0].shape[0] == 0:
            return
        self._inv_scales = (_inv_pow2_scales(A), None if B is None else _inv_pow2_scales(B))

    @property
    def symmetric(self) -> bool | None:
        """Whether ``reps_b`` was omitted (one set compared with itself); ``None`` before data."""
        return None if self._widths is None else self._widths[1] is None

    def update(self, reps_a: Any, reps_b: Any = None) -> StreamingCKAMatrix:
        """Accumulate a batch of rows (the same inputs in every representation).

        Args:
            reps_a: list of ``(b, p_i)`` tensors, the first set of representations (rows of
                the result).
            reps_b: list of ``(b, q_j)`` tensors (columns), or ``None`` to compare ``reps_a``
                with itself; must be given (or omitted) consistently across batches.

        Returns:
            ``self``, so calls chain.

        Raises:
            TypeError: if a set is not a list/tuple of floating tensors.
            ValueError: if a tensor is not 2-D, holds NaN/Inf, the row counts differ, or the
                number of representations, their widths, or the use of ``reps_b`` differ from
                earlier batches.
        """
        A = _as_reps(reps_a, "reps_a")
        B = None if reps_b is None else _as_reps(reps_b, "reps_b")
        if B is not None and B[0].shape[0] != A[0].shape[0]:
            raise ValueError(
                f"reps_a and reps_b must have the same number of rows, got {A[0].shape[0]} "
                f"and {B[0].shape[0]}"
            )
        self._update_checked(A, B)
        return self

    def _update_checked(self, A: list[Tensor], B: list[Tensor] | None) -> None:
        widths = ([int(R.shape[1]) for R in A], None if B is None else [int(R.shape[1]) for R in B])
        if self._widths is None:
            self._widths = widths
            if self._resolved_dtype is None:
                wide = any(R.dtype == torch.float64 for R in A + (B or []))
                self._resolved_dtype = torch.float64 if wide else torch.float32
        elif widths != self._widths:
            raise ValueError(
                f"representation widths {widths[0]} / {widths[1]} (None: reps_b omitted) "
                f"differ from earlier batches: {self._widths[0]} / {self._widths[1]}"
            )
        device = self._acc["device"] if self._acc else A[0].device
        m = int(A[0].shape[0])
        self._set_scales(A, B)
        inv_a = None if self._inv_scales is None else self._inv_scales[0]
        inv_b = None if self._inv_scales is None else self._inv_scales[1]
        if self._pending_rows and self._pending_rows + m > self.chunk_rows:
            self._flush()
        if m >= self.chunk_rows:  # a large batch is accumulated at once, from one copy
            ZA = self._copy_into(None, 0, A, device, inv_a)
            ZB = None if B is None else self._copy_into(None, 0, B, device, inv_b)
            self._check_rows(ZA, ZB, A, B)
            self.n_samples_ += m
            self._flush(ZA, ZB)
            return
        # Small batches are copied into the chunk buffer (so the caller may reuse its tensors).
        r0 = self._pending_rows
        self._buf_a = self._copy_into(self._buf_a, r0, A, device, inv_a)
        if B is not None:
            self._buf_b = self._copy_into(self._buf_b, r0, B, device, inv_b)
        ZB = None if self._buf_b is None or B is None else self._buf_b[r0 : r0 + m]
        self._check_rows(self._buf_a[r0 : r0 + m], ZB, A, B)
        self._pending_rows += m
        self.n_samples_ += m
        if self._pending_rows >= self.chunk_rows:
            self._flush()

    def _copy_into(
        self,
        buf: Tensor | None,
        r0: int,
        reps: list[Tensor],
        device: torch.device,
        inv_scales: list[float] | None,
    ) -> Tensor:
        """Copy ``reps`` side by side into rows ``r0:`` of ``buf`` (converting dtype and device).

        Each representation is multiplied by its power-of-two factor on the way, in its own
        dtype (exact), so a value that overflows the product dtype unscaled is never formed.

        Returns:
            ``buf``, or when it is ``None`` a fresh ``(max(m, chunk_rows), sum p_i)`` matrix.
        """
        m = int(reps[0].shape[0])
        width = sum(int(R.shape[1]) for R in reps)
        if buf is None:
            rows = m if m >= self.chunk_rows else self.chunk_rows
            buf = torch.empty(rows, width, dtype=self._dt, device=device)
        c0 = 0
        for i, R in enumerate(reps):
            dst = buf[r0 : r0 + m, c0 : c0 + R.shape[1]]
            inv = 1.0 if inv_scales is None else inv_scales[i]
            if inv == 1.0:
                dst.copy_(R)
            else:
                torch.mul(R.to(device), inv, out=dst)
            c0 += R.shape[1]
        return buf

    @staticmethod
    def _check_rows(ZA: Tensor, ZB: Tensor | None, A: list[Tensor], B: list[Tensor] | None) -> None:
        """One reduction per side; on NaN/Inf, name the offending representation."""
        for Z, reps, name in ((ZA, A, "reps_a"), (ZB, B, "reps_b")):
            if Z is None or reps is None or bool(torch.isfinite(Z.sum())):
                continue
            for i, R in enumerate(reps):
                check_finite(R, f"{name}[{i}]")

    @staticmethod
    def _offsets(widths: list[int]) -> list[tuple[int, int]]:
        out, c0 = [], 0
        for w in widths:
            out.append((c0, c0 + w))
            c0 += w
        return out

    def _flush(self, ZA: Tensor | None = None, ZB: Tensor | None = None) -> None:
        """Accumulate the buffered rows, or the given fresh ``ZA``/``ZB`` (modified in place)."""
        assert self._widths is not None
        wa, wb = self._widths
        if ZA is None:
            if not self._pending_rows:
                return
            m = self._pending_rows
            assert self._buf_a is not None
            ZA = self._buf_a[:m]
            ZB = None if wb is None or self._buf_b is None else self._buf_b[:m]
            self._pending_rows = 0
        m = int(ZA.shape[0])
        f64, dt = torch.float64, self._dt
        acc = self._acc
        if not acc:  # shift by the first chunk's mean; allocate the float64 accumulators
            acc["device"] = ZA.device
            acc["oa"] = self._offsets(wa)
            acc["ob"] = None if wb is None else self._offsets(wb)
            z = lambda *shape: torch.zeros(*shape, dtype=f64, device=ZA.device)  # noqa: E731
            for key, Z, w in (("a", ZA, wa), ("b", ZB, wb)):
                if Z is None or w is None:
                    continue
                acc[f"shift_{key}"] = (Z.sum(dim=0, dtype=f64) / m).to(dt)
                acc[f"s_{key}"] = z(sum(w))  # column sums
                acc[f"r_{key}"] = z(len(w))  # sums of squared row norms a_i
            la, pa = len(wa), sum(wa)
            if wb is None:
                acc["g"] = [z(hi - lo, pa - lo) for lo, hi in acc["oa"]]  # X_i^T [X_i..X_L]
                acc["aa"] = z(la, la)  # sum_k a_i(k) a_j(k)
                acc["a_za"] = z(la, pa)  # sum_k a_i(k) x(k)
            else:
                lb, pb = len(wb), sum(wb)
                acc["c"] = [z(hi - lo, pb) for lo, hi in acc["oa"]]  # X_i^T [Y_1..Y_Lb]
                acc["ga"] = [z(w, w) for w in wa]
                acc["gb"] = [z(w, w) for w in wb]
                acc["ab"], acc["aa"], acc["bb"] = z(la, lb), z(la), z(lb)
                acc["a_za"], acc["a_zb"] = z(la, pa), z(la, pb)
                acc["b_za"], acc["b_zb"] = z(lb, pa), z(lb, pb)
        ZA.sub_(acc["shift_a"])
        ones = torch.ones(m, dtype=dt, device=ZA.device)
        ra = self._row_norms(ZA, acc["oa"])
        acc["s_a"] += (ones @ ZA).to(f64)
        acc["r_a"] += ra.sum(dim=0)
        acc["a_za"] += (ra.to(dt).T @ ZA).to(f64)

        def add_product(target: Tensor, left: Tensor, right: Tensor) -> None:
            if dt == f64:
                target.addmm_(left.T, right)
            else:  # single-precision product, float64 accumulation across chunks
                target.add_(torch.mm(left.T, right))

        if ZB is None:
            acc["aa"] += ra.T @ ra
            for (lo, hi), g in zip(acc["oa"], acc["g"], strict=True):
                add_product(g, ZA[:, lo:hi], ZA[:, lo:])
            return
        ZB.sub_(acc["shift_b"])
        rb = self._row_norms(ZB, acc["ob"])
        acc["s_b"] += (ones @ ZB).to(f64)
        acc["r_b"] += rb.sum(dim=0)
        acc["ab"] += ra.T @ rb
        acc["aa"] += ra.pow(2).sum(dim=0)
        acc["bb"] += rb.pow(2).sum(dim=0)
        acc["a_zb"] += (ra.to(dt).T @ ZB).to(f64)
        acc["b_za"] += (rb.to(dt).T @ ZA).to(f64)
        acc["b_zb"] += (rb.to(dt).T @ ZB).to(f64)
        for (lo, hi), c, g in zip(acc["oa"], acc["c"], acc["ga"], strict=True):
            add_product(c, ZA[:, lo:hi], ZB)
            self._add_gram(g, ZA[:, lo:hi])
        for (lo, hi), g in zip(acc["ob"], acc["gb"], strict=True):
            self._add_gram(g, ZB[:, lo:hi])

    _GRAM_BLOCK = 1024  # column block of the symmetric products

    @classmethod
    def _gram_blocks(cls, width: int) -> list[tuple[int, int]]:
        nb = max(1, width // cls._GRAM_BLOCK)
        edges = [round(k * width / nb) for k in range(nb + 1)]
        return list(itertools.pairwise(edges))

    def _add_gram(self, target: Tensor, Z: Tensor) -> None:
        """``target += Z^T Z``, only the upper block triangle for wide ``Z`` (see _full_gram)."""
        if self._dt == torch.float64:
            target.addmm_(Z.T, Z)
            return
        for lo, hi in self._gram_blocks(Z.shape[1]):  # symmetric: about half the flops
            target[lo:hi, lo:].add_(torch.mm(Z[:, lo:hi].T, Z[:, lo:]))

    def _full_gram(self, upper: Tensor) -> Tensor:
        """The symmetric matrix whose upper block triangle :meth:`_add_gram` accumulated."""
        blocks = self._gram_blocks(upper.shape[0])
        if self._dt == torch.float64 or len(blocks) == 1:
            return upper
        full = upper.clone()
        for i, (lo, hi) in enumerate(blocks):
            for lo2, hi2 in blocks[i + 1 :]:
                full[lo2:hi2, lo:hi] = upper[lo:hi, lo2:hi2].T
        return full

    @staticmethod
    def _row_norms(Z: Tensor, offsets: list[tuple[int, int]]) -> Tensor:
        """``(m, L)`` float64 squared row norms of each block of columns."""
        sq = Z.square()
        return torch.stack([sq[:, lo:hi].sum(dim=1) for lo, hi in offsets], 1).to(torch.float64)

    # -- read-out -------------------------------------------------------------------------------
    def _hsic_matrices(self, unbiased: bool) -> tuple[Tensor, Tensor, Tensor]:
        """``HSIC(X_i, Y_j)`` (``L_a x L_b``), ``HSIC(X_i, X_i)``, ``HSIC(Y_j, Y_j)``."""
        self._flush()
        acc, n = self._acc, self.n_samples_
        oa, ob = acc["oa"], acc["ob"]
        s_a, r_a, a_za = acc["s_a"], acc["r_a"], acc["a_za"]

        def hsic(
            cross: Tensor, s1: Tensor, s2: Tensor, sa: Tensor, sb: Tensor, sab: Tensor,
            a_on_2: Tensor, b_on_1: Tensor,
        ) -> Tensor:  # fmt: skip
            if not unbiased:
                return _hsic0_from_sums(n, cross, s1, s2)
            return _hsic1_from_sums(n, cross, s1, s2, sa, sb, sab, a_on_2, b_on_1)

        if ob is None:  # symmetric: X_i^T X_j for j >= i is stored in g[i][:, lo_j - lo_i:]
            la = len(oa)
            H = torch.empty(la, la, dtype=torch.float64, device=s_a.device)
            for i, (lo_i, hi_i) in enumerate(oa):
                for j in range(i, la):
                    lo_j, hi_j = oa[j]
                    cross = acc["g"][i][:, lo_j - lo_i : hi_j - lo_i]
                    H[i, j] = H[j, i] = hsic(
                        cross, s_a[lo_i:hi_i], s_a[lo_j:hi_j], r_a[i], r_a[j], acc["aa"][i, j],
                        a_za[i, lo_j:hi_j], a_za[j, lo_i:hi_i],
                    )  # fmt: skip
            diag = H.diagonal().clone()
            return H, diag, diag
        s_b, r_b = acc["s_b"], acc["r_b"]
        a_zb, b_za = acc["a_zb"], acc["b_za"]
        H = torch.empty(len(oa), len(ob), dtype=torch.float64, device=s_a.device)
        for i, (lo_i, hi_i) in enumerate(oa):
            for j, (lo_j, hi_j) in enumerate(ob):
                H[i, j] = hsic(
                    acc["c"][i][:, lo_j:hi_j], s_a[lo_i:hi_i], s_b[lo_j:hi_j], r_a[i], r_b[j],
                    acc["ab"][i, j], a_zb[i, lo_j:hi_j], b_za[j, lo_i:hi_i],
                )  # fmt: skip

        def self_hsic(key: str, offsets: list[tuple[int, int]]) -> Tensor:
            s, r, sq, r_z = acc[f"s_{key}"], acc[f"r_{key}"], acc[key * 2], acc[f"{key}_z{key}"]
            out = [
                hsic(
                    self._full_gram(g),
                    s[lo:hi],
                    s[lo:hi],
                    r[i],
                    r[i],
                    sq[i],
                    r_z[i, lo:hi],
                    r_z[i, lo:hi],
                )
                for i, ((lo, hi), g) in enumerate(zip(offsets, acc[f"g{key}"], strict=True))
            ]
            return torch.stack(out)

        return H, self_hsic("a", oa), self_hsic("b", ob)

    def value(self, unbiased: bool = True) -> Tensor:
        """The CKA matrix of all rows seen so far.

        Args:
            unbiased: the unbiased HSIC_1 estimator (default) or the biased one.

        Returns:
            ``(L_a, L_b)`` float64 tensor (``(L_a, L_a)`` and symmetric without ``reps_b``)
            with ``CKA(X_i, Y_j)`` at ``[i, j]``.

        Raises:
            ValueError: if fewer than 4 rows (2 when biased) have been seen, or a
                representation is constant so that CKA is undefined.
        """
        need = 4 if unbiased else 2
        if self.n_samples_ < need:
            raise ValueError(
                f"need at least {need} rows{' for the unbiased estimator' if unbiased else ''}, "
                f"seen {self.n_samples_}"
            )
        H, hx, hy = self._hsic_matrices(unbiased)
        if not bool(torch.isfinite(H).all() & torch.isfinite(hx).all() & torch.isfinite(hy).all()):
            raise ValueError(
                "the accumulated products overflowed: each representation is scaled by its "
                "largest magnitude in the first batch, and a later batch was more than about "
                "1e18 times larger; pass batches of comparable scale (or rescale them yourself: "
                "CKA is invariant to the scale of each representation)"
            )
        for h, side in (
            (hx, "reps_a"),
            (hy, "reps_b" if self._acc["ob"] is not None else "reps_a"),
        ):
            bad = [i for i, v in enumerate(h.tolist()) if not v > 0.0]
            if bad:
                raise ValueError(
                    f"CKA is undefined for {side}{bad}: its self-similarity HSIC is not positive "
                    "(constant across rows, or too few rows for the unbiased estimator)"
                )
        return H / torch.sqrt(torch.outer(hx, hy))

    def __repr__(self) -> str:
        shape = "?" if self._widths is None else self._shape_str()
        return f"StreamingCKAMatrix(n_samples_={self.n_samples_}, shape={shape})"

    def _shape_str(self) -> str:
        assert self._widths is not None
        wa, wb = self._widths
        return f"({len(wa)}, {len(wa if wb is None else wb)})"


def cka_matrix(
    reps_a: Any,
    reps_b: Any = None,
    *,
    unbiased: bool = False,
    matmul_dtype: torch.dtype | None = None,
    chunk_rows: int = 4096,
) -> Tensor:
    r"""Linear CKA between every pair of representations of the same inputs.

    ``[i, j]`` is :func:`linear_cka` of ``reps_a[i]`` and ``reps_b[j]`` (Kornblith et al.,
    "Similarity of Neural Network Representations Revisited", ICML 2019; unbiased: HSIC_1 of
    Song et al., JMLR 2012), computed with :class:`StreamingCKAMatrix` over chunks of
    ``chunk_rows`` rows, so the products and self-similarities are shared across pairs. To
    avoid holding all activations, feed batches to :class:`StreamingCKAMatrix` yourself or use
    :func:`~subspaces.representations.layer_similarity_matrix` on models.

    Args:
        reps_a: list of ``(N, p_i)`` tensors (rows of the result).
        reps_b: list of ``(N, q_j)`` tensors (columns), or ``None`` for the symmetric
            self-similarity matrix of ``reps_a``.
        unbiased: use the unbiased HSIC estimator (needs ``N >= 4``).
        matmul_dtype: ``None`` (default: the inputs' precision), ``torch.float64`` or
            ``torch.float32`` (about 4x faster on CPU, about 1e-7 from the float64 value).
        chunk_rows: rows per accumulated chunk.

    Returns:
        ``(len(reps_a), len(reps_b))`` float64 tensor of CKA values.

    Raises:
        TypeError: for a set that is not a list/tuple of floating tensors or a bad option type.
        ValueError: for tensors that are not 2-D, hold NaN/Inf or have different row counts,
            too few rows, a constant representation, or a bad option value.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(40, 6, generator=g)
        >>> S = cka_matrix([X, 2.0 * X, torch.randn(40, 3, generator=g)])
        >>> [round(float(v), 6) for v in S[0, :2]], bool((S - S.T).abs().max() == 0)
        ([1.0, 1.0], True)
    """
    acc = StreamingCKAMatrix(matmul_dtype=matmul_dtype, chunk_rows=chunk_rows)
    A = _as_reps(reps_a, "reps_a")
    B = None if reps_b is None else _as_reps(reps_b, "reps_b")
    n = A[0].shape[0]
    if B is not None and B[0].shape[0] != n:
        raise ValueError(
            f"reps_a and reps_b must have the same number of rows, got {n} and {B[0].shape[0]}"
        )
    acc._set_scales(A, B)  # from every row, not only the first chunk
    for i in range(0, n, acc.chunk_rows):
        acc._update_checked(
            [R[i : i + acc.chunk_rows] for R in A],
            None if B is None else [R[i : i + acc.chunk_rows] for R in B],
        )
    return acc.value(unbiased=unbiased)
