"""How many intra-op threads torch uses, chosen from the size of the work and always restored.

On a shared machine, OpenMP threads oversubscribe: the products of a small model run about twice
as slow with two threads as with one while another process keeps a core busy, and 1.5x faster
when the machine is idle (BENCHMARKS.md, "threads"). So the library uses the cores that are idle
when a run starts (one thread for tiny work), lets the user override it, and puts the caller's
setting back afterwards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

__all__ = ["SMALL_WORK", "choose_threads", "idle_cores", "intra_op_threads"]

SMALL_WORK = 1_000_000
"""Work per product (multiply-adds, or parameters x samples for a model) below which one thread is
always used: thread start-up costs more than it saves (a 1,000 x 1,000 matrix-vector product)."""

Threads = int | Literal["auto"] | None


def idle_cores(sample_seconds: float = 0.2) -> float:
    """How many cores are idle now.

    Measured from ``/proc/stat`` over ``sample_seconds`` on Linux, else ``cpu_count - loadavg``
    where the platform has a load average.

    Returns:
        Idle cores (``>= 0``; all of them when nothing can be measured).

    Example:
        >>> 0.0 <= idle_cores(0.05) <= (os.cpu_count() or 1)
        True
    """
    cpus = os.cpu_count() or 1

    def ticks() -> tuple[int, int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return idle, sum(fields[:8])

    first = ticks()
    if first is not None:
        time.sleep(sample_seconds)
        second = ticks()
        if second is not None and second[1] > first[1]:
            return cpus * (second[0] - first[0]) / (second[1] - first[1])
    try:
        return max(0.0, cpus - os.getloadavg()[0])
    except (AttributeError, OSError):
        return float(cpus)


def choose_threads(work: float, threads: Threads = "auto") -> int:
    """The intra-op thread count for products of ``work`` multiply-adds.

    On a shared machine OpenMP threads oversubscribe: measured on the demo (2 cores), two threads
    were 1.5x faster than one on an idle machine and 2.2x slower while another process kept one
    core busy. So ``"auto"`` uses the cores that are idle now.

    Args:
        work: multiply-adds of one typical product (e.g. parameters x samples for a model).
        threads: ``"auto"`` (one thread below :data:`SMALL_WORK`, else torch's count capped by
            the idle cores, at least one), ``None`` (torch's current count, unchanged) or an
            explicit positive count.

    Returns:
        The number of threads.

    Raises:
        ValueError: if ``threads`` is not ``"auto"``, ``None`` or a positive int, or ``work`` is
            negative.

    Example:
        >>> choose_threads(1e4), choose_threads(1e4, threads=3)
        (1, 3)
        >>> 1 <= choose_threads(1e10) <= torch.get_num_threads()
        True
    """
    if isinstance(work, bool) or not isinstance(work, (int, float)) or not work >= 0:
        raise ValueError(f"work must be a number >= 0, got {work!r}")
    if threads is None:
        return torch.get_num_threads()
    if threads == "auto":
        if work < SMALL_WORK:
            return 1
        return max(1, min(torch.get_num_threads(), int(idle_cores() + 0.3)))
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be 'auto', None or an int >= 1, got {threads!r}")
    return threads


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` intra-op threads (``None``: unchanged), then restore the caller's.

    Args:
        n: thread count, or ``None`` to leave torch's setting alone.

    Yields:
        The thread count in effect inside the block.

    Raises:
        ValueError: if ``n`` is not ``None`` or a positive int.

    Example:
        >>> before = torch.get_num_threads()
        >>> with intra_op_threads(1) as n:
        ...     n, torch.get_num_threads()
        (1, 1)
        >>> torch.get_num_threads() == before
        True
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"thread count must be None or an int >= 1, got {n!r}")
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
