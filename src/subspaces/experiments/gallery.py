"""Run many reproductions: in this process, on local worker processes, or on Ray; resumable.

``subspaces reproduce --all --workers N [--backend process|ray] [--resume]`` is built on
:func:`run_gallery`. Each reproduction is one task: :func:`run_record` runs it (global RNGs
seeded, intra-op threads set, any exception turned into an ``error`` record) and returns its
record and figures; the calling process writes ``ID.json`` and the figures atomically as each
task finishes, so an interrupted gallery keeps every finished reproduction and ``resume=True``
runs only the missing ones (and those that ended in an error).

Backends:

- ``"serial"``: one after the other in this process (the default).
- ``"process"``: ``workers`` local processes (``spawn``). If a worker dies (killed, out of
  memory), the unfinished reproductions are retried once in a fresh pool; a second death is
  recorded as an ``error`` record naming the crash, so no reproduction silently goes missing.
- ``"ray"``: one Ray task per reproduction, ``workers`` of them in flight (``pip install ray``;
  imported only then), on the cluster named by ``RAY_ADDRESS`` when set, else on a local Ray
  with ``workers`` CPUs. Ray retries a task whose worker died once (``max_retries=1``); a task
  that still fails becomes an ``error`` record. Records come back to this process, so the
  cluster needs no shared file system.

Both parallel backends are :func:`subspaces._parallel.for_each_task`, the engine of the
reproductions' grids too.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import random
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._parallel import BACKENDS, for_each_task

__all__ = ["BACKENDS", "finished_record", "run_gallery", "run_record", "write_record"]

Figures = dict[str, bytes]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def brief_traceback(error: BaseException, frames: int = 3) -> str:
    """The last ``frames`` frames of a traceback and the exception line.

    Args:
        error: the exception.
        frames: how many innermost frames to keep.

    Returns:
        A few lines of text.

    Example:
        >>> try:
        ...     {}["missing"]
        ... except KeyError as err:
        ...     print(brief_traceback(err).splitlines()[-1])
        KeyError: 'missing'
    """
    te = traceback.TracebackException.from_exception(error)
    lines = ["Traceback (last frames):"]
    for frame in list(te.stack)[-frames:]:
        lines.append(f"  {frame.filename}:{frame.lineno} in {frame.name}")
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    lines.append("".join(te.format_exception_only()).strip())
    return "\n".join(lines)


def _error_record(base: dict[str, Any], message: str, seconds: float) -> dict[str, Any]:
    return {
        **base,
        "measured": {},
        "passed": False,
        "status": "error",
        "summary": "",
        "figures": [],
        "error": message,
        "seconds": seconds,
    }


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished child processes.

    Children count because some reproductions spawn worker processes (P26's runner); a
    reproduction's CPU time is the difference of two calls around its run.

    Returns:
        Seconds since the process started (children: those waited for so far).
    """
    own = time.process_time()
    try:
        import resource
    except ImportError:  # not on POSIX
        return own
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + children.ru_utime + children.ru_stime


def run_record(
    id: str, fast: bool, seed: int, threads: int | None = 1
) -> tuple[dict[str, Any], Figures, str | None]:
    """Run one registered reproduction in this process and return what it produced.

    The global RNGs (``random``, NumPy's legacy state, torch) are seeded with ``seed`` first;
    ``threads`` sets torch's intra-op threads for the run and is restored afterwards. Nothing
    is written or printed.

    Args:
        id: the experiment id (``"P08"``).
        fast: the small setting.
        seed: the seed passed to the run.
        threads: intra-op threads (``None``: leave torch's setting).

    Returns:
        ``(record, figures, brief_traceback)``: the ``ID.json`` record (``status`` ``passed``,
        ``failed`` or ``error``), ``{file name: PNG bytes}``, and a short traceback when the
        run raised (else ``None``).

    Raises:
        KeyError: for an unknown id (an exception inside the run becomes an ``error`` record).
        TypeError: (caught here: an ``error`` record) when the run does not return an
            :class:`~subspaces.experiments.ExperimentResult`.

    Example:
        >>> record, figures, tb = run_record("C01", fast=True, seed=0)
        >>> record["id"], record["status"] in ("passed", "failed"), tb is None
        ('C01', True, True)
    """
    import numpy as np
    import torch

    from .. import __version__
    from .._io import to_jsonable
    from .._threads import intra_op_threads
    from .registry import ExperimentResult, get

    experiment = get(id)
    base: dict[str, Any] = {
        "id": experiment.id,
        "title": experiment.title,
        "paper": experiment.paper,
        "claim": experiment.claim,
        "criterion": experiment.criterion,
        "slow": experiment.slow,
        "seed": seed,
        "fast": fast,
        "date": _now(),
        "subspaces_version": __version__,
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
    }
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (legacy global state, for experiments that use it)
    torch.manual_seed(seed)
    start = time.perf_counter()
    cpu_start = _cpu_seconds()
    try:
        with intra_op_threads(threads):
            result = experiment.run(fast, seed)
        seconds = time.perf_counter() - start
        cpu_seconds = _cpu_seconds() - cpu_start
        if not isinstance(result, ExperimentResult):
            raise TypeError(
                f"{experiment.id}'s run returned {type(result).__name__}, expected ExperimentResult"
            )
        figures = {f"{experiment.id}_{n}.png": data for n, data in sorted(result.figures.items())}
        record = {
            **base,
            "measured": to_jsonable(result.measured),
            "passed": result.passed,
            "status": "passed" if result.passed else "failed",
            "summary": result.summary,
            "figures": sorted(figures),
            "headline": list(result.headline),
            "error": None,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
        }
        return record, figures, None
    except Exception as error:
        seconds = time.perf_counter() - start
        message = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return _error_record(base, message, seconds), {}, brief_traceback(error)


def write_record(out: str | Path, record: dict[str, Any], figures: Figures) -> Path:
    """Write the figures, then ``ID.json`` (each atomically), into ``out``.

    Args:
        out: the output folder (created if missing).
        record: the record (needs ``id``).
        figures: ``{file name: PNG bytes}``.

    Returns:
        The path of ``ID.json``.

    Example:
        >>> import tempfile
        >>> path = write_record(tempfile.mkdtemp(), {"id": "P99", "status": "passed"}, {})
        >>> path.name, json.loads(path.read_text())["status"]
        ('P99.json', 'passed')
    """
    from .._io import atomic_write_bytes, write_json

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in figures.items():
        atomic_write_bytes(folder / name, data)
    path = folder / f"{record['id']}.json"
    write_json(path, record)
    return path


def finished_record(out: str | Path, id: str, fast: bool, seed: int) -> dict[str, Any] | None:
    """The record of a finished run of ``id`` in ``out`` with the same setting, if any.

    A record counts as finished when it parses, has the same ``fast`` and ``seed``, and its
    status is ``passed`` or ``failed`` (an ``error`` is run again).

    Args:
        out: the output folder.
        id: the experiment id.
        fast: the setting.
        seed: the seed.

    Returns:
        The record, or ``None``.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = write_record(folder, {"id": "P99", "status": "failed", "fast": True, "seed": 0}, {})
        >>> finished_record(folder, "P99", True, 0)["status"]
        'failed'
        >>> finished_record(folder, "P99", False, 0) is None  # another setting: run it again
        True
    """
    path = Path(out) / f"{id}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    same = record.get("fast") == fast and record.get("seed") == seed
    if same and record.get("status") in ("passed", "failed"):
        return record
    return None


def _crash_record(id: str, fast: bool, seed: int, why: str) -> dict[str, Any]:
    base = {"id": id, "title": "", "seed": seed, "fast": fast, "date": _now()}
    try:
        from .registry import get

        experiment = get(id)
        base.update(title=experiment.title, paper=experiment.paper, slow=experiment.slow)
    except KeyError:
        pass
    return _error_record(base, why, 0.0)


def run_gallery(
    ids: Sequence[str],
    out: str | Path,
    *,
    fast: bool = False,
    seed: int = 0,
    backend: str = "serial",
    workers: int = 1,
    threads: int | None = 1,
    resume: bool = False,
    on_done: Callable[[dict[str, Any], str | None, bool], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the reproductions ``ids`` and write each one's record as soon as it finishes.

    Args:
        ids: experiment ids.
        out: output folder (``ID.json`` and figures per reproduction).
        fast: the small setting.
        seed: the seed of every run.
        backend: ``"serial"``, ``"process"`` or ``"ray"`` (see the module docstring).
        workers: worker processes for ``"process"`` (``1`` runs serially), Ray tasks in flight
            for ``"ray"``.
        threads: torch intra-op threads per reproduction.
        resume: reuse finished records of the same setting in ``out``
            (:func:`finished_record`) instead of running them again.
        on_done: called as ``on_done(record, brief_traceback_or_None, reused)`` for each
            reproduction when it finishes (in completion order).

    Returns:
        The records, in the order of ``ids``.

    Raises:
        ValueError: for an unknown backend, ``workers < 1`` or duplicate ids.
        KeyError: for an id that is not registered.
        ImportError: for ``backend="ray"`` without Ray.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> first = run_gallery(["C01"], folder, fast=True)
        >>> again = run_gallery(["C01"], folder, fast=True, resume=True)  # nothing is rerun
        >>> first[0]["date"] == again[0]["date"], (Path(folder) / "C01.json").is_file()
        (True, True)
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate experiment ids in {list(ids)}")
    from .registry import get

    for id in ids:
        get(id)  # an unknown id is a clear KeyError here, not an error record later
    records: dict[str, dict[str, Any]] = {}
    todo: list[str] = []
    for id in ids:
        old = finished_record(out, id, fast, seed) if resume else None
        if old is None:
            todo.append(id)
        else:
            records[id] = old
            if on_done is not None:
                on_done(old, None, True)

    def done(record: dict[str, Any], tb: str | None, figures: Figures | None = None) -> None:
        write_record(out, record, figures or {})
        records[record["id"]] = record
        if on_done is not None:
            on_done(record, tb, False)

    def finished(i: int, out: tuple[dict[str, Any], Figures, str | None]) -> None:
        record, figures, tb = out
        done(record, tb, figures)

    def crashed(i: int, why: str) -> None:  # run_record catches the run's own exceptions
        done(_crash_record(todo[i], fast, seed, why), None, None)

    for_each_task(
        run_record,
        [(id, fast, seed, threads) for id in todo],
        backend=backend,
        workers=workers,
        cpus_per_task=threads or 1,
        on_result=finished,
        on_failure=crashed,
    )
    return [records[id] for id in ids]
