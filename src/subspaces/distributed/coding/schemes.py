"""Round-by-round coding schemes: gradient coding (GC), SR-SGC and M-SGC.

Job ``t`` (a full gradient) starts in round ``t`` and must be decodable at the end of round
``t + T``. In each round the master hands every worker its tasks (:meth:`Scheme.assignment`),
decides from the workers' times whether it may stop waiting for the slow ones
(:meth:`Scheme.tolerates`), records what arrived (:meth:`Scheme.record`) and decodes the job
that is due (:meth:`Scheme.decodable`, :meth:`Scheme.decoding`).

A task is ``(job, kind, index)``; :meth:`Scheme.task_coefficients` says which data parts of the
job it combines and with what coefficients, and :meth:`Scheme.decoding` gives one coefficient per
received task such that the weighted sum of the received results is the sum of the gradients of
all parts (the full gradient), exactly as long as the pattern was decodable.

- :class:`GradientCodingScheme` (Tandon et al. 2017): ``T = 0``; ``n`` parts, worker ``i``
  computes row ``i`` of an ``s``-straggler gradient code; load ``(s + 1) / n``.
- :class:`SelectiveRepeatSGC` (the paper's first scheme): ``T = B``, a gradient code for
  ``s = ceil(B lambda / (W - 1 + B))`` stragglers, and workers that did not deliver job
  ``t`` repeat it in round ``t + B`` when more than ``s`` are missing.
- :class:`MultiplexedSGC` (the paper's main scheme): ``T = W - 2 + B``; each job is split into a
  part ``D1`` (``n (W - 1)`` uncoded chunks, worker ``i`` computes its ``W - 1`` chunks in the
  job's first ``W - 1`` rounds) and a part ``D2`` (``B`` groups, each under a gradient code for
  ``lambda`` stragglers, computed in the last ``B`` rounds); a worker that missed a ``D1``
  chunk redoes it in a ``D2`` slot. Every round, a worker computes one mini-task of each of the
  ``W - 1 + B`` jobs in flight, at normalized load
  ``(lambda + 1)(W - 1 + B) / (n (B + (W - 1)(lambda + 1)))``.

The tolerance test of SR-SGC and M-SGC is the paper's ``(B, W, lambda)``-bursty straggler model:
within any ``W`` consecutive rounds at most ``lambda`` distinct workers straggle, and a worker
straggling now did not straggle in rounds ``r - W + 1 .. r - B`` (bursts of at most ``B``
rounds). A pattern outside the model makes the master wait for everyone in that round.

Krishnan, Ebrahimi & Khisti, "Sequential Gradient Coding For Straggler Mitigation", ICLR 2023,
arXiv:2211.13802.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .gradient_code import _check_ns, decoding_vector, gradient_code

__all__ = ["GradientCodingScheme", "MultiplexedSGC", "Scheme", "SelectiveRepeatSGC"]

Task = tuple[int, str, int]
Part = int


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class Scheme:
    """Common state: the tasks received in each round, and the recorded stragglers.

    Args:
        n: number of workers.
        jobs: number of jobs ``J``.
        seed: seed of the gradient codes (the same on every process).

    Example:
        One round of the built-in :class:`GradientCodingScheme` (``n = 3`` workers, ``s = 1``
        straggler) with scalar stand-ins for the gradients of the job's 3 data parts:

        >>> gc = GradientCodingScheme(3, 1, jobs=1)
        >>> gc.assignment(0)  # one coded task per worker
        [[(0, 'gc', 0)], [(0, 'gc', 1)], [(0, 'gc', 2)]]
        >>> g = [0.5, -2.0, 3.0]  # gradients of the 3 parts; the full gradient is their sum
        >>> results = {w: sum(c * g[p] for p, c in gc.task_coefficients(w, t).items())
        ...            for w, tasks in enumerate(gc.assignment(0)) for t in tasks}
        >>> gc.record(0, np.array([True, False, True]))  # worker 1 straggled
        >>> gc.decodable(0)
        True
        >>> decoded = sum(c * results[w] for _, w, _, c in gc.decoding(0))
        >>> abs(decoded - sum(g)) < 1e-12
        True
    """

    name = "scheme"
    T = 0
    load = 1.0

    def __init__(self, n: int, jobs: int, seed: int = 0) -> None:
        self.n = _check_int(n, "n", 1)
        self.jobs = _check_int(jobs, "jobs", 1)
        self.seed = seed
        self.received: dict[int, dict[int, list[Task]]] = {}  # round -> worker -> tasks
        self.stragglers: dict[int, np.ndarray] = {}  # round -> boolean (n,)
        self._assigned: dict[int, list[list[Task]]] = {}

    @property
    def rounds(self) -> int:
        """Rounds needed for ``jobs`` jobs: ``J + T``."""
        return self.jobs + self.T

    # ----- what subclasses define -------------------------------------------------------------
    def _assign(self, r: int) -> list[list[Task]]:
        raise NotImplementedError

    def tolerates(self, r: int, straggler: np.ndarray) -> bool:
        """Whether the master may stop waiting in round ``r`` with these stragglers."""
        raise NotImplementedError

    def decodable(self, job: int) -> bool:
        """Whether ``job`` can be decoded from what was received so far."""
        raise NotImplementedError

    def num_parts(self) -> int:
        """Parts a job's data is split into."""
        raise NotImplementedError

    def part_sizes(self) -> np.ndarray:
        """Relative sizes of the parts (summing to 1)."""
        raise NotImplementedError

    def task_coefficients(self, worker: int, task: Task) -> dict[Part, float]:
        """``{part: coefficient}`` of the combination a task computes."""
        raise NotImplementedError

    def decoding(self, job: int) -> list[tuple[int, int, Task, float]]:
        """``[(round, worker, task, coefficient)]`` over received tasks of ``job``."""
        raise NotImplementedError

    # ----- shared -----------------------------------------------------------------------------
    def assignment(self, r: int) -> list[list[Task]]:
        """The tasks of every worker in round ``r`` (computed once per round).

        Args:
            r: round index in ``[0, rounds)``.

        Returns:
            One list of tasks per worker (empty: the worker idles).
        """
        if r not in self._assigned:
            self._assigned[r] = self._assign(r)
        return self._assigned[r]

    def record(self, r: int, received: np.ndarray) -> None:
        """Store which workers' results of round ``r`` arrived (the others straggled).

        Args:
            r: the round.
            received: boolean ``(n,)``.
        """
        tasks = self.assignment(r)
        self.received[r] = {i: tasks[i] for i in range(self.n) if received[i]}
        self.stragglers[r] = ~np.asarray(received, dtype=bool)

    def _received_tasks(self, job: int) -> list[tuple[int, int, Task]]:
        out: list[tuple[int, int, Task]] = []
        for r in range(job, min(job + self.T, self.rounds - 1) + 1):
            for worker, tasks in self.received.get(r, {}).items():
                out.extend((r, worker, t) for t in tasks if t[0] == job)
        return out

    def _bursty_model_ok(self, r: int, straggler: np.ndarray, B: int, W: int, lam: int) -> bool:
        past = [self._past_stragglers(q) for q in range(max(0, r - W + 1), r)]
        seen = np.zeros(self.n, dtype=bool)
        for p in past:
            seen |= p
        if int((seen | straggler).sum()) > lam:
            return False
        old = np.zeros(self.n, dtype=bool)
        for q in range(max(0, r - W + 1), max(0, r - B + 1)):
            old |= self._past_stragglers(q)
        return not bool((old & straggler).any())

    def _past_stragglers(self, q: int) -> np.ndarray:
        return self.stragglers.get(q, np.zeros(self.n, dtype=bool))


class GradientCodingScheme(Scheme):
    """Tandon et al.'s gradient code applied job by job (``T = 0``).

    Args:
        n: number of workers.
        s: stragglers tolerated per round.
        jobs: number of jobs.
        seed: seed of the code.

    Example:
        >>> gc = GradientCodingScheme(4, 1, jobs=2)
        >>> gc.load, gc.tolerates(0, np.array([False, True, False, False]))
        (0.5, True)
        >>> gc.record(0, np.array([True, False, True, True])); gc.decodable(0)
        True
    """

    name = "GC"

    def __init__(self, n: int, s: int, jobs: int, seed: int = 0) -> None:
        super().__init__(n, jobs, seed)
        _check_ns(n, s)
        self.s = s
        self.T = 0
        self.load = (s + 1) / n
        self.code = gradient_code(n, s, generator=torch.Generator().manual_seed(seed))

    def _assign(self, r: int) -> list[list[Task]]:
        return [[(r, "gc", i)] if r < self.jobs else [] for i in range(self.n)]

    def tolerates(self, r: int, straggler: np.ndarray) -> bool:
        """At most ``s`` stragglers.

        Returns:
            Whether the round's job stays decodable without the stragglers.
        """
        return int(np.sum(straggler)) <= self.s

    def decodable(self, job: int) -> bool:
        """At least ``n - s`` coded results of ``job``.

        Returns:
            Whether the job decodes.
        """
        return len({w for _, w, _ in self._received_tasks(job)}) >= self.n - self.s

    def num_parts(self) -> int:
        """``n`` parts.

        Returns:
            ``n``.
        """
        return self.n

    def part_sizes(self) -> np.ndarray:
        """Equal parts.

        Returns:
            ``n`` sizes ``1 / n``.
        """
        return np.full(self.n, 1.0 / self.n)

    def task_coefficients(self, worker: int, task: Task) -> dict[Part, float]:
        """Row ``worker`` of the code.

        Returns:
            ``{part: B[worker, part]}`` over the support.
        """
        row = self.code[worker]
        return {int(p): float(row[p]) for p in torch.nonzero(row).flatten().tolist()}

    def decoding(self, job: int) -> list[tuple[int, int, Task, float]]:
        """The decoding vector over the received coded results.

        Returns:
            ``[(round, worker, task, a_worker)]``.
        """
        got = self._received_tasks(job)
        a = decoding_vector(self.code, [w for _, w, _ in got])
        return [(r, w, t, float(c)) for (r, w, t), c in zip(got, a.tolist(), strict=True)]


class SelectiveRepeatSGC(GradientCodingScheme):
    """GC plus selective repetition of undelivered tasks ``B`` rounds later (SR-SGC).

    Args:
        n: number of workers.
        B: longest straggler burst of the model.
        W: window of the model (``W - 1`` a multiple of ``B``).
        lam: most distinct stragglers in a window.
        jobs: number of jobs.
        seed: seed of the code.

    Example:
        >>> sr = SelectiveRepeatSGC(8, B=1, W=3, lam=3, jobs=4)
        >>> sr.s, sr.T, sr.load
        (1, 1, 0.25)
    """

    name = "SR-SGC"

    def __init__(self, n: int, B: int, W: int, lam: int, jobs: int, seed: int = 0) -> None:
        _check_int(B, "B", 1)
        _check_int(W, "W", B + 1)
        _check_int(lam, "lam", 1)
        if (W - 1) % B:
            raise ValueError(f"SR-SGC needs B to divide W - 1, got B={B}, W={W}")
        if lam > n:
            raise ValueError(f"lam must be <= n = {n}, got {lam}")
        s = min(math.ceil(B * lam / (W - 1 + B)), n - 1)
        super().__init__(n, s, jobs, seed)
        self.B, self.W, self.lam = B, W, lam
        self.T = B

    def _assign(self, r: int) -> list[list[Task]]:
        tasks: list[list[Task]] = [[(r, "gc", i)] if r < self.jobs else [] for i in range(self.n)]
        due = r - self.B
        if due >= 0:
            delivered = {
                w for w in self.received.get(due, {}) if (due, "gc", w) in self.received[due][w]
            }
            missing = [w for w in range(self.n) if w not in delivered]
            if len(missing) > self.s:
                for w in missing[: len(missing) - self.s]:
                    tasks[w] = [(due, "gc", w)]
        return tasks

    def _past_stragglers(self, q: int) -> np.ndarray:
        # rounds that lost at most s results of their own job need no repetition: exempt
        st = self.stragglers.get(q, np.zeros(self.n, dtype=bool))
        own = (
            all(t[0] == q for ts in self.assignment(q) for t in ts) if q in self._assigned else True
        )
        if int(st.sum()) <= self.s and own:
            return np.zeros(self.n, dtype=bool)
        return st

    def tolerates(self, r: int, straggler: np.ndarray) -> bool:
        """The ``(B, W, lambda)``-bursty model (rounds that lost at most ``s`` exempt).

        Returns:
            Whether the pattern is inside the model.
        """
        return self._bursty_model_ok(r, straggler, self.B, self.W, self.lam)


class MultiplexedSGC(Scheme):
    """The multiplexed sequential gradient code (M-SGC).

    Args:
        n: number of workers.
        B: longest straggler burst of the model.
        W: window of the model (``W >= 2``).
        lam: most distinct stragglers in a window (``1 <= lam <= n``).
        jobs: number of jobs.
        seed: seed of the ``D2`` codes.

    Example:
        >>> ms = MultiplexedSGC(16, B=1, W=3, lam=4, jobs=10)
        >>> ms.T, round(ms.load, 4), round(GradientCodingScheme(16, 4, jobs=10).load, 4)
        (2, 0.0852, 0.3125)
    """

    name = "M-SGC"

    def __init__(self, n: int, B: int, W: int, lam: int, jobs: int, seed: int = 0) -> None:
        super().__init__(n, jobs, seed)
        self.B = _check_int(B, "B", 1)
        self.W = _check_int(W, "W", 2)
        self.lam = _check_int(lam, "lam", 1)
        if lam > n:
            raise ValueError(f"lam must be <= n = {n}, got {lam}")
        self.d1 = W - 1
        self.T = W - 2 + B
        s2 = min(lam, n - 1)
        self.code = gradient_code(n, s2, generator=torch.Generator().manual_seed(seed))
        self.s2 = s2
        if lam == n:
            self.load = (W - 1 + B) / (n * (W - 1))
            self.d2_fraction = 0.0
        else:
            self.load = (lam + 1) * (W - 1 + B) / (n * (B + (W - 1) * (lam + 1)))
            self.d2_fraction = B / (B + (W - 1) * (lam + 1))

    def _d1_done(self, job: int, worker: int, before: int) -> set[int]:
        done = set()
        for r in range(job, before):
            for t in self.received.get(r, {}).get(worker, []):
                if t[0] == job and t[1] == "d1":
                    done.add(t[2])
        return done

    def _assign(self, r: int) -> list[list[Task]]:
        out: list[list[Task]] = []
        for i in range(self.n):
            tasks: list[Task] = []
            for m in range(self.d1 + self.B):
                job = r - m
                if not 0 <= job < self.jobs:
                    continue
                if m < self.d1:
                    tasks.append((job, "d1", m))
                    continue
                done = self._d1_done(job, i, r)
                missing = [c for c in range(self.d1) if c not in done]
                if missing or self.d2_fraction == 0.0:
                    if missing:
                        tasks.append((job, "d1", missing[0]))
                else:
                    tasks.append((job, "d2", m - self.d1))
            out.append(tasks)
        return out

    def tolerates(self, r: int, straggler: np.ndarray) -> bool:
        """The ``(B, W, lambda)``-bursty straggler model.

        Returns:
            Whether the pattern is inside the model.
        """
        return self._bursty_model_ok(r, straggler, self.B, self.W, self.lam)

    def decodable(self, job: int) -> bool:
        """Every worker's ``D1`` chunks, and ``n - lambda`` results of each ``D2`` group.

        Returns:
            Whether the job decodes.
        """
        chunks: set[tuple[int, int]] = set()  # (worker, D1 chunk)
        groups: dict[int, set[int]] = {g: set() for g in range(self.B)}  # D2 group -> workers
        for _, w, t in self._received_tasks(job):
            if t[1] == "d1":
                chunks.add((w, t[2]))
            else:
                groups[t[2]].add(w)
        if len(chunks) != self.n * self.d1:
            return False
        if self.d2_fraction == 0.0:
            return True
        return all(len(workers) >= self.n - self.s2 for workers in groups.values())

    def num_parts(self) -> int:
        """``n (W - 1)`` chunks of ``D1`` and ``B n`` parts of ``D2``.

        Returns:
            The number of parts.
        """
        return self.n * self.d1 + (self.B * self.n if self.d2_fraction else 0)

    def part_sizes(self) -> np.ndarray:
        """Chunk sizes that make every mini-task the same amount of work.

        Returns:
            The sizes (summing to 1).
        """
        d1 = np.full(self.n * self.d1, (1.0 - self.d2_fraction) / (self.n * self.d1))
        if not self.d2_fraction:
            return d1
        return np.concatenate([d1, np.full(self.B * self.n, self.d2_fraction / (self.B * self.n))])

    def task_coefficients(self, worker: int, task: Task) -> dict[Part, float]:
        """A ``D1`` chunk of the worker, or its coded row of a ``D2`` group.

        Returns:
            ``{part: coefficient}``.
        """
        _, kind, index = task
        if kind == "d1":
            return {worker * self.d1 + index: 1.0}
        base = self.n * self.d1 + index * self.n
        row = self.code[worker]
        return {base + int(p): float(row[p]) for p in torch.nonzero(row).flatten().tolist()}

    def decoding(self, job: int) -> list[tuple[int, int, Task, float]]:
        """Each ``D1`` chunk once, and each ``D2`` group by its decoding vector.

        Returns:
            ``[(round, worker, task, coefficient)]``.

        Raises:
            ValueError: if the job is not decodable.
        """
        got = self._received_tasks(job)
        out: list[tuple[int, int, Task, float]] = []
        seen: set[tuple[int, int]] = set()
        for r, w, t in got:
            if t[1] == "d1" and (w, t[2]) not in seen:
                seen.add((w, t[2]))
                out.append((r, w, t, 1.0))
        if len(seen) != self.n * self.d1:
            raise ValueError(f"job {job}: {self.n * self.d1 - len(seen)} D1 chunks never arrived")
        for g in range(self.B if self.d2_fraction else 0):
            group = [(r, w, t) for r, w, t in got if t[1] == "d2" and t[2] == g]
            a = decoding_vector(self.code, [w for _, w, _ in group])
            out.extend((r, w, t, float(c)) for (r, w, t), c in zip(group, a.tolist(), strict=True))
        return out
