"""Upload sealed batches: the tar (PutObject or multipart), then its index, then delete locally.

Each step is idempotent: keys are deterministic and written with ``If-None-Match: *``; a 412
means an earlier attempt succeeded but its answer was lost, so the object is checked (HEAD) to
be this batch and the upload moves on. Failures are retried with capped exponential backoff
and full jitter, without a limit while data is pending: nothing sealed is dropped. A failure a
retry cannot fix by itself, of one bucket or batch (``parking.parks``: NoSuchBucket,
AccessDenied, a KMS refusal, ...), parks the batch instead: it waits on a timer, not in an
upload worker, so one bucket's refusals never hold up the other buckets' batches, and
``parked_bytes`` / ``refused_with`` tell the front when a bucket's parked batches take more than
their share of the spool (``upload.parked_max_bucket_fraction``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import os
import random
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

from botocore.exceptions import BotoCoreError, ClientError

from s3batchd.concurrency import run_in, run_sync
from s3batchd.constants import MAX_PART_BYTES, MAX_PARTS, MIN_PART_BYTES
from s3batchd.errors import ConflictError, UploadError
from s3batchd.index import render_index
from s3batchd.records import SealedBatch
from s3batchd.spool.files import remove, remove_durably, scan, upload_id_path, write_durably
from s3batchd.spool.parking import (
    ParkedState,
    clear_state,
    discard,
    parks,
    read_state,
    retry_wait_s,
    write_state,
)
from s3batchd.upload.bucketmodes import SSE, tar_encryption
from s3batchd.upload.upstream import classify, status_of

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

    from s3batchd.config import UploadConfig
    from s3batchd.uploadsettings import UploadSettings

logger = logging.getLogger(__name__)

TAR_CONTENT_TYPE = "application/x-tar"
INDEX_CONTENT_TYPE = "application/json"
META_BATCH_ID = "s3batchd-batch-id"
META_TAR_CRC32 = "s3batchd-tar-crc32"


def file_crc32(path: Path) -> str:
    """CRC32 of a whole file, as 8 hex digits (kept in the tar's metadata)."""
    value = 0
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            value = zlib.crc32(chunk, value)
    return f"{value:08x}"


class FileSection(io.RawIOBase):
    """A part of an open file as a seekable stream (read with ``pread``): botocore reads a
    part twice (checksum, then the request) without the part ever being held in memory, so
    an upload costs a few read buffers, not ``part_concurrency`` x ``part_size_bytes``."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        super().__init__()
        self._fd = fd
        self._start = start
        self._length = length
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, min(self._length, base + offset))
        return self._position

    def read(self, size: int = -1) -> bytes:
        remaining = self._length - self._position
        if size < 0 or size > remaining:
            size = remaining
        data = os.pread(self._fd, size, self._start + self._position) if size else b""
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def crc32_header(hex_crc: str) -> str:
    """A CRC32 kept as 8 hex digits, as the base64 value of ``x-amz-checksum-crc32``."""
    return base64.b64encode(bytes.fromhex(hex_crc)).decode()


#: In a member's index fragment only when it has stored encryption headers.
_SSE_MARK = f'"{SSE}"'.encode()


def encrypted_members(batch: SealedBatch) -> Iterable[Mapping[str, str]]:
    """The stored headers of those members of ``batch`` that may carry encryption headers
    (from the index fragments when the batch has them, else read back from the tar)."""
    if batch.index_fragments is None:
        return [entry.record.headers for entry in scan(batch.path).entries]
    return [
        json.loads(fragment)["headers"]
        for fragment in batch.index_fragments
        if _SSE_MARK in fragment and fragment.startswith(b"{")  # objects, not tombstones
    ]


def needs_multipart(size: int, config: UploadConfig | UploadSettings) -> bool:
    """Whether a tar of ``size`` bytes is uploaded in parts."""
    return size >= config.multipart_threshold_bytes


def part_size(size: int, config: UploadConfig | UploadSettings) -> int:
    """Part size for a ``size``-byte upload: the configured size, clamped to S3's rules and
    doubled until the part count fits in 10,000."""
    chunk = min(max(config.part_size_bytes, MIN_PART_BYTES), MAX_PART_BYTES)
    while -(-size // chunk) > MAX_PARTS:
        chunk *= 2
    return min(chunk, MAX_PART_BYTES)


def backoff_s(attempt: int, config: UploadConfig, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(config.retry_max_ms, config.retry_base_ms * 2 ** min(attempt, 30))
    return rng.uniform(0, ceiling) / 1000


PartsAtOnce = Callable[[], int]
"""How many parts of a batch may be in flight now (asked again as each part ends)."""


class BatchUpload:
    """The blocking upload steps of one batch (run in the uploader's thread pool).
    ``parts_at_once``: how many parts to send side by side, asked again whenever a part ends
    (default: ``part_concurrency`` always)."""

    def __init__(
        self,
        client: S3Client,
        config: UploadConfig | UploadSettings,
        stats: UploadStats,
        parts_at_once: PartsAtOnce | None = None,
    ) -> None:
        self._client = client
        self._config = config
        self._stats = stats
        self._parts_at_once = parts_at_once or (lambda: config.part_concurrency)

    def tar(self, batch: SealedBatch) -> None:
        """Upload the tar under its key, unless an earlier attempt already did; encrypted as
        strongly as its most demanding member asked (bucketmodes.tar_encryption)."""
        metadata = {META_BATCH_ID: batch.batch_id, META_TAR_CRC32: file_crc32(batch.path)}
        encryption = tar_encryption(encrypted_members(batch))
        if needs_multipart(batch.size, self._config):
            self._multipart(batch, metadata, encryption)
        else:
            self._single(batch, metadata, encryption)

    def _single(
        self, batch: SealedBatch, metadata: dict[str, str], encryption: dict[str, Any]
    ) -> None:
        with batch.path.open("rb") as body:
            try:
                self._call(
                    "PutObject",
                    lambda: self._client.put_object(
                        Bucket=batch.bucket,
                        Key=batch.tar_key,
                        Body=body,
                        ContentLength=batch.size,
                        ContentType=TAR_CONTENT_TYPE,
                        Metadata=metadata,
                        IfNoneMatch="*",
                        # Computed once for the metadata: botocore would read the file again.
                        ChecksumCRC32=crc32_header(metadata[META_TAR_CRC32]),
                        **encryption,
                    ),
                )
            except ClientError as exc:
                self._settle_conflict(exc, batch, metadata)

    def _multipart(
        self, batch: SealedBatch, metadata: dict[str, str], encryption: dict[str, Any]
    ) -> None:
        self._abort_leftover(batch)
        created = self._call(
            "CreateMultipartUpload",
            lambda: self._client.create_multipart_upload(
                Bucket=batch.bucket,
                Key=batch.tar_key,
                ContentType=TAR_CONTENT_TYPE,
                Metadata=metadata,
                ChecksumAlgorithm="CRC32",
                **encryption,
            ),
        )
        upload_id = created["UploadId"]
        # Kept durably until completed or aborted, so a crash leaves no orphaned upload.
        sidecar = upload_id_path(batch)
        try:
            write_durably(sidecar, upload_id.encode())
            parts = self._parts(batch, upload_id)
            self._call(
                "CompleteMultipartUpload",
                lambda: self._client.complete_multipart_upload(
                    Bucket=batch.bucket,
                    Key=batch.tar_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                ),
            )
        except ClientError as exc:
            self._abort(batch, upload_id)
            self._settle_conflict(exc, batch, metadata)
        except BaseException:
            self._abort(batch, upload_id)
            raise
        remove_durably(sidecar)

    def _abort_leftover(self, batch: SealedBatch) -> None:
        """Abort the multipart upload an earlier attempt or process left behind, if any."""
        sidecar = upload_id_path(batch)
        if not sidecar.exists():
            return
        upload_id = sidecar.read_text().strip()
        logger.info("aborting multipart upload %s left by an earlier attempt", upload_id)
        self._abort(batch, upload_id)
        if sidecar.exists():  # keep its id rather than start a second upload and forget it
            raise UploadError(f"could not abort multipart upload {upload_id}", retriable=True)

    def _parts(self, batch: SealedBatch, upload_id: str) -> list[CompletedPartTypeDef]:
        chunk = part_size(batch.size, self._config)
        offsets = range(0, batch.size, chunk)
        fd = os.open(batch.path, os.O_RDONLY | os.O_CLOEXEC)

        def one(number: int) -> CompletedPartTypeDef:
            start = offsets[number - 1]
            section = FileSection(fd, start, min(chunk, batch.size - start))
            return self._part(batch, upload_id, number, section)

        numbers = iter(range(1, len(offsets) + 1))
        done: dict[int, CompletedPartTypeDef] = {}
        in_flight: dict[Future[CompletedPartTypeDef], int] = {}
        try:
            # The pool starts a thread only when no idle one is left: as many as were ever
            # in flight at once.
            with ThreadPoolExecutor(self._config.part_concurrency, "s3batchd-part") as pool:
                while True:
                    limit = max(1, min(self._parts_at_once(), self._config.part_concurrency))
                    while len(in_flight) < limit and (number := next(numbers, None)):
                        in_flight[pool.submit(one, number)] = number
                    if not in_flight:
                        return [done[number] for number in sorted(done)]
                    ended, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in ended:
                        # A failed part raises here; the pool waits for those in flight.
                        done[in_flight.pop(future)] = future.result()
        finally:
            os.close(fd)

    def _part(
        self, batch: SealedBatch, upload_id: str, number: int, data: FileSection
    ) -> CompletedPartTypeDef:
        answer = self._call(
            "UploadPart",
            lambda: self._client.upload_part(
                Bucket=batch.bucket,
                Key=batch.tar_key,
                UploadId=upload_id,
                PartNumber=number,
                Body=cast("IO[bytes]", data),
                ChecksumAlgorithm="CRC32",
            ),
        )
        part: CompletedPartTypeDef = {"ETag": answer["ETag"], "PartNumber": number}
        if "ChecksumCRC32" in answer:
            part["ChecksumCRC32"] = answer["ChecksumCRC32"]
        return part

    def _abort(self, batch: SealedBatch, upload_id: str) -> None:
        """Abort an upload; forget its id once S3 no longer has it (aborted or completed)."""
        try:
            self._call(
                "AbortMultipartUpload",
                lambda: self._client.abort_multipart_upload(
                    Bucket=batch.bucket, Key=batch.tar_key, UploadId=upload_id
                ),
            )
        except ClientError as exc:
            if status_of(exc) != 404:  # NoSuchUpload: already completed or aborted
                logger.warning("could not abort multipart upload %s: %s", upload_id, exc)
                return
        except (BotoCoreError, OSError) as exc:
            logger.warning("could not abort multipart upload %s: %s", upload_id, exc)
            return
        remove_durably(upload_id_path(batch))

    def _settle_conflict(
        self, exc: ClientError, batch: SealedBatch, metadata: dict[str, str]
    ) -> None:
        """A 412 is success if the object under the key is this batch (same batch id, size and
        CRC32 in its metadata); anything else raises."""
        if status_of(exc) != 412:
            raise exc
        head = self._call(
            "HeadObject", lambda: self._client.head_object(Bucket=batch.bucket, Key=batch.tar_key)
        )
        ours = head.get("Metadata", {}) == metadata
        if not ours or head["ContentLength"] != batch.size:
            raise ConflictError(f"s3://{batch.bucket}/{batch.tar_key} holds another object")
        logger.info("tar %s was already uploaded by an earlier attempt", batch.tar_key)

    def index(self, batch: SealedBatch) -> None:
        """Write the index JSON beside the tar (the batch's commit marker)."""
        fragments = batch.index_fragments
        entries = scan(batch.path).entries if fragments is None else None
        body = render_index(
            bucket=batch.bucket,
            batch_id=batch.batch_id,
            tar_key=batch.tar_key,
            tar_size=batch.size,
            entries=entries,
            fragments=None if fragments is None else list(fragments),
        )
        encryption = tar_encryption(
            encrypted_members(batch) if entries is None else (e.record.headers for e in entries)
        )
        try:
            self._call(
                "PutObject",
                lambda: self._client.put_object(
                    Bucket=batch.bucket,
                    Key=batch.index_key,
                    Body=body,
                    ContentType=INDEX_CONTENT_TYPE,
                    Metadata={META_BATCH_ID: batch.batch_id},
                    IfNoneMatch="*",
                    # It lists the members' keys and metadata: encrypted as the tar is.
                    **encryption,
                ),
            )
        except ClientError as exc:
            if status_of(exc) != 412:
                raise
            head = self._call(
                "HeadObject",
                lambda: self._client.head_object(Bucket=batch.bucket, Key=batch.index_key),
            )
            expected = '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'
            if head.get("ETag") != expected:
                raise ConflictError(f"s3://{batch.bucket}/{batch.index_key} differs") from exc

    def _call(self, operation: str, call: Callable[[], Any]) -> Any:
        try:
            result = call()
        except ClientError as exc:
            self._stats.count(operation, f"http_{status_of(exc)}")
            raise
        except Exception:
            self._stats.count(operation, "error")
            raise
        self._stats.count(operation, "ok")
        return result


@dataclass(frozen=True)
class Attempt:
    """What one attempt at a batch's upload steps did (picklable: an upload process sends it
    back to the daemon)."""

    tar_done: bool
    """The tar is in the bucket (now or from an earlier attempt)."""
    error: UploadError | None = None
    """Why the attempt failed; None: the tar and its index are in the bucket."""
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    """Upstream requests sent, by operation and outcome."""


def run_attempt(
    client: S3Client,
    config: UploadConfig | UploadSettings,
    batch: SealedBatch,
    *,
    tar_done: bool,
    parts_at_once: PartsAtOnce | None = None,
) -> Attempt:
    """Upload the tar (unless ``tar_done``), then its index. Failures are returned, classified,
    not raised."""
    stats = UploadStats()
    steps = BatchUpload(client, config, stats, parts_at_once)
    try:
        if not tar_done:
            try:
                steps.tar(batch)
            except ClientError as exc:
                raise classify(exc, f"upload tar {batch.tar_key}") from exc
            tar_done = True
        try:
            steps.index(batch)
        except ClientError as exc:
            raise classify(exc, f"upload index {batch.index_key}") from exc
    except Exception as exc:  # noqa: BLE001  the uploader retries any failure
        return Attempt(tar_done, classify(exc, f"upload {batch.batch_id}"), stats.snapshot())
    return Attempt(tar_done, None, stats.snapshot())


class UploadSteps(Protocol):
    """Where the upload steps of a batch run (called from the uploader's threads)."""

    def attempt(self, batch: SealedBatch, *, tar_done: bool) -> Attempt:
        """One attempt at uploading ``batch`` (blocking)."""
        ...

    def close(self, *, wait: bool) -> None:
        """Stop; ``wait`` False: attempts still running are abandoned (their batches stay in
        the spool)."""
        ...


class ThreadSteps:
    """The steps on the calling thread, with a client shared by the upload threads."""

    def __init__(
        self, client: S3Client, config: UploadConfig, parts_at_once: PartsAtOnce | None = None
    ) -> None:
        self._client = client
        self._config = config
        self._parts_at_once = parts_at_once

    def attempt(self, batch: SealedBatch, *, tar_done: bool) -> Attempt:
        """One attempt, on this thread."""
        return run_attempt(
            self._client,
            self._config,
            batch,
            tar_done=tar_done,
            parts_at_once=self._parts_at_once,
        )

    def close(self, *, wait: bool) -> None:
        """Nothing to stop: the uploader's threads are the workers."""


class UploadStats:
    """Counters shared by the upload threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.batches = 0
        self.records = 0
        self.bytes = 0
        self.retries = 0
        self.failures: Counter[str] = Counter()
        """Failed upload attempts, by ``UploadError.reason``."""

    def count(self, operation: str, outcome: str) -> None:
        """One upstream request issued."""
        with self._lock:
            self.requests[operation, outcome] += 1

    def add(self, requests: Mapping[tuple[str, str], int]) -> None:
        """Upstream requests an attempt issued."""
        with self._lock:
            self.requests.update(requests)

    def batch_done(self, batch: SealedBatch) -> None:
        """A batch and its index are in the bucket."""
        with self._lock:
            self.batches += 1
            self.records += batch.records
            self.bytes += batch.size

    def failed(self, reason: str) -> None:
        """One upload attempt failed for ``reason``."""
        with self._lock:
            self.failures[reason] += 1

    def failure_counts(self) -> dict[str, int]:
        """A copy of the failure counters, by reason."""
        with self._lock:
            return dict(self.failures)

    def snapshot(self) -> dict[tuple[str, str], int]:
        """A copy of the request counters (safe to iterate while uploads run)."""
        with self._lock:
            return dict(self.requests)


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
        self, steps: UploadSteps, *, config: UploadConfig, seed: int | None = None
    ) -> None:
        self._config = config
        self._queue: asyncio.Queue[SealedBatch] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(config.concurrency, "s3batchd-upload")
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
                await run_in(self._executor, lambda: self._upload_once(batch))
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
        # First the steps: abandoning attempts in upload processes frees the threads waiting
        # for them.
        self._steps.close(wait=drained)
        self._executor.shutdown(wait=drained, cancel_futures=True)
        if not drained:
            logger.warning("%d batches not uploaded before shutdown; kept in the spool", left)
        return drained
