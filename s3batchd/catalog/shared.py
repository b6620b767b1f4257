"""The daemon's side of the shared catalog (``catalog.backend = "postgres"``): the background
task that writes each uploaded batch's rows into it, and the rule that merges its answers with
the daemon's own SQLite catalog.

The writer is supervised: one task, a FIFO of uploaded batches, each written in one statement
once its index is in the bucket. A batch's entries come from the members the batcher keeps in
memory while its write succeeds at once; once a write fails, the batches waiting (and those
queued while it fails) hold only their names, and their entries are read back from their
index objects when their turn comes: a queue of an hour's batches at 1,000 PUT/s held about
1 GB of index fragments. While PostgreSQL fails the batches wait (at most
``MAX_PENDING_BATCHES``, the oldest dropped beyond with an error: their indexes are in the
bucket and ``s3batchd reindex`` writes them) and the writer retries with a capped backoff. The
same task deletes expired rows in bounded rounds and counts the rows for the metrics. Batches
still waiting at shutdown are named in a file of the spool (``save_pending``) and written after
the next start, from their index objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from s3batchd.catalog.postgres import PostgresCatalog, SharedAnswer
from s3batchd.catalog.store import CatalogEntry
from s3batchd.clock import stamp_ms
from s3batchd.concurrency import run_sync
from s3batchd.errors import CatalogRejected, CatalogUnavailable, IndexFormatError
from s3batchd.index import IndexEntry
from s3batchd.tasks import log_death

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
    write stamp to the millisecond, then batch id; the own one when both are the same write),
    unless a delete at or after it (to the millisecond), known to either, hides it. The own
    stamps are exact, the shared ones are the index's milliseconds: compared exactly, two
    writes in one millisecond through two daemons would resolve differently on each."""
    candidates = [entry for entry in (local, shared.visible()) if entry is not None]
    if not candidates:
        return None
    best = max(candidates, key=lambda entry: (stamp_ms(entry.record.mtime), entry.batch_id))
    other = shared.visible()
    if local is not None and other is not None and moved(local, other):
        best = other  # compacted: the own row still names the replaced batch
    deletes = [stamp_ms(s) for s in (local_tombstone, shared.tombstone) if s is not None]
    if deletes and max(deletes) >= stamp_ms(best.record.mtime):
        return None
    return best


def moved(own: CatalogEntry, shared: CatalogEntry) -> bool:
    """Whether ``shared`` is the same write as ``own`` rewritten by compaction into a later
    batch (docs/compaction.md): same key and ETag, stamps equal to the millisecond (an index
    gives them so, the spool exactly), a larger batch id."""
    return (
        shared.batch_id > own.batch_id
        and shared.record.key == own.record.key
        and shared.record.etag == own.record.etag
        and stamp_ms(shared.record.mtime) == stamp_ms(own.record.mtime)
    )


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """An uploaded batch whose rows are not in the shared catalog yet."""

    bucket: str
    batch_id: str
    tar_key: str
    index_key: str


def save_pending(path: Path, batches: list[PendingBatch]) -> None:
    """Name ``batches`` in ``path`` (replaced atomically; removed when there are none)."""
    if not batches:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    document = [
        {"bucket": b.bucket, "batch_id": b.batch_id, "tar_key": b.tar_key, "index_key": b.index_key}
        for b in batches
    ]
    partial.write_text(json.dumps(document))
    partial.replace(path)


def load_pending(path: Path) -> list[PendingBatch]:
    """The batches ``save_pending`` named in ``path`` (none when there is no file). A file
    that does not name batches (a torn disk, a hand edit) is moved aside to ``path.corrupt``
    with an error: the daemon starts, and ``s3batchd reindex`` writes what it named."""
    try:
        document = json.loads(path.read_text())
        return [PendingBatch(**item) for item in document]
    except FileNotFoundError:
        return []
    except (ValueError, TypeError) as exc:  # not JSON, or not a list of batches
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)
        logger.error(  # noqa: TRY400  the message says it all: no traceback
            "catalog: %s names no batches (%s): moved to %s; s3batchd reindex writes the "
            "batches it named",
            path,
            exc,
            aside,
        )
        return []


@dataclass
class _Pending:
    batch: PendingBatch
    load: Callable[[], list[IndexEntry]]
    """Reads the batch's index entries (blocking: run on a thread)."""
    entries: list[IndexEntry] | None = None


class SharedWriter:
    """Writes uploaded batches into the shared catalog, in upload order, retrying while it
    fails; expires old rows and counts rows every ``MAINTENANCE_INTERVAL_S``."""

    def __init__(self, catalog: PostgresCatalog, *, retention_s: float, pending_path: Path) -> None:
        self.catalog = catalog
        self._pending_path = pending_path
        """Names the batches left at shutdown (``save_pending``), until they are written."""
        self._pending_saved = False
        self._retention_s = retention_s
        self._queue: deque[_Pending] = deque()
        self._load_index: Callable[[str, str], list[IndexEntry]] | None = None
        """Reads an index object's entries from the bucket (``start``)."""
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

    async def start(self, load_index: Callable[[str, str], list[IndexEntry]]) -> None:
        """Make the schema current (a failure is logged: the writer retries), queue the
        batches the last run left (``load_index(bucket, index key)`` reads their entries from
        the bucket) and start."""
        self._load_index = load_index
        try:
            await self.catalog.migrate()
        except CatalogUnavailable as exc:
            self._note_failure(exc)
        left = await run_sync(load_pending, self._pending_path)
        for batch in left:
            self.submit(batch, partial(load_index, batch.bucket, batch.index_key))
        self._pending_saved = bool(left)
        if left:
            logger.info("catalog: %d batches left by the last run queued for PostgreSQL", len(left))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="s3batchd-shared-catalog")
            self._task.add_done_callback(
                log_death(logger, "catalog: the PostgreSQL writer stopped")
            )

    def submit(self, batch: PendingBatch, load: Callable[[], list[IndexEntry]]) -> None:
        """Queue an uploaded batch; ``load`` gives its index entries (kept while writes
        succeed: while they fail, the entries are read from the bucket in their turn)."""
        item = _Pending(batch, load)
        if self.failing:
            self._from_bucket(item)
        self._queue.append(item)
        self._idle.clear()
        while len(self._queue) > MAX_PENDING_BATCHES:
            dropped = self._queue.popleft()  # the queue stays non-empty: not idle
            self.dropped_batches += 1
            logger.error(
                "catalog: batch %s of s3://%s not written to PostgreSQL (%d batches waiting); "
                "its index is in the bucket: s3batchd reindex writes it",
                dropped.batch.batch_id,
                dropped.batch.bucket,
                len(self._queue),
            )
        self._wake.set()

    async def close(self, timeout: float = 0) -> list[PendingBatch]:  # noqa: ASYNC109  a deadline is the API
        """Write what is queued within ``timeout`` seconds, then stop and close the pool;
        the batches left."""
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
                "catalog: %d uploaded batches not written to PostgreSQL at shutdown (written "
                "after the next start on this spool; s3batchd reindex writes them too)",
                left,
            )
        pending = [item.batch for item in self._queue]
        if pending or self._pending_saved:
            try:
                await run_sync(save_pending, self._pending_path, pending)
            except OSError:
                logger.exception("catalog: cannot name the batches left for PostgreSQL")
        return pending

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
            except CatalogRejected as exc:
                self._drop(self._queue.popleft(), exc)
                if not self._queue:
                    await self._forget_saved()
                    self._idle.set()
                continue
            except CatalogUnavailable as exc:
                if not self.failing:  # later ones are queued from the bucket already
                    for item in self._queue:
                        self._from_bucket(item)
                self._note_failure(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            self._queue.popleft()
            if not self._queue:
                await self._forget_saved()
                self._idle.set()
            self.written_batches += 1
            delay = _RETRY_FIRST_S
            self._note_success()

    async def _write(self, pending: _Pending) -> None:
        batch = pending.batch
        if pending.entries is None:
            try:
                pending.entries = await run_sync(pending.load)
            except CatalogRejected:
                raise
            except IndexFormatError as exc:
                raise CatalogRejected(f"index of {batch.batch_id}: {exc}") from exc
            except Exception as exc:  # reading the index again is retried, whatever else failed
                raise CatalogUnavailable(f"index of {batch.batch_id}: {exc}") from exc
        await self.catalog.put_batch(batch.bucket, batch.batch_id, batch.tar_key, pending.entries)

    def _drop(self, item: _Pending, exc: CatalogRejected) -> None:
        """Give up ``item``: a retry would fail the same way, and would hold up every batch
        behind it."""
        self.dropped_batches += 1
        logger.error(
            "catalog: batch %s of s3://%s dropped, not written to PostgreSQL: %s (once fixed, "
            "s3batchd reindex writes it)",
            item.batch.batch_id,
            item.batch.bucket,
            exc,
        )

    def _from_bucket(self, item: _Pending) -> None:
        """Let ``item`` hold its batch's name only: its entries are read from its index
        object when written (the head's entries, once read, are kept for its retries)."""
        if self._load_index is not None:
            item.load = partial(self._load_index, item.batch.bucket, item.batch.index_key)

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

    async def _forget_saved(self) -> None:
        """Every batch the last run left is written: its list goes."""
        if self._pending_saved:
            self._pending_saved = False
            try:
                await run_sync(save_pending, self._pending_path, [])
            except OSError:
                logger.exception("catalog: cannot remove %s", self._pending_path)

    def _note_failure(self, exc: CatalogUnavailable) -> None:
        if not self.failing:
            logger.error("catalog: %s (retrying; PUTs are still taken)", exc)
        self.failing = True

    def _note_success(self) -> None:
        if self.failing:
            logger.info("catalog: PostgreSQL writes resumed (%d batches waiting)", len(self._queue))
        self.failing = False
