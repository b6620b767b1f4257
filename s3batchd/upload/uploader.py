"""Upload sealed batches: the tar (PutObject or multipart), then its index, then delete locally.

Supervised workers run each batch's upload steps (:mod:`s3batchd.upload.attempt`, the steps
themselves in :mod:`s3batchd.upload.batchupload`, idempotent). Failures are retried with capped
exponential backoff and full jitter, without a limit while data is pending: nothing sealed is
dropped. A failure a retry cannot fix by itself, of one bucket or batch (``parking.parks``:
NoSuchBucket, AccessDenied, a KMS refusal, ...), parks the batch instead: it waits on a timer,
not in an upload worker, so one bucket's refusals never hold up the other buckets' batches, and
``parked_bytes`` / ``refused_with`` tell the front when a bucket's parked batches take more than
their share of the spool (``upload.parked_max_bucket_fraction``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from s3batchd.concurrency import Pool, Threads, run_sync
from s3batchd.errors import UploadError
from s3batchd.records import SealedBatch
from s3batchd.spool.files import remove
from s3batchd.spool.parking import (
    ParkedState,
    clear_state,
    discard,
    parks,
    read_state,
    retry_wait_s,
    write_state,
)
from s3batchd.upload.policy import backoff_s
from s3batchd.upload.stats import UploadStats
from s3batchd.upload.upstream import classify

if TYPE_CHECKING:
    from s3batchd.config import UploadConfig
    from s3batchd.upload.attempt import UploadSteps

logger = logging.getLogger(__name__)


@dataclass
class ParkedBatch:
    """A parked batch, waiting for its next attempt (``parking``)."""

    batch: SealedBatch
    state: ParkedState
    timer: asyncio.TimerHandle | None = None


class Uploader:
    """Supervised background workers that upload sealed batches until they succeed; a batch
    that fails non-retriably is parked and tried again on a timer."""

    def __init__(
        self,
        steps: UploadSteps,
        *,
        config: UploadConfig,
        threads: Threads,
        seed: int | None = None,
    ) -> None:
        """``threads``: its ``Pool.UPLOAD`` has ``config.concurrency`` threads."""
        self._config = config
        self._queue: asyncio.Queue[SealedBatch] = asyncio.Queue()
        self._threads = threads
        self.stats = UploadStats()
        self._steps = steps
        self._workers: list[asyncio.Task[None]] = []
        self._rng = random.Random(seed)  # noqa: S311  jitter, not a secret
        self._tars_done: set[str] = set()
        self._pending = 0
        self.pending_bytes = 0
        """Bytes of sealed batches on disk waiting for upload, parked ones included (part of
        the spool quota)."""
        self.on_uploaded: Callable[[SealedBatch, float], None] | None = None
        """Called with each uploaded batch and the seconds its upload took."""
        self._queued: dict[str, SealedBatch] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.last_error: str | None = None
        self.died: BaseException | None = None
        self._parked: dict[str, ParkedBatch] = {}
        self._unparked: dict[str, ParkedState] = {}
        """Parked batches being tried again, with the state they were parked with."""
        self._parked_bytes: Counter[str] = Counter()
        """Bytes of parked batches by bucket (those being tried again included: they count
        until they are uploaded or parked anew)."""
        self._refused_with: dict[str, str] = {}
        """The reason of each bucket's latest parked batch (``UploadError.reason``)."""
        self.on_parked: Callable[[SealedBatch, UploadError], None] | None = None
        """Called with each batch parked and the failure that parked it."""
        self._closing = False
        self.note_upstream: Callable[[bool], None] = lambda ok: None  # an attempt reached S3?

    async def start(self) -> None:
        """Start the upload workers (idempotent)."""
        if self._workers:
            return
        for number in range(self._config.concurrency):
            task = asyncio.get_running_loop().create_task(
                self._work(), name=f"s3batchd-uploader-{number}"
            )
            task.add_done_callback(self._worker_done)
            self._workers.append(task)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # Batches stay on disk and are retried at the next start; readiness reports this.
            self.died = exc
            logger.error("upload worker died; sealed batches stay in the spool", exc_info=exc)

    async def submit(self, batch: SealedBatch) -> None:
        """Queue a sealed batch for upload."""
        self._pending += 1
        self.pending_bytes += batch.size
        self._queued[batch.batch_id] = batch
        self._idle.clear()
        self._queue.put_nowait(batch)

    @property
    def pending_batch_ids(self) -> list[str]:
        """Ids of the batches queued, being uploaded or parked."""
        return [*self._queued, *self._parked]

    @property
    def pending(self) -> int:
        """Batches queued, being uploaded or parked (all waiting for upload)."""
        return self._pending + len(self._parked)

    @property
    def in_flight(self) -> int:
        """Batches queued or being uploaded (not the parked ones)."""
        return self._pending

    @property
    def waiting(self) -> int:
        """Batches queued that no upload worker has taken yet (uploads are behind)."""
        return self._queue.qsize()

    async def _work(self) -> None:
        while True:
            batch = await self._queue.get()
            parked = False
            try:
                parked = await self._upload(batch)
            finally:
                self._pending -= 1
                if not parked:  # a parked batch's bytes stay in the spool
                    self.pending_bytes -= batch.size
                self._queued.pop(batch.batch_id, None)
                if self._pending == 0:
                    self._idle.set()

    async def _upload(self, batch: SealedBatch) -> bool:
        """Upload ``batch``, retrying retriable failures; True if it was parked instead."""
        attempt = 0
        started = time.monotonic()
        while True:
            try:
                await self._threads.run(Pool.UPLOAD, self._upload_once, batch)
            except Exception as exc:  # noqa: BLE001  any failure is retried or parked, never dropped
                error = classify(exc, f"upload {batch.batch_id}")
                self._note_failure(batch, error, attempt)
                if parks(error):
                    await self._park(batch, error)
                    return True
            else:
                self.last_error = None
                if self._unparked.pop(batch.batch_id, None) is not None:
                    self._count_parked(batch, -1)
                if self.on_uploaded is not None:
                    try:
                        self.on_uploaded(batch, time.monotonic() - started)
                    except Exception:  # a catalog or metrics problem must not stop uploads
                        logger.exception("after uploading %s", batch.batch_id)
                logger.info(
                    "uploaded batch %s to s3://%s/%s (%d records, %d bytes, %.2f s)",
                    batch.batch_id,
                    batch.bucket,
                    batch.tar_key,
                    batch.records,
                    batch.size,
                    time.monotonic() - started,
                )
                return False
            await asyncio.sleep(backoff_s(attempt, self._config, self._rng))
            attempt += 1

    def _note_failure(self, batch: SealedBatch, exc: UploadError, attempt: int) -> None:
        self.stats.failed(exc.reason)
        self.stats.retries += 1
        self.last_error = str(exc)
        self.note_upstream(not exc.retriable)  # a refusal is an answer; retriable: S3 failing
        if parks(exc):
            return  # logged by _park
        log = logger.warning if exc.retriable else logger.error
        log("upload of %s failed (attempt %d), will retry: %s", batch.batch_id, attempt + 1, exc)

    def parked_bytes(self, bucket: str) -> int:
        """Bytes of ``bucket``'s parked batches in the spool."""
        return self._parked_bytes[bucket]

    def refused_with(self, bucket: str) -> str:
        """Why ``bucket``'s latest parked batch was parked (``UploadError.reason``)."""
        return self._refused_with.get(bucket, "other")

    def _count_parked(self, batch: SealedBatch, sign: int) -> None:
        self._parked_bytes[batch.bucket] += sign * batch.size
        if self._parked_bytes[batch.bucket] <= 0:
            del self._parked_bytes[batch.bucket]
            self._refused_with.pop(batch.bucket, None)

    async def _park(self, batch: SealedBatch, error: UploadError) -> None:
        """Keep ``batch`` on disk and out of the workers until its next attempt is due."""
        earlier = self._unparked.pop(batch.batch_id, None)
        if earlier is None:
            self._count_parked(batch, +1)
        self._refused_with[batch.bucket] = error.reason
        attempts = 1 if earlier is None else earlier.attempts + 1
        now = time.time()
        wait = retry_wait_s(attempts, self._config, self._rng)
        state = ParkedState(
            reason=error.reason,
            error=str(error),
            parked_at=now if earlier is None else earlier.parked_at,
            attempts=attempts,
            next_retry_at=now + wait,
        )
        try:
            await run_sync(write_state, batch, state)
        except OSError:  # parked in memory all the same; after a restart tried at once
            logger.exception("cannot write the parked state of %s", batch.batch_id)
        self._hold(batch, state)
        if self.on_parked is not None:  # once the state is on disk: the batch is kept
            try:
                self.on_parked(batch, error)
            except Exception:  # waiters or the bucket check must not stop uploads
                logger.exception("after parking %s", batch.batch_id)
        logger.error(
            "parked batch %s of bucket %s (%d records, %d bytes; %s, attempt %d): %s; next "
            "attempt in %.0f s, or `s3batchd parked retry`",
            batch.batch_id,
            batch.bucket,
            batch.records,
            batch.size,
            error.reason,
            attempts,
            error,
            wait,
        )

    def _hold(self, batch: SealedBatch, state: ParkedState) -> None:
        delay = max(0.0, state.next_retry_at - time.time())
        timer = asyncio.get_running_loop().call_later(delay, self._release, batch.batch_id)
        self._parked[batch.batch_id] = ParkedBatch(batch, state, timer)

    def _release(self, batch_id: str) -> bool:
        """Queue a parked batch for one more attempt; False if it is not parked."""
        parked = self._parked.pop(batch_id, None)
        if parked is None:
            return False
        if parked.timer is not None:
            parked.timer.cancel()
        self._unparked[batch_id] = parked.state
        self._pending += 1
        self._queued[batch_id] = parked.batch
        self._idle.clear()
        self._queue.put_nowait(parked.batch)
        logger.info("trying parked batch %s again", batch_id)
        return True

    async def resume(self, batch: SealedBatch) -> None:
        """Queue a batch an earlier run left in the spool, or, if it was parked, park it
        again until its next attempt is due."""
        state = await run_sync(read_state, batch.path)
        if state is None:
            await self.submit(batch)
            return
        self.pending_bytes += batch.size
        self._count_parked(batch, +1)
        self._refused_with[batch.bucket] = state.reason
        self._hold(batch, state)

    @property
    def parked(self) -> list[ParkedBatch]:
        """The parked batches (not those being tried again right now)."""
        return list(self._parked.values())

    def retry_parked(self, batch_ids: list[str] | None = None) -> list[str]:
        """Try parked batches again now (``None``: all of them); the ids queued."""
        ids = list(self._parked) if batch_ids is None else batch_ids
        if self._closing:
            return []
        return [batch_id for batch_id in ids if self._release(batch_id)]

    async def discard_parked(self, batch_id: str) -> SealedBatch | None:
        """Delete a parked batch from the spool for good; None if it is not parked (unknown,
        or being tried right now)."""
        parked = self._parked.pop(batch_id, None)
        if parked is None:
            return None
        if parked.timer is not None:
            parked.timer.cancel()
        try:
            await run_sync(discard, parked.batch.path)
        except BaseException:
            self._hold(parked.batch, parked.state)
            raise
        self.pending_bytes -= parked.batch.size
        self._count_parked(parked.batch, -1)
        return parked.batch

    def _upload_once(self, batch: SealedBatch) -> None:
        result = self._steps.attempt(batch, tar_done=batch.batch_id in self._tars_done)
        self.stats.add(result.requests)
        if result.tar_done:
            self._tars_done.add(batch.batch_id)
        if result.error is not None:
            raise result.error
        if batch.batch_id in self._unparked:
            clear_state(batch)  # before the tar: a state file never outlives its batch
        remove(batch)
        self._tars_done.discard(batch.batch_id)
        self.stats.batch_done(batch)

    async def drain(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109  a deadline is the API
        """Wait until every submitted batch is uploaded; False if ``timeout`` passed first."""
        if self._idle.is_set():  # wait_for with a timeout of 0 times out even then
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 0) -> bool:  # noqa: ASYNC109  a deadline is the API
        """Drain for up to ``timeout`` seconds, then stop the workers. True if all uploaded."""
        drained = await self.drain(timeout)
        left = self._pending
        self._closing = True
        for parked in self._parked.values():  # they stay parked on disk
            if parked.timer is not None:
                parked.timer.cancel()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        # Abandoning attempts in upload processes frees the threads waiting for them (the
        # upload threads are shut down with the process's other pools: concurrency.py).
        self._steps.close(wait=drained)
        if not drained:
            logger.warning("%d batches not uploaded before shutdown; kept in the spool", left)
        return drained
