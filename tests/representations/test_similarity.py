"""Tests for subspaces.representations.similarity against independent N x N / scipy references."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.linalg
import torch

from subspaces.representations import (
    BootstrapResult,
    StreamingLinearCKA,
    bootstrap_ci,
    linear_cka,
    procrustes_distance,
    pwcca,
    rbf_cka,
    subspace_similarity,
    svcca,
)

F64 = torch.float64


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(_randn(d, d, seed=seed)).Q


# ----- independent references (numpy, straight from the papers' N x N formulas) ---------------
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


def _ref_cka(K: np.ndarray, L: np.ndarray, unbiased: bool) -> float:
    return _ref_hsic(K, L, unbiased) / math.sqrt(
        _ref_hsic(K, K, unbiased) * _ref_hsic(L, L, unbiased)
    )


def _ref_linear_cka(X: torch.Tensor, Y: torch.Tensor, unbiased: bool) -> float:
    x, y = X.numpy(), Y.numpy()  # deliberately uncentered: both estimators centre implicitly
    return _ref_cka(x @ x.T, y @ y.T, unbiased)


def _ref_rbf_gram(x: np.ndarray) -> np.ndarray:
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    med = np.median(sq[np.triu_indices(x.shape[0], 1)])
    return np.exp(-sq / (2.0 * med))


# ----- CKA ------------------------------------------------------------------------------------
MEASURES = {
    "linear": linear_cka,
    "linear_unbiased": lambda X, Y: linear_cka(X, Y, unbiased=True),
    "rbf": rbf_cka,
    "rbf_unbiased": lambda X, Y: rbf_cka(X, Y, unbiased=True),
}


@pytest.mark.parametrize("name", list(MEASURES))
@pytest.mark.parametrize("shape", [(60, 5), (20, 40)])  # feature-space and Gram code paths
def test_cka_self_is_one_and_invariances(name: str, shape: tuple[int, int]) -> None:
    measure = MEASURES[name]
    n, p = shape
    X = _randn(n, p, seed=0)
    Y = torch.tanh(X[:, : p // 2]) @ _randn(p // 2, 3, seed=1) + 0.5 * _randn(n, 3, seed=2)
    assert measure(X, X) == pytest.approx(1.0, abs=1e-10)
    base = measure(X, Y)
    assert 0.05 < base < 0.99
    Q = _orthogonal(p, seed=3)
    assert measure(X @ Q, Y) == pytest.approx(base, abs=1e-10)  # orthogonal transform
    assert measure(7.5 * X, Y) == pytest.approx(base, abs=1e-10)  # isotropic scaling
    assert measure(X + 3.0, Y) == pytest.approx(base, abs=1e-8)  # translation
    assert measure(Y, X) == pytest.approx(base, abs=1e-10)  # symmetry


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_not_invariant_to_invertible_maps(unbiased: bool) -> None:
    X = _randn(200, 6, seed=0)
    A = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 30.0], dtype=F64)) @ _orthogonal(6, 1)
    assert torch.linalg.matrix_rank(A) == 6
    assert linear_cka(X, X @ A, unbiased=unbiased) < 0.5
    assert rbf_cka(X, X @ A, unbiased=unbiased) < 0.9


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("shape", [(30, 4, 7), (12, 30, 9)])
def test_cka_matches_nxn_formulas(unbiased: bool, shape: tuple[int, int, int]) -> None:
    n, p, q = shape
    X = _randn(n, p, seed=3) + 4.0
    Y = X[:, :1] * _randn(n, q, seed=4) - 2.0
    assert linear_cka(X, Y, unbiased=unbiased) == pytest.approx(
        _ref_linear_cka(X, Y, unbiased), abs=1e-10
    )
    ref = _ref_cka(_ref_rbf_gram(X.numpy()), _ref_rbf_gram(Y.numpy()), unbiased)
    assert rbf_cka(X, Y, unbiased=unbiased) == pytest.approx(ref, abs=1e-10)
    sq = torch.cdist(X, X).pow(2)
    K = torch.exp(-sq / 2.0).numpy()
    L = torch.exp(-torch.cdist(Y, Y).pow(2) / 2.0).numpy()
    assert rbf_cka(X, Y, sigma=1.0, unbiased=unbiased) == pytest.approx(
        _ref_cka(K, L, unbiased), abs=1e-10
    )


def test_float32_input_is_computed_in_float64() -> None:
    X, Y = _randn(40, 5, seed=5), _randn(40, 3, seed=6)
    assert linear_cka(X.float(), Y.float(), unbiased=True) == pytest.approx(
        linear_cka(X.float().double(), Y.float().double(), unbiased=True), abs=1e-12
    )


# ----- streaming ------------------------------------------------------------------------------
@pytest.mark.parametrize("unbiased", [True, False])
def test_streaming_equals_nxn_formula_for_every_batch_size(unbiased: bool) -> None:
    n = 157
    X = 10.0 + _randn(n, 12, seed=7)  # uncentered activations with a large offset
    Y = torch.tanh(X[:, :5] - 10.0) @ _randn(5, 9, seed=8) + 0.5 * _randn(n, 9, seed=9) - 3.0
    ref = _ref_linear_cka(X, Y, unbiased)
    values = []
    for bs in (1, 3, 16, 64, 100, n):
        cka = StreamingLinearCKA()
        for i in range(0, n, bs):
            assert cka.update(X[i : i + bs].float(), Y[i : i + bs].float()) is cka
        assert cka.n_samples_ == n
        values.append(cka.value(unbiased=unbiased))
    float_ref = _ref_linear_cka(X.float().double(), Y.float().double(), unbiased)
    assert abs(float_ref - ref) < 1e-3  # the float32 rounding of the inputs is what differs
    for v in values:
        assert v == pytest.approx(float_ref, abs=1e-6)
        assert v == pytest.approx(values[0], abs=1e-12)  # batch-size independent


def test_streaming_reset_and_errors() -> None:
    cka = StreamingLinearCKA().update(_randn(3, 4, seed=0), _randn(3, 2, seed=1))
    with pytest.raises(ValueError, match=r"at least 4 rows.*seen 3"):
        cka.value()
    with pytest.raises(ValueError, match="X_batch has 5 columns, earlier batches had 4"):
        cka.update(_randn(2, 5, seed=0), _randn(2, 2, seed=1))
    with pytest.raises(ValueError, match="same number of rows"):
        cka.update(_randn(2, 4, seed=0), _randn(3, 2, seed=1))
    assert cka.reset().n_samples_ == 0
    cka.update(_randn(10, 5, seed=0), _randn(10, 1, seed=1))
    assert -1.0 <= cka.value() <= 1.0
    assert "n_samples_=10" in repr(cka)


def test_unbiased_cka_near_zero_on_independent_wide_data() -> None:
    # Under independence the unbiased HSIC is a degenerate U-statistic: for isotropic Gaussian
    # X (p) and Y (q), HSIC_1(K, L) has mean 0 and standard deviation ~ sqrt(2 p q / (N(N-1))),
    # while HSIC_1(K, K) ~ p and HSIC_1(L, L) ~ q, so sd(unbiased CKA) ~ sqrt(2 / (N (N-1))).
    n, p, q, seeds = 40, 800, 600, 30
    sd = math.sqrt(2.0 / (n * (n - 1)))
    unb, bia = [], []
    for s in range(seeds):
        X, Y = _randn(n, p, seed=100 + s), _randn(n, q, seed=200 + s)
        unb.append(linear_cka(X, Y, unbiased=True))
        bia.append(linear_cka(X, Y))
    u = torch.tensor(unb)
    assert float(u.abs().max()) < 5 * sd
    assert abs(float(u.mean())) < 5 * sd / math.sqrt(seeds)
    assert 0.5 * sd < float(u.std()) < 2.0 * sd  # the derived scale is the right one
    assert min(bia) > 0.9  # the biased estimator is inflated to ~1 when p, q >> N


# ----- CCA family -----------------------------------------------------------------------------
def _ref_canonical_correlations(X: torch.Tensor, Y: torch.Tensor) -> np.ndarray:
    x = X.numpy() - X.numpy().mean(0)
    y = Y.numpy() - Y.numpy().mean(0)
    sxx, syy, sxy = x.T @ x, y.T @ y, x.T @ y
    M = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    ev = np.sort(np.linalg.eigvals(M).real)[::-1][: min(x.shape[1], y.shape[1])]
    return np.sqrt(np.clip(ev, 0.0, 1.0))


def test_svcca_and_pwcca_are_one_for_invertible_maps() -> None:
    X = _randn(300, 6, seed=10)
    A = _randn(6, 6, seed=11) + 3.0 * torch.eye(6, dtype=F64)
    res = svcca(X, X @ A, keep=1.0)
    assert res.mean == pytest.approx(1.0, abs=1e-8)
    assert res.dims == (6, 6)
    assert float(res) == res.mean
    pw = pwcca(X, X @ A)
    assert pw.mean == pytest.approx(1.0, abs=1e-8)
    assert pw.weights is not None
    assert float(pw.weights.sum()) == pytest.approx(1.0)


def test_cca_correlations_match_covariance_formula() -> None:
    X = _randn(250, 5, seed=12)
    Y = X[:, :3] @ _randn(3, 4, seed=13) + _randn(250, 4, seed=14)
    ref = _ref_canonical_correlations(X, Y)
    res = svcca(X, Y, keep=1.0)
    np.testing.assert_allclose(res.correlations.numpy(), ref, atol=1e-10)
    assert res.mean == pytest.approx(ref.mean(), abs=1e-10)
    pw = pwcca(X, Y)
    np.testing.assert_allclose(pw.correlations.numpy(), ref, atol=1e-10)
    assert float(ref.min()) - 1e-12 <= pw.mean <= float(ref.max()) + 1e-12


def test_svcca_keep_truncates_to_the_variance_fraction() -> None:
    scales = torch.tensor([10.0, 5.0, 1.0, 0.01, 0.01], dtype=F64)
    X = _orthogonal(5, 15)[:, :5]
    X = (_randn(400, 5, seed=16) * scales) @ X
    Y = _randn(400, 3, seed=17)
    # variances 100, 25, 1, 1e-4, 1e-4: 99% needs 2 directions (125 / 126.0002), 99.9% needs 3
    assert svcca(X, Y, keep=0.99).dims[0] == 2
    assert svcca(X, Y, keep=0.999).dims[0] == 3
    assert svcca(X, Y, keep=0.5).dims[0] == 1
    assert svcca(X, Y, keep=1.0).dims[0] == 5
    assert svcca(X, Y).mean < 0.3  # independent data


# ----- Procrustes -----------------------------------------------------------------------------
def test_procrustes_zero_for_rotated_copies_and_matches_scipy() -> None:
    X = _randn(80, 5, seed=20)
    Q = _orthogonal(5, 21)
    assert procrustes_distance(X, 3.0 * X @ Q - 1.0) < 1e-7
    assert procrustes_distance(X, X @ Q, metric="angular") < 1e-6
    wider = torch.cat([X @ Q, torch.zeros(80, 3, dtype=F64)], dim=1)  # zero padding, q != p
    assert procrustes_distance(X, wider) < 1e-7

    Y = X + 0.7 * _randn(80, 5, seed=22)
    x = X.numpy() - X.numpy().mean(0)
    y = Y.numpy() - Y.numpy().mean(0)
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    R, _ = scipy.linalg.orthogonal_procrustes(y, x)
    ref = float(np.linalg.norm(x - y @ R))
    d = procrustes_distance(X, Y)
    assert d == pytest.approx(ref, abs=1e-10)
    theta = procrustes_distance(X, Y, metric="angular")
    assert d**2 == pytest.approx(2.0 - 2.0 * math.cos(theta), abs=1e-10)
    assert procrustes_distance(Y, X) == pytest.approx(d, abs=1e-10)


# ----- principal subspaces --------------------------------------------------------------------
def test_subspace_similarity_matches_scipy_subspace_angles() -> None:
    X = _randn(70, 8, seed=30)
    Y = X[:, :4] @ _randn(4, 6, seed=31) + 0.5 * _randn(70, 6, seed=32)
    res = subspace_similarity(X, Y, 4)
    Qx, Qy = res.subspace_x.basis, res.subspace_y.basis
    assert Qx.shape == (70, 4) and Qy.shape == (70, 4)
    ref = np.sort(scipy.linalg.subspace_angles(Qx.numpy(), Qy.numpy()))
    np.testing.assert_allclose(res.angles.numpy(), ref, atol=1e-10)
    assert res.similarity == pytest.approx(float(np.mean(np.cos(ref) ** 2)), abs=1e-10)
    assert float(res) == res.similarity
    # The top-k principal subspace is that of the centered data (PCA scores).
    U = np.linalg.svd(X.numpy() - X.numpy().mean(0), full_matrices=False)[0][:, :4]
    assert np.abs(scipy.linalg.subspace_angles(Qx.numpy(), U)).max() < 1e-8
    same = subspace_similarity(X, X @ _orthogonal(8, 33), 3)
    assert float(same.angles.max()) < 1e-6


# ----- bootstrap ------------------------------------------------------------------------------
def test_bootstrap_interval_contains_estimate_and_is_reproducible() -> None:
    X = _randn(120, 6, seed=40)
    Y = X @ _randn(6, 4, seed=41) + 2.0 * _randn(120, 4, seed=42)
    for measure in (linear_cka, lambda a, b: svcca(a, b, keep=1.0), procrustes_distance):
        res = bootstrap_ci(
            measure, X, Y, num_samples=60, generator=torch.Generator().manual_seed(0)
        )
        assert isinstance(res, BootstrapResult)
        assert res.low <= res.estimate <= res.high
        assert res.low < res.high
        again = bootstrap_ci(
            measure, X, Y, num_samples=60, generator=torch.Generator().manual_seed(0)
        )
        assert again == res
    assert bootstrap_ci(linear_cka, X, Y).estimate == pytest.approx(linear_cka(X, Y))
    narrow = bootstrap_ci(linear_cka, X, Y, num_samples=60, level=0.5)
    wide = bootstrap_ci(linear_cka, X, Y, num_samples=60, level=0.99)
    assert narrow.high - narrow.low < wide.high - wide.low


# ----- bad input ------------------------------------------------------------------------------
GOOD = _randn(10, 3, seed=0)
ALL = [
    linear_cka,
    lambda X, Y: linear_cka(X, Y, unbiased=True),
    rbf_cka,
    svcca,
    pwcca,
    procrustes_distance,
    lambda X, Y: subspace_similarity(X, Y, 2),
    lambda X, Y: StreamingLinearCKA().update(X, Y).value(),
    lambda X, Y: bootstrap_ci(linear_cka, X, Y, num_samples=5),
]


@pytest.mark.parametrize("fn", ALL)
def test_bad_inputs_raise_naming_the_value(fn: Callable[..., Any]) -> None:
    nan = GOOD.clone()
    nan[2, 1] = float("nan")
    inf = GOOD.clone()
    inf[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"same number of rows.*\(10, 3\).*\(9, 3\)"):
        fn(GOOD, GOOD[:9])
    with pytest.raises(ValueError, match="X contains 1 non-finite"):
        fn(nan, GOOD)
    with pytest.raises(ValueError, match="Y contains 1 non-finite"):
        fn(GOOD, inf)
    with pytest.raises(ValueError, match=r"X must have 2 dimensions, got shape \(10,\)"):
        fn(GOOD[:, 0], GOOD)
    with pytest.raises(TypeError, match="Y must have a real floating dtype"):
        fn(GOOD, torch.ones(10, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"X must be a torch\.Tensor, got ndarray"):
        fn(GOOD.numpy(), GOOD)


@pytest.mark.parametrize(
    "fn",
    [
        lambda X, Y: linear_cka(X, Y, unbiased=True),
        lambda X, Y: rbf_cka(X, Y, unbiased=True),
    ],
)
def test_unbiased_needs_four_rows(fn: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match="at least 4 rows for the unbiased estimator, got N = 3"):
        fn(GOOD[:3], GOOD[:3])
    assert math.isfinite(fn(GOOD[:4], GOOD[:4]))


def test_bad_options_and_degenerate_inputs() -> None:
    const = torch.ones(10, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"HSIC\(X, X\).*constant"):
        linear_cka(const, GOOD)
    with pytest.raises(ValueError, match=r"HSIC\(Y, Y\)"):
        linear_cka(GOOD, const, unbiased=True)
    with pytest.raises(ValueError, match=r"sigma must be a finite number > 0, got -1\.0"):
        rbf_cka(GOOD, GOOD, sigma=-1.0)
    with pytest.raises(ValueError, match="median heuristic gives sigma = 0"):
        rbf_cka(const, GOOD)
    with pytest.raises(ValueError, match=r"keep must be in \(0, 1\], got 1.5"):
        svcca(GOOD, GOOD, keep=1.5)
    with pytest.raises(ValueError, match="constant across rows; CCA"):
        pwcca(const, GOOD)
    with pytest.raises(ValueError, match="metric must be one of"):
        procrustes_distance(GOOD, GOOD, metric="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Y is constant across rows"):
        procrustes_distance(GOOD, const)
    with pytest.raises(ValueError, match=r"k must be <= min\(N, p, q\) = 3, got 4"):
        subspace_similarity(GOOD, GOOD, 4)
    with pytest.raises(TypeError, match="k must be an int"):
        subspace_similarity(GOOD, GOOD, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="level must be in"):
        bootstrap_ci(linear_cka, GOOD, GOOD, level=1.0)
    with pytest.raises(ValueError, match="num_samples must be >= 2, got 1"):
        bootstrap_ci(linear_cka, GOOD, GOOD, num_samples=1)
    with pytest.raises(TypeError, match="measure must be callable"):
        bootstrap_ci(0.5, GOOD, GOOD)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one column"):
        linear_cka(GOOD[:, :0], GOOD)


# ----- issue 17: rank-deficient data, extreme scales, half precision, empty and meta ----------
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16])
def test_subspace_similarity_of_rank_deficient_data_is_one(dtype: torch.dtype) -> None:
    # rank 2 data: the old code padded each top-k subspace with an arbitrary basis of the null
    # space, so identical (invertibly mixed) representations came out at ~0.6
    B, C, A = _randn(50, 2, seed=60), _randn(2, 6, seed=61), _randn(6, 6, seed=62)
    X, Y = (B @ C).to(dtype), (B @ C @ A).to(dtype)
    eps = torch.finfo(dtype).eps
    for k in (2, 3, 4, 6):
        res = subspace_similarity(X, Y, k)
        assert res.subspace_x.dim == res.subspace_y.dim == 2
        assert res.angles.shape == (2,)
        # the data were rounded to the dtype: the two spans agree to O(eps) angles
        assert res.similarity == pytest.approx(1.0, abs=10 * eps)
    # a rank-2 X against a full-rank Y that contains it: X's 2 directions are inside Y's top 6
    Z = torch.cat([B @ C, _randn(50, 4, seed=63)], 1).to(dtype)
    res = subspace_similarity(X, Z, 6)
    assert (res.subspace_x.dim, res.subspace_y.dim) == (2, 6)
    assert res.similarity == pytest.approx(1.0, abs=10 * eps)
    with pytest.raises(ValueError, match="X is constant"):
        subspace_similarity(torch.ones(10, 3, dtype=dtype), Y[:10, :3], 2)


SCALE_INVARIANT = {
    "linear": linear_cka,
    "linear_unbiased": lambda X, Y: linear_cka(X, Y, unbiased=True),
    "linear_wide": lambda X, Y: linear_cka(X.repeat(1, 20), Y),
    "rbf": rbf_cka,
    "svcca": lambda X, Y: svcca(X, Y).mean,
    "pwcca": lambda X, Y: pwcca(X, Y).mean,
    "procrustes": procrustes_distance,
    "subspace": lambda X, Y: subspace_similarity(X, Y, 3).similarity,
}


@pytest.mark.parametrize("name", list(SCALE_INVARIANT))
def test_measures_do_not_overflow_or_underflow_in_float64(name: str) -> None:
    # squares of 1e200 overflow float64 and squares of 1e-200 underflow: the old code returned
    # NaN, raised, or (svcca) a wrong value. Powers of two scale every intermediate exactly.
    measure = SCALE_INVARIANT[name]
    X = _randn(40, 6, seed=70)
    Y = X[:, :3] @ _randn(3, 4, seed=71) + _randn(40, 4, seed=72)
    base = measure(X, Y)
    for e in (664, -664, 500, -530):  # 2**664 ~ 1e200
        c = math.ldexp(1.0, e)
        assert measure(X * c, Y * c) == pytest.approx(base, abs=1e-12)
    assert measure(X * 1e200, Y * 1e-200) == pytest.approx(base, abs=1e-10)


def test_rbf_cka_with_a_fixed_bandwidth_at_extreme_scales() -> None:
    X = _randn(40, 6, seed=70)
    Y = X[:, :3] @ _randn(3, 4, seed=71) + _randn(40, 4, seed=72)
    base = rbf_cka(X, Y, sigma=3.0)
    for e in (664, -664, 500, -530):  # the bandwidth scales with the data
        c = math.ldexp(1.0, e)
        assert rbf_cka(X * c, Y * c, sigma=3.0 * c) == pytest.approx(base, abs=1e-12)


def test_half_precision_and_meta_inputs() -> None:
    X = _randn(40, 6, seed=80)
    Y = X[:, :3] @ _randn(3, 4, seed=81) + _randn(40, 4, seed=82)
    for dtype in (torch.float16, torch.bfloat16):
        eps = torch.finfo(dtype).eps
        Xh, Yh = X.to(dtype), Y.to(dtype)
        # computed in float64 from the rounded inputs: as accurate as the inputs are
        assert linear_cka(Xh, Yh) == pytest.approx(linear_cka(Xh.double(), Yh.double()), abs=1e-12)
        assert linear_cka(Xh, Yh) == pytest.approx(linear_cka(X, Y), abs=10 * eps)
        assert svcca(Xh, Yh).mean == pytest.approx(svcca(X, Y).mean, abs=10 * eps)
    meta = torch.ones(10, 3, device="meta")
    for fn in ALL:
        with pytest.raises(ValueError, match="meta device"):
            fn(meta, GOOD)
