"""A stalled request body: the reader waits at most ``timeout_s`` for each next piece.

``asyncio.timeout()`` around every ``receive()`` builds a context manager, a timer and the
cancellation bookkeeping per piece, which showed in the profile of small PUTs. A ``StallWatch``
keeps one timer per body, moved forward lazily: when it fires before the current wait has
lasted ``timeout_s`` it re-arms for that wait's own deadline, and only a wait that really
lasted that long cancels the reading task (which the reader turns into ``RequestTimeout``).
Time the reader spends elsewhere between pieces (writing them on) does not count.
"""

from __future__ import annotations

import asyncio


class StallWatch:
    """Cancels the current task when one wait for a body piece outlasts ``timeout_s``."""

    def __init__(self, timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("a StallWatch runs inside a task (the one it cancels)")
        self._task = task
        self._timeout_s = timeout_s
        self._since = self._loop.time()
        self._waiting = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self._since + timeout_s, self._check
        )
        self.fired = False
        """Whether this watch cancelled the task."""

    def waiting(self) -> None:
        """A wait for the next piece begins."""
        self._since = self._loop.time()
        self._waiting = True

    def arrived(self) -> None:
        """The piece (or the end) arrived."""
        self._waiting = False

    def timed_out(self) -> bool:
        """After the wait ended in CancelledError: whether this watch cancelled it (the
        cancellation is then taken back; another one, such as a shutdown, stands)."""
        return self.fired and self._task.uncancel() == 0

    def close(self) -> None:
        """The body is read (or abandoned): no more checks."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if self._task.done():
            return
        now = self._loop.time()
        due = self._since + self._timeout_s if self._waiting else now + self._timeout_s
        if now < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self.fired = True
        self._task.cancel()
