"""Helpers for tests and benchmarks that start several local processes (gloo on localhost)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import sys

import torch

from .._distributed import import_before_process_group

__all__ = ["free_port", "gloo_worker_threads", "init_gloo"]


def free_port() -> int:
    """A TCP port on ``127.0.0.1`` that is free now (for ``MASTER_PORT`` of a local process group).

    The operating system picks it; another process could take it before the group binds it, so
    callers start their processes right away.

    Returns:
        The port number.

    Example:
        >>> 1024 <= free_port() <= 65535
        True
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_gloo(
    rank: int, world: int, port: int, timeout_s: float = 60.0, threads: int | None = 1
) -> None:
    """Join a gloo process group of ``world`` local processes as ``rank`` (one thread each).

    Sets ``MASTER_ADDR``/``MASTER_PORT``, limits torch to ``threads`` threads (the ranks share
    the machine's cores) and imports what would otherwise keep the group alive after
    ``destroy_process_group`` (:func:`subspaces._distributed.import_before_process_group`), so
    a worker that destroys its group exits cleanly.

    Args:
        rank: this process's rank.
        world: the number of processes.
        port: the rendezvous port on ``127.0.0.1`` (one :func:`free_port` shared by all ranks).
        timeout_s: seconds a collective waits for a lost rank.
        threads: torch's intra-op threads in this process (``None``: leave torch's setting).

    Example:
        >>> import torch.distributed as dist
        >>> init_gloo(0, 1, free_port(), threads=None)  # a group of one, in this process
        >>> dist.get_world_size()
        1
        >>> dist.destroy_process_group()
    """
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if threads is not None:
        torch.set_num_threads(threads)
    import_before_process_group()
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=dt.timedelta(seconds=timeout_s)
    )


def gloo_worker_threads() -> int | None:
    """How many gloo threads this process runs (``None`` where ``/proc`` does not say).

    A process group that ended (destroyed and no longer referenced) leaves none; a count above
    zero after a run's group was destroyed means the group was kept alive, and the process may
    abort at exit (:data:`subspaces._distributed.GROUP_PINNING_MODULES`). Counts the threads
    named ``pt_gloo_runloop`` (collective workers) and ``gloo_tcp_loop`` (the transport).

    Returns:
        The count, or ``None`` off Linux.

    Example:
        >>> n = gloo_worker_threads()
        >>> n is None or n >= 0
        True
    """
    tasks = f"/proc/{os.getpid()}/task"
    if not sys.platform.startswith("linux") or not os.path.isdir(tasks):
        return None
    count = 0
    for tid in os.listdir(tasks):
        try:
            with open(os.path.join(tasks, tid, "comm")) as f:
                name = f.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        count += name.startswith(("pt_gloo", "gloo_"))
    return count
