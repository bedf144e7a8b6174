"""What ``CompletionResult.converged`` means for each completion method (its docstring)."""

from __future__ import annotations

import torch

from subspaces.recovery import (
    LowRankMatrix,
    Observations,
    altmin_complete,
    low_rank_matrix,
    sample_entries,
    soft_impute,
)


def _problem() -> tuple[LowRankMatrix, Observations]:
    g = torch.Generator().manual_seed(0)
    M = low_rank_matrix(60, 50, 2, generator=g)
    return M, sample_entries(M, 0.4, generator=g)


def test_altmin_converged_means_observed_error_reached_tol() -> None:
    _, obs = _problem()
    res = altmin_complete(obs, 2, tol=1e-10, generator=torch.Generator().manual_seed(1))
    assert res.converged and res.history[-1] <= 1e-10
    short = altmin_complete(obs, 2, tol=1e-10, iters=2, generator=torch.Generator().manual_seed(1))
    assert not short.converged and short.history[-1] > 1e-10


def test_soft_impute_converged_means_relative_change_reached_tol() -> None:
    # soft_impute is biased: it stops on the change of its iterate, far above tol in error
    _, obs = _problem()
    tol = 1e-4
    res = soft_impute(obs, 5, tol=tol, generator=torch.Generator().manual_seed(1))
    assert res.converged and res.history[-1] > 100 * tol
    # the same run one iteration shorter (same generator stream) gives the previous iterate
    prev = soft_impute(
        obs, 5, tol=tol, iters=res.iterations - 1, generator=torch.Generator().manual_seed(1)
    )
    assert not prev.converged
    Z, Z_prev = res.to_dense(), prev.to_dense()
    change = float(torch.linalg.matrix_norm(Z - Z_prev) / torch.linalg.matrix_norm(Z))
    assert change <= tol * (1 + 1e-6)
