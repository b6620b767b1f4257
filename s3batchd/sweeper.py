"""Coarse deadlines checked by one timer per event loop.

A request's header and body timeouts are almost never reached, yet an asyncio timer per
request (``call_at`` plus ``cancel``) pushes a ``TimerHandle`` onto the loop's heap, whose
ordering runs Python comparisons, and leaves a cancelled handle behind for the loop to sweep
out: together they showed as several per cent of a small PUT in the profile (bench/README.md).
Here a watched thing is an entry in a dict, added and removed in O(1); one timer per loop
looks at every entry each ``tick_s`` and asks it whether its deadline passed. A deadline is
therefore met between its own time and one tick later: the tick is a quarter of the shortest
timeout watched, at most ``MAX_TICK_S``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Protocol

logger = logging.getLogger(__name__)

MAX_TICK_S = 1.0
"""Longest time between two checks."""
MIN_TICK_S = 0.01
"""Shortest time between two checks, whatever the timeouts."""


class Watched(Protocol):
    """Something with a deadline."""

    def check(self, now: float) -> bool:
        """Act if the deadline passed at loop time ``now``; True to stop being watched."""


class Sweeper:
    """One loop's watched things and the timer that checks them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._watched: dict[Watched, None] = {}
        self._tick_s = MAX_TICK_S
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, item: Watched, timeout_s: float) -> None:
        """Check ``item`` every tick, a tick being at most a quarter of ``timeout_s``."""
        self._watched[item] = None
        tick = min(MAX_TICK_S, max(MIN_TICK_S, timeout_s / 4))
        if tick < self._tick_s:
            self._tick_s = tick
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if self._timer is None:
            self._timer = self.loop.call_later(self._tick_s, self._sweep)

    def forget(self, item: Watched) -> None:
        """Stop checking ``item`` (nothing if it is not watched)."""
        self._watched.pop(item, None)

    def __len__(self) -> int:
        return len(self._watched)

    def _sweep(self) -> None:
        self._timer = None
        now = self.loop.time()
        for item in list(self._watched):
            try:
                done = item.check(now)
            except Exception:
                # One broken check must not end the watch of every other deadline.
                logger.exception("deadline check failed")
                done = True
            if done:
                self._watched.pop(item, None)
        if self._watched:
            self._timer = self.loop.call_later(self._tick_s, self._sweep)
        else:
            self._tick_s = MAX_TICK_S  # the next watch sets it from its own timeout


_SWEEPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Sweeper] = (
    weakref.WeakKeyDictionary()
)


_last: Sweeper | None = None
"""The sweeper asked for last (a process serves from one loop: no weak reference per call)."""


def sweeper(loop: asyncio.AbstractEventLoop) -> Sweeper:
    """The sweeper of ``loop`` (made on first use)."""
    global _last  # a one-entry cache in front of the weak dictionary
    last = _last
    if last is not None and last.loop is loop:
        return last
    found = _SWEEPERS.get(loop)
    if found is None:
        found = _SWEEPERS[loop] = Sweeper(loop)
    _last = found
    return found
