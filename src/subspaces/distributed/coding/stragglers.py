"""Straggler models: how much slower than nominal each worker is in each round.

A model's :meth:`~StragglerModel.sample` returns an ``(n, rounds)`` array of slowdown factors
(``1`` = nominal speed). :func:`~subspaces.distributed.coding.simulate` turns them into round
times: ``latency + load * n * unit * slowdown`` for a worker with normalized load ``load``.

- :class:`IIDStragglers`: each worker straggles independently in each round with probability
  ``p``.
- :class:`GilbertElliott`: each worker is a two-state Markov chain (good, bad) started in its
  stationary distribution, so stragglers come in bursts of mean length ``1 / p_bad_to_good``
  (the bursty stragglers of the paper's experiments on AWS Lambda).
- :class:`BurstyWindow`: random patterns inside the paper's ``(B, W, lambda)``-bursty model
  (every window of ``W`` rounds has at most ``lambda`` distinct stragglers, and a worker's
  straggling rounds in a window span at most ``B`` rounds), the model SR-SGC and M-SGC are
  designed for.
- :class:`TraceStragglers`: replay of a recorded ``(n, rounds)`` array (e.g. measured times of
  workers per unit of work).

Every model adds a small multiplicative jitter ``1 + jitter * |N(0, 1)|`` so that ties between
workers are broken as on real machines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BurstyWindow",
    "GilbertElliott",
    "IIDStragglers",
    "StragglerModel",
    "TraceStragglers",
]


def _check_prob(value: float, name: str) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _check_sizes(n: int, rounds: int) -> None:
    for value, name in ((n, "n"), (rounds, "rounds")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class StragglerModel:
    """Base class: slowdown of stragglers and jitter of everyone.

    Attributes:
        slowdown: factor by which a straggler is slower (``> 1``).
        jitter: scale of the multiplicative ``|N(0, 1)|`` noise on every worker (``>= 0``).

    Example:
        A model only says who straggles when; :meth:`sample` applies ``slowdown`` and jitter:

        >>> @dataclass(frozen=True)
        ... class FirstWorkerSlow(StragglerModel):
        ...     def straggling(self, n, rounds, rng):
        ...         out = np.zeros((n, rounds), dtype=bool)
        ...         out[0] = True
        ...         return out
        >>> FirstWorkerSlow(slowdown=3.0, jitter=0.0).sample(3, 2).tolist()
        [[3.0, 3.0], [1.0, 1.0], [1.0, 1.0]]
    """

    slowdown: float = 5.0
    jitter: float = 0.05

    def __post_init__(self) -> None:
        if not float(self.slowdown) > 1.0:
            raise ValueError(f"slowdown must be > 1, got {self.slowdown!r}")
        if not float(self.jitter) >= 0.0:
            raise ValueError(f"jitter must be >= 0, got {self.jitter!r}")

    def straggling(self, n: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
        """Boolean ``(n, rounds)``: who straggles when (subclasses)."""
        raise NotImplementedError

    def sample(self, n: int, rounds: int, seed: int = 0) -> np.ndarray:
        """Slowdown factors ``(n, rounds)``.

        Args:
            n: workers.
            rounds: rounds.
            seed: seed of the draw.

        Returns:
            ``slowdown`` where a worker straggles, ``1`` elsewhere, times the jitter.

        Raises:
            ValueError: for ``n`` or ``rounds`` below 1.
        """
        _check_sizes(n, rounds)
        rng = np.random.default_rng(seed)
        base = np.where(self.straggling(n, rounds, rng), float(self.slowdown), 1.0)
        return base * (1.0 + self.jitter * np.abs(rng.standard_normal((n, rounds))))


@dataclass(frozen=True)
class IIDStragglers(StragglerModel):
    """Each worker straggles in each round independently with probability ``p``.

    Attributes:
        p: straggling probability per worker and round.

    Example:
        >>> S = IIDStragglers(p=0.1, slowdown=4.0, jitter=0.0).sample(50, 200, seed=0)
        >>> S.shape, sorted(set(S.ravel().tolist())), 0.08 < float((S > 1).mean()) < 0.12
        ((50, 200), [1.0, 4.0], True)
    """

    p: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_prob(self.p, "p")

    def straggling(self, n: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
        """Bernoulli(``p``) per worker and round.

        Returns:
            Boolean ``(n, rounds)``.
        """
        return rng.random((n, rounds)) < self.p


@dataclass(frozen=True)
class GilbertElliott(StragglerModel):
    """Bursty stragglers: a good/bad Markov chain per worker.

    Attributes:
        p_good_to_bad: probability that a nominal worker starts straggling in the next round.
        p_bad_to_good: probability that a straggler recovers in the next round (mean burst
            length ``1 / p_bad_to_good``).

    Example:
        >>> ge = GilbertElliott(p_good_to_bad=0.02, p_bad_to_good=0.25, jitter=0.0)
        >>> S = ge.sample(200, 400, seed=0) > 1
        >>> stationary = 0.02 / (0.02 + 0.25)
        >>> abs(float(S.mean()) - stationary) < 0.01
        True
    """

    p_good_to_bad: float = 0.02
    p_bad_to_good: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_prob(self.p_good_to_bad, "p_good_to_bad")
        _check_prob(self.p_bad_to_good, "p_bad_to_good")
        if self.p_good_to_bad + self.p_bad_to_good == 0.0:
            raise ValueError("p_good_to_bad and p_bad_to_good cannot both be 0")

    def straggling(self, n: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
        """The chains, started in their stationary distribution.

        Returns:
            Boolean ``(n, rounds)``.
        """
        pi_bad = self.p_good_to_bad / (self.p_good_to_bad + self.p_bad_to_good)
        bad = np.empty((n, rounds), dtype=bool)
        state = rng.random(n) < pi_bad
        u = rng.random((n, rounds))
        for r in range(rounds):
            bad[:, r] = state
            state = np.where(state, u[:, r] >= self.p_bad_to_good, u[:, r] < self.p_good_to_bad)
        return bad


@dataclass(frozen=True)
class BurstyWindow(StragglerModel):
    """Random straggler patterns inside the ``(B, W, lambda)``-bursty model.

    Round by round, every worker that may straggle without leaving the model (it did not
    straggle in rounds ``r - W + 1 .. r - B``, and it is already among the window's stragglers
    or the window has fewer than ``lam`` distinct ones) straggles with probability ``p``; new
    stragglers beyond the budget ``lam`` are dropped at random. Krishnan, Ebrahimi & Khisti,
    "Sequential Gradient Coding For Straggler Mitigation", ICLR 2023, arXiv:2211.13802.

    Attributes:
        B: longest burst (``>= 1``).
        W: window (``>= B``).
        lam: most distinct stragglers per window (``>= 0``).
        p: probability that an eligible worker straggles in a round.

    Example:
        >>> S = BurstyWindow(B=2, W=5, lam=2, p=0.5, jitter=0.0).sample(8, 40, seed=0) > 1
        >>> all(int(S[:, r : r + 5].any(axis=1).sum()) <= 2 for r in range(36))
        True
    """

    B: int = 1
    W: int = 2
    lam: int = 1
    p: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        for value, name, low in ((self.B, "B", 1), (self.W, "W", self.B), (self.lam, "lam", 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        _check_prob(self.p, "p")

    def straggling(self, n: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
        """Patterns built round by round inside the model.

        Returns:
            Boolean ``(n, rounds)``.
        """
        bad = np.zeros((n, rounds), dtype=bool)
        for r in range(rounds):
            lo = max(0, r - self.W + 1)
            seen = bad[:, lo:r].any(axis=1)
            old = bad[:, lo : max(lo, r - self.B + 1)].any(axis=1)
            want = ~old & (rng.random(n) < self.p)
            new = np.flatnonzero(want & ~seen)
            rng.shuffle(new)
            want[new[max(0, self.lam - int(seen.sum())) :]] = False
            bad[:, r] = want
        return bad


@dataclass(frozen=True)
class TraceStragglers:
    """Replay recorded per-worker, per-round times (slowdown relative to the median).

    Attributes:
        times: ``(workers, rounds)`` recorded times per unit of work (positive, finite).

    Example:
        >>> trace = TraceStragglers(np.array([[1.0, 2.0, 1.0], [1.0, 1.0, 6.0]]))
        >>> trace.sample(2, 2).tolist()
        [[1.0, 2.0], [1.0, 1.0]]
    """

    times: np.ndarray

    def __post_init__(self) -> None:
        t = np.asarray(self.times, dtype=np.float64)
        if t.ndim != 2 or t.size == 0:
            raise ValueError(
                f"times must be a non-empty (workers, rounds) array, got shape {t.shape}"
            )
        if not np.all(np.isfinite(t)) or np.any(t <= 0):
            raise ValueError("times must be positive and finite")
        object.__setattr__(self, "times", t)

    def sample(self, n: int, rounds: int, seed: int = 0) -> np.ndarray:
        """The first ``n`` workers and ``rounds`` rounds, divided by the trace's median.

        Args:
            n: workers.
            rounds: rounds.
            seed: unused (a trace is deterministic).

        Returns:
            ``(n, rounds)`` slowdowns.

        Raises:
            ValueError: if the trace is smaller than asked.
        """
        _check_sizes(n, rounds)
        if n > self.times.shape[0] or rounds > self.times.shape[1]:
            raise ValueError(
                f"the trace has {self.times.shape[0]} workers x {self.times.shape[1]} rounds; "
                f"asked for {n} x {rounds}"
            )
        t = self.times[:n, :rounds]
        return t / float(np.median(self.times))
