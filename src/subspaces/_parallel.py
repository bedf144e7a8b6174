"""Map a function over independent tasks: in this process, on local processes, or on Ray.

One helper for the embarrassingly parallel grids of the library (a learning-rate x batch-size
grid of a reproduction, the architectures of a NAS benchmark). :func:`map_tasks` returns the
results **in task order** whatever the backend, so a caller that reduces them in that order gets
the same numbers, bit for bit, from every backend (each task must seed its own randomness and
fix its own thread count; nothing is shared between tasks).

Backends:

- ``"serial"``: one task after the other in this process (the default).
- ``"process"``: ``workers`` local processes (``spawn``, so the task function and its arguments
  must be picklable: a module-level function). A task whose worker process dies (killed, out of
  memory) is retried once in a fresh pool.
- ``"ray"``: one Ray task per item (``pip install ray``; imported only then), each pinned to
  ``num_cpus=1`` and retried once by Ray if its worker dies. ``ray.init()`` is called when Ray is
  not initialized yet: it joins the cluster named by ``RAY_ADDRESS`` when that is set, else starts
  a local one with ``workers`` CPUs. At most ``workers`` tasks are in flight.

A task that raises, or whose worker dies twice, stops the map with :class:`TaskFailedError`
naming the task's label (its grid point); no result is ever silently dropped.
:func:`for_each_task` is the engine underneath: it reports each task as it ends, a failure to a
callback, and goes on (the reproduction gallery records a failure as an ``error`` record).

The default backend of the reproductions' grids can be set without code through the environment
variables ``SUBSPACES_GRID_BACKEND`` and ``SUBSPACES_GRID_WORKERS`` (what ``subspaces reproduce
--grid-backend B --grid-workers N`` sets); see :func:`grid_settings`.
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ._checks import check_choice, check_positive_int

__all__ = [
    "BACKENDS",
    "TaskFailedError",
    "ensure_ray",
    "for_each_task",
    "grid_settings",
    "map_tasks",
]

BACKENDS: tuple[str, ...] = ("serial", "process", "ray")
BACKEND_ENV = "SUBSPACES_GRID_BACKEND"
WORKERS_ENV = "SUBSPACES_GRID_WORKERS"

R = TypeVar("R")


class TaskFailedError(RuntimeError):
    """A task of :func:`map_tasks` raised, or its worker died twice.

    Attributes:
        label: the failed task's label (its grid point).
        index: its position in the task list.
    """

    def __init__(self, label: str, index: int, why: str) -> None:
        super().__init__(f"task {index} ({label}) failed: {why}")
        self.label = label
        self.index = index


def grid_settings() -> tuple[str, int]:
    """The grid backend and worker count the environment asks for (default ``("serial", 1)``).

    Read from ``SUBSPACES_GRID_BACKEND`` (``serial``, ``process`` or ``ray``) and
    ``SUBSPACES_GRID_WORKERS`` (an int >= 1).

    Returns:
        ``(backend, workers)``.

    Raises:
        ValueError: for an unknown backend or a worker count that is not an int >= 1.

    Example:
        >>> import os
        >>> os.environ.pop("SUBSPACES_GRID_BACKEND", None) and None
        >>> os.environ.pop("SUBSPACES_GRID_WORKERS", None) and None
        >>> grid_settings()
        ('serial', 1)
    """
    backend = os.environ.get(BACKEND_ENV, "serial").strip() or "serial"
    if backend not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {BACKENDS}, got {backend!r}")
    raw = os.environ.get(WORKERS_ENV, "1").strip() or "1"
    try:
        workers = int(raw)
    except ValueError:
        workers = 0
    if workers < 1:
        raise ValueError(f"{WORKERS_ENV} must be an int >= 1, got {raw!r}")
    return backend, workers


def _labels(n: int, labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        return [f"#{i}" for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} tasks")
    return [str(label) for label in labels]


def map_tasks(
    fn: Callable[..., R],
    tasks: Sequence[tuple[Any, ...]],
    *,
    backend: str = "serial",
    workers: int = 1,
    labels: Sequence[str] | None = None,
    on_result: Callable[[int, R], None] | None = None,
) -> list[R]:
    """``[fn(*args) for args in tasks]`` on the chosen backend, in task order.

    Args:
        fn: the task function; for ``"process"`` and ``"ray"`` a module-level (picklable) one.
        tasks: one tuple of positional arguments per task.
        backend: ``"serial"``, ``"process"`` or ``"ray"`` (see the module docstring).
        workers: local processes (``"process"``; ``1`` runs in this process) or Ray tasks in
            flight (``"ray"``); ignored by ``"serial"``.
        labels: one name per task (e.g. ``"adam B=16 seed=2"``), used in error messages.
        on_result: called as ``on_result(index, result)`` as each task finishes (in completion
            order, in this process), e.g. to save partial results.

    Returns:
        The results, in the order of ``tasks``.

    Raises:
        ValueError: for an unknown backend, ``workers < 1`` or labels of the wrong length.
        TypeError: if a task is not a tuple.
        ImportError: for ``backend="ray"`` without Ray installed.
        TaskFailedError: if a task raised, or its worker died twice.

    Example:
        >>> map_tasks(pow, [(2, 3), (3, 2), (10, 0)])
        [8, 9, 1]
    """
    results: dict[int, R] = {}
    names = _labels(len(tasks), labels)

    def done(i: int, value: R) -> None:
        results[i] = value
        if on_result is not None:
            on_result(i, value)

    def failed(i: int, why: str) -> None:
        raise TaskFailedError(names[i], i, why)

    for_each_task(fn, tasks, backend=backend, workers=workers, on_result=done, on_failure=failed)
    return [results[i] for i in range(len(tasks))]


def for_each_task(
    fn: Callable[..., R],
    tasks: Sequence[tuple[Any, ...]],
    *,
    backend: str = "serial",
    workers: int = 1,
    cpus_per_task: int = 1,
    on_result: Callable[[int, R], None],
    on_failure: Callable[[int, str], None],
) -> None:
    """Run every task on the chosen backend and report each as it ends.

    The engine of :func:`map_tasks` and of the reproduction gallery. A task that raises, or
    whose worker died twice (one retry), is reported to ``on_failure(index, why)`` and the other
    tasks go on; if ``on_failure`` raises, the tasks not started yet are cancelled and the
    exception propagates (what :func:`map_tasks` does).

    Args:
        fn: the task function (module-level for ``"process"`` and ``"ray"``).
        tasks: one tuple of positional arguments per task.
        backend: ``"serial"``, ``"process"`` or ``"ray"``.
        workers: local processes or Ray tasks in flight (a local Ray gets that many CPUs).
        cpus_per_task: CPUs a Ray task asks for (``"ray"`` only).
        on_result: ``on_result(index, result)`` for each task that returned (completion order).
        on_failure: ``on_failure(index, why)`` for each task that failed.

    Raises:
        ValueError: for an unknown backend, ``workers < 1`` or ``cpus_per_task < 1``.
        TypeError: if a task is not a tuple.
        ImportError: for ``backend="ray"`` without Ray installed.

    Example:
        >>> ok, bad = [], []
        >>> for_each_task(divmod, [(7, 2), (1, 0)], on_result=lambda i, r: ok.append((i, r)),
        ...               on_failure=lambda i, why: bad.append((i, why)))
        >>> ok, bad
        ([(0, (3, 1))], [(1, 'ZeroDivisionError: integer division or modulo by zero')])
    """
    check_choice(backend, "backend", BACKENDS)
    workers = check_positive_int(workers, "workers")
    cpus_per_task = check_positive_int(cpus_per_task, "cpus_per_task")
    for i, args in enumerate(tasks):
        if not isinstance(args, tuple):
            raise TypeError(f"task {i} must be a tuple of arguments, got {type(args).__name__}")
    if backend == "ray":
        _run_ray(fn, tasks, workers, cpus_per_task, on_result, on_failure)
    elif backend == "process" and workers > 1 and len(tasks) > 1:
        _run_process(fn, tasks, workers, on_result, on_failure)
    else:
        for i, args in enumerate(tasks):
            try:
                value = fn(*args)
            except Exception as error:
                on_failure(i, f"{type(error).__name__}: {error}")
                continue
            on_result(i, value)


def _run_process(
    fn: Callable[..., R],
    tasks: Sequence[tuple[Any, ...]],
    workers: int,
    on_result: Callable[[int, R], None],
    on_failure: Callable[[int, str], None],
) -> None:
    pending = list(range(len(tasks)))
    context = multiprocessing.get_context("spawn")
    for attempt in (1, 2):
        crashed: list[int] = []
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(fn, *tasks[i]): i for i in pending}
            try:
                for future in cf.as_completed(futures):
                    i = futures[future]
                    try:
                        value = future.result()
                    except cf.process.BrokenProcessPool as error:
                        if attempt == 1:
                            crashed.append(i)
                        else:
                            on_failure(i, f"worker process died, also on the retry ({error})")
                        continue
                    except Exception as error:
                        on_failure(i, f"{type(error).__name__}: {error}")
                        continue
                    on_result(i, value)
            except BaseException:
                for other in futures:
                    other.cancel()
                raise
        pending = sorted(crashed)
        if not pending:
            return


def ensure_ray(cpus: int) -> tuple[Any, bool]:
    """Import Ray and make sure it is initialized (the one place that starts Ray).

    A running Ray is used as it is. Otherwise ``ray.init()`` joins the cluster named by
    ``RAY_ADDRESS`` when that is set, else starts a local Ray with ``cpus`` CPUs (no dashboard).

    Args:
        cpus: CPUs of a local Ray started here.

    Returns:
        ``(ray, started)``: the module, and whether this call initialized it (the caller may
        then ``ray.shutdown()`` when done).

    Raises:
        ImportError: if Ray is not installed (it is optional: ``pip install ray``).

    Example:
        >>> try:  # no Ray installed (ImportError), or 0 CPUs refused before Ray starts
        ...     ensure_ray(0)
        ... except (ImportError, ValueError):
        ...     print("not started")
        not started
    """
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            'backend="ray" needs Ray, which is optional: pip install ray (or use "process")'
        ) from error
    if ray.is_initialized():
        return ray, False
    cpus = check_positive_int(cpus, "cpus")
    if os.environ.get("RAY_ADDRESS"):
        ray.init()  # joins the cluster at RAY_ADDRESS
    else:
        ray.init(num_cpus=cpus, include_dashboard=False)
    return ray, True


def _call(fn: Callable[..., R], *args: Any) -> R:
    return fn(*args)


def _run_ray(
    fn: Callable[..., R],
    tasks: Sequence[tuple[Any, ...]],
    workers: int,
    cpus_per_task: int,
    on_result: Callable[[int, R], None],
    on_failure: Callable[[int, str], None],
) -> None:
    ray, _ = ensure_ray(workers * cpus_per_task)
    options = {"num_cpus": cpus_per_task, "max_retries": 1, "retry_exceptions": False}
    if inspect.isfunction(fn):
        remote = ray.remote(**options)(fn)
        submit = remote.remote
    else:  # Ray wraps only Python functions; builtins and other callables go through _call
        remote = ray.remote(**options)(_call)

        def submit(*args: Any) -> Any:
            return remote.remote(fn, *args)

    queue = list(range(len(tasks)))
    in_flight: dict[Any, int] = {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < workers:
                i = queue.pop(0)
                in_flight[submit(*tasks[i])] = i
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                i = in_flight.pop(ref)
                try:
                    value = ray.get(ref)
                except Exception as error:  # the task raised, or its worker died twice
                    on_failure(i, f"{type(error).__name__}: {error}")
                    continue
                on_result(i, value)
    except BaseException:
        for other in in_flight:
            ray.cancel(other)
        raise
