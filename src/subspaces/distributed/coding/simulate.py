"""Round-by-round simulation of a coding scheme against straggler slowdowns.

In round ``r`` worker ``i`` takes ``latency + load * n * unit * slowdown[i, r]`` seconds (``unit``:
the time to compute the gradient of ``1 / n`` of a job's data at nominal speed). The master waits
until ``(1 + mu)`` times the fastest worker's time; the slower workers are the round's stragglers.
If the scheme tolerates that pattern (:meth:`~subspaces.distributed.coding.Scheme.tolerates`),
the round ends then, without the stragglers' results; otherwise the master waits for every worker
(a *wait*, counted). The job due at the end of the round must then be decodable; the simulator
checks it, so a scheme that promises more than it delivers raises instead of being timed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .schemes import Scheme

__all__ = ["SimulationResult", "mu_rule", "simulate"]


@dataclass
class SimulationResult:
    """What a simulated run of ``jobs`` jobs cost.

    Attributes:
        scheme: the scheme's name.
        n: workers.
        jobs: jobs completed.
        delay: the scheme's ``T``.
        load: normalized load per worker and round (fraction of a job's data).
        total_time: time until the last job was decoded.
        waits: rounds in which the master waited for every worker (pattern outside the model).
        round_times: ``(jobs + T,)`` durations of the rounds.
        stragglers: ``(n, jobs + T)`` who was left out.

    Example:
        >>> from subspaces.distributed.coding import GradientCodingScheme
        >>> S = np.array([[1.0, 1.0], [1.0, 1.0], [5.0, 1.0]])  # worker 2 slow in round 0
        >>> res = simulate(GradientCodingScheme(3, 1, jobs=2), S)
        >>> res.scheme, res.jobs, round(res.load, 4), res.total_time, res.waits
        ('GC', 2, 0.6667, 6.0, 0)
        >>> res.round_times.tolist(), res.stragglers[:, 0].tolist()  # round 0 ends at 2 x 2
        ([4.0, 2.0], [False, False, True])
    """

    scheme: str
    n: int
    jobs: int
    delay: int
    load: float
    total_time: float
    waits: int
    round_times: np.ndarray = field(repr=False)
    stragglers: np.ndarray = field(repr=False)


def mu_rule(scheme: Scheme, r: int, times: np.ndarray, mu: float) -> tuple[np.ndarray, float, bool]:
    """The master's decision in round ``r``: whom to wait for, how long, and whether it waited.

    Args:
        scheme: the scheme (its :meth:`~subspaces.distributed.coding.Scheme.tolerates` decides).
        r: the round.
        times: ``(n,)`` finishing times of the workers in the round.
        mu: patience: workers slower than ``(1 + mu)`` times the fastest busy one straggle.

    Returns:
        ``(received, duration, waited)``: boolean ``(n,)`` of the results used, the round's
        duration, and whether stragglers outside the tolerated patterns made the master wait
        for everyone.

    Example:
        >>> from subspaces.distributed.coding import GradientCodingScheme
        >>> gc = GradientCodingScheme(3, 1, jobs=1)
        >>> got, t, waited = mu_rule(gc, 0, np.array([1.0, 1.0, 5.0]), 1.0)
        >>> got.tolist(), t, waited
        ([True, True, False], 2.0, False)
    """
    busy = np.array([bool(t) for t in scheme.assignment(r)])
    if not busy.any():
        return np.ones(scheme.n, dtype=bool), 0.0, False
    deadline = float(times[busy].min()) * (1.0 + mu)
    straggler = busy & (times > deadline)
    if straggler.any() and scheme.tolerates(r, straggler):
        return ~straggler, min(deadline, float(times[busy].max())), False
    return np.ones(scheme.n, dtype=bool), float(times[busy].max()), bool(straggler.any())


def simulate(
    scheme: Scheme,
    slowdown: np.ndarray,
    *,
    mu: float = 1.0,
    unit: float = 1.0,
    latency: float = 0.0,
) -> SimulationResult:
    """Run ``scheme`` round by round against ``slowdown`` and time it.

    Args:
        scheme: a fresh scheme (its state is filled in).
        slowdown: ``(n, rounds)`` slowdown factors with ``rounds >= scheme.rounds`` (from a
            :mod:`~subspaces.distributed.coding.stragglers` model).
        mu: patience: workers slower than ``(1 + mu)`` times the fastest are stragglers.
        unit: nominal time of the gradient of ``1 / n`` of a job.
        latency: fixed time per round and worker (communication).

    Returns:
        The :class:`SimulationResult`.

    Raises:
        ValueError: for a slowdown array of the wrong shape or with non-positive or non-finite
            values, or ``mu < 0``.
        RuntimeError: if a job is not decodable at its deadline (a scheme bug).

    Example:
        >>> from subspaces.distributed.coding import GradientCodingScheme, IIDStragglers
        >>> S = IIDStragglers(p=0.1, jitter=0.01).sample(8, 50, seed=0)
        >>> plain = simulate(GradientCodingScheme(8, 0, jobs=50), S)
        >>> coded = simulate(GradientCodingScheme(8, 2, jobs=50), S)
        >>> coded.waits < plain.waits, coded.load > plain.load
        (True, True)
    """
    S = np.asarray(slowdown, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != scheme.n or S.shape[1] < scheme.rounds:
        raise ValueError(
            f"slowdown must have shape ({scheme.n}, >= {scheme.rounds}) for {scheme.name} with "
            f"{scheme.jobs} jobs and T = {scheme.T}, got {S.shape}"
        )
    if not np.all(np.isfinite(S)) or np.any(S <= 0):
        raise ValueError("slowdown must be positive and finite")
    if not mu >= 0:
        raise ValueError(f"mu must be >= 0, got {mu!r}")
    rounds = scheme.rounds
    durations = np.zeros(rounds)
    left_out = np.zeros((scheme.n, rounds), dtype=bool)
    waits = 0
    for r in range(rounds):
        times = latency + scheme.load * scheme.n * unit * S[:, r]
        received, durations[r], waited = mu_rule(scheme, r, times, mu)
        waits += int(waited)
        scheme.record(r, received)
        left_out[:, r] = ~received
        job = r - scheme.T
        if 0 <= job < scheme.jobs and not scheme.decodable(job):
            raise RuntimeError(f"{scheme.name}: job {job} is not decodable at round {r}")
    return SimulationResult(
        scheme=scheme.name,
        n=scheme.n,
        jobs=scheme.jobs,
        delay=scheme.T,
        load=scheme.load,
        total_time=float(durations.sum()),
        waits=waits,
        round_times=durations,
        stragglers=left_out,
    )
