"""Helpers for tests and benchmarks that start several local processes (gloo on localhost)."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


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
