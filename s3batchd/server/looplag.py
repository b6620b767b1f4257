"""Event-loop lag: how late the loop runs a callback it was asked to run on time.

Every request of a process goes through one event loop, so anything that holds the loop (a
long callback, the GIL held by another thread, the process waiting for a CPU) delays every
request in flight by as long. The monitor asks to be woken every
``metrics.loop_lag_interval_s`` and records by how much each wake-up was late in
``s3batchd_event_loop_lag_seconds``: the wake-ups sample how long a request arriving at that
moment would wait for the loop, so the histogram's tail is the floor under the PUT latency tail
(bench/README.md, "Where the p99 at half load comes from").
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Histogram

from s3batchd.tasks import log_death

logger = logging.getLogger(__name__)


class LoopLagMonitor:
    """A background task recording the loop's lateness into a histogram."""

    def __init__(self, histogram: Histogram, *, interval_s: float) -> None:
        self._histogram = histogram
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())
            self._task.add_done_callback(log_death(logger, "event-loop lag monitor stopped"))

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self._interval_s
            await asyncio.sleep(self._interval_s)
            self._histogram.observe(max(0.0, loop.time() - due))

    async def stop(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
