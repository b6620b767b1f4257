"""Group commit for the catalog shared by several workers (``server.workers`` > 1).

A GET on any worker must find an object as soon as another worker acknowledged it, so a PUT is
answered only after its catalog row is committed. Committing one transaction per PUT on the
event loop made the workers take turns: each waited, with the loop blocked, for the SQLite
write lock the other held. Here every write queued while one transaction runs goes into the
next, and transactions run on one thread of their own (SQLite waits for the lock there, never
on the loop). A failed transaction (another process held the lock longer than the busy timeout,
the disk is full) is logged and its writes are retried with the next one: the PUT is answered
anyway, as the object is stored and the catalog is only a cache of the spool and the indexes.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor

from s3batchd.catalog.store import FLUSH_DELAY_S, Catalog, CatalogWrite, retained
from s3batchd.concurrency import run_in

logger = logging.getLogger(__name__)

#: How long a transaction waits for another process's write lock (off the event loop).
BUSY_TIMEOUT_S = 2.0


class CatalogWriter:
    """Commits one worker's catalog writes in groups, through a connection of its own."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._executor = ThreadPoolExecutor(1, "s3batchd-catalog")
        self._queued: list[CatalogWrite] = []
        self._failed: list[CatalogWrite] = []
        self._sequence = 0
        """Writes queued so far."""
        self._attempted = 0
        """Writes whose transaction has finished (committed, or failed and kept for retry)."""
        self._inflight: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        self.transactions = 0

    @property
    def failed(self) -> int:
        """Writes waiting to be retried after a failed transaction."""
        return len(self._failed)

    async def put(self, write: CatalogWrite) -> None:
        """Record ``write``; return once a transaction holding it has finished."""
        self._queued.append(write)
        self._sequence += 1
        await self._wait(self._sequence)

    async def sync(self) -> None:
        """Return once every write queued so far has been attempted."""
        await self._wait(self._sequence)

    async def close(self) -> None:
        """Attempt what is queued or failed once more, then stop."""
        await self.sync()
        if self._failed:
            await self._start()
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        self._executor.shutdown(wait=True)
        self._catalog.close()

    async def _wait(self, sequence: int) -> None:
        while self._attempted < sequence:
            # shield: one waiter's cancellation (client gone) must not cancel the transaction.
            await asyncio.shield(self._start())

    def _start(self) -> asyncio.Task[None]:
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().create_task(self._commit())
            self._inflight.add_done_callback(_log_failure)
        return self._inflight

    async def _commit(self) -> None:
        writes = self._failed + self._queued
        target = self._sequence
        self._failed, self._queued = [], []
        try:
            await run_in(self._executor, lambda: self._catalog.put_all(writes))
            self.transactions += 1
        except (sqlite3.Error, OSError, RuntimeError):
            logger.exception("catalog write failed (%d objects, retried)", len(writes))
            self._failed = retained(writes)
            if self._retry is not None:
                self._retry.cancel()
            self._retry = asyncio.get_running_loop().call_later(FLUSH_DELAY_S, self._retry_now)
        finally:
            self._attempted = max(self._attempted, target)
            self._inflight = None

    def _retry_now(self) -> None:
        self._retry = None
        if self._failed and not self._closed:
            self._start()


def _log_failure(task: asyncio.Task[None]) -> None:
    """A transaction started by a retry has no waiter: its unexpected failure is logged here."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("catalog writer failed", exc_info=task.exception())
