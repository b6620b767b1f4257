"""The daemon's side of the shared catalog (``catalog.backend = "postgres"``): the background
task that writes each uploaded batch's rows into it, and the rule that merges its answers with
the daemon's own SQLite catalog.

The writer is supervised: one task, a FIFO of uploaded batches, each written in one statement
once its index is in the bucket. While PostgreSQL fails the batches wait in memory (at most
``MAX_PENDING_BATCHES``, the oldest dropped beyond with an error: their indexes are in the
bucket and ``s3batchd reindex`` writes them) and the writer retries with a capped backoff. The
same task deletes expired rows in bounded rounds and counts the rows for the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from s3batchd.catalog.postgres import PostgresCatalog, SharedAnswer
from s3batchd.catalog.store import CatalogEntry
from s3batchd.concurrency import run_sync
from s3batchd.errors import CatalogUnavailable
from s3batchd.index import IndexEntry

logger = logging.getLogger(__name__)

#: Uploaded batches kept for the shared catalog while it fails.
MAX_PENDING_BATCHES = 10_000
#: Seconds between two expiry and counting rounds.
MAINTENANCE_INTERVAL_S = 60.0
#: Objects deleted per expiry statement (a round repeats it up to ``_EXPIRY_STATEMENTS``).
EXPIRY_LIMIT = 2000
_EXPIRY_STATEMENTS = 10
_RETRY_FIRST_S = 0.25
_RETRY_MAX_S = 5.0


def newest(
    local: CatalogEntry | None, local_tombstone: float | None, shared: SharedAnswer
) -> CatalogEntry | None:
    """The object a read serves: the later of the daemon's own and the shared catalog's (by
    write stamp, then batch id; the own one when both are the same write), unless a delete
    at or after it, known to either, hides it."""
    candidates = [entry for entry in (local, shared.visible()) if entry is not None]
    if not candidates:
        return None
    best = max(candidates, key=lambda entry: (entry.record.mtime, entry.batch_id))
    deletes = [stamp for stamp in (local_tombstone, shared.tombstone) if stamp is not None]
    if deletes and max(deletes) >= best.record.mtime:
        return None
    return best


@dataclass
class _Pending:
    bucket: str
    batch_id: str
    tar_key: str
    load: Callable[[], list[IndexEntry]]
    """Reads the batch's index entries (blocking: run on a thread)."""
    entries: list[IndexEntry] | None = None


class SharedWriter:
    """Writes uploaded batches into the shared catalog, in upload order, retrying while it
    fails; expires old rows and counts rows every ``MAINTENANCE_INTERVAL_S``."""

    def __init__(self, catalog: PostgresCatalog, *, retention_s: float) -> None:
        self.catalog = catalog
        self._retention_s = retention_s
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._maintained_at = 0.0
        self.failing = False
        """Whether the last write or maintenance round failed (logged once per outage)."""
        self.written_batches = 0
        self.dropped_batches = 0

    @property
    def pending(self) -> int:
        """Uploaded batches not in the shared catalog yet."""
        return len(self._queue)

    async def start(self) -> None:
        """Make the schema current (a failure is logged: the writer retries) and start."""
        try:
            await self.catalog.migrate()
        except CatalogUnavailable as exc:
            self._note_failure(exc)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="s3batchd-shared-catalog")
            self._task.add_done_callback(self._died)

    def submit(
        self, bucket: str, batch_id: str, tar_key: str, load: Callable[[], list[IndexEntry]]
    ) -> None:
        """Queue an uploaded batch; ``load`` gives its index entries."""
        self._queue.append(_Pending(bucket, batch_id, tar_key, load))
        self._idle.clear()
        while len(self._queue) > MAX_PENDING_BATCHES:
            dropped = self._queue.popleft()  # the queue stays non-empty: not idle
            self.dropped_batches += 1
            logger.error(
                "catalog: batch %s of s3://%s not written to PostgreSQL (%d batches waiting); "
                "its index is in the bucket: s3batchd reindex writes it",
                dropped.batch_id,
                dropped.bucket,
                len(self._queue),
            )
        self._wake.set()

    async def close(self, timeout: float = 0) -> bool:  # noqa: ASYNC109  a deadline is the API
        """Write what is queued within ``timeout`` seconds, then stop and close the pool;
        True when nothing was left."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        left = len(self._queue)
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.catalog.close()
        if left:
            logger.error(
                "catalog: %d uploaded batches not written to PostgreSQL at shutdown "
                "(their indexes are in the bucket: s3batchd reindex writes them)",
                left,
            )
        return left == 0

    async def _run(self) -> None:
        delay = _RETRY_FIRST_S
        while not self._closing:
            await self._maintain()
            if not self._queue:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), MAINTENANCE_INTERVAL_S)
                continue
            try:
                await self._write(self._queue[0])
            except CatalogUnavailable as exc:
                self._note_failure(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            self._queue.popleft()
            if not self._queue:
                self._idle.set()
            self.written_batches += 1
            delay = _RETRY_FIRST_S
            self._note_success()

    async def _write(self, pending: _Pending) -> None:
        if pending.entries is None:
            try:
                pending.entries = await run_sync(pending.load)
            except Exception as exc:  # reading the index again is retried, whatever failed
                raise CatalogUnavailable(f"index of {pending.batch_id}: {exc}") from exc
        await self.catalog.put_batch(
            pending.bucket, pending.batch_id, pending.tar_key, pending.entries
        )

    async def _maintain(self) -> None:
        now = time.time()
        if now - self._maintained_at < MAINTENANCE_INTERVAL_S:
            return
        self._maintained_at = now
        try:
            for _ in range(_EXPIRY_STATEMENTS):
                if await self.catalog.expire(now - self._retention_s, EXPIRY_LIMIT) < EXPIRY_LIMIT:
                    break
            await self.catalog.count()
        except CatalogUnavailable as exc:
            self._note_failure(exc)

    def _note_failure(self, exc: CatalogUnavailable) -> None:
        if not self.failing:
            logger.error("catalog: %s (retrying; PUTs are still taken)", exc)
        self.failing = True

    def _note_success(self) -> None:
        if self.failing:
            logger.info("catalog: PostgreSQL writes resumed (%d batches waiting)", len(self._queue))
        self.failing = False

    def _died(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        logger.error("catalog: the PostgreSQL writer stopped", exc_info=task.exception())
