"""Following the bucket: the catalog learns every writer's batches from the index objects.

Each daemon writes its batches' indexes under ``upstream.prefix`` with keys that sort by the
time the batch was opened (``index.index_key``: ``<prefix>YYYY/MM/DD/<batch id>.index.json``).
The ``Follower`` lists, per bucket the daemon serves, the keys of batches opened since its previous
round started (less ``catalog.follow_lookback_s``: an index is uploaded a little after its batch was
opened, and another writer's may arrive after a newer one), GETs each new index and writes its rows
(objects, tombstones, attribute updates) into the catalog through ``CatalogTarget``: the catalog
already resolves the latest write of a key by write stamp, then batch id, in any order of arrival.
The first round of a bucket is its backfill: every index of the last ``catalog.retention_s``.

A bucket's catalog "answers" once its backfill finished and its last round succeeded: until
then (or while rounds fail) a key missing from the catalog may be one it has not learned, and
the read handlers answer ``503 SlowDown`` rather than ``NoSuchKey``. Failures never reach
writes: they are logged, counted in ``errors`` and retried at the next round.

Why one module above 400 lines: one loop and the per-bucket state it keeps (position, backfill
progress, errors) that the metrics, ``s3batchd status`` and the read handlers read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from s3batchd.concurrency import Pool, Threads
from s3batchd.errors import IndexFormatError
from s3batchd.index import (
    IndexEntry,
    batch_created,
    batch_writer,
    entries_from_index,
    index_batch_id,
    parse_index,
    replaced_batches,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from mypy_boto3_s3 import S3Client

    from s3batchd.config import CatalogConfig

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Index GETs in flight at once per follower (a backfill of many small indexes is bound by
#: round trips, not bytes).
FETCH_AT_ONCE = 8
#: Longest time a read that the catalog cannot answer yet waits for its bucket's first round
#: (most buckets' first round takes a few listing round trips: the read then gets the true
#: answer instead of 503 SlowDown). No wait once a round has failed.
FIRST_ROUND_WAIT_S = 5.0
#: Seconds between two backfill progress lines in the log.
PROGRESS_EVERY_S = 10.0
#: Rows per catalog transaction: a large index is written in several, so the SQLite write lock
#: is never held long (the event loop's own catalog writes wait for it).
WRITE_ROWS = 1000
#: Seconds before a failed round is tried again (at most ``follow_interval_s``): while the
#: last round of a bucket failed, reads its catalog cannot answer get 503 SlowDown, so the
#: follower finds out soon that the bucket answers again (one failed LIST costs little).
RETRY_FAILED_S = 5.0
#: Failures of the follower's own machinery that end a round (retried at the next one).
ROUND_ERRORS = (ClientError, BotoCoreError, OSError, sqlite3.Error)


class CatalogTarget(Protocol):
    """What the follower needs of a catalog backend (``store.Catalog`` is one)."""

    def put_many(
        self,
        bucket: str,
        batch_id: str,
        tar_key: str,
        entries: Iterable[IndexEntry],
        *,
        uploaded: bool,
    ) -> None:
        """Record rows of one batch (one transaction)."""

    def put_index(self, bucket: str, document: dict[str, Any]) -> list[IndexEntry]:
        """Record a whole checked index in one transaction, moving the keys of the batches a
        compacted one (format version 2) replaces."""

    def count(self) -> int:
        """Objects in the catalog."""

    def known_batches(self, bucket: str, batch_ids: Iterable[str]) -> set[str]:
        """Those of ``batch_ids`` whose rows the catalog already has."""


@dataclass(slots=True)
class BucketFollow:
    """How far the catalog follows one bucket."""

    bucket: str
    learned: dict[str, float] = field(default_factory=dict)
    """Index keys learned (or skipped for good) within the lookback, with their batch time."""
    after: str = ""
    """The key up to which every index listed has been learned (where a failed backfill
    goes on)."""
    newest: float = 0.0
    """Batch time (Unix) of the newest index learned; 0: none yet."""
    newest_uploaded: float = 0.0
    """When the most recently uploaded index learned was uploaded (its LastModified)."""
    backfilled: bool = False
    """The first round (every index of the retention) finished."""
    backfill_indexes: int = 0
    backfill_objects: int = 0
    backfill_position: float = 0.0
    """Batch time of the newest index the backfill has read (its progress)."""
    backfill_seconds: float = 0.0
    """How long the backfill took (once finished)."""
    error: str | None = None
    """Why the last round failed (None: it succeeded)."""
    last_round: float = 0.0
    """When the last successful round started (Unix time; 0: none yet)."""
    idle_rounds: int = 0
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    """Reads waiting for the end of the next round (``Follower.settle``)."""
    due: float = 0.0
    """When the next round starts (``time.monotonic()``)."""

    @property
    def answers(self) -> bool:
        """Whether the catalog knows every batch of the bucket as of its last round."""
        return self.backfilled and self.error is None


@dataclass(frozen=True, slots=True)
class _Batch:
    """One index read: its batch's rows."""

    batch_id: str
    tar_key: str
    entries: list[IndexEntry]
    document: dict[str, Any]
    """The checked index (a compacted batch's moves its keys: ``put_index``)."""


@dataclass(frozen=True, slots=True)
class _Index:
    key: str
    batch_id: str
    created: float
    uploaded: float
    own: bool
    """Written by this process (its rows are in the catalog already)."""


class Follower:
    """Tails the index objects of the buckets the daemon serves into the catalog (a
    supervised task: ``start()`` / ``close()``)."""

    def __init__(
        self,
        target: CatalogTarget,
        client: S3Client,
        *,
        prefix: str,
        config: CatalogConfig,
        threads: Threads,
        own_writer: str = "",
    ) -> None:
        """``own_writer``: this process's writer id, whose indexes the catalog already has;
        ``threads``: the process's pools (its calls run on ``Pool.FOLLOW``)."""
        self._target = target
        self._client = client
        self._prefix = prefix
        self._config = config
        self._own = own_writer
        self._threads = threads
        self.buckets: dict[str, BucketFollow] = {}
        self.errors: Counter[str] = Counter()
        """Failed follow calls by operation (list, get, parse, write)."""
        self.indexes_learned = 0
        self.rows = 0
        """Objects in the catalog, as counted after the last round."""
        self.on_learned: Callable[[float], None] | None = None
        """Told how long after its upload each index was learned (rounds after backfill)."""
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.died: BaseException | None = None
        for bucket in config.follow_buckets:
            self.follow(bucket)

    @property
    def retention_s(self) -> float:
        """How far back a backfill reads (``catalog.retention_s``)."""
        return self._config.retention_s

    def follow(self, bucket: str, *, active: bool = False) -> None:
        """Follow ``bucket`` from now on (a new one gets its first round at once);
        ``active``: this daemon writes to it, so it is polled at the full rate again."""
        state = self.buckets.get(bucket)
        if state is None:
            self.buckets[bucket] = BucketFollow(bucket)
            if self._wake is not None:
                self._wake.set()
        elif active and state.idle_rounds:
            state.idle_rounds = 0
            state.due = min(state.due, time.monotonic() + self._config.follow_interval_s)

    def answers(self, bucket: str) -> bool:
        """Whether the catalog can answer for ``bucket`` (a key it lacks is not in any batch
        of the retention); a bucket not followed yet is followed from now on."""
        state = self.buckets.get(bucket)
        if state is None:
            self.follow(bucket)
            return False
        return state.answers

    async def settle(self, bucket: str, wait_s: float = FIRST_ROUND_WAIT_S) -> bool:
        """``answers(bucket)``, after waiting up to ``wait_s`` for the end of the bucket's
        first round when it has not ended yet (never when a round failed: a failing bucket
        is answered at once)."""
        if self.answers(bucket):
            return True
        state = self.buckets[bucket]
        if state.error is not None or self._task is None:
            return False
        waiter = asyncio.get_running_loop().create_future()
        state.waiters.append(waiter)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, wait_s)
        return state.answers

    async def catch_up(self, bucket: str, wait_s: float = FIRST_ROUND_WAIT_S) -> None:
        """Run a round of ``bucket`` now (or let the running one end) and wait up to
        ``wait_s`` for its end: a read found the tar its catalog names gone, and a compacted
        batch may have moved the key (docs/compaction.md)."""
        state = self.buckets.get(bucket)
        if state is None or self._task is None or self._wake is None:
            return
        waiter = asyncio.get_running_loop().create_future()
        state.waiters.append(waiter)
        state.due = time.monotonic()
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, wait_s)

    def start(self) -> None:
        """Start the loop (idempotent)."""
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="catalog-follow")
        self._task.add_done_callback(self._ended)

    async def close(self) -> None:
        """Stop the loop and its threads (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        self.died = task.exception()
        # The catalog no longer follows: reads it cannot answer get 503 from now on.
        for state in self.buckets.values():
            state.error = f"follow loop died: {self.died!r}"
        logger.error("catalog follow loop died", exc_info=self.died)

    async def _run(self) -> None:
        """Start each bucket's round when it is due, side by side (a long backfill of one
        bucket holds up no other); an unexpected error of a round ends the loop."""
        wake = self._wake
        if wake is None:  # start() sets it before the task
            return
        running: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                now = time.monotonic()
                for state in list(self.buckets.values()):
                    if state.bucket not in running and state.due <= now:
                        running[state.bucket] = asyncio.create_task(self._round(state))
                wake.clear()
                waiting = [s.due for s in self.buckets.values() if s.bucket not in running]
                timeout = max(0.0, min(waiting, default=now + 3600) - time.monotonic())
                woken = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait(
                        [woken, *running.values()],
                        timeout=timeout,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    woken.cancel()
                for bucket, task in list(running.items()):
                    if task.done():
                        del running[bucket]
                        task.result()
        finally:
            for task in running.values():
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)

    async def _round(self, state: BucketFollow) -> None:
        """One round of ``state``'s bucket, then the reads waiting for it go on."""
        try:
            await self._round_of(state)
        finally:
            waiters, state.waiters = state.waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _round_of(self, state: BucketFollow) -> None:
        """Failures are logged and end the round (the next starts where it stopped)."""
        started = time.time()
        clock = time.monotonic()
        backfill = not state.backfilled
        try:
            learned = await self._learn_new(state, backfill=backfill)
            self.rows = await self._call(self._target.count)
        except ROUND_ERRORS as exc:
            if state.error is None:
                logger.warning("catalog follow of s3://%s failed: %s", state.bucket, exc)
            state.error = str(exc)
            # Reads the catalog cannot answer get 503 until a round works: tried again soon.
            state.due = time.monotonic() + min(self._config.follow_interval_s, RETRY_FAILED_S)
            return
        if state.error is not None:
            logger.info("catalog follow of s3://%s works again", state.bucket)
        state.error = None
        state.last_round = started
        if backfill:
            state.backfilled = True
            state.backfill_seconds = time.monotonic() - clock
            logger.info(
                "catalog follow: backfill of s3://%s done: %d indexes, %d objects in %.1f s",
                state.bucket,
                state.backfill_indexes,
                state.backfill_objects,
                state.backfill_seconds,
            )
        state.idle_rounds = 0 if learned else state.idle_rounds + 1
        state.due = time.monotonic() + self._interval(state)

    def _interval(self, state: BucketFollow) -> float:
        config = self._config
        cap = max(config.follow_idle_max_s, config.follow_interval_s)
        return float(min(cap, config.follow_interval_s * 2 ** min(state.idle_rounds, 16)))

    async def _learn_new(self, state: BucketFollow, *, backfill: bool) -> int:
        """List and learn the indexes of ``state``'s bucket not learned yet; how many."""
        if backfill:
            since = time.time() - self._config.retention_s
            if not state.after:
                logger.info(
                    "catalog follow: backfill of s3://%s/%s from %s",
                    state.bucket,
                    self._prefix,
                    _iso(since),
                )
            start_after = max(state.after, self._prefix + key_floor(since))
        else:
            # Every index opened since the previous round started (less the lookback: its
            # upload comes later) is listed; earlier ones were listed by earlier rounds.
            start_after = self._prefix + key_floor(self._since(state))
        learned = 0
        token: str | None = None
        progress_at = time.monotonic()
        while True:
            page = await self._call(partial(self._list, state.bucket, start_after, token))
            fresh = [i for i in self._indexes(page) if i.key not in state.learned]
            skip = {i.key for i in fresh if i.own}  # this process's: the catalog has them
            if backfill and fresh:  # a catalog kept across a restart has most of them
                ids = [i.batch_id for i in fresh if not i.own]
                known = await self._call(partial(self._target.known_batches, state.bucket, ids))
                skip.update(i.key for i in fresh if i.batch_id in known)
            for index in fresh:
                if index.key in skip:
                    _mark(state, index)
            fresh = [i for i in fresh if i.key not in skip]
            for at in range(0, len(fresh), FETCH_AT_ONCE):
                chunk = fresh[at : at + FETCH_AT_ONCE]
                learned += await self._learn(state, chunk, backfill=backfill)
                if backfill:
                    state.after = chunk[-1].key
                    if time.monotonic() - progress_at >= PROGRESS_EVERY_S:
                        progress_at = time.monotonic()
                        _log_progress(state)
            self._prune(state)  # a backfill's keys are not all kept in memory
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if token is None:
                break
        return learned

    def _since(self, state: BucketFollow) -> float:
        """Batch time from which the next round lists."""
        return max(state.newest, state.last_round) - self._config.follow_lookback_s

    async def _learn(self, state: BucketFollow, chunk: list[_Index], *, backfill: bool) -> int:
        """GET a few indexes at once and write each into the catalog, in key order."""
        documents = await asyncio.gather(
            *(self._call(partial(self._fetch, state.bucket, index.key)) for index in chunk)
        )
        learned = 0
        for index, document in zip(chunk, documents, strict=True):
            if document is not None:
                entries = await self._call(partial(self._write, state.bucket, document))
                learned += 1
                self.indexes_learned += 1
                if backfill:
                    state.backfill_indexes += 1
                    state.backfill_objects += entries
                    state.backfill_position = max(state.backfill_position, index.created)
                elif self.on_learned is not None:
                    self.on_learned(max(0.0, time.time() - index.uploaded))
            _mark(state, index)
        return learned

    def _prune(self, state: BucketFollow) -> None:
        """Forget learned keys that the next round's listing no longer reaches."""
        floor = self._since(state) - 1
        state.learned = {key: t for key, t in state.learned.items() if t >= floor}

    def _indexes(self, page: dict[str, Any]) -> list[_Index]:
        """The index objects of a listing page."""
        found = []
        for item in page.get("Contents", []):
            key: str = item["Key"]
            batch_id = index_batch_id(key)
            if batch_id is None:
                continue
            created = batch_created(batch_id).timestamp()
            uploaded = item["LastModified"].timestamp()
            own = bool(self._own) and batch_writer(batch_id) == self._own
            found.append(_Index(key, batch_id, created, uploaded, own))
        return found

    async def _call(self, func: Callable[[], T]) -> T:
        return await self._threads.run(Pool.FOLLOW, func)

    def _list(self, bucket: str, start_after: str, token: str | None) -> dict[str, Any]:
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": self._prefix}
        if token is not None:
            args["ContinuationToken"] = token
        elif start_after:
            args["StartAfter"] = start_after
        try:
            return dict(self._client.list_objects_v2(**args))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                return {}  # nothing to learn: reads of it are NoSuchBucket
            self.errors["list"] += 1
            raise
        except ROUND_ERRORS:
            self.errors["list"] += 1
            raise

    def _fetch(self, bucket: str, key: str) -> _Batch | None:
        """The index document; None when it is gone (expired) or not a valid index, which
        is logged, counted and not read again."""
        try:
            body = self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            self.errors["get"] += 1
            raise
        except ROUND_ERRORS:
            self.errors["get"] += 1
            raise
        try:
            return _parse(body, key)
        except IndexFormatError as exc:
            self.errors["parse"] += 1
            logger.error(  # noqa: TRY400  one line: the bucket's data, not a bug here
                "catalog follow: s3://%s/%s is not a valid index: %s", bucket, key, exc
            )
            return None

    def _write(self, bucket: str, batch: _Batch) -> int:
        """Write one index's rows; how many objects it has."""
        entries = batch.entries
        try:
            if replaced_batches(batch.document):  # a compacted batch: its keys move to it
                self._target.put_index(bucket, batch.document)
                return sum(
                    1 for e in entries if not e.record.deleted and e.record.update_of is None
                )
            # In order (objects, then tombstones, then updates), each part idempotent.
            for at in range(0, len(entries), WRITE_ROWS):
                part = entries[at : at + WRITE_ROWS]
                self._target.put_many(bucket, batch.batch_id, batch.tar_key, part, uploaded=True)
        except ROUND_ERRORS:
            self.errors["write"] += 1
            raise
        return sum(1 for e in entries if not e.record.deleted and e.record.update_of is None)


def _parse(body: bytes, key: str) -> _Batch:
    """The rows of an index document (docs/index-format.md), checked as every reader of the
    format checks it (``index.parse_index``: versions 1 and 2)."""
    document = parse_index(body, where=key)
    return _Batch(
        document["batch_id"], document["tar"]["key"], entries_from_index(document), document
    )


def _mark(state: BucketFollow, index: _Index) -> None:
    """``index`` is learned (or need not be read)."""
    state.learned[index.key] = index.created
    state.newest = max(state.newest, index.created)
    state.newest_uploaded = max(state.newest_uploaded, index.uploaded)


def key_floor(moment: float) -> str:
    """The start of the index keys of batches opened at ``moment`` (under the prefix)."""
    when = datetime.fromtimestamp(moment, tz=UTC)
    stamp = when.strftime("%Y%m%dT%H%M%S") + f"{when.microsecond // 1000:03d}"
    return f"{when:%Y/%m/%d}/{stamp}"


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log_progress(state: BucketFollow) -> None:
    behind = max(0.0, time.time() - state.backfill_position)
    logger.info(
        "catalog follow: backfill of s3://%s: %d indexes, %d objects, up to %s (%.0f s behind)",
        state.bucket,
        state.backfill_indexes,
        state.backfill_objects,
        _iso(state.backfill_position),
        behind,
    )
