r"""Evaluating the points of a ``d_int90`` search in local worker processes (or with Ray).

One *point* of :func:`~subspaces.intrinsic.d_int90_search` is one subspace training (or the
full-model baseline) followed by an evaluation: independent of every other point, so the coarse
sweep's dimensions can be trained concurrently. :class:`PointTask` bundles everything a worker
needs (model factory, loss, data and the training settings); :func:`run_point` trains one point
and is what the serial search, the process pool and the Ray tasks all call, so a point's result
does not depend on where it ran (each worker is single-threaded; the search's main process should
be too for bit-identical numbers).

Backends (Li, Farkhoor, Liu and Yosinski, ICLR 2018, arXiv:1804.08838, train one network per
``d``; nothing in the method couples the trainings):

* ``"process"``: a :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start
  method; the task is pickled once per worker (through the pool initializer) and only ``d``
  travels per point. ``make_model`` and ``loss_fn`` must be picklable *by reference*:
  module-level functions or classes (or :func:`functools.partial` of them) in a module the
  workers can import, not lambdas, local functions or functions defined in an interactive
  ``__main__``; a script using workers needs the ``if __name__ == "__main__":`` guard.
* ``"ray"``: Ray tasks with one CPU each on the running Ray instance, on the cluster named by
  ``RAY_ADDRESS``, or on a local one started with ``workers`` CPUs (and shut down afterwards;
  :func:`subspaces._parallel.ensure_ray`, as for every Ray grid); a point whose worker dies is
  retried once. The driver's ``sys.path`` is appended to the workers' so the same modules
  unpickle. Ray is optional: ``pip install ray``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> def make():
    ...     torch.manual_seed(0)
    ...     return nn.Linear(3, 2).double()
    >>> X = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> task = PointTask(make, nn.functional.cross_entropy, (X, X.argmax(1) % 2),
    ...                  None, "dense", 0, 2, 0.1, 8, "adam", 0.1)
    >>> run_point(task, 2)["d"], run_point(task, None)["d"]
    (2, 8)
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import pickle
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._parallel import ensure_ray

__all__ = ["BACKENDS", "PointRunner", "PointTask", "bisection_tree", "make_runner", "run_point"]

BACKENDS: tuple[str, ...] = ("serial", "process", "ray")


@dataclass(frozen=True)
class PointTask:
    """Everything needed to train and evaluate one point of a ``d_int90`` search.

    Attributes:
        make_model: builds the network at ``theta0`` (same initialization on every call).
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        data: training ``(inputs, targets)``.
        eval_data: evaluation ``(inputs, targets)``; ``None`` means ``data``.
        projection: ``"dense"``, ``"sparse"`` or ``"fastfood"``.
        seed: projection and minibatch seed.
        epochs: epochs per training.
        lr: learning rate of the subspace trainings.
        batch_size: minibatch size.
        optimizer: ``"adam"`` or ``"sgd"``.
        baseline_lr: learning rate of the full-model baseline.

    Example:
        >>> y = torch.arange(64) % 2
        >>> X = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
        >>> X[:, 0] += 3 * (2 * y - 1)  # separable
        >>> def make_model():
        ...     torch.manual_seed(0)
        ...     return nn.Linear(5, 2)  # D = 12 parameters
        >>> task = PointTask(make_model, nn.functional.cross_entropy, (X, y), None, "dense",
        ...                  seed=0, epochs=3, lr=0.1, batch_size=32, optimizer="adam",
        ...                  baseline_lr=0.1)
        >>> point = run_point(task, 2)  # train z in a random 2-dimensional subspace
        >>> sorted(point), point["d"]
        (['accuracy', 'd', 'loss', 'seconds'], 2)
        >>> run_point(task, None)["accuracy"]  # d=None: the full-model baseline
        1.0
    """

    make_model: Callable[[], nn.Module]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    data: tuple[Tensor, Tensor]
    eval_data: tuple[Tensor, Tensor] | None
    projection: str
    seed: int
    epochs: int
    lr: float
    batch_size: int
    optimizer: str
    baseline_lr: float


def run_point(task: PointTask, d: int | None) -> dict[str, float]:
    """Train one point (``d=None``: the full-model baseline) and evaluate it.

    Args:
        task: the search's settings.
        d: subspace dimension, or ``None`` for the baseline (``P = I``, ``baseline_lr``).

    Returns:
        ``{"d", "loss", "accuracy", "seconds"}`` (``d = D`` for the baseline).

    Example:
        >>> y = torch.arange(64) % 2
        >>> X = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
        >>> X[:, 0] += 3 * (2 * y - 1)  # separable
        >>> def make_model():
        ...     torch.manual_seed(0)
        ...     return nn.Linear(5, 2)
        >>> task = PointTask(make_model, nn.functional.cross_entropy, (X, y), None, "dense",
        ...                  seed=0, epochs=3, lr=0.1, batch_size=32, optimizer="adam",
        ...                  baseline_lr=0.1)
        >>> run_point(task, 2)["d"], run_point(task, None)["d"]  # None: the full model, d = D
        (2, 12)
    """
    from .projections import IdentityProjection, Projection
    from .subspace_training import _theta0, evaluate, train_in_subspace

    model = task.make_model()
    if d is None:
        flat = _theta0(model)[1]
        P: str | Projection = IdentityProjection(flat.numel(), dtype=flat.dtype)
        rate = task.baseline_lr
    else:
        P, rate = task.projection, task.lr
    res = train_in_subspace(
        model,
        task.loss_fn,
        task.data,
        d or 1,
        projection=P,
        seed=task.seed,
        epochs=task.epochs,
        lr=rate,
        batch_size=task.batch_size,
        optimizer=task.optimizer,
    )
    evaluation = task.data if task.eval_data is None else task.eval_data
    ev = evaluate(model, res.z, res.projection, evaluation, task.loss_fn)
    return {"d": res.d, **ev, "seconds": res.seconds}


Key = str
Done = list[tuple[Key, dict[str, float]]]


class PointRunner:
    """Submits points and collects finished ones; the in-process runner trains on ``submit``.

    Args:
        task: the search's settings.

    Example:
        >>> y = torch.arange(64) % 2
        >>> X = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
        >>> X[:, 0] += 3 * (2 * y - 1)  # separable
        >>> def make_model():
        ...     torch.manual_seed(0)
        ...     return nn.Linear(5, 2)  # D = 12 parameters
        >>> task = PointTask(make_model, nn.functional.cross_entropy, (X, y), None, "dense",
        ...                  seed=0, epochs=3, lr=0.1, batch_size=32, optimizer="adam",
        ...                  baseline_lr=0.1)
        >>> runner = PointRunner(task)  # the in-process runner: trains on submit
        >>> runner.submit("2", 2)
        >>> runner.submit("baseline", None)
        >>> runner.in_flight
        2
        >>> [(key, point["d"]) for key, point in runner.wait()], runner.in_flight
        ([('2', 2), ('baseline', 12)], 0)
        >>> runner.close()
    """

    workers = 1

    def __init__(self, task: PointTask) -> None:
        self.task = task
        self._done: Done = []

    def submit(self, key: Key, d: int | None) -> None:
        """Start training the point ``key`` (here: train it now).

        Args:
            key: the checkpoint key (``"baseline"`` or ``str(d)``).
            d: subspace dimension, ``None`` for the baseline.
        """
        self._done.append((key, run_point(self.task, d)))

    def wait(self) -> Done:
        """Block until at least one submitted point has finished and return the finished ones.

        Returns:
            ``[(key, point), ...]``, possibly empty when nothing is in flight.
        """
        done, self._done = self._done, []
        return done

    @property
    def in_flight(self) -> int:
        """Number of submitted points not yet returned by :meth:`wait`."""
        return len(self._done)

    def close(self) -> None:
        """Release the workers (cancelling points that have not started)."""


# ---- process pool -------------------------------------------------------------------------------

_WORKER: dict[str, PointTask] = {}  # the task, unpickled once per worker process


def _init_worker(payload: bytes) -> None:
    torch.set_num_threads(1)
    _WORKER["task"] = pickle.loads(payload)


def _worker_point(d: int | None) -> dict[str, float]:
    return run_point(_WORKER["task"], d)


class _ProcessRunner(PointRunner):
    def __init__(self, task: PointTask, workers: int, payload: bytes) -> None:
        super().__init__(task)
        self.workers = workers
        self._pool = cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(payload,),
        )
        self._futures: dict[cf.Future[dict[str, float]], Key] = {}

    def submit(self, key: Key, d: int | None) -> None:
        self._futures[self._pool.submit(_worker_point, d)] = key

    def wait(self) -> Done:
        if not self._futures:
            return []
        finished, _ = cf.wait(list(self._futures), return_when=cf.FIRST_COMPLETED)
        done: Done = []
        for fut in finished:
            key = self._futures.pop(fut)
            done.append((key, fut.result()))
        return done

    @property
    def in_flight(self) -> int:
        return len(self._futures)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# ---- ray ----------------------------------------------------------------------------------------


def _ray_point(payload: bytes, paths: list[str], d: int | None) -> dict[str, float]:
    torch.set_num_threads(1)
    # Ray workers do not inherit the driver's sys.path: make its modules importable (appended,
    # so nothing installed in the worker is shadowed) before unpickling the task.
    sys.path.extend(p for p in paths if p not in sys.path)
    return run_point(pickle.loads(payload), d)


class _RayRunner(PointRunner):
    def __init__(self, task: PointTask, workers: int, payload: bytes) -> None:
        super().__init__(task)
        self.workers = workers
        # the same start-up as every Ray grid: a running Ray, RAY_ADDRESS, or a local one
        self._ray, self._owns = ensure_ray(workers)
        # a point whose worker dies is retried once; a point that raises is reported
        self._remote = self._ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)(
            _ray_point
        )
        self._payload = self._ray.put(payload)
        self._paths = [p for p in sys.path if p]
        self._refs: dict[Any, Key] = {}

    def submit(self, key: Key, d: int | None) -> None:
        self._refs[self._remote.remote(self._payload, self._paths, d)] = key

    def wait(self) -> Done:
        if not self._refs:
            return []
        ready, _ = self._ray.wait(list(self._refs), num_returns=1)
        done: Done = []
        for ref in ready:
            key = self._refs.pop(ref)
            done.append((key, self._ray.get(ref)))
        return done

    @property
    def in_flight(self) -> int:
        return len(self._refs)

    def close(self) -> None:
        for ref in self._refs:
            self._ray.cancel(ref)
        self._refs.clear()
        if self._owns:
            self._ray.shutdown()


def _payload(task: PointTask) -> bytes:
    try:
        payload = pickle.dumps(task)
        pickle.loads(payload)
    except (pickle.PicklingError, AttributeError, TypeError, ImportError) as err:
        raise TypeError(
            "workers > 1 sends make_model, loss_fn and the data to other processes, so they "
            "must be picklable by reference: module-level functions or classes (or "
            "functools.partial of them) in an importable module, not lambdas or local "
            f"functions ({err})"
        ) from err
    return payload


def make_runner(task: PointTask, workers: int, backend: str) -> PointRunner:
    """The runner for ``backend`` (``workers == 1`` or ``"serial"``: in this process).

    Args:
        task: the search's settings.
        workers: number of worker processes.
        backend: ``"serial"``, ``"process"`` or ``"ray"``.

    Returns:
        A :class:`PointRunner`; call ``close()`` when done.

    Raises:
        ValueError: for an unknown backend.
        TypeError: if ``task`` cannot be pickled (with workers).
        ImportError: for ``"ray"`` when Ray is not installed.

    Example:
        >>> y = torch.arange(64) % 2
        >>> X = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
        >>> X[:, 0] += 3 * (2 * y - 1)  # separable
        >>> def make_model():
        ...     torch.manual_seed(0)
        ...     return nn.Linear(5, 2)
        >>> task = PointTask(make_model, nn.functional.cross_entropy, (X, y), None, "dense",
        ...                  seed=0, epochs=3, lr=0.1, batch_size=32, optimizer="adam",
        ...                  baseline_lr=0.1)
        >>> runner = make_runner(task, workers=1, backend="serial")  # trains in this process
        >>> runner.submit("2", 2)
        >>> [(key, point["d"]) for key, point in runner.wait()]
        [('2', 2)]
        >>> runner.close()
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "serial" or workers == 1:
        return PointRunner(task)
    if backend == "ray":
        return _RayRunner(task, workers, _payload(task))
    return _ProcessRunner(task, workers, _payload(task))


def bisection_tree(a: int, b: int, depth: int) -> list[int]:
    """The midpoints serial bisection of ``(a, b)`` may visit in its next ``depth`` steps.

    Args:
        a: failing end.
        b: passing end.
        depth: number of bisection steps to look ahead.

    Returns:
        The distinct midpoints, shallowest first.

    Example:
        >>> bisection_tree(0, 16, 2)
        [8, 4, 12]
    """
    out: list[int] = []
    level: Sequence[tuple[int, int]] = [(a, b)]
    for _ in range(depth):
        nxt: list[tuple[int, int]] = []
        for lo, hi in level:
            if hi - lo <= 1:
                continue
            mid = (lo + hi) // 2
            if mid not in out:
                out.append(mid)
            nxt += [(lo, mid), (mid, hi)]
        level = nxt
    return out
