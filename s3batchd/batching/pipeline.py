"""The write pipeline behind the HTTP front: recovery, batcher and uploader, started and
closed together (the app's lifespan owns one).

Why one module above 400 lines: it is the composition root of the write side (recovery,
batcher, uploader, both catalogs, parking, readiness checks); its methods are short delegations
between those parts, which split modules would have to pass around.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from botocore.exceptions import ClientError

from s3batchd.batching.batcher import Batcher
from s3batchd.batching.source import ObjectSource
from s3batchd.catalog.postgres import PostgresCatalog
from s3batchd.catalog.shared import PendingBatch, SharedWriter, newest
from s3batchd.catalog.store import (
    CATALOG_DIR,
    FLUSH_DELAY_S,
    Catalog,
    CatalogEntry,
    CatalogWrite,
    catalog_path,
    count_rows,
)
from s3batchd.catalog.writer import BUSY_TIMEOUT_S, CatalogWriter
from s3batchd.clock import observe, write_time
from s3batchd.concurrency import Pool, Threads, run_sync
from s3batchd.config import Settings
from s3batchd.errors import (
    CatalogRejected,
    CatalogUnavailable,
    DiskFull,
    NotStored,
    S3BatchdError,
    SpoolError,
    StartupError,
    UploadError,
    refusal_name,
)
from s3batchd.index import IndexEntry, WriterId, entries_from_index, parse_index, render_index
from s3batchd.records import EMPTY_MD5, UPDATED_HEADERS, ObjectRecord, SealedBatch, SpoolEntry
from s3batchd.s3.body import BodyBuffer
from s3batchd.spool.files import (
    TMP_DIR,
    Recovery,
    batches_on_disk,
    check_writable,
    lock_spool,
    recover_all,
)
from s3batchd.upload.attempt import ThreadSteps, UploadSteps
from s3batchd.upload.follow import Follower
from s3batchd.upload.prober import Prober
from s3batchd.upload.proc import ChildSteps
from s3batchd.upload.relocate import Relocator
from s3batchd.upload.uploader import Uploader
from s3batchd.upload.upstream import make_client

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from botocore.credentials import Credentials
    from mypy_boto3_s3 import S3Client


logger = logging.getLogger(__name__)

#: Readiness fails once the spool holds this share of ``spool.max_bytes``, before PUTs are
#: refused, so an orchestrator can steer traffic away first.
QUOTA_HIGH_WATER = 0.9
#: Seconds a readiness check waits for the spool's write test: a file system that hangs makes
#: /readyz and /metrics answer "not ready" instead of hanging with it.
SPOOL_CHECK_TIMEOUT_S = 5.0
#: Sealed batches waiting for upload whose members are kept in memory for their index.
KEEP_ENTRIES_BATCHES = 4
#: Keys of objects lost in one recovered batch that are logged one by one.
LOST_KEYS_LOGGED = 100
#: How often (at most) expired catalog rows are deleted.
CATALOG_EXPIRY_INTERVAL_S = 60.0


class Pipeline:
    """Batcher + uploader for one daemon process."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: S3Client | None = None,
        writer: WriterId | None = None,
        credentials: Credentials | None = None,
        threads: Threads,
    ) -> None:
        """``client``: uploads on threads with it (tests); else a client of ``credentials``
        (default: ``upstream_credentials()``), in threads or child processes as configured.
        ``threads``: the process's thread pools (concurrency.py), closed by its owner."""
        self.settings = settings
        self.threads = threads
        self.writer = writer or WriterId.generate()
        self.client = client or make_client(settings.upstream, settings.upload, credentials)
        steps: UploadSteps = (
            ChildSteps(settings.upstream, settings.upload, settings.log)
            if settings.upload.child_processes and client is None
            else ThreadSteps(self.client, settings.upload, self.parts_at_once)
        )
        self.uploader = Uploader(steps, config=settings.upload, threads=threads)
        self.batcher = Batcher(
            spool_dir=settings.spool.dir,
            durability=settings.spool.durability,
            config=settings.batch,
            prefix=settings.upstream.prefix,
            writer=self.writer,
            sink=self,
            threads=threads,
        )
        self.uploader.on_uploaded = self._uploaded
        self.uploader.note_upstream = self.note_upstream
        self.uploader.on_parked = self._parked
        self.bucket_missing: Callable[[str], None] = lambda bucket: None
        """Told of each bucket an upload found missing (the bucket check, ``buckets.py``)."""
        self._parked_cap = int(
            settings.spool.max_bytes * settings.upload.parked_max_bucket_fraction
        )
        path = catalog_path(settings.spool.dir, settings.catalog.path)
        # Its WAL checkpoints (an fsync each) run on the catalog's thread, not on the loop.
        try:
            self.catalog = Catalog(path, auto_checkpoint=False)
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"{self._catalog_setting}: cannot open the catalog: {exc}") from exc
        # Several workers: a read on any of them must see every acknowledged write, so PUTs
        # wait for their rows' group commit (single process: rows are queued, and every read
        # flushes the queue first).
        self.catalog_writer = (
            CatalogWriter(Catalog(path, busy_timeout_s=BUSY_TIMEOUT_S), threads=threads)
            if settings.server.workers > 1
            else None
        )
        self.catalog_rows: int | None = None
        """Objects in the SQLite catalog at the last expiry round (the metrics)."""
        self.shared: SharedWriter | None = None
        """The fleet's catalog in PostgreSQL (``catalog.backend = "postgres"``), else None."""
        if settings.catalog.backend == "postgres":
            shared = PostgresCatalog(
                settings.catalog.dsn.get_secret_value(),
                timeout_s=settings.catalog.postgres_timeout_s,
            )
            self.shared = SharedWriter(
                shared,
                retention_s=settings.catalog.retention_s,
                # This worker's spool: a batch is uploaded by the process that spooled it.
                pending_path=settings.spool.dir / CATALOG_DIR / "postgres-pending.json",
            )
        self.follower: Follower | None = None
        """Learns other daemons' batches from the bucket (``catalog.follow``), through a
        connection of its own (its transactions never hold the event loop's)."""
        self._follow_catalog: Catalog | None = None
        # With the PostgreSQL catalog the fleet's batches are in it: nothing to follow.
        if settings.catalog.follow and self.shared is None:
            self._follow_catalog = Catalog(path, busy_timeout_s=BUSY_TIMEOUT_S)
            self.follower = Follower(
                self._follow_catalog,
                self.client,
                prefix=settings.upstream.prefix,
                config=settings.catalog,
                threads=threads,
                own_writer=str(self.writer),
            )
        self.relocator = Relocator(
            lambda: Catalog(path, busy_timeout_s=BUSY_TIMEOUT_S),
            self.client,
            prefix=settings.upstream.prefix,
            lookback_s=settings.catalog.follow_lookback_s,
            threads=threads,
        )
        """Finds where compaction moved the keys of a batch a read found gone (with or
        without ``catalog.follow``), through a connection of its own."""
        self.spill_dir = settings.spool.dir / TMP_DIR
        """Where received bodies larger than ``limits.memory_buffer_bytes`` wait."""
        self.spools: tuple[Path, ...] = (settings.spool.dir,)
        """Every worker's spool, this process's first (reads of batches not yet uploaded)."""
        self._expired_at = 0.0
        self._flush_scheduled = False
        self._catalog_thread_closed = False
        self.on_uploaded: Callable[[SealedBatch, float], None] | None = None
        """Told of every uploaded batch and how long it took (the metrics' histograms)."""
        self.drained: bool | None = None
        self.draining = False
        self._lock: BinaryIO | None = None
        self._deadline: float | None = None
        self.recovery_lost_objects = 0
        """Acknowledged objects whose bytes start-up recovery did not find."""
        self.last_reasons: list[str] | None = None
        """What the last ``not_ready_reasons()`` found (None: not asked yet)."""
        self._spool_check: asyncio.Future[None] | None = None
        """The spool's write test in progress: one at a time (/readyz and /metrics both
        check, through one file), shared by the callers that come meanwhile, and never a
        second thread while a hung one is still waiting on the file system."""
        self.upstream_up: bool | None = None
        """Whether the last probe round or upload attempt reached S3 (None: neither yet)."""
        probe_client = partial(
            make_client,
            settings.upstream,
            settings.upload,
            credentials,
            timeout_s=settings.upstream.probe_timeout_s,
        )
        self.prober = Prober(
            settings.upstream, probe_client, note=self.note_upstream, threads=threads
        )

    @property
    def read_executor(self) -> Executor:
        """Where reads of batched objects and owner lookups block (``Pool.READ``)."""
        return self.threads.executor(Pool.READ)

    def parts_at_once(self) -> int:
        """Parts of a multipart batch sent side by side by the daemon's upload threads (asked
        from them as each part ends): ``upload.busy_part_concurrency`` while PUTs arrive (a
        batch is open) and the uploads keep up (no sealed batch waits for an upload worker),
        ``upload.part_concurrency`` otherwise (the part loop never sends more than that). An
        upload's Python work shares the interpreter and the cores with the requests', so
        fewer parts at once shorten the tail of PUT latency; when nobody waits for a PUT, or
        batches queue up, the upload goes wide."""
        upload = self.settings.upload
        if self.batcher.open_batches and not self.uploader.waiting:
            return upload.busy_part_concurrency
        return upload.part_concurrency

    async def written(self, entry: SpoolEntry, *, uploaded: bool) -> None:
        """A PUT about to be acknowledged: make it readable by key through the daemon. The
        catalog is a cache rebuilt from the spool, so its failure is logged, never turned into
        an error for an object that is already stored."""
        if self.catalog_writer is not None:
            write = CatalogWrite(entry.bucket, entry.batch_id, entry.tar_key, entry, uploaded)
            await self.catalog_writer.put(write)
            return
        self.queue_row(entry, uploaded=uploaded)

    def queue_row(self, entry: SpoolEntry, *, uploaded: bool) -> None:
        """``written`` in a single process (no other worker reads the catalog): the row is
        queued, flushed within ``FLUSH_DELAY_S`` and before any read, without a coroutine."""
        try:
            self.catalog.put(entry.bucket, entry.batch_id, entry.tar_key, entry, uploaded=uploaded)
        except sqlite3.Error:
            logger.exception("catalog write failed for s3://%s/%s", entry.bucket, entry.record.key)
        if not self._flush_scheduled and self.catalog.pending:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_DELAY_S, self.flush_catalog)

    def flush_catalog(self) -> None:
        """Write the catalog's queued objects, on the event loop (a small transaction: in a
        thread, the GIL changing hands at every row cost more), unless the catalog's thread
        holds the connection (then again within ``FLUSH_DELAY_S``, not waiting for it).
        Logged, never raised: the catalog is a cache rebuilt from the spool."""
        self._flush_scheduled = False
        try:
            flushed = self.catalog.try_flush()
        except (sqlite3.Error, DiskFull):
            logger.exception("catalog write failed")
            return
        if not flushed and not self._catalog_thread_closed:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_DELAY_S, self.flush_catalog)

    def _flush_and_checkpoint(self) -> None:
        # Every sealed batch, uploads or not, so the write-ahead log stays bounded.
        self.catalog.flush()
        self.catalog.checkpoint()

    def _in_catalog_thread(self, work: Callable[[], object], failure: str) -> asyncio.Future[None]:
        """Run ``work`` on the catalog's thread (``Pool.CATALOG``: catalog writes that no
        request waits for: the rows of a batch going to the uploader, uploaded batches,
        expiry, WAL checkpoints), in submission order; once closing, not at all. A failure
        is logged there, never raised: the catalog is a cache rebuilt from the spool, so it
        fails no request (and an object whose row is missing is read from the bucket)."""
        loop = asyncio.get_running_loop()
        if self._catalog_thread_closed:
            skipped: asyncio.Future[None] = loop.create_future()
            skipped.set_result(None)
            return skipped

        def run() -> None:
            try:
                work()
            except Exception:
                logger.exception(failure)

        return loop.run_in_executor(self.threads.executor(Pool.CATALOG), run)

    async def submit(self, batch: SealedBatch) -> None:
        """A sealed batch goes to the uploader once the catalog holds its objects (the local
        file, from which the catalog would be rebuilt, is deleted after the upload)."""
        await self._in_catalog_thread(self._flush_and_checkpoint, "catalog write failed")
        if self.catalog_writer is not None:
            await self.catalog_writer.sync()
        if self.uploader.in_flight >= KEEP_ENTRIES_BATCHES:
            # A backlog (the bucket is slow or down): do not hold every batch's index in
            # memory; it is then rendered from the tar.
            batch = dataclasses.replace(batch, index_fragments=None)
        self.prober.buckets.written(batch.bucket)
        if self.follower is not None:
            self.follower.follow(batch.bucket, active=True)
        await self.uploader.submit(batch)

    async def recovered(self, recovery: Recovery) -> None:
        """A stranded batch resealed (``Batcher._retry_seal``): the catalog is made to hold
        exactly its surviving members, as at start-up (a member recovery skipped or cut off
        answers 404, not 500 from bytes that are gone), then it goes to the uploader."""

        def replace() -> None:
            for bucket, batch_id in recovery.quarantined:
                self._forget_lost(recovery, bucket, batch_id, "", [])
            for batch in recovery.batches:
                entries = recovery.entries[batch.batch_id]
                self._forget_lost(recovery, batch.bucket, batch.batch_id, batch.tar_key, entries)

        await self._in_catalog_thread(replace, "catalog after resealing a stranded batch")
        for batch in recovery.batches:
            await self.submit(batch)

    async def hide(self, bucket: str, key: str, *, known_only: bool = False) -> bool:
        """Stop serving the batched object of ``key`` (it was deleted, or overwritten in the
        bucket): a tombstone is appended to the bucket's batch, durable like a PUT, recorded
        in the catalog now and in the batch's index. False when nothing was batched under
        ``key`` as far as the catalogs know. In a fleet (``catalog.follow``, or the PostgreSQL
        catalog) the tombstone is written all the same unless ``known_only``: another daemon
        may have batched the key in a batch not learned or not uploaded yet, and every daemon
        learns the tombstone (it hides nothing if none was)."""
        try:
            known = await self.lookup(bucket, key) is not None
        except CatalogUnavailable:
            known = False
            logger.info(
                "s3://%s/%s: the catalog is unavailable, the key may be batched", bucket, key
            )
        fleet = self.follower is not None or self.shared is not None
        if not known and (known_only or not fleet):
            return False
        record = ObjectRecord(key=key, size=0, md5_hex=EMPTY_MD5, mtime=write_time(), deleted=True)
        empty = BodyBuffer(memory_limit=0, spill_dir=self.spill_dir)
        entry = await self.batcher.add(
            bucket, record, empty, durability=self.settings.spool.durability
        )
        await self.written(entry, uploaded=False)
        return known

    async def update(self, bucket: str, current: ObjectRecord, headers: dict[str, str]) -> None:
        """Give the batched object ``current`` new tags and canned ACL (``headers``: its
        ``UPDATED_HEADERS`` after the change, the absent ones removed): an attribute update is
        appended to the bucket's batch, durable like a PUT, recorded in the catalog now and
        in the batch's index."""
        record = ObjectRecord(
            key=current.key,
            size=0,
            md5_hex=EMPTY_MD5,
            headers={name: headers[name] for name in UPDATED_HEADERS if name in headers},
            mtime=write_time(),
            update_of=current.mtime,
        )
        empty = BodyBuffer(memory_limit=0, spill_dir=self.spill_dir)
        entry = await self.batcher.add(
            bucket, record, empty, durability=self.settings.spool.durability
        )
        await self.written(entry, uploaded=False)

    async def discard_parked(self, batch_id: str) -> SealedBatch | None:
        """Delete a parked batch for good (``s3batchd parked discard``) and forget its objects
        in the catalog; None if it is not parked."""
        batch = await self.uploader.discard_parked(batch_id)
        if batch is not None:
            await self._in_catalog_thread(
                partial(self.catalog.forget_batch, batch_id), f"catalog after discarding {batch_id}"
            )
        return batch

    def _expiry_due(self) -> float | None:
        """The time before which catalog rows are to be forgotten now, if a round is due."""
        now = time.time()
        if now - self._expired_at < CATALOG_EXPIRY_INTERVAL_S:
            return None
        self._expired_at = now
        return now - self.settings.catalog.retention_s

    def note_upstream(self, ok: bool) -> None:
        """A probe round or an upload attempt reached S3 (``ok``) or did not: the
        ``s3batchd_upstream_up`` gauge."""
        self.upstream_up = ok

    def _parked(self, batch: SealedBatch, error: UploadError) -> None:
        """A batch was parked: its ``upload``-durability writers get the refusal, and a
        bucket found missing is marked so in the bucket check."""
        self.batcher.refuse_upload_waiters(batch.batch_id, batch.bucket, error.reason)
        if error.reason == "no_such_bucket":
            self.bucket_missing(batch.bucket)

    def refusal(self, bucket: str) -> str | None:
        """Why new batched writes to ``bucket`` are refused (its parked batches take more than
        ``upload.parked_max_bucket_fraction`` of the spool); None: they are taken."""
        if self.uploader.parked_bytes(bucket) <= self._parked_cap:
            return None
        return refusal_name(self.uploader.refused_with(bucket))

    def _uploaded(self, batch: SealedBatch, seconds: float) -> None:
        self.note_upstream(True)
        self.batcher.mark_uploaded(batch.batch_id)
        expire_before = self._expiry_due()

        def record() -> None:
            # Thousands of rows: 5-20 ms that the event loop no longer waits for. Until it is
            # done a read finds the rows not uploaded and, the local file being gone, reads
            # the bucket (objects.read_bytes).
            self.catalog.mark_uploaded(batch.batch_id)
            if expire_before is not None:
                self.catalog.expire(expire_before)
                self.catalog_rows = count_rows(self.catalog.path)
            self.catalog.checkpoint()

        self._in_catalog_thread(record, f"catalog update after uploading {batch.batch_id}")
        if self.shared is not None:
            pending = PendingBatch(batch.bucket, batch.batch_id, batch.tar_key, batch.index_key)
            self.shared.submit(pending, partial(self._index_entries, batch))
        if self.on_uploaded is not None:
            self.on_uploaded(batch, seconds)

    def _index_entries(self, batch: SealedBatch) -> list[IndexEntry]:
        """The entries of an uploaded batch's index, as the bucket has them (rendered again
        from the members kept in memory, else read from the bucket). Blocking."""
        if batch.index_fragments is not None:
            body = render_index(
                bucket=batch.bucket,
                batch_id=batch.batch_id,
                tar_key=batch.tar_key,
                tar_size=batch.size,
                fragments=list(batch.index_fragments),
            )
            return entries_from_index(parse_index(body, where=batch.index_key))
        return self._index_from_bucket(batch.bucket, batch.index_key)

    def _index_from_bucket(self, bucket: str, key: str) -> list[IndexEntry]:
        """The entries of the index object ``key``. Blocking.

        Raises:
            CatalogRejected: the index or its bucket is gone (a retry does not bring it).
        """
        try:
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "NoSuchBucket", "404"):
                raise CatalogRejected(f"s3://{bucket}/{key}: {code}") from exc
            raise
        return entries_from_index(parse_index(body, where=f"s3://{bucket}/{key}"))

    async def lookup(self, bucket: str, key: str) -> CatalogEntry | None:
        """The batched object a read of ``key`` serves, or None (the bucket decides).

        With the PostgreSQL catalog: the later of this daemon's own and the fleet's. When
        PostgreSQL fails, this daemon's own object of the key is served (its latest write,
        which a write through another daemon may have replaced meanwhile); without one the
        read fails (503 SlowDown, server/errormap.py): whether another daemon batched the key
        is unknown.

        Raises:
            CatalogUnavailable: the shared catalog is unavailable and this daemon has no
                object of the key.
        """
        local = self.catalog.get(bucket, key)
        if self.shared is None:
            return local
        try:
            answer = await self.shared.catalog.get(bucket, key)
        except CatalogUnavailable as exc:
            if local is not None:
                return local
            logger.debug("read of s3://%s/%s: %s", bucket, key, exc)
            raise
        return newest(local, self.catalog.tombstone(bucket, key), answer)

    @property
    def _catalog_setting(self) -> str:
        """The setting that names where the catalog is."""
        return "catalog.path" if self.settings.catalog.path else "spool.dir"

    async def start(self) -> None:
        """Check the spool, start uploading, and queue what an earlier run left behind.

        Raises:
            StartupError: the spool or the catalog failed (one line naming the setting and
                the path; the uploader is stopped again).
        """
        try:
            await self._start()
        except (S3BatchdError, OSError, sqlite3.Error) as exc:
            await self.uploader.close()
            if self._lock is not None:
                self._lock.close()
            if isinstance(exc, sqlite3.Error):
                path = self.catalog.path
                raise StartupError(f"{self._catalog_setting}: catalog {path}: {exc}") from exc
            spool_dir = self.settings.spool.dir
            raise StartupError(f"spool.dir: cannot start on {spool_dir}: {exc}") from exc

    async def _start(self) -> None:
        spool_dir = self.settings.spool.dir
        await run_sync(check_writable, spool_dir)
        # One process per spool: a second one's recovery would truncate the first one's files.
        self._lock = await run_sync(lock_spool, spool_dir)
        await self.uploader.start()
        recovery = await run_sync(recover_all, spool_dir, prefix=self.settings.upstream.prefix)
        leftovers = recovery.batches
        expire_before = self._expiry_due()
        if expire_before is not None:
            self.catalog.expire(expire_before)
        for bucket, batch_id in recovery.quarantined:
            self._forget_lost(recovery, bucket, batch_id, "", [])
        for batch in leftovers:
            entries = recovery.entries[batch.batch_id]  # verified by recovery: not read again
            self._forget_lost(recovery, batch.bucket, batch.batch_id, batch.tar_key, entries)
            await self.uploader.resume(batch)  # a parked batch stays parked
            self.prober.buckets.written(batch.bucket)
        # A restart with the system clock behind must not stamp writes older than the ones
        # the catalog (now holding the recovered batches too) already has.
        observe(self.catalog.newest_stamp())
        self.catalog_rows = await run_sync(count_rows, self.catalog.path)
        if self.shared is not None:
            await self.shared.start(self._index_from_bucket)
        self.prober.start()
        if self.follower is not None:
            for batch in leftovers:
                self.follower.follow(batch.bucket)
            self.follower.start()
        logger.info(
            "s3batchd started: writer %s, spool %s (durability %s), %d batches recovered",
            self.writer,
            spool_dir,
            self.settings.spool.durability,
            len(leftovers),
        )

    def _forget_lost(
        self,
        recovery: Recovery,
        bucket: str,
        batch_id: str,
        tar_key: str,
        entries: list[IndexEntry],
    ) -> None:
        """Record a recovered batch's objects in the catalog, and stop serving those whose
        bytes recovery did not find (logged at ERROR and counted: they were acknowledged)."""
        dropped = self.catalog.replace_batch(bucket, batch_id, tar_key, entries)
        for key in dropped[:LOST_KEYS_LOGGED]:
            logger.error(
                "recovery: s3://%s/%s was acknowledged but its bytes in batch %s are lost; "
                "it is no longer served",
                bucket,
                key,
                batch_id,
            )
        if len(dropped) > LOST_KEYS_LOGGED:
            logger.error(
                "recovery: %d more objects of batch %s are lost",
                len(dropped) - LOST_KEYS_LOGGED,
                batch_id,
            )
        # The catalog knows every acknowledged key (unless it was lost too): the spool alone
        # knows at most the key of the member it stopped at.
        in_spool = sum(1 for lost in recovery.lost if lost.batch_id == batch_id)
        self.recovery_lost_objects += max(len(dropped), in_spool)

    async def drain(self) -> bool:
        """Fail readiness, refuse new PUTs, seal open batches and upload them within
        ``shutdown.drain_timeout_s``; True if nothing is left in the spool."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.settings.shutdown.drain_timeout_s
        self.draining = True
        logger.info("shutdown: sealing open batches")
        await self.batcher.close()
        remaining = max(0.0, self._deadline - time.monotonic())
        logger.info(
            "shutdown: uploading %d batches (up to %.0f s)", self.uploader.pending, remaining
        )
        self.drained = await self.uploader.drain(remaining)
        return self.drained

    def probed_buckets(self) -> list[str]:
        """The buckets the next probe round checks."""
        return self.prober.targets()

    async def close(self) -> bool:
        """Drain (if not done yet, within what is left of the timeout), then stop uploading.
        True if nothing was left in the spool."""
        await self.drain()
        await self.prober.close()
        if self.follower is not None:
            await self.follower.close()
        remaining = max(0.0, (self._deadline or 0) - time.monotonic())
        uploaded = await self.uploader.close(remaining)
        # Exit 0 promises an empty spool (an emptyDir may be deleted next): check the disk.
        self.drained = uploaded and not await run_sync(batches_on_disk, self.settings.spool.dir)
        if self._lock is not None:
            self._lock.close()
        self.batcher.fail_upload_waiters(
            NotStored("The object's batch was not uploaded before shutdown; retry.")
        )
        if self.catalog_writer is not None:
            await self.catalog_writer.close()
        await self._in_catalog_thread(lambda: None, "catalog")  # its queued work done (FIFO)
        if self.shared is not None:
            # Uploaded batches' rows: within what is left of the drain timeout, at least one
            # PostgreSQL timeout (anything left is in the bucket's indexes for reindex).
            left = max(0.0, (self._deadline or 0) - time.monotonic())
            await self.shared.close(max(left, self.settings.catalog.postgres_timeout_s))
        self._catalog_thread_closed = True
        self.catalog.close()
        if self._follow_catalog is not None:
            self._follow_catalog.close()
        self.relocator.close()
        logger.info("shutdown: done (%s)", "all uploaded" if self.drained else "batches kept")
        return self.drained

    def object_source(self) -> ObjectSource:
        """Where reads of batched objects get their bytes."""
        return ObjectSource(self.catalog, self.spools, self.client, self.read_executor)

    @property
    def spool_bytes(self) -> int:
        """Bytes in the spool: open batches and sealed batches waiting for upload."""
        return self.batcher.open_bytes + self.uploader.pending_bytes

    def over_quota(self, incoming: int = 0) -> bool:
        """Whether ``incoming`` more bytes would take the spool past ``spool.max_bytes``."""
        return self.spool_bytes + incoming > self.settings.spool.max_bytes

    async def not_ready_reasons(self) -> list[str]:
        """Why this daemon cannot take writes now (empty when it can): draining, the spool
        not writable or near its quota, the upload workers dead, a batch stranded. Upstream
        and bucket problems are ``warnings()``: the spool absorbs them."""
        reasons = []
        if self.draining:
            reasons.append("draining")
        if self.spool_bytes >= QUOTA_HIGH_WATER * self.settings.spool.max_bytes:
            reasons.append(f"spool over quota ({self.spool_bytes} bytes)")
        if self._spool_check is None or self._spool_check.done():
            self._spool_check = asyncio.ensure_future(
                run_sync(check_writable, self.settings.spool.dir)
            )
            # Its outcome is read by whoever waits; one that finishes after every waiter gave
            # up is read here, not reported as "never retrieved".
            self._spool_check.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            await asyncio.wait_for(asyncio.shield(self._spool_check), SPOOL_CHECK_TIMEOUT_S)
        except SpoolError as exc:
            reasons.append(str(exc))
        except TimeoutError:
            reasons.append(
                f"spool directory {self.settings.spool.dir} does not answer: its write test "
                f"has taken more than {SPOOL_CHECK_TIMEOUT_S:.0f} s"
            )
        if self.uploader.died is not None:
            reasons.append(f"upload worker died: {self.uploader.died}")
        reasons.extend(
            f"batch {s.batch_id} stranded in {s.path.parent}: its seal failed ({s.error}); retrying"
            for s in list(self.batcher.stranded.values())
        )
        self.last_reasons = reasons
        return reasons

    def warnings(self) -> list[str]:
        """Problems that do not stop this daemon from taking writes: the upstream or a
        bucket failing (uploads, the probe)."""
        warnings = []
        if self.uploader.pending and self.uploader.last_error:
            warnings.append(f"upstream failing: {self.uploader.last_error}")
        return warnings + self.prober.warnings
