"""Tests for matrix completion: problems, batched alternating minimization, Soft-Impute."""

from __future__ import annotations

import pytest
import torch

from subspaces.recovery import (
    LowRankMatrix,
    Observations,
    altmin_complete,
    low_rank_matrix,
    sample_entries,
    soft_impute,
)
from subspaces.recovery.completion import _exact_solve, _group, _sketched_solve


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- problems ---------------------------------------------------------------------------------


def test_low_rank_matrix_has_rank_and_factors() -> None:
    M = low_rank_matrix(40, 30, 4, generator=gen())
    dense = M.to_dense()
    assert dense.shape == (40, 30) and M.rank == 4
    assert int(torch.linalg.matrix_rank(dense)) == 4
    coherent = low_rank_matrix(40, 30, 4, coherence="coherent", generator=gen())
    assert int(torch.linalg.matrix_rank(coherent.to_dense())) == 4
    # coherent: the largest row norm is a much bigger share of the total than incoherent
    share = lambda A: float(A.norm(dim=1).max() / A.norm())  # noqa: E731
    assert share(coherent.A) > 2 * share(M.A)


def test_sample_entries_distinct_and_exact_values() -> None:
    M = low_rank_matrix(50, 40, 3, generator=gen())
    obs = sample_entries(M, 0.1, generator=gen(1))
    assert obs.num_observed == 200
    linear = obs.rows * 40 + obs.cols
    assert torch.unique(linear).numel() == 200
    torch.testing.assert_close(obs.values, M.to_dense()[obs.rows, obs.cols])
    dense_obs = sample_entries(M.to_dense(), count=17, generator=gen(2))
    assert dense_obs.num_observed == 17
    filled, mask = dense_obs.to_dense()
    assert int(mask.sum()) == 17
    torch.testing.assert_close(filled[mask].sort().values, dense_obs.values.sort().values)


def test_relative_error_matches_dense() -> None:
    M = low_rank_matrix(30, 20, 2, generator=gen())
    U, V = torch.randn(30, 3, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)
    dense = torch.linalg.matrix_norm(U @ V.T - M.to_dense()) / torch.linalg.matrix_norm(
        M.to_dense()
    )
    assert M.relative_error(U, V) == pytest.approx(float(dense), rel=1e-12)
    assert M.relative_error(M.A, M.B) < 1e-14


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: low_rank_matrix(10, 5, 6), ValueError, "rank must be <="),
        (lambda: low_rank_matrix(10, 5, 2, coherence="x"), ValueError, "coherence"),
        (lambda: low_rank_matrix(10, 5.0, 2), TypeError, "n must be an int"),
        (lambda: sample_entries(torch.ones(3, 3)), ValueError, "exactly one"),
        (lambda: sample_entries(torch.ones(3, 3), 0.0), ValueError, "fraction"),
        (lambda: sample_entries(torch.ones(3, 3), count=10), ValueError, "count must be <="),
        (
            lambda: sample_entries(torch.tensor([[1.0, float("nan")]])),
            ValueError,
            "non-finite",
        ),
        (lambda: sample_entries(torch.ones(3, 3, dtype=torch.long), 0.5), TypeError, "floating"),
    ],
)
def test_problem_bad_inputs(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


def test_observations_validation() -> None:
    i = torch.tensor([0, 1])
    v = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        Observations(i[:0], i[:0], v[:0], (2, 2))
    with pytest.raises(ValueError, match="non-finite"):
        Observations(i, i, torch.tensor([1.0, float("nan")]), (2, 2))
    with pytest.raises(ValueError, match="rows must lie"):
        Observations(torch.tensor([0, 2]), i, v, (2, 2))
    with pytest.raises(ValueError, match="cols must have shape"):
        Observations(i, torch.tensor([0]), v, (2, 2))
    with pytest.raises(TypeError, match="integer"):
        Observations(i.double(), i, v, (2, 2))
    with pytest.raises(TypeError, match="floating"):
        Observations(i, i, i, (2, 2))


# --- alternating minimization ------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["exact", "sketched"])
def test_all_entries_observed_returns_matrix(solver: str) -> None:
    M = low_rank_matrix(40, 30, 3, generator=gen())
    obs = sample_entries(M.to_dense(), 1.0, generator=gen(1))
    res = altmin_complete(obs, 3, solver=solver, generator=gen(2))
    assert res.converged
    torch.testing.assert_close(res.to_dense(), M.to_dense(), rtol=0, atol=1e-8)


def test_incoherent_recovery_300_rank5() -> None:
    M = low_rank_matrix(300, 300, 5, generator=gen())
    obs = sample_entries(M, 0.15, generator=gen(1))
    res = altmin_complete(obs, 5, tol=1e-10, generator=gen(2))
    assert res.converged
    assert M.relative_error(res.U, res.V) <= 1e-6
    assert res.history[-1] < res.history[0]
    assert res.U.shape == (300, 5) and res.V.shape == (300, 5)
    # U is kept orthonormal
    torch.testing.assert_close(
        res.U.T @ res.U, torch.eye(5, dtype=torch.float64), atol=1e-10, rtol=0
    )


def test_batched_row_solves_equal_loop() -> None:
    g = gen(3)
    m, n, r = 7, 9, 3
    mask = torch.rand(m, n, generator=g) < 0.6
    mask[:, :r] = True  # every row has at least r entries
    rows, cols = mask.nonzero(as_tuple=True)
    values = torch.randn(rows.numel(), dtype=torch.float64, generator=g)
    side = _group(rows, cols, values, m, n)
    F = torch.randn(n, r, dtype=torch.float64, generator=g)
    batched = _exact_solve(side, F, torch.zeros(m, r, dtype=torch.float64), ridge=0.0)
    for i in range(m):
        sel = rows == i
        ref = torch.linalg.lstsq(F[cols[sel]], values[sel][:, None]).solution[:, 0]
        torch.testing.assert_close(batched[i], ref, rtol=0, atol=1e-10)
    # the sketched solver with enough CG steps reaches the same solution (r steps are exact)
    approx = _sketched_solve(side, F, torch.zeros(m, r, dtype=torch.float64), 0.0, steps=3 * r)
    torch.testing.assert_close(approx, batched, rtol=0, atol=1e-10)


def test_sketched_float32_corrections_refine_to_float64_accuracy() -> None:
    # issue 18: the CG correction is computed in float32 (cheap sampled products); warm-started
    # again at its own output, the solve converges to the float64 solution, not a float32 one
    g = gen(4)
    m, n, r = 30, 40, 4
    mask = torch.rand(m, n, generator=g) < 0.5
    mask[:, :r] = True
    rows, cols = mask.nonzero(as_tuple=True)
    values = torch.randn(rows.numel(), dtype=torch.float64, generator=g)
    side = _group(rows, cols, values, m, n)
    F = torch.randn(n, r, dtype=torch.float64, generator=g)
    exact = _exact_solve(side, F, torch.zeros(m, r, dtype=torch.float64), ridge=0.0)
    X = torch.zeros(m, r, dtype=torch.float64)
    X = _sketched_solve(side, F, X, 0.0, 2 * r, torch.float32)
    once = float((X - exact).abs().max())
    assert once > 1e3 * torch.finfo(torch.float64).eps  # one solve: float32 accuracy
    for _ in range(6):
        X = _sketched_solve(side, F, X, 0.0, 2 * r, torch.float32)
    cond = max(float(torch.linalg.cond(F[cols[rows == i]])) ** 2 for i in range(m))
    bound = 100 * cond * torch.finfo(torch.float64).eps * float(exact.abs().max())
    assert float((X - exact).abs().max()) <= bound < once


def test_sketched_iteration_is_cheaper_than_exact_at_large_rank() -> None:
    # the approximate solver earns its name: O(|Omega| k) per iteration against O(|Omega| k^2)
    # for the normal equations; at k = 64 (200 entries per row) about 10x cheaper in CPU time
    import time

    from subspaces.recovery.completion import _altmin_iteration

    n, k, count = 400, 64, 80_000
    g = gen(5)
    lin = torch.randperm(n * n, generator=g)[:count]
    rows, cols = lin // n, lin % n
    values = torch.randn(count, dtype=torch.float64, generator=g)
    sides = (_group(rows, cols, values, n, n), _group(cols, rows, values, n, n))
    U = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64, generator=g)).Q
    V = torch.randn(n, k, dtype=torch.float64, generator=g)
    seconds = {}
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for solver in ("exact", "sketched"):
            times = []
            for _ in range(3):
                start = time.process_time()
                _altmin_iteration(*sides, U, V, solver, 1e-10, 3)
                times.append(time.process_time() - start)
            seconds[solver] = sorted(times)[1]
    finally:
        torch.set_num_threads(prev)
    assert 2 * seconds["sketched"] < seconds["exact"], seconds


def test_sketched_altmin_reaches_float64_accuracy() -> None:
    M = low_rank_matrix(200, 150, 4, generator=gen())
    obs = sample_entries(M, 0.3, generator=gen(1))
    exact = altmin_complete(obs, 4, tol=1e-13, generator=gen(2))
    approx = altmin_complete(obs, 4, tol=1e-13, solver="sketched", generator=gen(2))
    assert exact.converged and approx.converged  # float32 corrections: no float32 floor
    assert M.relative_error(approx.U, approx.V) <= 10 * M.relative_error(exact.U, exact.V) + 1e-12


def test_row_without_entries_gets_zero() -> None:
    rows = torch.tensor([0, 0, 2])
    cols = torch.tensor([0, 1, 1])
    values = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    side = _group(rows, cols, values, 3, 2)
    X = _exact_solve(
        side, torch.eye(2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64), 1e-10
    )
    assert torch.isfinite(X).all()
    torch.testing.assert_close(X[1], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(X[0], torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_sketched_solver_converges() -> None:
    M = low_rank_matrix(300, 250, 5, generator=gen())
    obs = sample_entries(M, 0.2, generator=gen(1))
    exact = altmin_complete(obs, 5, tol=1e-10, generator=gen(2))
    approx = altmin_complete(obs, 5, tol=1e-10, solver="sketched", cg_steps=2, generator=gen(2))
    assert approx.converged
    assert M.relative_error(approx.U, approx.V) <= 1e-6
    assert approx.iterations <= 2 * exact.iterations


def test_random_init_and_float32() -> None:
    M = low_rank_matrix(120, 100, 3, generator=gen())
    obs = sample_entries(M, 0.3, generator=gen(1))
    res = altmin_complete(obs, 3, init="random", tol=1e-10, generator=gen(2))
    assert M.relative_error(res.U, res.V) <= 1e-6
    obs32 = Observations(obs.rows, obs.cols, obs.values.float(), obs.shape)
    res32 = altmin_complete(obs32, 3, tol=1e-5, generator=gen(2))
    assert res32.U.dtype == torch.float32
    assert M.relative_error(res32.U, res32.V) <= 1e-4


def test_altmin_bad_inputs() -> None:
    M = low_rank_matrix(20, 10, 2, generator=gen())
    obs = sample_entries(M, 0.5, generator=gen())
    with pytest.raises(ValueError, match="rank must be <="):
        altmin_complete(obs, 11)
    with pytest.raises(ValueError, match="solver"):
        altmin_complete(obs, 2, solver="qr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="init"):
        altmin_complete(obs, 2, init="zeros")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Observations"):
        altmin_complete(M.to_dense(), 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="iters"):
        altmin_complete(obs, 2, iters=0)
    with pytest.raises(ValueError, match="ridge"):
        altmin_complete(obs, 2, ridge=-1.0)


def test_zero_observations_give_zero_matrix() -> None:
    obs = Observations(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.zeros(2), (3, 3))
    res = altmin_complete(obs, 1)
    assert res.converged and float(res.to_dense().abs().max()) == 0.0


# --- Soft-Impute -------------------------------------------------------------------------------


def test_soft_impute_reduces_error_but_is_biased() -> None:
    M = low_rank_matrix(200, 150, 4, generator=gen())
    obs = sample_entries(M, 0.3, generator=gen(1))
    zero_error = 1.0  # the zero matrix
    res = soft_impute(obs, 8, generator=gen(2))
    err = M.relative_error(res.U, res.V)
    assert err < 0.3 * zero_error
    assert err > 1e-4  # shrinkage bias: no exact recovery
    assert res.history[-1] < res.history[0]
    with pytest.raises(ValueError, match="shrinkage"):
        soft_impute(obs, 8, shrinkage=-1.0)
    assert isinstance(M, LowRankMatrix)


# --- the reproduction --------------------------------------------------------------------------


def test_p19_slope_fit_recovers_a_power_law() -> None:
    from subspaces.experiments.P19_matrix_completion import _slope

    ks = [32.0, 64.0, 128.0, 256.0]
    for power in (0.5, 1.0, 2.3):
        assert _slope(ks, [3.0 * k**power for k in ks]) == pytest.approx(power, rel=1e-12)


def test_p19_times_both_solvers_per_iteration() -> None:
    # issue 18: the sweep timed only the exact solver; it times one AltMin iteration of each
    from subspaces.experiments.P19_matrix_completion import _iteration_seconds

    both = _iteration_seconds(300, 30_000, 32, seed=0, repeats=1)
    assert set(both) == {"exact", "sketched"} and all(t >= 0.0 for t in both.values())
    assert set(_iteration_seconds(300, 30_000, 256, seed=0, repeats=1)) == {"sketched"}


@pytest.mark.slow
def test_p19_fast_reproduces() -> None:
    from subspaces.experiments import get

    result = get("P19").run(True, 0)
    m = result.measured
    assert len(m["seeds"]) >= 3
    for solver in ("exact", "sketched"):
        assert max(m[f"recovery_error_{solver}"]["per_seed"]) <= 1e-6
    # the sweep times both solvers over k (it timed only the exact one, over |Omega|)
    sweep = m["sweep"]["iteration_cpu_seconds"]
    assert all("exact" in sweep[s][128] and "sketched" in sweep[s][256] for s in m["seeds"])
    assert 0.7 <= m["slope_approx"]["mean"] <= 1.4
    assert m["slope_exact"]["mean"] >= 1.6
    assert m["race_speedup"]["mean"] > 1.0
    assert m["soft_impute_relative_error"] > 1e-3
    assert result.passed, result.summary


# --- issue 17: any scale, half precision ------------------------------------------------------
def _scaled(obs: Observations, c: float, dtype: torch.dtype | None = None) -> Observations:
    values = obs.values * c
    return Observations(
        obs.rows, obs.cols, values if dtype is None else values.to(dtype), obs.shape
    )


@pytest.mark.parametrize("fn", [soft_impute, altmin_complete])
def test_completion_is_equivariant_to_the_scale_of_the_entries(fn) -> None:
    # entries of 1e200 overflowed the norms (soft_impute: a NaN history reported as converged;
    # altmin: an SVD failure) and entries of 1e-200 underflowed them (soft_impute: a division by
    # zero; altmin: the zero matrix, "converged")
    M = low_rank_matrix(40, 30, 2, generator=gen())
    obs = sample_entries(M, 0.6, generator=gen(1))
    base = fn(obs, 2, generator=gen(2))
    assert all(torch.isfinite(torch.tensor(base.history)))
    for c in (2.0**664, 2.0**-664, 1e200, 1e-200, 1e150):
        res = fn(_scaled(obs, c), 2, generator=gen(2))
        assert res.converged == base.converged and res.iterations == base.iterations
        assert res.history == pytest.approx(base.history, rel=1e-9, abs=1e-14)
        assert torch.allclose(res.to_dense() / c, base.to_dense(), rtol=1e-9, atol=1e-12)
    # a user-given shrinkage scales with the entries too
    if fn is soft_impute:
        a = soft_impute(obs, 2, shrinkage=0.5, generator=gen(2))
        b = soft_impute(_scaled(obs, 2.0**600), 2, shrinkage=0.5 * 2.0**600, generator=gen(2))
        assert b.history == a.history
        assert torch.equal(b.U, a.U * 2.0**600) and torch.equal(b.V, a.V)


def test_soft_impute_zero_observations_give_zero_matrix() -> None:
    obs = Observations(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.zeros(2), (3, 3))
    res = soft_impute(obs, 1)  # the old code divided by the zero norm
    assert res.converged and float(res.to_dense().abs().max()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", [soft_impute, altmin_complete])
def test_half_precision_entries_are_completed_in_float32(fn, dtype) -> None:
    M = low_rank_matrix(40, 30, 2, generator=gen())
    obs = sample_entries(M, 0.6, generator=gen(1))
    res = fn(_scaled(obs, 1.0, dtype), 2, generator=gen(2))
    assert res.U.dtype == res.V.dtype == dtype
    ref = fn(obs, 2, generator=gen(2))  # float64
    # rounding the entries to the dtype moves the completion by O(eps)
    err = M.relative_error(res.U.double(), res.V.double())
    assert err <= M.relative_error(ref.U, ref.V) + 4 * torch.finfo(dtype).eps
