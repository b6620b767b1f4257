"""A slow request body: the reader waits at most ``timeout_s`` for each next piece, and the
whole body must arrive at a minimum average rate.

``asyncio.timeout()`` around every ``receive()`` builds a context manager, a timer and the
cancellation bookkeeping per piece, and even one asyncio timer per body showed in the profile
of small PUTs. A ``StallWatch`` is checked by its loop's sweeper (sweeper.py), which looks at
every watch a few times per timeout: a wait that has lasted ``timeout_s`` when it looks (so
at most a quarter of the timeout later) cancels the reading task, which the reader turns into
``RequestTimeout``. Time the reader spends elsewhere between pieces (writing them on) does
not count.

A stall timeout alone lets a client trickle a body one byte per ``timeout_s`` and hold a
request slot for hours. With a ``BodyPace`` the watch also applies a deadline and a share:

- **Deadline.** After ``grace_s`` of waiting, a body must have kept ``min_rate`` bytes per
  second of waiting: a body of declared length ``L`` (``Content-Length``, or
  ``x-amz-decoded-content-length`` for aws-chunked) must be complete within
  ``grace_s + L / min_rate`` seconds of waiting; one of unknown length (``Transfer-Encoding:
  chunked``) must never fall behind the rate. Past it: ``RequestTimeout``.
- **Slow share.** A body behind the rate but before its deadline is *slow* and holds one of
  the ``slow_slots`` (a share of ``server.max_concurrent_requests``); a body that falls behind
  while they are all held gets ``RequestTimeout`` at once, so slow bodies can never take the
  slots that progressing requests need (``server.progressing_reserve``). A slow body that
  catches up gives its slow slot back.

Both are decided at the sweeper's looks, per body: two numbers compared, no timer.

A body that is already here needs no watch: uvicorn reads a small PUT's body with its headers,
so the first ``receive()`` completes without suspending. ``step`` runs an awaitable up to its
first suspension, and a reader arms its watch only when there is one (``Suspended``, awaited,
finishes the wait where it stopped); a watch built and registered per small PUT showed as 3 %
of the PutObject path's samples (bench/README.md, session 13).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar, cast

from s3batchd.config import ServerConfig
from s3batchd.sweeper import sweeper

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class BodyPace:
    """The pace request bodies must keep and the slow bodies' share of one app's request
    slots (``server.body_timeout_s``, ``body_min_rate_bytes_s``, ``body_deadline_grace_s``,
    ``progressing_reserve``)."""

    __slots__ = ("grace_s", "min_rate", "on_timeout", "slow", "slow_slots", "timeout_s")

    def __init__(
        self,
        *,
        timeout_s: float,
        min_rate: float,
        grace_s: float,
        slow_slots: int,
        on_timeout: Callable[[str], object] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        """Longest wait for one piece."""
        self.min_rate = min_rate
        """Bytes per second of waiting a body must keep after the grace."""
        self.grace_s = grace_s
        """Waiting before the rate applies."""
        self.slow_slots = slow_slots
        """How many bodies may be behind the rate at once."""
        self.slow = 0
        """Bodies behind the rate now (each holds a slow slot)."""
        self.on_timeout = on_timeout
        """Told the reason (``stalled``, ``deadline``, ``slow_share``) of every body cut off."""

    @classmethod
    def of(
        cls, server: ServerConfig, *, on_timeout: Callable[[str], object] | None = None
    ) -> BodyPace:
        """The pace the settings ask for."""
        share = 1.0 - server.progressing_reserve
        return cls(
            timeout_s=server.body_timeout_s,
            min_rate=server.body_min_rate_bytes_s,
            grace_s=server.body_deadline_grace_s,
            slow_slots=int(server.max_concurrent_requests * share),
            on_timeout=on_timeout,
        )


class StallWatch:
    """Cancels the current task when one wait for a body piece outlasts ``timeout_s`` or,
    with a ``pace``, when the body misses its deadline or falls behind with no slow slot
    free (module docstring). ``declared``: the body's length, if known; ``received``: bytes
    of it an earlier reader took."""

    __slots__ = (
        "_declared",
        "_loop",
        "_pace",
        "_received",
        "_since",
        "_slow",
        "_spent",
        "_sweeper",
        "_task",
        "_timeout_s",
        "_waiting",
        "fired",
    )

    def __init__(
        self,
        timeout_s: float,
        *,
        pace: BodyPace | None = None,
        declared: int | None = None,
        received: int = 0,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("a StallWatch runs inside a task (the one it cancels)")
        self._task = task
        self._timeout_s = timeout_s
        self._pace = pace
        self._declared = declared or 0
        self._received = received
        self._since = 0.0
        self._spent = 0.0
        """Seconds spent waiting for pieces before the current wait."""
        self._waiting = False
        self._slow = False
        self.fired = False
        """Whether this watch cancelled the task."""
        self._sweeper = sweeper(self._loop)
        self._sweeper.watch(self, timeout_s)

    def waiting(self) -> None:
        """A wait for the next piece begins."""
        self._since = self._loop.time()
        self._waiting = True

    def arrived(self, size: int = 0) -> None:
        """The piece (``size`` bytes) or the end arrived."""
        self._waiting = False
        self._spent += self._loop.time() - self._since
        self._received += size

    def timed_out(self) -> bool:
        """After the wait ended in CancelledError: whether this watch cancelled it (the
        cancellation is then taken back; another one, such as a shutdown, stands)."""
        return self.fired and self._task.uncancel() == 0

    def close(self) -> None:
        """The body is read (or abandoned): no more checks, its slow slot given back."""
        self._sweeper.forget(self)
        if self._slow:
            self._release()

    def check(self, now: float) -> bool:
        """The sweeper's look: cancel the task if the current wait has lasted the timeout,
        the deadline passed or the body fell behind with no slow slot free. True once there
        is nothing more to watch."""
        if self._task.done():
            self._release()
            return True
        if not self._waiting:
            return False
        waited = now - self._since
        if waited >= self._timeout_s:
            return self._fire("stalled")
        pace = self._pace
        if pace is None:
            return False
        due = (self._spent + waited - pace.grace_s) * pace.min_rate
        if due <= 0:
            return False
        if due >= max(self._declared, self._received):
            return self._fire("deadline")
        if due > self._received:
            if not self._slow:
                if pace.slow >= pace.slow_slots:
                    return self._fire("slow_share")
                pace.slow += 1
                self._slow = True
        else:
            self._release()  # caught up
        return False

    def _fire(self, reason: str) -> bool:
        logger.debug("request body cut off (%s): RequestTimeout", reason)
        self.fired = True
        self._task.cancel()
        self._release()
        pace = self._pace
        if pace is not None and pace.on_timeout is not None:
            pace.on_timeout(reason)
        return True

    def _release(self) -> None:
        if self._slow:
            self._slow = False
            pace = self._pace
            if pace is not None:
                pace.slow -= 1


class Suspended(Generic[_T]):
    """An awaitable whose first step suspended (``step``): awaiting it resumes the wait where
    it stopped, as ``yield from`` would have (PEP 380's expansion: what the task sends or
    throws in, a cancellation included, goes to the awaitable; its result is the result)."""

    __slots__ = ("_steps", "_yielded")

    def __init__(self, steps: Generator[Any, Any, _T], yielded: object) -> None:
        self._steps = steps
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, _T]:
        steps, yielded = self._steps, self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                steps.close()
                raise
            except BaseException as exc:  # noqa: BLE001  every throw goes on, as yield from does
                try:
                    yielded = steps.throw(exc)
                except StopIteration as stop:
                    return cast("_T", stop.value)
            else:
                try:
                    yielded = steps.send(sent)
                except StopIteration as stop:
                    return cast("_T", stop.value)


def step(awaitable: Awaitable[_T]) -> _T | Suspended[_T]:
    """Run ``awaitable`` up to its first suspension: its result when it completes without one
    (a body already received), else the ``Suspended`` wait to await."""
    steps = awaitable.__await__()
    try:
        yielded = steps.send(None)
    except StopIteration as done:
        return cast("_T", done.value)
    return Suspended(steps, yielded)
