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

import math
import threading
import time

#: The smallest step between two stamps: a Unix time near 2^31 still has 0.24 us resolution
#: as a float, so the next stamp is always a different, larger number.
TICK_S = 1e-6
_US = 1_000_000


def stamp_ms(stamp: float) -> int:
    """A write stamp (Unix seconds) to the millisecond, as an index gives it
    (``index.iso_time``, which is this): the fraction of the second to whole microseconds
    (half to even, as ``datetime`` rounds), then cut. The latest write of a key is the largest
    (``stamp_ms``, batch id), and a delete hides what is not stamped after it, in every catalog
    and on every daemon: a daemon's own exact stamps are compared at the precision of the
    stamps it learns from others. Computed from the fraction (``math.modf``, exact), never
    from ``stamp * 1e6``: that product is rounded to 0.25 us near 2^31 s, and put 13 stamps in
    100,000 in the next millisecond from the one their index gave (a moved key's row then
    stayed at its deleted tar). The catalogs' SQL computes it the same way
    (``catalog.store.MS_SQL``, ``catalog.postgres``)."""
    fraction, whole = math.modf(stamp)
    return (int(whole) * _US + round(fraction * _US)) // 1000


def wall() -> float:
    """The system clock (``time.time`` looked up at each call, so a test can step it)."""
    return time.time()


class WriteClock:
    """Stamps that never go backwards (thread-safe), each a whole number of microseconds (as
    near as a float holds it: within 0.12 us), so that no stamp sits on a half microsecond
    where two ways of rounding it could disagree."""

    def __init__(self) -> None:
        self._last_us = 0
        self._lock = threading.Lock()

    def now(self) -> float:
        """The stamp of a write happening now."""
        current = round(wall() * _US)
        with self._lock:
            stamp = max(current, self._last_us + 1)
            self._last_us = stamp
        return stamp / _US

    def observe(self, stamp: float) -> None:
        """Make every later stamp larger than ``stamp`` (one read back from storage), and in a
        later millisecond: catalogs compare stamps to the millisecond (an index's precision),
        so a write after a restart with the clock behind must not tie with one before it."""
        with self._lock:
            self._last_us = max(self._last_us, (stamp_ms(stamp) + 1) * 1000 - 1)


#: The process's clock (every daemon of the process shares it: it only ever moves ahead).
_CLOCK = WriteClock()


def write_time() -> float:
    """The stamp (Unix time) of a write happening now."""
    return _CLOCK.now()


def observe(stamp: float) -> None:
    """Make later stamps of this process larger than ``stamp``."""
    _CLOCK.observe(stamp)
