"""Each bucket's versioning, object lock and default encryption: what the PutObject path needs
to decide whether an object may be batched (docs/passthrough.md#per-bucket-decisions).

Learnt with GetBucketVersioning, GetObjectLockConfiguration and GetBucketEncryption through
the daemon's own boto3 client the first time a bucket is written to, then kept in a bounded
cache, so a PUT costs no upstream request. An entry older than ``batch.bucket_modes_refresh_s``
is still served while one background lookup refreshes it; concurrent first lookups of a bucket
share one. A forwarded change of these configurations (or a bucket answer that contradicts the
entry, such as a version id from a bucket thought unversioned) drops the entry.

What is assumed when a call fails:

- ``AccessDenied`` (a policy without ``s3:GetBucketVersioning``,
  ``s3:GetBucketObjectLockConfiguration`` or ``s3:GetEncryptionConfiguration``): that feature
  is off, and a warning says so at each lookup. Versioning and object lock then go
  unnoticed: grant the actions (docs/operations.md).
- Anything else (the bucket unreachable, throttled, missing), or no answer to a first lookup
  within ``FIRST_LOOKUP_WAIT_S``: the last known mode, or a plain bucket when none is known
  yet (the daemon keeps batching while the bucket is away, as it always did), looked up again
  after ``FAILED_RETRY_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from s3batchd.concurrency import Pool, Threads
from s3batchd.errors import LookupFailedError
from s3batchd.upload.upstream import ACCESS_DENIED_CODES, code_of

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

#: Buckets whose modes are kept (least recently used dropped first): a few hundred bytes each.
CAPACITY = 10_000
#: Seconds until a bucket whose lookup failed is asked again.
FAILED_RETRY_S = 30.0
#: Seconds a PUT waits for the first lookup of its bucket; after that it goes on as into a
#: plain bucket (the lookup goes on too), so a bucket that does not answer (an outage, a
#: stalled connection) does not hold PUTs for the client's read timeout.
FIRST_LOOKUP_WAIT_S = 5.0

SSE = "x-amz-server-side-encryption"
SSE_KMS_KEY = "x-amz-server-side-encryption-aws-kms-key-id"
SSE_BUCKET_KEY = "x-amz-server-side-encryption-bucket-key-enabled"
#: The encryption headers a batched object keeps (stored with it, echoed on PUT, GET, HEAD).
ENCRYPTION_HEADERS = (SSE, SSE_KMS_KEY, SSE_BUCKET_KEY)
#: Weakest first.
_STRENGTH = ("", "AES256", "aws:kms", "aws:kms:dsse")


@dataclass(frozen=True, slots=True)
class Encryption:
    """Server-side encryption of an object: a request's, or a bucket's default."""

    algorithm: str
    """``AES256`` (SSE-S3), ``aws:kms`` or ``aws:kms:dsse``."""
    kms_key_id: str = ""
    """The KMS key (id or ARN) for the ``aws:kms`` algorithms; empty: the AWS managed key."""
    bucket_key: bool = False
    """An S3 Bucket Key is used (KMS only)."""

    def headers(self) -> dict[str, str]:
        """The response headers S3 echoes for an object with this encryption."""
        out = {SSE: self.algorithm}
        if self.kms_key_id:
            out[SSE_KMS_KEY] = self.kms_key_id
        if self.bucket_key:
            out[SSE_BUCKET_KEY] = "true"
        return out


@dataclass(frozen=True, slots=True)
class BucketMode:
    """What the daemon knows of a bucket's configuration."""

    versioning: str = ""
    """``Enabled``, ``Suspended`` or empty (never enabled)."""
    object_lock: bool = False
    """Object Lock is enabled on the bucket."""
    encryption: Encryption | None = None
    """The bucket's default encryption, if it has one."""
    known: bool = True
    """False: the lookup failed and this is the assumed plain bucket."""

    @property
    def versioned(self) -> bool:
        """Versions are kept or have been (Suspended keeps the older ones listed)."""
        return self.versioning in ("Enabled", "Suspended")


def decide(
    mode: BucketMode, headers: Mapping[str, str], *, versioned_buckets: str
) -> tuple[str | None, dict[str, str]]:
    """Whether a PutObject into a bucket of ``mode`` may be batched: (why not, or None; the
    encryption headers the batched object gets, stored and echoed).

    Object Lock: never (WORM cannot be honoured inside a tar). Versioning Enabled or Suspended:
    only with ``versioned_buckets = "batch"``. ``x-amz-server-side-encryption: AES256`` (the
    only value ``s3api.unbatchable`` lets through) is batched unless the bucket's default is
    a KMS one (its tars are encrypted with that key, not as asked); without the header, the
    bucket's default encryption is the object's.
    """
    if mode.object_lock:
        return "Object Lock is enabled on the bucket: its objects are not batched.", {}
    if mode.versioned and versioned_buckets == "forward":
        return f"Versioning is {mode.versioning} on the bucket: its objects are not batched.", {}
    default = mode.encryption
    if SSE in headers and default is not None and default.algorithm != "AES256":
        return f"{SSE}: AES256 differs from the bucket's default {default.algorithm}.", {}
    return None, encryption_of(mode, headers)


def encryption_of(mode: BucketMode, headers: Mapping[str, str]) -> dict[str, str]:
    """The encryption headers of a batched object written with ``headers`` into a bucket of
    ``mode``: SSE-S3 when asked for, else the bucket's default (``decide`` has forwarded
    what the bucket would encrypt otherwise)."""
    if SSE in headers:
        return Encryption("AES256").headers()
    return {} if mode.encryption is None else mode.encryption.headers()


def look_up(client: S3Client, bucket: str) -> BucketMode:
    """Read a bucket's versioning, object lock and default encryption (blocking).

    Raises:
        LookupFailedError: a call failed other than with AccessDenied or "not configured".
    """
    versioning = _ask(lambda: client.get_bucket_versioning(Bucket=bucket), bucket, ())
    lock = _ask(
        lambda: client.get_object_lock_configuration(Bucket=bucket),
        bucket,
        ("ObjectLockConfigurationNotFoundError",),
    )
    encryption = _ask(
        lambda: client.get_bucket_encryption(Bucket=bucket),
        bucket,
        ("ServerSideEncryptionConfigurationNotFoundError",),
    )
    lock_config = lock.get("ObjectLockConfiguration", {})
    return BucketMode(
        versioning=str(versioning.get("Status", "")),
        object_lock=lock_config.get("ObjectLockEnabled") == "Enabled",
        encryption=_default_encryption(encryption),
    )


def _ask(call: Callable[[], Any], bucket: str, absent: tuple[str, ...]) -> Mapping[str, Any]:
    """One configuration read; {} when the bucket has none or the policy denies it."""
    try:
        answer: Mapping[str, Any] = call()
    except ClientError as exc:
        code = code_of(exc)
        if code in absent:
            return {}
        if code in ACCESS_DENIED_CODES:
            logger.warning(
                "s3://%s: %s: %s; assumed off (grant the action: docs/operations.md)",
                bucket,
                exc.operation_name,
                code,
            )
            return {}
        raise LookupFailedError(f"s3://{bucket}: {exc}") from exc
    except BotoCoreError as exc:
        raise LookupFailedError(f"s3://{bucket}: {exc}") from exc
    return answer


def _default_encryption(answer: Mapping[str, Any]) -> Encryption | None:
    rules = answer.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
    for rule in rules:
        default = rule.get("ApplyServerSideEncryptionByDefault")
        if default and default.get("SSEAlgorithm") in _STRENGTH[1:]:
            return Encryption(
                str(default["SSEAlgorithm"]),
                str(default.get("KMSMasterKeyID", "")),
                bucket_key=bool(rule.get("BucketKeyEnabled", False))
                and default["SSEAlgorithm"] != "AES256",
            )
    return None


def tar_encryption(members: Iterable[Mapping[str, str]]) -> dict[str, Any]:
    """The PutObject / CreateMultipartUpload arguments that encrypt a batch's tar as strongly as
    the strongest encryption among its members' stored headers ({}: none asked for)."""
    best: Mapping[str, str] = {}
    for headers in members:
        algorithm = headers.get(SSE, "")
        if algorithm in _STRENGTH and _STRENGTH.index(algorithm) > _STRENGTH.index(
            best.get(SSE, "")
        ):
            best = headers
    if not best:
        return {}
    args: dict[str, Any] = {"ServerSideEncryption": best[SSE]}
    if best.get(SSE_KMS_KEY):
        args["SSEKMSKeyId"] = best[SSE_KMS_KEY]
    if best.get(SSE_BUCKET_KEY) == "true":
        args["BucketKeyEnabled"] = True
    return args


@dataclass(slots=True)
class _Entry:
    mode: BucketMode
    expires: float
    """``time.monotonic()`` after which the next use refreshes it."""


class BucketModes:
    """The per-bucket cache: ``get`` answers from it, looking a bucket up only when it is
    missing (waiting) or stale (in the background)."""

    def __init__(
        self,
        lookup: Callable[[str], BucketMode],
        *,
        threads: Threads,
        refresh_s: float,
        capacity: int = CAPACITY,
        first_wait_s: float = FIRST_LOOKUP_WAIT_S,
    ) -> None:
        self._lookup = lookup
        self._refresh_s = refresh_s
        self._capacity = capacity
        self._first_wait_s = first_wait_s
        # Its own threads (``Pool.LOOKUP``): a lookup stalled on the network never holds up
        # spool I/O, and close() leaves it behind without waiting.
        self._threads = threads
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._pending: dict[str, asyncio.Task[BucketMode]] = {}
        self._tasks: set[asyncio.Task[BucketMode]] = set()
        """Every lookup running, shared or not (``close`` cancels them)."""
        self._epoch = 0
        """Counts invalidations: a lookup that started before one does not store its answer."""

    async def get(self, bucket: str) -> BucketMode:
        """The bucket's mode (an upstream lookup only on a miss)."""
        mode = self.cached(bucket)
        if mode is None:
            return await self._first(bucket)
        return mode

    def cached(self, bucket: str) -> BucketMode | None:
        """The bucket's mode if it was looked up before (a stale one is refreshed in the
        background, as ``get`` does), without a coroutine: the hot path of a PUT. None:
        ``get`` looks it up."""
        entry = self._entries.get(bucket)
        if entry is None:
            return None
        self._entries.move_to_end(bucket)
        if time.monotonic() >= entry.expires:
            self._refresh(bucket)
        return entry.mode

    async def _first(self, bucket: str) -> BucketMode:
        task = self._refresh(bucket)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self._first_wait_s)
        except TimeoutError:
            logger.warning(
                "s3://%s: its configuration was not read within %.0f s; written to as a plain"
                " bucket until it is",
                bucket,
                self._first_wait_s,
            )
            assumed = BucketMode(known=False)
            if bucket not in self._entries:  # expired at once: the lookup still runs
                self._store(bucket, assumed, 0)
            return assumed

    def invalidate(self, bucket: str) -> None:
        """Forget the bucket's mode: its configuration changed (or may have)."""
        self._epoch += 1
        self._entries.pop(bucket, None)
        self._pending.pop(bucket, None)  # its answer may predate the change: not shared

    def noticed_versions(self, bucket: str) -> None:
        """The bucket gave an object a version id: forget its mode if it said unversioned."""
        entry = self._entries.get(bucket)
        if entry is not None and not entry.mode.versioned:
            self.invalidate(bucket)

    def _refresh(self, bucket: str) -> asyncio.Task[BucketMode]:
        task = self._pending.get(bucket)
        if task is None:
            task = asyncio.create_task(self._look_up(bucket), name=f"bucket-modes-{bucket}")
            self._pending[bucket] = task
            self._tasks.add(task)
            task.add_done_callback(lambda done: self._done(bucket, done))
        return task

    async def _look_up(self, bucket: str) -> BucketMode:
        epoch = self._epoch
        try:
            mode = await self._threads.run(Pool.LOOKUP, self._lookup, bucket)
            ttl = self._refresh_s
        except LookupFailedError as exc:
            old = self._entries.get(bucket)
            mode = old.mode if old is not None else BucketMode(known=False)
            ttl = min(FAILED_RETRY_S, self._refresh_s)
            logger.warning(
                "bucket configuration not read (%s); looked up again in %.0f s", exc, ttl
            )
        if epoch == self._epoch:
            self._store(bucket, mode, ttl)
        return mode

    def _store(self, bucket: str, mode: BucketMode, ttl: float) -> None:
        self._entries[bucket] = _Entry(mode, time.monotonic() + ttl)
        self._entries.move_to_end(bucket)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def _done(self, bucket: str, task: asyncio.Task[BucketMode]) -> None:
        self._tasks.discard(task)
        if self._pending.get(bucket) is task:
            del self._pending[bucket]
        if not task.cancelled() and task.exception() is not None:
            logger.error("looking up s3://%s failed", bucket, exc_info=task.exception())

    async def close(self) -> None:
        """Cancel the lookups still running (their waiters get CancelledError)."""
        tasks = list(self._tasks)
        self._pending.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> BucketModes:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
