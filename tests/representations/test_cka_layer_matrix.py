"""StreamingCKAMatrix / cka_matrix / float32 products against independent N x N references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from subspaces.representations import (
    StreamingLinearCKA,
    collect_activations,
    layer_similarity_matrix,
    linear_cka,
)
from subspaces.representations.similarity import StreamingCKAMatrix, cka_matrix

F64 = torch.float64


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ----- independent reference: the N x N HSIC formulas (Song et al. 2012; Kornblith et al. 2019)
def _ref_hsic(K: np.ndarray, L: np.ndarray, unbiased: bool) -> float:
    n = K.shape[0]
    if not unbiased:
        H = np.eye(n) - np.ones((n, n)) / n
        return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2
    Kt = K - np.diag(np.diag(K))
    Lt = L - np.diag(np.diag(L))
    one = np.ones(n)
    return float(
        np.trace(Kt @ Lt)
        + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
        - 2.0 * (one @ Kt @ Lt @ one) / (n - 2)
    ) / (n * (n - 3))


def _ref_matrix(A: list[torch.Tensor], B: list[torch.Tensor], unbiased: bool) -> torch.Tensor:
    Ks = [a.double().numpy() @ a.double().numpy().T for a in A]
    Ls = [b.double().numpy() @ b.double().numpy().T for b in B]
    out = torch.empty(len(A), len(B), dtype=F64)
    for i, K in enumerate(Ks):
        for j, L in enumerate(Ls):
            out[i, j] = _ref_hsic(K, L, unbiased) / math.sqrt(
                _ref_hsic(K, K, unbiased) * _ref_hsic(L, L, unbiased)
            )
    return out


def _layers(n: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Uncentered, correlated representations of unequal widths."""
    X0 = 5.0 + 2.0 * _randn(n, 6, seed=seed)
    A = [X0, torch.tanh(X0 @ _randn(6, 9, seed=seed + 1)) - 1.0, _randn(n, 3, seed=seed + 2) + 7.0]
    B = [X0[:, :2] @ _randn(2, 4, seed=seed + 3) + 0.3 * _randn(n, 4, seed=seed + 4), A[1] ** 2]
    return A, B


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("batch, chunk", [(1, 1), (7, 20), (16, 4096), (200, 64)])
def test_matrix_equals_nxn_formula_for_any_batching(unbiased: bool, batch: int, chunk: int) -> None:
    n = 103
    A, B = _layers(n, seed=0)
    ref = _ref_matrix(A, B, unbiased)
    acc = StreamingCKAMatrix(chunk_rows=chunk)
    for i in range(0, n, batch):
        assert acc.update([a[i : i + batch] for a in A], [b[i : i + batch] for b in B]) is acc
    assert acc.n_samples_ == n and acc.symmetric is False
    S = acc.value(unbiased=unbiased)
    assert S.dtype == F64 and S.shape == (3, 2)
    torch.testing.assert_close(S, ref, atol=1e-10, rtol=0)
    # the read-out does not disturb the state: more rows keep matching
    A2, B2 = _layers(40, seed=10)
    acc.update(A2, B2)
    ref2 = _ref_matrix(
        [torch.cat([a, a2]) for a, a2 in zip(A, A2, strict=True)],
        [torch.cat([b, b2]) for b, b2 in zip(B, B2, strict=True)],
        unbiased,
    )
    torch.testing.assert_close(acc.value(unbiased=unbiased), ref2, atol=1e-10, rtol=0)


@pytest.mark.parametrize("unbiased", [True, False])
def test_symmetric_mode_matches_two_set_mode(unbiased: bool) -> None:
    A, _ = _layers(80, seed=3)
    S_sym = cka_matrix(A, unbiased=unbiased, chunk_rows=16)
    S_two = cka_matrix(A, A, unbiased=unbiased, chunk_rows=16)
    torch.testing.assert_close(S_sym, S_two, atol=1e-12, rtol=0)
    torch.testing.assert_close(S_sym, S_sym.T, atol=0, rtol=0)
    torch.testing.assert_close(S_sym.diagonal(), torch.ones(3, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(S_sym, _ref_matrix(A, A, unbiased), atol=1e-10, rtol=0)
    acc = StreamingCKAMatrix().update(A)
    assert acc.symmetric is True


@pytest.mark.parametrize("unbiased", [True, False])
def test_float32_products_agree_with_float64_reference(
    unbiased: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 64-column blocks (1024 by default) exercise the block-triangular symmetric products
    monkeypatch.setattr(StreamingCKAMatrix, "_GRAM_BLOCK", 64)
    assert len(StreamingCKAMatrix._gram_blocks(210)) == 3
    n = 260
    g = torch.Generator().manual_seed(5)
    Z = torch.randn(n, 40, generator=g, dtype=F64)
    A = [
        Z @ torch.randn(40, 210, generator=g, dtype=F64) + 3.0,
        torch.relu(Z @ torch.randn(40, 50, generator=g, dtype=F64)),
    ]
    B = [
        Z[:, :20] @ torch.randn(20, 150, generator=g, dtype=F64)
        + 2.0 * torch.randn(n, 150, generator=g, dtype=F64)
    ]
    A32, B32 = [a.float() for a in A], [b.float() for b in B]
    ref = _ref_matrix(A32, B32, unbiased)  # float64 formula on the float32-rounded inputs
    S = cka_matrix(A32, B32, unbiased=unbiased, matmul_dtype=torch.float32, chunk_rows=100)
    torch.testing.assert_close(S, ref, atol=1e-6, rtol=0)
    S_sym = cka_matrix(A32, unbiased=unbiased, matmul_dtype=torch.float32, chunk_rows=100)
    torch.testing.assert_close(S_sym, _ref_matrix(A32, A32, unbiased), atol=1e-6, rtol=0)
    cka = StreamingLinearCKA(matmul_dtype=torch.float32, chunk_rows=64)
    for i in range(0, n, 50):
        cka.update(A32[0][i : i + 50], B32[0][i : i + 50])
    assert cka.value(unbiased=unbiased) == pytest.approx(float(ref[0, 0]), abs=1e-6)


def test_matrix_entries_equal_linear_cka_and_streaming_pair() -> None:
    A, B = _layers(64, seed=7)
    for unbiased in (True, False):
        S = cka_matrix(A, B, unbiased=unbiased)
        for i, a in enumerate(A):
            for j, b in enumerate(B):
                assert float(S[i, j]) == pytest.approx(
                    linear_cka(a, b, unbiased=unbiased), abs=1e-12
                )
                pair = StreamingLinearCKA(chunk_rows=10)
                for r in range(0, 64, 9):
                    pair.update(a[r : r + 9], b[r : r + 9])
                assert pair.value(unbiased=unbiased) == pytest.approx(float(S[i, j]), abs=1e-12)


def test_caller_tensors_are_neither_modified_nor_aliased() -> None:
    A, B = _layers(30, seed=9)
    ref = cka_matrix(A, B, unbiased=True)
    copies = [t.clone() for t in (*A, *B)]
    acc = StreamingCKAMatrix(chunk_rows=1000)  # everything stays buffered until value()
    buf_a = [torch.empty(10, a.shape[1], dtype=F64) for a in A]
    buf_b = [torch.empty(10, b.shape[1], dtype=F64) for b in B]
    for r in range(0, 30, 10):  # one reused buffer per layer, overwritten after each update
        for buf, a in zip(buf_a, A, strict=True):
            buf.copy_(a[r : r + 10])
        for buf, b in zip(buf_b, B, strict=True):
            buf.copy_(b[r : r + 10])
        acc.update(buf_a, buf_b)
    torch.testing.assert_close(acc.value(unbiased=True), ref, atol=1e-12, rtol=0)
    for t, c in zip((*A, *B), copies, strict=True):
        assert torch.equal(t, c)
    f32 = [a.float() for a in A]
    f32_copy = [t.clone() for t in f32]
    cka_matrix(f32, matmul_dtype=torch.float32)
    assert all(torch.equal(t, c) for t, c in zip(f32, f32_copy, strict=True))


def test_memory_does_not_grow_with_rows() -> None:
    def state_numel(acc: StreamingCKAMatrix) -> int:
        tensors = [v for v in acc._acc.values() if isinstance(v, torch.Tensor)]
        tensors += [t for v in acc._acc.values() if isinstance(v, list) for t in v]
        tensors += [t for v in acc._acc.values() if isinstance(v, list) for t in v]
        return sum(t.numel() for t in tensors if isinstance(t, torch.Tensor))

    sizes = []
    acc = StreamingCKAMatrix(chunk_rows=50)
    for seed in range(4):
        A, B = _layers(100, seed=20 + seed)
        acc.update(A, B)
        assert acc._pending_rows < acc.chunk_rows
        sizes.append(state_numel(acc))
    assert acc.n_samples_ == 400 and len(set(sizes)) == 1


def test_layer_similarity_matrix_float32_and_layer_lists() -> None:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 3))
    torch.manual_seed(1)
    b = nn.Sequential(nn.Linear(5, 10), nn.Tanh(), nn.Linear(10, 4))
    X = torch.randn(120, 5, generator=torch.Generator().manual_seed(2))
    la, lb = ["0", "1", "3"], ["0", "2"]
    acts_a, acts_b = collect_activations(a, la, X), collect_activations(b, lb, X)
    A, B = [acts_a[k] for k in la], [acts_b[k] for k in lb]
    for unbiased in (True, False):
        ref = _ref_matrix(A, B, unbiased)
        S32 = layer_similarity_matrix(
            a, b, la, lb, X, unbiased=unbiased, batch_size=25, matmul_dtype=torch.float32
        )
        torch.testing.assert_close(S32, ref, atol=1e-6, rtol=0)
        S64 = layer_similarity_matrix(
            a, b, la, lb, X, unbiased=unbiased, chunk_rows=30, matmul_dtype=torch.float64
        )
        torch.testing.assert_close(S64, ref, atol=1e-10, rtol=0)
        # same model, different layer lists: the two-set path on one forward pass
        S_same = layer_similarity_matrix(
            a, a, la, ["2", "4"], X, unbiased=unbiased, matmul_dtype=torch.float64
        )
        ref_same = _ref_matrix(
            A, [collect_activations(a, ["2", "4"], X)[k] for k in ("2", "4")], unbiased
        )
        torch.testing.assert_close(S_same, ref_same, atol=1e-10, rtol=0)
        # default: the activations' precision (float32 here), within float32 rounding
        S_default = layer_similarity_matrix(a, b, la, lb, X, unbiased=unbiased)
        torch.testing.assert_close(S_default, ref, atol=1e-6, rtol=0)
    assert not any(m._forward_hooks for m in a.modules())


def test_bad_inputs_raise_naming_the_value() -> None:
    A, B = _layers(20, seed=1)
    with pytest.raises(TypeError, match="reps_a must be a non-empty list"):
        cka_matrix(A[0])
    with pytest.raises(TypeError, match="reps_b must be a non-empty list"):
        cka_matrix(A, [])
    with pytest.raises(TypeError, match=r"reps_a\[1\] must have a real floating dtype"):
        cka_matrix([A[0], torch.ones(20, 2, dtype=torch.int64)])
    with pytest.raises(ValueError, match=r"reps_a\[0\] contains 1 non-finite"):
        bad = A[0].clone()
        bad[3, 2] = float("nan")
        cka_matrix([bad])
    with pytest.raises(
        ValueError, match="every tensor of reps_a must have the same number of rows"
    ):
        cka_matrix([A[0], A[1][:10]])
    with pytest.raises(ValueError, match="reps_a and reps_b must have the same number of rows"):
        cka_matrix(A, [b[:10] for b in B])
    with pytest.raises(ValueError, match=r"matmul_dtype must be torch\.float32 or torch\.float64"):
        StreamingCKAMatrix(matmul_dtype=torch.float16)
    with pytest.raises(TypeError, match=r"matmul_dtype must be None or a torch\.dtype"):
        StreamingLinearCKA(matmul_dtype="float32")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        StreamingCKAMatrix(chunk_rows=0)
    acc = StreamingCKAMatrix().update(A, B)
    with pytest.raises(ValueError, match="differ from earlier batches"):
        acc.update(A[:2], B)
    with pytest.raises(ValueError, match="differ from earlier batches"):
        acc.update(A)  # reps_b omitted after being given
    with pytest.raises(ValueError, match=r"at least 4 rows for the unbiased estimator, seen 3"):
        StreamingCKAMatrix().update([a[:3] for a in A]).value()
    const = [A[0], torch.full((20, 2), 3.0, dtype=F64)]
    with pytest.raises(ValueError, match=r"CKA is undefined for reps_a\[1\]"):
        cka_matrix(const, B, unbiased=True)
    with pytest.raises(ValueError, match=r"CKA is undefined for reps_b\[1\]"):
        cka_matrix(B, const)
    assert "shape=(3, 2)" in repr(acc) and "n_samples_=20" in repr(acc)
    assert acc.reset().n_samples_ == 0 and acc.symmetric is None


# ----- issue 17: activations of any scale -----------------------------------------------------
EPS32 = torch.finfo(torch.float32).eps


def _scale_case() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(11)
    Z = torch.randn(300, 12, generator=g, dtype=F64)
    A = [Z @ torch.randn(12, 30, generator=g, dtype=F64) + 1.0, torch.randn(300, 8, generator=g)]
    B = [Z[:, :5] @ torch.randn(5, 20, generator=g, dtype=F64) + torch.randn(300, 20, generator=g)]
    return [a.double() for a in A], [b.double() for b in B]


@pytest.mark.parametrize("scale", [1e-25, 1e-12, 1.0, 1e12, 1e20])
@pytest.mark.parametrize("unbiased", [False, True])
def test_float32_products_are_invariant_to_the_activation_scale(
    scale: float, unbiased: bool
) -> None:
    # float32 squares overflow above ~1e19 and underflow below ~1e-23: the old code returned
    # NaN at 1e20 and 1.0 for every pair at 1e-25
    A, B = _scale_case()
    ref = cka_matrix(A, B, unbiased=unbiased, matmul_dtype=torch.float64)
    A32 = [(a * scale).float() for a in A]
    B32 = [(b * scale).float() for b in B]
    # the float32 products agree with float64 to ~1e-7 (8 eps of float32: the existing bound)
    S = cka_matrix(A32, B32, unbiased=unbiased, matmul_dtype=torch.float32, chunk_rows=128)
    torch.testing.assert_close(S, ref, atol=8 * EPS32, rtol=0)
    S_sym = cka_matrix(A32, unbiased=unbiased, matmul_dtype=torch.float32, chunk_rows=128)
    ref_sym = cka_matrix(A, unbiased=unbiased, matmul_dtype=torch.float64)
    torch.testing.assert_close(S_sym, ref_sym, atol=8 * EPS32, rtol=0)
    acc = StreamingCKAMatrix(chunk_rows=64)  # float32 inputs: float32 products
    for i in range(0, 300, 50):
        acc.update([a[i : i + 50] for a in A32], [b[i : i + 50] for b in B32])
    torch.testing.assert_close(acc.value(unbiased=unbiased), ref, atol=8 * EPS32, rtol=0)
    pair = StreamingLinearCKA(chunk_rows=64)
    for i in range(0, 300, 50):
        pair.update(A32[0][i : i + 50], B32[0][i : i + 50])
    assert pair.value(unbiased=unbiased) == pytest.approx(float(ref[0, 0]), abs=8 * EPS32)


def test_representations_of_different_scales_and_float64_extremes() -> None:
    A, B = _scale_case()
    ref = cka_matrix(A, B, unbiased=True)
    # every layer at its own scale, in float64 far beyond float64's squares (1e200, 1e-200)
    mixed = [A[0] * 1e200, A[1] * 1e-200]
    S = cka_matrix(mixed, [B[0] * 1e-30], unbiased=True)
    torch.testing.assert_close(S, ref, atol=1e-12, rtol=0)
    S32 = cka_matrix([A[0].float() * 1e-30, A[1].float() * 1e30], [B[0].float()], unbiased=True)
    torch.testing.assert_close(S32, ref, atol=8 * EPS32, rtol=0)
    # half-precision inputs (products in float32)
    S16 = cka_matrix([a.half() for a in A], [b.bfloat16() for b in B])
    torch.testing.assert_close(S16, cka_matrix(A, B), atol=0.02, rtol=0)


def test_a_later_batch_too_large_for_float32_is_reported() -> None:
    A, _ = _scale_case()
    acc = StreamingCKAMatrix(chunk_rows=50)
    acc.update([A[0][:50].float()])
    acc.update([A[0][50:100].float() * 1e30])  # 1e30 times the first batch: squares overflow
    with pytest.raises(ValueError, match="overflowed"):
        acc.value()


def test_an_empty_first_batch_does_not_fix_the_scale() -> None:
    A, _ = _scale_case()
    acc = StreamingCKAMatrix(chunk_rows=64)
    acc.update([A[0][:0].float() * 1e20, A[1][:0].float()])
    acc.update([A[0].float() * 1e20, A[1].float() * 1e-25])
    torch.testing.assert_close(acc.value(unbiased=False), cka_matrix(A), atol=8 * EPS32, rtol=0)
