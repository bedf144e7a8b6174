"""Trace defaults chosen by what is known about the operator, with honest standard errors.

(issue 22) On small-data curvature, Hutch++ beats Hutchinson at equal products, and a GGN or
Fisher whose rank is bounded by its few samples has an exact trace from a sketch that spans its
range.
"""

import math
import warnings

import pytest
import torch
from cases import small_data_case

from subspaces.curvature import FisherOperator, GGNOperator, HessianOperator, trace

F64 = torch.float64
EPS = torch.finfo(F64).eps


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "make",
    [
        GGNOperator,
        lambda m, l, d: FisherOperator(m, l, d, kind="empirical"),
        lambda m, l, d: FisherOperator(m, l, d, mc_samples=2, generator=_gen(1)),
    ],
    ids=["ggn", "empirical_fisher", "mc_fisher"],
)
def test_low_rank_curvature_trace_is_exact_by_default(make):
    model, loss, data = small_data_case()
    A = make(model, loss, data)
    exact = float(A.to_dense().trace())
    bound = A.rank_bound()
    assert bound <= 24 < A.shape[0]  # 12 samples: (C - 1) per sample for CE, 1 for the EF
    r = trace(A, generator=_gen(0))
    n = A.shape[0]
    rounding = math.sqrt(n) * EPS * abs(exact)
    assert abs(r.estimate - exact) <= 2 * r.stderr
    assert r.stderr <= 10 * rounding  # exact up to rounding, and says so
    assert r.num_matvecs <= 2 * (bound + 10) + 16


def test_default_beats_hutchinson_on_a_small_data_hessian():
    model, loss, data = small_data_case()
    D = HessianOperator(model, loss, data).to_dense()
    exact = float(D.trace())
    seeds = range(20)
    kw = {"rtol": 1e-12, "max_matvecs": 100}  # unreachable rtol: both spend the same budget
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        auto = [trace(D, generator=_gen(s), **kw) for s in seeds]
        hutch = [trace(D, method="hutchinson", generator=_gen(s), **kw) for s in seeds]
    assert {r.num_matvecs for r in auto} == {r.num_matvecs for r in hutch} == {100}

    def rms(rs):
        return math.sqrt(sum((r.estimate - exact) ** 2 for r in rs) / len(rs))

    # measured: 3.3x over 100 seeds; 20 seeds estimate each RMS to about +-16%
    assert rms(auto) < 0.5 * rms(hutch)


def test_rank_bound_counts_counted_positions_only():
    model, _, data = small_data_case()
    data = [(X, y.clone()) for X, y in data]
    data[0][1][:3] = -100
    G = GGNOperator(model, torch.nn.CrossEntropyLoss(), data)
    assert G.rank_bound() == (12 - 3) * 2


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        trace(torch.eye(3, dtype=F64), method="exact")


@pytest.mark.slow
@pytest.mark.parametrize("which", ["hessian", "ggn"])
@pytest.mark.parametrize("method", ["auto", "hutchinson", "hutch++"])
@pytest.mark.parametrize("rtol", [0.02, 1e-12])
def test_standard_errors_cover_the_truth(which, method, rtol):
    """Over 400 seeds, |estimate - trace| <= 2 stderr about 95% of the time.

    The binomial standard error of a 95% coverage over 400 seeds is 1.1%; the band
    [0.92, 0.985] is about 3 of them either side (an exact result, whose error is rounding,
    may cover more often: its standard error is a rounding floor).
    """
    model, loss, data = small_data_case()
    op = (HessianOperator if which == "hessian" else GGNOperator)(model, loss, data)
    exact = float(op.to_dense().trace())
    # the Hessian as a dense tensor (same estimator, 400 seeds in seconds); the GGN as the
    # operator, so that "auto" sees its rank bound
    A = op.to_dense() if which == "hessian" else op
    covered = 0
    seeds = 400
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for s in range(seeds):
            r = trace(A, rtol, method=method, max_matvecs=150, generator=_gen(s))
            covered += abs(r.estimate - exact) <= 2 * r.stderr
    rate = covered / seeds
    exact_path = which == "ggn" and method in ("auto", "hutch++")
    assert rate >= 0.92, rate
    if not exact_path:
        assert rate <= 0.985, rate
