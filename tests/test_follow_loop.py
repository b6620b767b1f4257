"""upload/follow.py's Follower on its own: a real catalog file and the session's SeaweedFS,
index objects written straight to the bucket (as another daemon's uploader would)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from s3batchd.catalog.store import Catalog
from s3batchd.concurrency import Threads
from s3batchd.config import CatalogConfig
from s3batchd.index import IndexEntry, WriterId, index_key, new_batch_id, render_index, tar_key
from s3batchd.records import EMPTY_MD5, ObjectRecord
from s3batchd.upload.follow import Follower

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.anyio
PREFIX = "s3batchd/"
OTHER = WriterId(host="other", instance="0000abcd")


def _upload_index(
    s3: S3Client, bucket: str, seq: int, opened: float, records: list[ObjectRecord]
) -> str:
    """An index of another writer's batch opened at ``opened``; its batch id."""
    batch_id = new_batch_id(OTHER, seq, opened)
    entries = [IndexEntry(record=r, member=f"m{n}", offset=1536 * n) for n, r in enumerate(records)]
    body = render_index(
        bucket=bucket,
        batch_id=batch_id,
        tar_key=tar_key(PREFIX, batch_id),
        tar_size=1536 * len(records) + 1024,
        entries=entries,
    )
    s3.put_object(Bucket=bucket, Key=index_key(PREFIX, batch_id), Body=body)
    return batch_id


def _record(key: str, stamp: float, *, deleted: bool = False) -> ObjectRecord:
    return ObjectRecord(
        key=key, size=0 if deleted else 5, md5_hex=EMPTY_MD5, mtime=stamp, deleted=deleted
    )


async def _rounds(follower: Follower, bucket: str, count: int) -> None:
    """Wait for ``count`` more rounds of ``bucket`` (its interval is tiny)."""
    follower.start()
    for _ in range(count):
        waiter = asyncio.get_running_loop().create_future()
        follower.buckets[bucket].waiters.append(waiter)
        await asyncio.wait_for(waiter, 30)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _follower(
    tmp_path: Path, s3: S3Client, bucket: str, lookback_s: float = 120
) -> tuple[Follower, Catalog]:
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    settings = CatalogConfig(
        follow_interval_s=0.05, follow_idle_max_s=0.05, follow_lookback_s=lookback_s
    )
    follower = Follower(
        catalog, s3, prefix=PREFIX, config=settings, threads=Threads(), own_writer="me-00000000"
    )
    follower.follow(bucket)
    return follower, catalog


async def test_a_backfill_learns_objects_and_tombstones_and_skips_a_broken_index(
    tmp_path: Path, s3: S3Client, bucket: str
) -> None:
    now = time.time()
    _upload_index(s3, bucket, 1, now - 600, [_record("a", now - 600), _record("b", now - 600)])
    s3.put_object(
        Bucket=bucket,
        Key=f"{PREFIX}2026/01/01/20260101T000000000Z-x-1-000001.index.json",
        Body=b"{",
    )
    s3.put_object(
        Bucket=bucket, Key=index_key(PREFIX, new_batch_id(OTHER, 2, now - 500)), Body=b"not json"
    )
    _upload_index(s3, bucket, 3, now - 400, [_record("a", now - 400, deleted=True)])
    follower, catalog = _follower(tmp_path, s3, bucket)
    await _rounds(follower, bucket, 1)
    await follower.close()
    state = follower.buckets[bucket]
    assert state.answers
    assert (state.backfill_indexes, state.backfill_objects) == (2, 2)
    assert follower.errors["parse"] == 1  # the index inside the retention; the other is older
    assert catalog.get(bucket, "a") is None  # its tombstone came later
    entry = catalog.get(bucket, "b")
    assert entry is not None
    assert entry.uploaded
    catalog.close()


async def test_an_index_uploaded_late_within_the_lookback_is_learned(
    tmp_path: Path, s3: S3Client, bucket: str
) -> None:
    follower, catalog = _follower(tmp_path, s3, bucket, lookback_s=300)
    await _rounds(follower, bucket, 1)  # the backfill: nothing yet
    now = time.time()
    _upload_index(s3, bucket, 1, now, [_record("new", now)])
    await _rounds(follower, bucket, 2)
    # A batch opened two minutes ago whose upload comes only now (its writer retried):
    # its key sorts before the one learned already.
    _upload_index(s3, bucket, 2, now - 120, [_record("late", now - 120)])
    await _rounds(follower, bucket, 2)
    await follower.close()
    assert catalog.get(bucket, "new") is not None
    assert catalog.get(bucket, "late") is not None
    assert follower.indexes_learned == 2
    catalog.close()


async def test_a_missing_bucket_is_nothing_to_learn(tmp_path: Path, s3: S3Client) -> None:
    follower, catalog = _follower(tmp_path, s3, "t-no-such-bucket")
    await _rounds(follower, "t-no-such-bucket", 1)
    await follower.close()
    assert follower.buckets["t-no-such-bucket"].answers
    assert not follower.errors
    catalog.close()
