r"""A tiny, dependency-free progress reporter for long jobs.

Progress goes to ``stderr`` so that ``stdout`` stays clean for results. On a terminal the line is
rewritten in place (``\r``) at most ten times a second; otherwise (a log file, CI) a full line is
printed for the first step, at the 25/50/75/100% milestones and at most every ``interval`` seconds
in between, so logs stay short.

Two reporters:

- :class:`Progress` counts steps of known (or unknown) total: ``update()`` after each one.
- :class:`Heartbeat` shows that a single long call is still running (elapsed seconds), from a
  background thread, for work that cannot report steps itself.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

__all__ = ["Heartbeat", "Progress", "format_seconds"]

_TTY_REFRESH = 0.1


def format_seconds(seconds: float) -> str:
    """Format a duration compactly: ``0.42 s``, ``12.3 s``, ``4m05s``, ``2h03m``.

    Args:
        seconds: a non-negative duration.

    Returns:
        The formatted duration.

    Example:
        >>> [format_seconds(s) for s in (0.421, 12.34, 245, 7380)]
        ['0.42 s', '12.3 s', '4m05s', '2h03m']
    """
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        m, s = divmod(round(seconds), 60)
        return f"{m}m{s:02d}s"
    h, m = divmod(round(seconds) // 60, 60)
    return f"{h}h{m:02d}m"


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Report progress through ``total`` steps (or an unknown number when ``total`` is ``None``).

    Args:
        total: number of steps, or ``None`` if unknown.
        desc: what is being done, shown first on the line.
        quiet: report nothing at all.
        stream: where to write (default ``sys.stderr``).
        interval: on a non-terminal stream, the least number of seconds between lines (milestones
            and the final line are always printed).
        initial: steps already done before this reporter started (a resumed run): the count
            starts there and the ETA is the time since the start times the remaining steps over
            the steps done since the start, so work finished before a resume does not make it
            look fast.

    Example:
        >>> import io
        >>> buf = io.StringIO()
        >>> with Progress(4, "fitting", stream=buf, interval=1e9) as p:
        ...     for _ in range(4):
        ...         p.update(note="loss 0.1")
        >>> [line.split(" [")[0] for line in buf.getvalue().splitlines()]
        ['fitting 1/4 (25%)', 'fitting 2/4 (50%)', 'fitting 3/4 (75%)', 'fitting 4/4 (100%)']
        >>> buf = io.StringIO()  # resumed at step 2 of 4
        >>> with Progress(4, "fitting", stream=buf, interval=1e9, initial=2) as p:
        ...     p.update()
        >>> buf.getvalue().split(" [")[0]
        'fitting 3/4 (75%)'
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        interval: float = 5.0,
        initial: int = 0,
    ) -> None:
        if total is not None and (
            isinstance(total, bool) or not isinstance(total, int) or total < 0
        ):
            raise ValueError(f"total must be a non-negative int or None, got {total!r}")
        self.total = total
        self.desc = desc
        self.quiet = quiet
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.interval = interval
        if isinstance(initial, bool) or not isinstance(initial, int) or initial < 0:
            raise ValueError(f"initial must be a non-negative int, got {initial!r}")
        self.initial = initial
        self.count = initial
        self.note = ""
        self.eta: Callable[[int], float | None] | None = None
        """Optional ETA model: seconds left for the given remaining steps (``None``: unknown),
        for work whose steps cost unequal time; by default the pace since the start."""
        self._tty = _is_tty(self.stream)
        self._start = time.monotonic()
        self._last_write = -float("inf")
        self._milestone = 4 * initial // total if total else 0
        self._line_len = 0
        self._printed: int | None = None
        self._closed = False

    @property
    def elapsed(self) -> float:
        """Seconds since the reporter was created."""
        return time.monotonic() - self._start

    def _line(self) -> str:
        elapsed = self.elapsed
        parts = [self.desc] if self.desc else []
        if self.total:
            parts.append(f"{self.count}/{self.total} ({100 * self.count // self.total}%)")
            timing = format_seconds(elapsed)
            done = self.count - self.initial  # since this reporter started (a resume)
            eta: float | None = None
            if self.count < self.total:
                if self.eta is not None:
                    eta = self.eta(self.total - self.count)
                elif done > 0:
                    eta = elapsed * (self.total - self.count) / done
            if eta is not None:
                timing += f", ~{format_seconds(max(eta, 0.0))} left"
            parts.append(f"[{timing}]")
        else:
            parts.extend([str(self.count), f"[{format_seconds(elapsed)}]"])
        if self.note:
            parts.append(self.note)
        return " ".join(parts)

    def _emit(self, force: bool = False) -> None:
        if self.quiet or self._closed:
            return
        now = time.monotonic()
        milestone = 4 * self.count // self.total if self.total else 0
        passed_milestone = milestone > self._milestone
        if passed_milestone:
            self._milestone = milestone
        if self._tty:
            if force or now - self._last_write >= _TTY_REFRESH:
                line = self._line()
                pad = max(0, self._line_len - len(line))
                self.stream.write("\r" + line + " " * pad)
                self.stream.flush()
                self._line_len = len(line)
                self._last_write = now
        elif force or passed_milestone or now - self._last_write >= self.interval:
            self.stream.write(self._line() + "\n")
            self.stream.flush()
            self._last_write = now
            self._printed = self.count

    def update(self, n: int = 1, *, note: str | None = None) -> None:
        """Advance by ``n`` steps and optionally replace the note shown after the count.

        Args:
            n: steps completed since the last call.
            note: short status text (a loss, a residual); ``None`` keeps the previous one.
        """
        self.count += n
        if note is not None:
            self.note = note
        self._emit()

    def write(self, message: str) -> None:
        """Print a full line of ``message`` without garbling the progress line.

        Args:
            message: the text to print (a quiet reporter prints nothing).
        """
        if self.quiet:
            return
        if self._tty and self._line_len:
            self.stream.write("\r" + " " * self._line_len + "\r")
            self._line_len = 0
        self.stream.write(message + "\n")
        self.stream.flush()
        self._last_write = -float("inf")

    def close(self) -> None:
        """Print the final state (on a terminal: end the rewritten line). Idempotent."""
        if self._closed:
            return
        if not self.quiet:
            if self._tty:
                self._emit(force=True)
                self.stream.write("\n")
                self.stream.flush()
            elif self._printed != self.count:
                self._emit(force=True)
        self._closed = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Heartbeat:
    """Show that a long call is still running, from a background thread.

    On a terminal the line ``desc ... 12.3 s`` is refreshed every ``period`` seconds and erased
    on exit; on any other stream a line ``desc: still running (1m00s)`` is printed every
    ``interval`` seconds (nothing for calls shorter than that).

    Args:
        desc: what is running.
        quiet: report nothing at all.
        stream: where to write (default ``sys.stderr``).
        period: refresh period on a terminal, seconds.
        interval: seconds between lines on a non-terminal stream.

    Example:
        >>> import io
        >>> buf = io.StringIO()
        >>> with Heartbeat("solving", stream=buf, interval=0.05):
        ...     time.sleep(0.2)
        >>> "solving: still running" in buf.getvalue()
        True
    """

    def __init__(
        self,
        desc: str,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        period: float = 0.5,
        interval: float = 30.0,
    ) -> None:
        self.desc = desc
        self.quiet = quiet
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self._tty = _is_tty(self.stream)
        self.wait = period if self._tty else interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = time.monotonic()
        self._line_len = 0

    def _run(self) -> None:
        while not self._stop.wait(self.wait):
            elapsed = format_seconds(time.monotonic() - self._start)
            if self._tty:
                line = f"{self.desc} ... {elapsed}"
                self.stream.write("\r" + line.ljust(self._line_len))
                self._line_len = len(line)
            else:
                self.stream.write(f"{self.desc}: still running ({elapsed})\n")
            self.stream.flush()

    def __enter__(self) -> Heartbeat:
        self._start = time.monotonic()
        if not self.quiet:
            self._thread = threading.Thread(
                target=self._run, name="subspaces-heartbeat", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._tty and self._line_len:
            self.stream.write("\r" + " " * self._line_len + "\r")
            self.stream.flush()
