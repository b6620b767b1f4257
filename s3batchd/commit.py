"""Group commit: many waiting requests share one fdatasync.

A request that appended up to position ``p`` waits until a sync that started after its write
has finished. While one fdatasync runs, new writers queue up; the next fdatasync covers them
all. Acknowledging on a timer would not be durable (Vector's 500 ms window is the warning).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from s3batchd.concurrency import run_sync


class GroupCommitter:
    """Tracks the written and durable positions of one file."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self.written = 0
        """Highest position written so far (set by the writer after each append)."""
        self.durable = 0
        """Highest position known to be on stable storage."""
        self._inflight: asyncio.Task[None] | None = None
        self.syncs = 0

    async def wait_durable(self, position: int) -> None:
        """Return once everything up to ``position`` is durable; raise if the sync failed."""
        while self.durable < position:
            if self._inflight is None:
                self._inflight = asyncio.get_running_loop().create_task(self._run(self.written))
            # shield: one waiter's cancellation (client gone) must not cancel the shared sync.
            await asyncio.shield(self._inflight)

    async def _run(self, target: int) -> None:
        try:
            await run_sync(self._sync)
            self.syncs += 1
            self.durable = max(self.durable, target)
        finally:
            self._inflight = None
