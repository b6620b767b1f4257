"""The record accumulator: one open batch per bucket, sealed on linger, records or bytes.

``add()`` appends a record to its bucket's open tar and returns once the record is durable
(group commit) under the configured durability. A batch owns its clock: a ``call_later``
timer seals it ``linger_ms`` after its first record; a record that would push the tar past
``max_bytes`` seals the batch first and starts the next one (records never split), and an
append that reaches ``max_records`` or ``max_bytes`` seals at once. Sealed batches go to a
sink (the uploader).

Sealing (end marker, fdatasync of the whole tar, rename, hand-over) runs outside the bucket's
lock, in a task of its own: the next record opens a new batch at once instead of waiting for
the old one's fdatasync (tens of milliseconds for a large tar: every PUT of the bucket would
stall behind it). A bucket's batches reach the sink in the order they were sealed.

A seal that fails (the spool directory briefly read-only, a full disk) leaves the batch
*stranded*: its ``.open`` file keeps what was durable, and a supervised task seals it as
start-up recovery would, again and again with a growing pause, until it succeeds; then it goes
to the sink. While a batch is stranded ``stranded`` lists it (readiness fails, and the
``s3batchd_stranded_batches`` gauge counts it).

Why one module above 400 lines: the open batches, their seal triggers, the group commit's
waiters and the inline append (``append_now``) share one per-bucket state and lock; the inline
append must see it without a layer of calls in between (it is the PutObject path).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from s3batchd.concurrency import Pool, Threads, run_sync
from s3batchd.config import BatchConfig, Durability
from s3batchd.constants import KB, TAR_END
from s3batchd.errors import (
    Draining,
    NotStored,
    S3BatchdError,
    SpoolError,
    SpoolFailedError,
    UploadRefused,
    with_disk_full,
)
from s3batchd.index import WriterId, new_batch_id
from s3batchd.records import ObjectRecord, SealedBatch, SpoolEntry
from s3batchd.s3.body import BodyBuffer
from s3batchd.spool.commit import GroupCommitter
from s3batchd.spool.disk import OpenSpool, SpoolDisk
from s3batchd.spool.files import Recovery, SpoolFile, reseal_stranded

logger = logging.getLogger(__name__)

#: Bodies up to this size held in memory are appended on the event loop (a page-cache copy
#: of a few KiB is cheaper than a thread hand-off); larger ones are appended in a thread.
INLINE_APPEND_BYTES = 256 * KB
#: Seconds before a failed seal is tried again; the pause doubles up to STRANDED_RETRY_MAX_S.
STRANDED_RETRY_FIRST_S = 0.5
STRANDED_RETRY_MAX_S = 30.0


class BatchSink(Protocol):
    """Where sealed batches go (the uploader, or a fake in tests)."""

    async def submit(self, batch: SealedBatch) -> None:
        """Take ownership of a sealed batch."""

    async def recovered(self, recovery: Recovery) -> None:
        """Take ownership of the batch recovery resealed (a stranded one), after making the
        catalog hold exactly its surviving members (it may have lost some)."""


@dataclass(eq=False)
class _OpenBatch:
    spool: SpoolDisk
    committer: GroupCommitter
    uploaded: asyncio.Future[None]
    """Resolved when the batch and its index are in the bucket (durability ``upload``)."""
    created: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True)
class Stranded:
    """A batch whose seal failed: its file stays ``.open`` until a retry seals it."""

    batch_id: str
    path: Path
    bucket: str
    size: int
    """Bytes of the file when its seal failed (part of the spool quota)."""
    error: str
    """Why the seal failed."""


@dataclass(eq=False)
class _Bucket:
    name: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    current: _OpenBatch | None = None
    sealing: asyncio.Task[None] | None = None
    """The newest seal of this bucket's batches (each one waits for the one before it)."""


class Batcher:
    """Accumulates records into per-bucket tar batches."""

    def __init__(
        self,
        *,
        spool_dir: Path,
        durability: Durability,
        config: BatchConfig,
        prefix: str,
        writer: WriterId,
        sink: BatchSink,
        threads: Threads,
        open_spool: OpenSpool = SpoolFile.create,
    ) -> None:
        """``open_spool``: how a batch's spool file is created (spool/disk.py)."""
        self._spool_dir = spool_dir
        self._open_spool = open_spool
        self._durability = durability
        self._config = config
        self._prefix = prefix
        self._writer = writer
        self._sink = sink
        self._buckets: dict[str, _Bucket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        """Linger timers' tasks and seals in progress."""
        self._seq = 0
        self._closed = False
        self._uploaded: dict[str, asyncio.Future[None]] = {}
        self._sealing_bytes = 0
        """Bytes of batches between leaving ``current`` and reaching the sink (quota)."""
        self.sealed_by_reason: dict[str, int] = {}
        self.stranded: dict[str, Stranded] = {}
        """Batches whose seal failed and is being retried, by id."""
        self._commit_threads = threads.executor(Pool.COMMIT)
        """Where the spool files' group commits run (commit.py): spool files synced at once
        (each runs its syncs on one of these threads)."""

    async def add(
        self,
        bucket: str,
        record: ObjectRecord,
        body: BodyBuffer,
        *,
        durability: Durability | None = None,
    ) -> SpoolEntry:
        """Append a record and wait until it is as durable as asked (default: the configured
        level); returns where it landed."""
        if self._closed:
            raise Draining
        level = durability or self._durability
        state = self._buckets.get(bucket)
        if state is None:  # not setdefault: a _Bucket and its lock per call showed in profiles
            state = self._buckets[bucket] = _Bucket(bucket)
        async with state.lock:
            batch = await self._batch_for(state, record)
            entry = await self._append(batch, record, body)
            reason = self._full_reason(batch)
            if reason is not None:
                self._seal(state, reason)
        if level != "none":
            try:
                await batch.committer.wait_durable(entry.end)
            except SpoolFailedError as exc:
                await self._abandon(state, batch)
                raise with_disk_full(exc)  # noqa: B904  chained by with_disk_full
        if level == "upload":
            try:
                await asyncio.shield(batch.uploaded)
            except UploadRefused as exc:  # parked: the object waits in the spool, at ``entry``
                raise UploadRefused(exc.bucket, exc.reason, entry) from None
        return entry

    def append_now(
        self, bucket: str, record: ObjectRecord, data: bytes, durability: Durability
    ) -> tuple[SpoolEntry, asyncio.Future[None] | None] | None:
        """Append a small object held in memory to its bucket's open batch at once, on the
        event loop, as Kafka producers append to a batch (aiokafka's ``MessageBatch.append``
        returns a future, or None when the batch is full). Returns where it landed and the
        group commit's future to await before acknowledging (None: durability ``none``, or
        already durable); None when it cannot be appended here: no batch is open, the
        bucket's lock is held (a batch being opened or a large append in a thread), the
        record would take the batch past ``max_bytes``, or ``durability`` is ``upload``.
        The caller then takes ``add()``. Nothing here awaits, so no other writer can touch
        the file meanwhile: no lock is taken.

        Raises:
            SpoolError: the append failed (the file was rolled back; DiskFull when the file
                system was full).
            SpoolFailedError: an earlier sync of the file failed.
        """
        state = self._buckets.get(bucket)
        if (
            state is None
            or self._closed
            or state.lock.locked()
            or durability == "upload"
            or record.size > INLINE_APPEND_BYTES
        ):
            return None
        batch = state.current
        if batch is None or batch.spool.size_with(record) > self._config.max_bytes:
            return None
        spool = batch.spool
        try:
            entry = spool.append_bytes(record, data)
        except SpoolError as exc:
            raise with_disk_full(exc)  # noqa: B904  chained by with_disk_full
        committer = batch.committer
        committer.written = spool.position
        reason = self._full_reason(batch)
        if reason is not None:
            self._seal(state, reason)
        if durability == "none":
            return entry, None
        return entry, committer.durable_future(entry.end)

    async def settle(self, entry: SpoolEntry, durable: asyncio.Future[None]) -> None:
        """Wait for ``append_now``'s group-commit future: when its sync failed, the batch
        takes nothing more (what was durable is kept) and the failure is raised, a full file
        system as DiskFull, as ``add()`` does."""
        try:
            await durable
        except SpoolFailedError as exc:
            await self.abandon(entry)
            raise with_disk_full(exc)  # noqa: B904  chained by with_disk_full

    async def abandon(self, entry: SpoolEntry) -> None:
        """A sync of the batch ``entry`` went to failed (``append_now``'s future raised
        SpoolFailedError): the file takes nothing more, what was durable is kept
        (``add()`` does this itself)."""
        state = self._buckets.get(entry.bucket)
        batch = state.current if state is not None else None
        if state is not None and batch is not None and batch.spool.batch_id == entry.batch_id:
            await self._abandon(state, batch)

    def mark_uploaded(self, batch_id: str) -> None:
        """The uploader's report that a batch and its index are in the bucket."""
        future = self._uploaded.pop(batch_id, None)
        if future is not None and not future.done():
            future.set_result(None)

    def refuse_upload_waiters(self, batch_id: str, bucket: str, reason: str) -> None:
        """The uploader parked a batch of ``bucket`` for ``reason``: writers waiting for its
        upload get UploadRefused."""
        self._fail_upload_waiters(batch_id, UploadRefused(bucket, reason))

    def fail_upload_waiters(self, exc: BaseException) -> None:
        """Shutdown: batches still waiting for upload will not be uploaded by this process."""
        for batch_id in list(self._uploaded):
            self._fail_upload_waiters(batch_id, exc)

    def _fail_upload_waiters(self, batch_id: str, exc: BaseException) -> None:
        future = self._uploaded.pop(batch_id, None)
        if future is not None and not future.done():
            future.set_exception(exc)
            future.exception()  # retrieved here: nobody may be waiting

    async def _abandon(self, state: _Bucket, batch: _OpenBatch) -> None:
        """A sync failed: the file takes nothing more. Keep what was durable before the
        failure (truncate, seal, upload) and let every unacknowledged writer fail."""
        async with state.lock:
            if state.current is not batch:
                return  # sealing or another writer of the same batch handles it
            self._retire(state, batch)
        await self._keep_durable(batch)

    async def _keep_durable(self, batch: _OpenBatch) -> None:
        spool = batch.spool
        try:
            sealed = await run_sync(spool.reseal_durable, batch.committer.durable, "failed")
        except (S3BatchdError, OSError) as exc:
            # The file stays as <id>.open, keeping what was durable: sealed by a retry (or by
            # start-up recovery, if the daemon stops first).
            # Writers waiting for its upload (durability ``upload``) keep waiting for it.
            logger.exception("cannot reseal %s; retrying", spool.path)
            await run_sync(spool.close)
            self._strand(spool, exc)
            return
        if sealed is None:
            self._fail_upload_waiters(spool.batch_id, NotStored("The batch was not stored."))
            return
        logger.error("spool %s failed; kept its %d durable records", spool.path, sealed.records)
        await self._sink.submit(sealed)

    def _strand(self, spool: SpoolDisk, exc: BaseException) -> None:
        stranded = Stranded(spool.batch_id, spool.path, spool.bucket, spool.position, str(exc))
        self.stranded[spool.batch_id] = stranded
        self._spawn(self._retry_seal(stranded))

    async def _retry_seal(self, stranded: Stranded) -> None:
        """Seal a stranded batch, trying until it works (cancelled at shutdown: start-up
        recovery seals it then), and hand it to the sink."""
        pause = STRANDED_RETRY_FIRST_S
        while True:
            await asyncio.sleep(pause)
            try:
                recovery = await run_sync(
                    reseal_stranded,
                    stranded.path,
                    bucket=stranded.bucket,
                    spool_dir=self._spool_dir,
                    prefix=self._prefix,
                )
                break
            except Exception as exc:  # noqa: BLE001  any failure: try again, never drop the batch
                logger.warning("batch %s still stranded: %s", stranded.batch_id, exc)
                self.stranded[stranded.batch_id] = replace(stranded, error=str(exc))
                pause = min(pause * 2, STRANDED_RETRY_MAX_S)
        sealed = recovery.batches[0] if recovery.batches else None
        try:
            if sealed is None:
                self._fail_upload_waiters(stranded.batch_id, NotStored("Nothing was stored."))
            else:
                logger.info("sealed stranded batch %s: %d records", sealed.batch_id, sealed.records)
                self.sealed_by_reason["stranded"] = self.sealed_by_reason.get("stranded", 0) + 1
            await self._sink.recovered(recovery)
        finally:
            del self.stranded[stranded.batch_id]

    @property
    def buckets(self) -> list[str]:
        """Buckets that received records."""
        return list(self._buckets)

    @property
    def open_batch_ids(self) -> list[str]:
        """Ids of the batches accepting records."""
        return [s.current.spool.batch_id for s in self._buckets.values() if s.current]

    @property
    def open_bytes(self) -> int:
        """Bytes in the open batches."""
        current = sum(s.current.spool.position for s in self._buckets.values() if s.current)
        stranded = sum(s.size for s in self.stranded.values())
        return current + self._sealing_bytes + stranded

    async def _batch_for(self, state: _Bucket, record: ObjectRecord) -> _OpenBatch:
        batch = state.current
        if batch is not None and batch.spool.size_with(record) > self._config.max_bytes:
            self._seal(state, "bytes")  # the record starts the next batch, never splits
            batch = None
        if batch is None:
            batch = await self._open(state)
        return batch

    async def _open(self, state: _Bucket) -> _OpenBatch:
        self._seq += 1
        batch_id = new_batch_id(self._writer, self._seq)
        spool = await run_sync(
            self._open_spool,
            self._spool_dir / state.name,
            bucket=state.name,
            batch_id=batch_id,
            prefix=self._prefix,
        )
        batch = _OpenBatch(
            spool=spool,
            committer=GroupCommitter(spool.sync, self._commit_threads),
            uploaded=asyncio.get_running_loop().create_future(),
        )
        self._uploaded[batch_id] = batch.uploaded
        loop = asyncio.get_running_loop()
        batch.timer = loop.call_later(self._config.linger_ms / 1000, self._linger, state, batch)
        state.current = batch
        return batch

    async def _append(
        self, batch: _OpenBatch, record: ObjectRecord, body: BodyBuffer
    ) -> SpoolEntry:
        try:
            if body.in_memory and record.size <= INLINE_APPEND_BYTES:
                entry = batch.spool.append_bytes(record, body.getvalue())
            else:
                entry = await run_sync(batch.spool.append, record, body)
        except SpoolError as exc:
            raise with_disk_full(exc)  # noqa: B904  chained by with_disk_full
        batch.committer.written = batch.spool.position
        return entry

    def _full_reason(self, batch: _OpenBatch) -> str | None:
        if batch.spool.records >= self._config.max_records:
            return "records"
        if batch.spool.position + len(TAR_END) >= self._config.max_bytes:
            return "bytes"
        return None

    def _linger(self, state: _Bucket, batch: _OpenBatch) -> None:
        batch.timer = None
        self._spawn(self._seal_if_current(state, batch, "linger"))

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("sealing a batch failed", exc_info=task.exception())

    async def _seal_if_current(self, state: _Bucket, batch: _OpenBatch, reason: str) -> None:
        async with state.lock:
            if state.current is batch:
                self._seal(state, reason)

    def _retire(self, state: _Bucket, batch: _OpenBatch) -> None:
        """The bucket's open batch takes no more records (the caller holds ``state.lock``)."""
        state.current = None
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None

    def _seal(self, state: _Bucket, reason: str) -> asyncio.Task[None] | None:
        """Retire the bucket's open batch and seal it in a task of its own, after the
        bucket's previous seal (the caller holds ``state.lock``; the next record opens a new
        batch without waiting). The task, or None when no batch was open."""
        batch = state.current
        if batch is None:
            return None
        self._retire(state, batch)
        counted = batch.spool.position
        self._sealing_bytes += counted
        task = self._spawn(self._seal_after(state.sealing, batch, reason, counted))
        state.sealing = task
        return task

    async def _seal_after(
        self,
        previous: asyncio.Task[None] | None,
        batch: _OpenBatch,
        reason: str,
        counted: int,
    ) -> None:
        try:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)  # its errors are logged
            spool = batch.spool
            if spool.records == 0:  # every append failed and was rolled back: nothing to upload
                self._uploaded.pop(spool.batch_id, None)
                await run_sync(spool.discard)
                return
            await self._seal_and_submit(batch, reason)
        finally:
            self._sealing_bytes -= counted

    async def _seal_and_submit(self, batch: _OpenBatch, reason: str) -> None:
        spool = batch.spool
        try:
            spool.write_end()
            batch.committer.written = spool.position
            await batch.committer.wait_durable(spool.position)
            sealed = await run_sync(spool.finish, reason)
        except (S3BatchdError, OSError):
            logger.exception("cannot seal %s", spool.path)
            await self._keep_durable(batch)
            raise
        self.sealed_by_reason[reason] = self.sealed_by_reason.get(reason, 0) + 1
        age_ms = (time.monotonic() - batch.created) * 1000
        logger.info(
            "sealed batch %s (%s): %d records, %d bytes, %.0f ms old",
            sealed.batch_id,
            reason,
            sealed.records,
            sealed.size,
            age_ms,
        )
        await self._sink.submit(sealed)

    async def flush(self, reason: str = "flush") -> None:
        """Seal every open batch now; return once every seal begun so far has ended (a
        failed one is logged; the other buckets still get sealed)."""
        for state in list(self._buckets.values()):
            async with state.lock:
                self._seal(state, reason)
        sealing = [state.sealing for state in self._buckets.values() if state.sealing]
        await asyncio.gather(*sealing, return_exceptions=True)

    async def close(self) -> None:
        """Refuse new records, seal what is open (reason ``shutdown``), wait for every seal.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.flush("shutdown")
        for task in list(self._tasks):
            task.cancel()  # linger timers' tasks (the seals have ended)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def open_batches(self) -> int:
        """Batches currently accepting records. Read from the upload threads too: the copy of
        the buckets is taken in one step, so a bucket added meanwhile cannot break the count."""
        return sum(1 for state in list(self._buckets.values()) if state.current is not None)
