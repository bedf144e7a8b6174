"""Coded gradients computed by real worker processes over ``torch.distributed`` (gloo, CPU).

Rank 0 is the master, ranks ``1 .. n`` the workers ``0 .. n - 1`` of a
:class:`~subspaces.distributed.coding.Scheme`. Every rank holds a copy of the same fresh scheme,
the same data and the same slowdown array, so every rank computes the same
:meth:`~subspaces.distributed.coding.Scheme.assignment` without communication. In round ``r``:

1. each worker computes, for each of its tasks, the coded combination
   ``sum_p coefficient_p * grad(part p of the job's data)`` of
   :meth:`~subspaces.distributed.coding.Scheme.task_coefficients`, the data split into parts of
   relative sizes :meth:`~subspaces.distributed.coding.Scheme.part_sizes`; it sleeps its injected
   delay ``time_scale * (latency + load * n * unit * slowdown[w, r])`` and sends its results;
2. the master applies the mu-rule (:func:`~subspaces.distributed.coding.mu_rule`) to the
   injected times, drops the stragglers' results, and broadcasts who counted; every rank
   records it, so the next round's assignment is again the same everywhere;
3. the master decodes the job due in this round with
   :meth:`~subspaces.distributed.coding.Scheme.decoding` and compares it with the uncoded
   gradient of the whole data set, computed on the master in one backward pass.

Job ``t`` is the gradient of the summed cross-entropy of a small MLP at parameters drawn from
seed ``seed + t`` (independent jobs, as the paper's concurrently trained models are). The
master receives a straggler's late results and throws them away (a deployed master would
cancel them), so the measured wall time includes the stragglers' sleep; the time the mu-rule
assigns to the round is reported separately.

Krishnan, Ebrahimi & Khisti, "Sequential Gradient Coding For Straggler Mitigation", ICLR 2023,
arXiv:2211.13802.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp
from torch import Tensor

from .schemes import Scheme
from .simulate import mu_rule

__all__ = ["RunnerResult", "job_gradient", "run_coded", "run_local"]

HIDDEN = 16


@dataclass
class RunnerResult:
    """What the master saw for one scheme.

    Attributes:
        scheme: the scheme's name.
        errors: ``(jobs,)`` relative errors ``||decoded - uncoded|| / ||uncoded||``.
        model_time: the mu-rule's total time of the rounds (in model units).
        wall_time: seconds the master spent in the rounds.
        waits: rounds in which the master waited for everyone.
        dropped: results thrown away (stragglers' tasks).
    """

    scheme: str
    errors: np.ndarray = field(repr=False)
    model_time: float
    wall_time: float
    waits: int
    dropped: int


def _params(d_in: int, classes: int, seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(d_in, HIDDEN), (HIDDEN,), (HIDDEN, classes), (classes,)]
    return [(torch.randn(s, generator=gen, dtype=torch.float64) * 0.3) for s in shapes]


def job_gradient(X: Tensor, y: Tensor, classes: int, seed: int) -> Tensor:
    """Flat gradient of the summed cross-entropy of the job's MLP on ``(X, y)``.

    Args:
        X: ``(m, d)`` float64 inputs (``m = 0`` gives the zero gradient).
        y: ``(m,)`` labels.
        classes: number of classes.
        seed: the job's parameter seed.

    Returns:
        The gradient, flattened, float64.

    Example:
        >>> X, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> whole = job_gradient(X, y, 3, seed=0)
        >>> halves = job_gradient(X[:2], y[:2], 3, 0) + job_gradient(X[2:], y[2:], 3, 0)
        >>> bool(torch.allclose(whole, halves, rtol=1e-12, atol=1e-14))
        True
    """
    params = [p.requires_grad_() for p in _params(X.shape[1], classes, seed)]
    w1, b1, w2, b2 = params
    logits = torch.tanh(X @ w1 + b1) @ w2 + b2
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def _part_bounds(sizes: np.ndarray, m: int) -> np.ndarray:
    return np.round(np.concatenate([[0.0], np.cumsum(sizes)]) * m).astype(int)


def _task_result(
    scheme: Scheme, w: int, task: Any, X: Tensor, y: Tensor, classes: int, seed: int
) -> Tensor:
    bounds = _part_bounds(scheme.part_sizes(), X.shape[0])
    out = torch.zeros(0)
    for part, coef in scheme.task_coefficients(w, task).items():
        lo, hi = int(bounds[part]), int(bounds[part + 1])
        g = coef * job_gradient(X[lo:hi], y[lo:hi], classes, seed + task[0])
        out = g if out.numel() == 0 else out + g
    return out


def run_coded(
    scheme: Scheme,
    slowdown: np.ndarray,
    X: Tensor,
    y: Tensor,
    *,
    mu: float = 1.0,
    time_scale: float = 1e-3,
    seed: int = 0,
    fail_at: tuple[int, int] | None = None,
    check: bool = True,
) -> RunnerResult | None:
    """Run ``scheme`` on the current process group (rank 0 master, ranks ``1..n`` workers).

    Call it on every rank of an initialised gloo group of ``scheme.n + 1`` processes (e.g. under
    ``torchrun``) with the same arguments.

    Args:
        scheme: a fresh scheme, identical on every rank.
        slowdown: ``(n, rounds)`` slowdowns (the same array on every rank).
        X: ``(m, d)`` float64 data, the same on every rank.
        y: ``(m,)`` integer labels.
        mu: the master's patience (:func:`~subspaces.distributed.coding.mu_rule`).
        time_scale: seconds of injected delay per model time unit.
        seed: seed of job ``0``'s parameters.
        fail_at: ``(rank, round)`` at which that rank raises (fault-injection tests).
        check: compare every decoded job with the uncoded gradient (``False``: skip the
            reference, ``errors`` stay NaN; for timing the protocol alone).

    Returns:
        The :class:`RunnerResult` on rank 0, ``None`` on the workers.

    Raises:
        ValueError: if the group's size is not ``scheme.n + 1`` or the slowdowns do not fit.
        RuntimeError: the injected failure; a communication error when another rank failed.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    n = scheme.n
    if world != n + 1:
        raise ValueError(f"{scheme.name} with n = {n} needs {n + 1} processes, got {world}")
    S = np.asarray(slowdown, dtype=np.float64)
    if S.shape[0] != n or S.shape[1] < scheme.rounds or not np.all(np.isfinite(S) & (S > 0)):
        raise ValueError(f"slowdown must be positive, finite, shape ({n}, >= {scheme.rounds})")
    classes = int(y.max()) + 1
    size = sum(p.numel() for p in _params(X.shape[1], classes, 0))
    errors = np.full(scheme.jobs, np.nan)
    model_time, waits, dropped, start = 0.0, 0, 0, time.perf_counter()
    results: dict[tuple[int, int, Any], Tensor] = {}
    for r in range(scheme.rounds):
        tasks = scheme.assignment(r)
        times = scheme.load * n * S[:, r]
        if fail_at is not None and fail_at == (rank, r):
            raise RuntimeError(f"injected failure on rank {rank} in round {r}")
        if rank > 0:
            mine = tasks[rank - 1]
            if mine:
                out = torch.stack(
                    [_task_result(scheme, rank - 1, t, X, y, classes, seed) for t in mine]
                )
                time.sleep(time_scale * float(times[rank - 1]))
                dist.send(out, dst=0)
        else:
            bufs = {
                w: torch.empty(len(ts), size, dtype=torch.float64) for w, ts in enumerate(tasks)
            }
            reqs = [dist.irecv(bufs[w], src=w + 1) for w, ts in enumerate(tasks) if ts]
            for req in reqs:
                if req is not None:
                    req.wait()
            received, duration, waited = mu_rule(scheme, r, times, mu)
            model_time += duration
            waits += int(waited)
            for w, ts in enumerate(tasks):
                if not torch.isfinite(bufs[w]).all():
                    raise RuntimeError(f"worker {w} sent a non-finite result in round {r}")
                for k, t in enumerate(ts):
                    if received[w]:
                        results[(r, w, t)] = bufs[w][k]
                    else:
                        dropped += 1
        mask = torch.zeros(n, dtype=torch.uint8)
        if rank == 0:
            mask = torch.from_numpy(received.astype(np.uint8))
        dist.broadcast(mask, src=0)
        scheme.record(r, mask.numpy().astype(bool))
        job = r - scheme.T
        if rank == 0 and 0 <= job < scheme.jobs:
            decoded = torch.zeros(size, dtype=torch.float64)
            for rr, w, t, c in scheme.decoding(job):
                decoded += c * results.pop((rr, w, t))
            if check:
                exact = job_gradient(X, y, classes, seed + job)
                errors[job] = float(torch.linalg.norm(decoded - exact) / torch.linalg.norm(exact))
    if rank > 0:
        return None
    return RunnerResult(
        scheme=scheme.name,
        errors=errors,
        model_time=model_time,
        wall_time=time.perf_counter() - start,
        waits=waits,
        dropped=dropped,
    )


def _entry(index: int, init: str, world: int, jobs: list[Any], timeout: float, queue: Any) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init, rank=index, world_size=world, timeout=timedelta(seconds=timeout)
    )
    try:
        out = [run_coded(*args, **kwargs) for args, kwargs in jobs]
        if index == 0:
            queue.put(("ok", index, out))
    except BaseException as exc:
        queue.put(("error", index, f"{type(exc).__name__}: {str(exc)[:300]}"))
        raise
    finally:
        dist.destroy_process_group()


def run_local(
    runs: list[tuple[Scheme, np.ndarray]],
    X: Tensor,
    y: Tensor,
    *,
    timeout: float = 60.0,
    **kwargs: Any,
) -> list[RunnerResult]:
    """Spawn ``n + 1`` local processes and :func:`run_coded` each ``(scheme, slowdown)``.

    Args:
        runs: fresh schemes (all with the same ``n``) and their slowdown arrays.
        X: ``(m, d)`` float64 data.
        y: ``(m,)`` labels.
        timeout: seconds after which a blocked collective raises (no rank hangs).
        **kwargs: passed to :func:`run_coded` (``mu``, ``time_scale``, ``seed``, ``fail_at``).

    Returns:
        One :class:`RunnerResult` per run.

    Raises:
        ValueError: for no runs or schemes of different sizes.
        RuntimeError: when a rank raised: the message lists every rank's error that reached
            the parent (the failing rank's, and the communication errors of the ranks that
            were waiting for it); the remaining ranks are stopped.
    """
    if not runs:
        raise ValueError("runs is empty: give at least one (scheme, slowdown)")
    sizes = {scheme.n for scheme, _ in runs}
    if len(sizes) != 1:
        raise ValueError(f"every scheme must have the same n, got {sorted(sizes)}")
    if X.dtype != torch.float64 or X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (m, d) float64 and y (m,), got {tuple(X.shape)}, {y.shape}")
    world = sizes.pop() + 1
    fd, path = tempfile.mkstemp(prefix="subspaces_gc_")
    os.close(fd)
    os.unlink(path)  # the file store creates it
    queue = tmp.get_context("spawn").SimpleQueue()
    jobs = [((scheme, S, X, y), kwargs) for scheme, S in runs]
    failed: Exception | None = None
    try:
        tmp.start_processes(
            _entry,
            args=(f"file://{path}", world, jobs, timeout, queue),
            nprocs=world,
            join=True,
            start_method="spawn",
        )
    except Exception as exc:  # ProcessRaisedException / ProcessExitedException
        failed = exc
    finally:
        if os.path.exists(path):
            os.unlink(path)
    messages = []
    while not queue.empty():
        messages.append(queue.get())
    errors = sorted((rank, text) for kind, rank, text in messages if kind == "error")
    if failed is not None or errors:
        listed = "; ".join(f"rank {rank}: {text}" for rank, text in errors)
        raise RuntimeError(f"{len(errors)} rank(s) failed: {listed or failed}") from failed
    out: list[RunnerResult] = next(payload for kind, _, payload in messages if kind == "ok")
    return out
