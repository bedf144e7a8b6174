"""The mu-rule simulator on hand-built slowdowns, and the straggler models' statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from subspaces.distributed.coding import (
    BurstyWindow,
    GilbertElliott,
    GradientCodingScheme,
    IIDStragglers,
    MultiplexedSGC,
    TraceStragglers,
    simulate,
)


def test_one_tolerated_straggler_ends_the_round_at_the_deadline() -> None:
    S = np.ones((4, 3))
    S[2, 1] = 5.0
    res = simulate(GradientCodingScheme(4, 1, jobs=3), S, mu=1.0, unit=1.0)
    # load * n * unit = 2 per round; round 1 ends at (1 + mu) * 2 = 4 without worker 2
    np.testing.assert_array_equal(res.round_times, [2.0, 4.0, 2.0])
    assert res.total_time == 8.0 and res.waits == 0 and res.jobs == 3
    assert res.stragglers[:, 1].tolist() == [False, False, True, False]
    assert not res.stragglers[:, [0, 2]].any()


def test_untolerated_pattern_waits_for_everyone() -> None:
    S = np.ones((4, 2))
    S[[0, 3], 0] = [3.0, 7.0]
    res = simulate(GradientCodingScheme(4, 1, jobs=2), S, mu=0.5, unit=1.0, latency=1.0)
    # times 1 + 2 * slowdown: [7, 3, 3, 15] -> two stragglers > s = 1: wait for 15
    np.testing.assert_array_equal(res.round_times, [15.0, 3.0])
    assert res.waits == 1 and not res.stragglers.any()
    plain = simulate(GradientCodingScheme(4, 0, jobs=2), S[:, ::-1].copy(), mu=0.5)
    assert plain.waits == 1 and plain.load == 0.25


def test_msgc_rounds_and_idle_tail() -> None:
    n, jobs = 6, 4
    ms = MultiplexedSGC(n, B=1, W=3, lam=2, jobs=jobs)
    S = np.ones((n, ms.rounds))
    S[1, 2] = 9.0  # one straggler inside the model
    res = simulate(ms, S, mu=1.0, unit=1.0)
    assert res.delay == 2 and res.round_times.shape == (jobs + 2,)
    assert res.waits == 0 and res.stragglers[1, 2] and res.stragglers.sum() == 1
    # rounds with the full pipeline do W - 1 + B = 3 mini-tasks of load ms.load / 3 each
    full = ms.load * n
    assert res.round_times[2] == pytest.approx(2 * full)
    assert res.round_times[3] == pytest.approx(full)
    assert res.total_time == pytest.approx(res.round_times.sum())


class LyingScheme(GradientCodingScheme):
    def tolerates(self, r: int, straggler: np.ndarray) -> bool:
        return True


def test_a_scheme_that_overpromises_is_caught() -> None:
    S = np.ones((4, 1))
    S[:2, 0] = 9.0
    with pytest.raises(RuntimeError, match="job 0 is not decodable"):
        simulate(LyingScheme(4, 1, jobs=1), S)


@pytest.mark.parametrize(
    ("S", "mu", "match"),
    [
        (np.ones((3, 4)), 1.0, "shape \\(4, >= 4\\)"),
        (np.ones((4, 3)), 1.0, "shape \\(4, >= 4\\)"),
        (np.ones(4), 1.0, "shape"),
        (np.where(np.eye(4, 4) > 0, np.nan, 1.0), 1.0, "positive and finite"),
        (np.zeros((4, 4)), 1.0, "positive and finite"),
        (np.ones((4, 4)), -0.5, "mu must be >= 0"),
        (np.ones((4, 4)), float("nan"), "mu must be >= 0"),
    ],
)
def test_bad_simulation_input(S: np.ndarray, mu: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        simulate(GradientCodingScheme(4, 1, jobs=4), S, mu=mu)


def test_iid_rate_within_five_sigma() -> None:
    p, n, rounds = 0.1, 100, 300
    S = IIDStragglers(p=p, slowdown=3.0, jitter=0.0).sample(n, rounds, seed=3) > 1
    sigma = math.sqrt(p * (1 - p) / S.size)
    assert abs(float(S.mean()) - p) < 5 * sigma


def test_gilbert_elliott_rate_and_burst_length() -> None:
    a, b = 0.03, 0.25  # good->bad, bad->good
    n, rounds = 100, 400
    S = GilbertElliott(p_good_to_bad=a, p_bad_to_good=b, jitter=0.0).sample(n, rounds, seed=1) > 1
    pi = a / (a + b)
    rho = 1.0 - a - b  # lag-one autocorrelation of the chain
    var = pi * (1 - pi) / (n * rounds) * (1 + rho) / (1 - rho)
    assert abs(float(S.mean()) - pi) < 5 * math.sqrt(var)
    bursts = []
    for row in S:
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            if stop < rounds:  # censored at the end otherwise (memoryless start is fine)
                bursts.append(stop - start)
    lengths = np.array(bursts, dtype=float)
    sd = math.sqrt(1 - b) / b  # geometric(b) burst length
    assert abs(lengths.mean() - 1 / b) < 5 * sd / math.sqrt(lengths.size)
    assert lengths.size > 200


def test_jitter_and_trace() -> None:
    S = IIDStragglers(p=0.0, jitter=0.1).sample(5, 7, seed=0)
    assert np.all(S >= 1.0) and np.all(S < 1.0 + 0.1 * 6)
    trace = TraceStragglers(np.array([[1.0, 4.0], [2.0, 2.0]]))
    np.testing.assert_array_equal(trace.sample(2, 2), [[0.5, 2.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="asked for 3 x 1"):
        trace.sample(3, 1)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: IIDStragglers(p=1.5), "p must be a probability"),
        (lambda: IIDStragglers(slowdown=1.0), "slowdown must be > 1"),
        (lambda: IIDStragglers(jitter=-1.0), "jitter must be >= 0"),
        (lambda: GilbertElliott(p_good_to_bad=0.0, p_bad_to_good=0.0), "cannot both be 0"),
        (lambda: GilbertElliott(p_bad_to_good=-0.1), "p_bad_to_good must be"),
        (lambda: TraceStragglers(np.array([[1.0, np.nan]])), "positive and finite"),
        (lambda: TraceStragglers(np.ones(3)), "non-empty \\(workers, rounds\\)"),
        (lambda: IIDStragglers().sample(0, 3), "n must be an integer >= 1"),
        (lambda: BurstyWindow(B=0), "B must be an integer >= 1"),
        (lambda: BurstyWindow(B=3, W=2), "W must be an integer >= 3"),
        (lambda: BurstyWindow(lam=-1), "lam must be an integer >= 0"),
    ],
)
def test_bad_model_parameters(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        make()
