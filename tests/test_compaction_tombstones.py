"""Dropping tombstones that hide nothing (compaction/tombstones.py) against SeaweedFS and a
daemon: a dropped tombstone's key stays deleted for a fresh daemon after ``reindex``, and a
tombstone that still hides a write in a batch that is not rewritten travels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from s3batchd.compaction.compactor import Compactor, PassReport
from tests.batches import indexes
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.test_compaction import PREFIX, _env, _invoke, _settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Every rewrite at once (erase deadline 1 ms), the replaced batches deleted by the pass that
#: replaces them, tombstones older than 1 ms droppable.
RULES: dict[str, Any] = {
    "erase_within_s": 0.001,
    "grace_s": 0,
    "payback_days": 1e7,
    "tombstone_horizon_s": 0.001,
}
#: Batches sealed by their number of records (objects and tombstones), never by time.
BATCH = {"linger_ms": 600_000, "max_records": 4}


def _body(key: str) -> bytes:
    """100 bytes whatever the key: dead ratios count objects."""
    return (key * 100).encode()[:100]


def _batches(s3: S3Client, bucket: str, count: int) -> list[dict[str, Any]]:
    wait_for(lambda: len(indexes(s3, bucket)) >= count)
    return sorted(indexes(s3, bucket), key=lambda d: d["batch_id"])


def _tombstones(document: dict[str, Any]) -> list[str]:
    return sorted(t["key"] for t in document.get("tombstones", ()))


def _pass(s3: S3Client, bucket: str, daemon: Daemon, **rules: Any) -> PassReport:
    return Compactor(s3, bucket, _settings(daemon, **{**RULES, **rules})).run()


def _fresh_reads(
    start_daemon: DaemonFactory, tmp_path: Path, bucket: str, gone: list[str], live: list[str]
) -> None:
    """A fresh daemon (its own empty catalog, not following) after ``reindex``: the ``gone``
    keys are NoSuchKey, the ``live`` ones readable."""
    fresh = start_daemon(spool={"dir": str(tmp_path / "fresh")}, catalog={"follow": False})
    _invoke(_env(fresh), "reindex", f"s3://{bucket}/{PREFIX}")
    client = fresh.client()
    for key in gone:
        with pytest.raises(ClientError) as caught:
            client.get_object(Bucket=bucket, Key=key)
        assert caught.value.response["Error"]["Code"] == "NoSuchKey", key
    for key in live:
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == _body(key)


def test_a_tombstone_whose_writes_are_gone_is_dropped_and_its_key_stays_deleted(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    daemon = start_daemon(batch=BATCH)
    client = daemon.client()

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=_body(key))

    for key in ("a", "b", "gone", "c"):
        put(key)
    client.delete_object(Bucket=bucket, Key="gone")
    put("d")
    put("e")
    client.delete_object(Bucket=bucket, Key="e")  # its write in the same batch
    _, second = _batches(s3, bucket, 2)
    assert _tombstones(second) == ["e", "gone"]

    # Pass 1 rewrites both into one: "e"'s tombstone goes (its write is in its own batch,
    # both gone with that batch's index); "gone"'s travels: its write's batch held no
    # tombstone of it, and the two old batches are deleted one after the other.
    report = _pass(s3, bucket, daemon)
    assert len(report.chosen) == 2
    assert report.tombstones_dropped == 1
    (compacted,) = indexes(s3, bucket)
    assert sorted(e["key"] for e in compacted["objects"]) == ["a", "b", "c", "d"]
    assert _tombstones(compacted) == ["gone"]

    # "a" deleted: its tombstone and three more objects fill a new batch; pass 2 rewrites the
    # compacted batch, whose "gone" tombstone now hides nothing in the bucket: dropped.
    client.delete_object(Bucket=bucket, Key="a")
    for key in ("f", "g", "h"):
        put(key)
    _batches(s3, bucket, 2)
    report = _pass(s3, bucket, daemon)
    assert [c.batch.batch_id for c in report.chosen] == [compacted["batch_id"]]
    assert report.tombstones_dropped == 1
    (new,) = [d for d in indexes(s3, bucket) if d["version"] == 2]
    assert sorted(e["key"] for e in new["objects"]) == ["b", "c", "d"]
    assert _tombstones(new) == []  # no tombstone for "gone" any more
    assert all("gone" not in _tombstones(d) for d in indexes(s3, bucket))

    # Pass 3: the batch of "a"'s tombstone hides nothing since "a"'s batch went, but it holds
    # live objects: it stays (no rewrite for a tombstone alone).
    assert _pass(s3, bucket, daemon).emptied == []
    _fresh_reads(
        start_daemon,
        tmp_path,
        bucket,
        gone=["gone", "e", "a"],
        live=["b", "c", "d", "f", "g", "h"],
    )


def test_a_tombstone_hiding_a_write_in_a_batch_not_rewritten_travels(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    daemon = start_daemon(batch=BATCH)
    client = daemon.client()

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=_body(key))

    for key in ("gone", "x1", "x2", "x3"):
        put(key)
    put("y")
    put("z")
    client.delete_object(Bucket=bucket, Key="z")
    client.delete_object(Bucket=bucket, Key="gone")
    _, second = _batches(s3, bucket, 2)
    assert _tombstones(second) == ["gone", "z"]

    # Only the second batch is rewritten (the first: no erase deadline, 1 dead object in 4
    # below the ratio); its "gone" tombstone still hides "gone" in the first: it travels.
    report = _pass(s3, bucket, daemon, erase_within_s=0, min_dead_ratio=0.3)
    assert [c.batch.batch_id for c in report.chosen] == [second["batch_id"]]
    (compacted,) = [d for d in indexes(s3, bucket) if d["version"] == 2]
    assert _tombstones(compacted) == ["gone"]
    assert report.tombstones_dropped == 1  # "z"'s: its write went with its own batch
    _fresh_reads(start_daemon, tmp_path, bucket, gone=["gone", "z"], live=["x1", "x2", "y"])


def test_a_batch_of_tombstones_hiding_nothing_is_deleted_after_grace(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    daemon = start_daemon(batch=BATCH)
    client = daemon.client()
    for key in ("p", "q", "r", "s"):
        client.put_object(Bucket=bucket, Key=key, Body=_body(key))
    for key in ("p", "q", "r", "s"):
        client.delete_object(Bucket=bucket, Key=key)
    objects, tombstones = _batches(s3, bucket, 2)
    assert tombstones["objects"] == []
    # Pass 1: the batch of objects, all dead, holds nothing to carry: deleted outright, no
    # rewrite. The tombstones still hid its writes when the pass surveyed: they stay.
    report = _pass(s3, bucket, daemon)
    assert report.chosen == []
    assert report.emptied == [objects["batch_id"]]
    assert [d["batch_id"] for d in indexes(s3, bucket)] == [tombstones["batch_id"]]
    # Pass 2: they hide nothing; their batch goes.
    report = _pass(s3, bucket, daemon)
    assert report.emptied == [tombstones["batch_id"]]
    assert report.tombstones_dropped == 4
    assert indexes(s3, bucket) == []
    _fresh_reads(start_daemon, tmp_path, bucket, gone=["p", "q", "r", "s"], live=[])
