"""The write clock: the time stamped on every object and tombstone a daemon stores, which
decides which write of a key is the latest (the catalog keeps the newest stamp).

The system clock can step back (NTP, a resumed VM); stamped with it alone, a later write would
be older than an earlier one and never served, and a PUT after a DELETE would stay hidden. So
a stamp is the wall-clock time, but never less than 1 microsecond after the previous stamp of
this process: within a daemon the stamps are a sequence that cannot go backwards, and they
stay close to real time (after a step back of N seconds the stamps run up to N seconds ahead
until the wall clock catches up). At start the clock is moved past the newest stamp the catalog
holds (``observe``), so a restart with the clock behind cannot go back either. Between daemons
(other hosts, other workers) only the wall clock orders writes: see docs/durability.md.
"""

from __future__ import annotations

import threading
import time

#: The smallest step between two stamps: a Unix time near 2^31 still has 0.24 us resolution
#: as a float, so the next stamp is always a different, larger number.
TICK_S = 1e-6


def wall() -> float:
    """The system clock (``time.time`` looked up at each call, so a test can step it)."""
    return time.time()


class WriteClock:
    """Stamps that never go backwards (thread-safe)."""

    def __init__(self) -> None:
        self._last = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        """The stamp of a write happening now."""
        current = wall()
        with self._lock:
            stamp = max(current, self._last + TICK_S)
            self._last = stamp
        return stamp

    def observe(self, stamp: float) -> None:
        """Make every later stamp larger than ``stamp`` (one read back from storage), and in a
        later millisecond: catalogs compare stamps to the millisecond (an index's precision),
        so a write after a restart with the clock behind must not tie with one before it."""
        with self._lock:
            millisecond = round(stamp * 1_000_000) // 1000  # as catalog.store.stamp_ms
            self._last = max(self._last, (millisecond + 1) / 1000 - TICK_S)


#: The process's clock (every daemon of the process shares it: it only ever moves ahead).
_CLOCK = WriteClock()


def write_time() -> float:
    """The stamp (Unix time) of a write happening now."""
    return _CLOCK.now()


def observe(stamp: float) -> None:
    """Make later stamps of this process larger than ``stamp``."""
    _CLOCK.observe(stamp)
