"""GC, SR-SGC and M-SGC: exact decoding under the (B, W, lambda) model, loads, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from subspaces.distributed.coding import (
    BurstyWindow,
    GradientCodingScheme,
    MultiplexedSGC,
    SelectiveRepeatSGC,
)
from subspaces.distributed.coding.schemes import Scheme


def in_model(S: np.ndarray, B: int, W: int, lam: int) -> bool:
    """Brute force over every window of W rounds (independent of the schemes' check)."""
    n, rounds = S.shape
    for lo in range(-W + 1, rounds):
        win = S[:, max(0, lo) : lo + W]
        if int(win.any(axis=1).sum()) > lam:
            return False
        for i in range(n):
            hit = np.flatnonzero(win[i])
            if hit.size and hit[-1] - hit[0] + 1 > B:
                return False
    return True


def run_and_decode(scheme: Scheme, S: np.ndarray, rng: np.random.Generator) -> float:
    """Drive ``scheme`` with straggler pattern ``S``; largest decoding error over all jobs."""
    grads = rng.standard_normal((scheme.jobs, scheme.num_parts(), 4))
    for r in range(scheme.rounds):
        assert scheme.tolerates(r, S[:, r]), (scheme.name, r)
        scheme.record(r, ~S[:, r])
        job = r - scheme.T
        if 0 <= job < scheme.jobs:
            assert scheme.decodable(job), (scheme.name, job)
    worst = 0.0
    for job in range(scheme.jobs):
        total = np.zeros(4)
        for r, w, task, c in scheme.decoding(job):
            assert task[0] == job and task in scheme.assignment(r)[w]
            for part, b in scheme.task_coefficients(w, task).items():
                total += c * b * grads[job, part]
        worst = max(worst, float(np.abs(total - grads[job].sum(axis=0)).max()))
    return worst


@pytest.mark.parametrize("seed", range(12))
def test_sgc_schemes_decode_exactly_inside_the_bursty_model(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 9))
    B = int(rng.integers(1, 3))
    W = B * int(rng.integers(1, 3)) + 1
    lam = int(rng.integers(1, min(n, 4)))
    model = BurstyWindow(B=B, W=W, lam=lam, p=0.35, jitter=0.0)
    for scheme in (
        MultiplexedSGC(n, B, W, lam, jobs=7, seed=seed),
        SelectiveRepeatSGC(n, B, W, lam, jobs=7, seed=seed),
    ):
        S = model.sample(n, scheme.rounds, seed=seed) > 1
        assert in_model(S, B, W, lam)
        assert S.any()  # the test exercises stragglers
        assert run_and_decode(scheme, S, rng) <= 1e-10


@pytest.mark.parametrize("seed", range(4))
def test_gc_decodes_with_at_most_s_stragglers_per_round(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, s = 7, 2
    S = np.zeros((n, 6), dtype=bool)
    for r in range(6):
        S[rng.choice(n, size=int(rng.integers(0, s + 1)), replace=False), r] = True
    assert run_and_decode(GradientCodingScheme(n, s, jobs=6, seed=seed), S, rng) <= 1e-10


def test_gc_too_many_stragglers_is_refused_and_undecodable() -> None:
    gc = GradientCodingScheme(5, 1, jobs=1)
    pattern = np.array([True, True, False, False, False])
    assert not gc.tolerates(0, pattern)
    gc.record(0, ~pattern)
    assert not gc.decodable(0)
    with pytest.raises(ValueError, match="cannot decode"):
        gc.decoding(0)


def test_msgc_refuses_patterns_outside_the_model() -> None:
    ms = MultiplexedSGC(6, B=1, W=3, lam=2, jobs=4)
    three = np.array([True, True, True, False, False, False])
    assert not ms.tolerates(0, three)  # more than lambda distinct stragglers
    ms.record(0, ~np.array([True, False, False, False, False, False]))
    ms.record(1, np.ones(6, dtype=bool))
    again = np.array([True, False, False, False, False, False])
    assert not ms.tolerates(2, again)  # a second burst of worker 0 inside the window W = 3
    assert ms.tolerates(3, again)  # the window has moved on
    other = np.array([False, True, True, False, False, False])
    assert not ms.tolerates(2, other)  # {0, 1, 2} distinct in rounds 0..2


def mean_work_per_round(scheme: Scheme, r: int) -> np.ndarray:
    sizes = scheme.part_sizes()
    return np.array(
        [
            sum(sizes[list(scheme.task_coefficients(w, t))].sum() for t in tasks)
            for w, tasks in enumerate(scheme.assignment(r))
        ]
    )


@pytest.mark.parametrize(("n", "B", "W", "lam"), [(16, 1, 3, 4), (8, 2, 5, 3), (12, 3, 4, 2)])
def test_msgc_load_formula_matches_its_tasks(n: int, B: int, W: int, lam: int) -> None:
    ms = MultiplexedSGC(n, B, W, lam, jobs=10)
    assert ms.T == W - 2 + B
    expected = (lam + 1) * (W - 1 + B) / (n * (B + (W - 1) * (lam + 1)))
    assert ms.load == pytest.approx(expected, rel=1e-15)
    assert ms.part_sizes().sum() == pytest.approx(1.0, rel=1e-12)
    assert ms.num_parts() == n * (W - 1) + B * n
    # in a steady-state round without past stragglers every worker does exactly `load`
    for r in range(ms.T + 1):
        ms.record(r, np.ones(n, dtype=bool))
    np.testing.assert_allclose(mean_work_per_round(ms, ms.T), ms.load, rtol=1e-12)
    assert ms.load < GradientCodingScheme(n, lam, jobs=1).load


@pytest.mark.parametrize(("n", "B", "W", "lam"), [(16, 1, 3, 4), (8, 2, 5, 3), (10, 3, 7, 5)])
def test_srsgc_parameters_match_the_paper(n: int, B: int, W: int, lam: int) -> None:
    sr = SelectiveRepeatSGC(n, B, W, lam, jobs=3)
    assert sr.s == math.ceil(B * lam / (W - 1 + B))
    assert sr.T == B
    assert sr.load == (sr.s + 1) / n
    np.testing.assert_allclose(mean_work_per_round(sr, 0), sr.load, rtol=1e-12)


def test_gc_load() -> None:
    gc = GradientCodingScheme(10, 3, jobs=2)
    assert gc.load == 0.4 and gc.T == 0 and gc.rounds == 2
    np.testing.assert_allclose(mean_work_per_round(gc, 0), 0.4, rtol=1e-12)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: GradientCodingScheme(0, 0, jobs=1), "n must be"),
        (lambda: GradientCodingScheme(4, 4, jobs=1), "s \\(stragglers"),
        (lambda: GradientCodingScheme(4, 1, jobs=0), "jobs must be"),
        (lambda: SelectiveRepeatSGC(8, B=2, W=4, lam=2, jobs=2), "B to divide W - 1"),
        (lambda: SelectiveRepeatSGC(4, B=1, W=3, lam=5, jobs=2), "lam must be <= n"),
        (lambda: SelectiveRepeatSGC(4, B=0, W=3, lam=1, jobs=2), "B must be"),
        (lambda: MultiplexedSGC(4, B=1, W=3, lam=5, jobs=2), "lam must be <= n"),
        (lambda: MultiplexedSGC(4, B=1, W=1, lam=1, jobs=2), "W must be"),
        (lambda: MultiplexedSGC(4, B=1, W=3, lam=0, jobs=2), "lam must be"),
    ],
)
def test_bad_parameters(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        make()
