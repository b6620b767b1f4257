"""A stalled request body: the reader waits at most ``timeout_s`` for each next piece.

``asyncio.timeout()`` around every ``receive()`` builds a context manager, a timer and the
cancellation bookkeeping per piece, and even one asyncio timer per body showed in the profile
of small PUTs. A ``StallWatch`` is checked by its loop's sweeper (sweeper.py), which looks at
every watch a few times per timeout: a wait that has lasted ``timeout_s`` when it looks (so
at most a quarter of the timeout later) cancels the reading task, which the reader turns into
``RequestTimeout``. Time the reader spends elsewhere between pieces (writing them on) does
not count.
"""

from __future__ import annotations

import asyncio

from s3batchd.sweeper import sweeper


class StallWatch:
    """Cancels the current task when one wait for a body piece outlasts ``timeout_s``."""

    __slots__ = ("_loop", "_since", "_sweeper", "_task", "_timeout_s", "_waiting", "fired")

    def __init__(self, timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("a StallWatch runs inside a task (the one it cancels)")
        self._task = task
        self._timeout_s = timeout_s
        self._since = 0.0
        self._waiting = False
        self.fired = False
        """Whether this watch cancelled the task."""
        self._sweeper = sweeper(self._loop)
        self._sweeper.watch(self, timeout_s)

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
        self._sweeper.forget(self)

    def check(self, now: float) -> bool:
        """The sweeper's look: cancel the task if the current wait has lasted the timeout.
        True once there is nothing more to watch."""
        if self._task.done():
            return True
        if not self._waiting or now - self._since < self._timeout_s:
            return False
        self.fired = True
        self._task.cancel()
        return True
