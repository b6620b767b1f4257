"""Whether a bucket exists: asked of the upstream (HeadBucket) before the first batched write
to a bucket, so that a 200 is never given for a bucket the upstream says does not exist
(docs/durability.md).

The answer is cached per bucket (LRU, ``MAX_BUCKETS`` entries) so the check is not one more
upstream round trip per PUT:

======================== =========================== ======================================
HeadBucket answers       the write                   cached for
======================== =========================== ======================================
2xx, 3xx (other region)  accepted                    ``upstream.bucket_check_ttl_s``
403 (no s3:ListBucket)   accepted                    ``upstream.bucket_check_ttl_s``
404                      ``404 NoSuchBucket``        ``upstream.bucket_missing_ttl_s``
nothing, 5xx, other      accepted (buffering is      ``upstream.bucket_missing_ttl_s``
                         the point of the daemon)
======================== =========================== ======================================

Only a write to a bucket without an entry, or whose "missing" entry expired, waits for the
check; concurrent ones share one HeadBucket. Any other expired entry accepts the write at once
and is refreshed in the background. A successful CreateBucket or DeleteBucket through the
daemon drops the bucket's entry (``forget``). An upload that finds the bucket missing (its batch
parked for NoSuchBucket) marks it missing as a 404 would (``missing``), so a bucket deleted
after its check stops taking writes at once instead of after ``upstream.bucket_check_ttl_s``.
Each worker process keeps its own cache.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from s3batchd.errors import NoSuchBucket, ServiceUnavailable

if TYPE_CHECKING:
    from s3batchd.forward.proxy import Forwarder

logger = logging.getLogger(__name__)

#: Buckets whose answer is kept; the least recently written to is forgotten first.
MAX_BUCKETS = 4096


class Answer(enum.Enum):
    """What HeadBucket said about a bucket."""

    EXISTS = "exists"
    DENIED = "denied"
    """403: the credentials may not list the bucket (it may well exist): writes accepted."""
    MISSING = "missing"
    UNKNOWN = "unreachable"
    """No answer, or one that says nothing about the bucket (5xx, timeout): writes accepted."""


def answer_of(status: int | None) -> Answer:
    """The meaning of a HeadBucket status (None: no answer)."""
    if status is None:
        return Answer.UNKNOWN
    if status == 404:
        return Answer.MISSING
    if status == 403:
        return Answer.DENIED
    if status < 400:
        return Answer.EXISTS  # 301 / 307: the bucket exists, in another region
    return Answer.UNKNOWN


@dataclass(slots=True)
class _Entry:
    answer: Answer
    expires: float


HeadBucket = Callable[[str], Awaitable[int | None]]
"""Sends HeadBucket for a bucket: its HTTP status, or None when the upstream did not answer."""


class BucketCheck:
    """The per-bucket cache of HeadBucket answers in front of batched writes."""

    def __init__(
        self,
        head: HeadBucket,
        *,
        ttl_s: float,
        missing_ttl_s: float,
        max_buckets: int = MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
        on_answer: Callable[[Answer], None] | None = None,
    ) -> None:
        self._head = head
        self._ttl = {
            Answer.EXISTS: ttl_s,
            Answer.DENIED: ttl_s,
            Answer.MISSING: missing_ttl_s,
            Answer.UNKNOWN: missing_ttl_s,
        }
        self._max = max_buckets
        self._clock = clock
        self._on_answer = on_answer
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._asking: dict[str, asyncio.Task[Answer]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def accepts(self, bucket: str) -> bool:
        """Whether a fresh cached answer accepts a write to ``bucket``: the hot path of a PUT,
        without a coroutine. False: ``require`` decides (and may wait for HeadBucket)."""
        entry = self._entries.get(bucket)
        if entry is None or entry.answer is Answer.MISSING or entry.expires <= self._clock():
            return False
        self._entries.move_to_end(bucket)
        return True

    async def require(self, bucket: str) -> None:
        """Return if a write to ``bucket`` may be accepted; NoSuchBucket if the upstream
        said it does not exist."""
        entry = self._entries.get(bucket)
        if entry is not None:
            self._entries.move_to_end(bucket)
            fresh = entry.expires > self._clock()
            if entry.answer is not Answer.MISSING:
                if not fresh:
                    self._ask(bucket)  # refreshed in the background; this write goes on
                return
            if fresh:
                raise NoSuchBucket(bucket)
        # Shielded: a client that goes away does not cancel the answer others wait for.
        if await asyncio.shield(self._ask(bucket)) is Answer.MISSING:
            raise NoSuchBucket(bucket)

    def missing(self, bucket: str) -> None:
        """An upload found ``bucket`` missing (NoSuchBucket): writes to it get NoSuchBucket
        until the entry expires (``upstream.bucket_missing_ttl_s``), then it is asked again."""
        self._entries[bucket] = _Entry(Answer.MISSING, self._clock() + self._ttl[Answer.MISSING])
        self._entries.move_to_end(bucket)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        logger.info(
            "bucket %s is missing upstream (an upload found): writes to it get NoSuchBucket", bucket
        )

    def forget(self, bucket: str) -> None:
        """Drop what is known about ``bucket`` (it was created or deleted through the
        daemon)."""
        self._entries.pop(bucket, None)

    async def close(self) -> None:
        """Cancel the checks in flight."""
        tasks = list(self._asking.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _ask(self, bucket: str) -> asyncio.Task[Answer]:
        task = self._asking.get(bucket)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._check(bucket))
            self._asking[bucket] = task
            task.add_done_callback(lambda _: self._asking.pop(bucket, None))
        return task

    async def _check(self, bucket: str) -> Answer:
        try:
            answer = answer_of(await self._head(bucket))
        except Exception:
            logger.exception("checking bucket %s", bucket)
            answer = Answer.UNKNOWN
        if answer is Answer.MISSING:
            logger.info("bucket %s does not exist upstream: writes to it get NoSuchBucket", bucket)
        elif answer is Answer.UNKNOWN:
            logger.warning("bucket %s could not be checked upstream: writes accepted", bucket)
        self._entries[bucket] = _Entry(answer, self._clock() + self._ttl[answer])
        self._entries.move_to_end(bucket)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        if self._on_answer is not None:
            self._on_answer(answer)
        return answer


async def head_bucket(forwarder: Forwarder, bucket: str, *, timeout_s: float) -> int | None:
    """HeadBucket with the daemon's own credentials (those its uploads use): the status, or
    None when the upstream did not answer within ``timeout_s`` (or at all). ``timeout_s`` is
    one deadline for the whole call: httpx's timeouts apply to each phase and each read, so
    an upstream answering a byte at a time would never trip them."""
    try:
        async with asyncio.timeout(timeout_s):
            answer = await forwarder.send("HEAD", bucket, "", [], {}, timeout_s=timeout_s)
            await answer.aclose()
    except (ServiceUnavailable, TimeoutError):  # unreachable, timed out, or no credentials yet
        return None
    return answer.status_code
