"""Compaction with the fleet's SQLite catalogs (catalog.follow): after ``s3batchd compact``,
a second daemon, with its own spool and catalog, and the writing daemon learn the moved keys
from the compacted batch's index by following the bucket, without ``s3batchd reindex``, and
read every live key at its new place once the old batches are gone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from s3batchd.cli.main import main
from s3batchd.cli.seaweed import LocalS3
from s3batchd.index import index_key
from tests.batches import indexes, keys
from tests.conftest import wait_for
from tests.daemon_process import DaemonProcess
from tests.test_fleet_postgres import readable, scrape
from tests.test_follow import BATCH, FOLLOW, _daemon

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


PREFIX = "s3batchd/"


def _learned(daemon: DaemonProcess) -> float:
    """Indexes of other writers the daemon's follow rounds learned."""
    return scrape(daemon).get(("s3batchd_catalog_follow_indexes_total", ()), 0.0)


def _keys_of(document: dict[str, Any]) -> set[str]:
    return {entry["key"] for entry in document["objects"]}


def _holding(s3: S3Client, bucket: str, wanted: set[str]) -> set[str]:
    """The tar and index keys of the batches holding one of the ``wanted`` keys."""
    return {
        key
        for document in indexes(s3, bucket)
        if wanted & _keys_of(document)
        for key in (document["tar"]["key"], index_key(PREFIX, document["batch_id"]))
    }


def _known(daemon: DaemonProcess, bucket: str) -> float:
    """Indexes the daemon learned from the bucket: by its backfill and its follow rounds."""
    samples = scrape(daemon)
    backfill = samples.get(("s3batchd_catalog_backfill_indexes", (("bucket", bucket),)), 0.0)
    return backfill + _learned(daemon)


def test_following_daemons_read_every_moved_key_at_its_new_place_without_reindex(
    tmp_path: Path, s3_server: LocalS3, s3: S3Client, bucket: str
) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "S3BATCHD_COMPACTION__ERASE_WITHIN_S": "0",
        "S3BATCHD_COMPACTION__PAYBACK_DAYS": "10000000",
        "S3BATCHD_COMPACTION__MIN_DEAD_RATIO": "0.01",
        "S3BATCHD_COMPACTION__GRACE_S": "3600",
    }
    with _daemon(tmp_path / "a", s3_server) as a, _daemon(tmp_path / "b", s3_server) as b:
        writer, reader = a.client(), b.client()
        bodies = {f"f/{n:02d}": f"follow body {n} ".encode() * (20 + n) for n in range(10)}
        etags = {
            key: writer.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"n": key})["ETag"]
            for key, body in bodies.items()
        }
        wait_for(lambda: sum(len(d["objects"]) for d in indexes(s3, bucket)) == len(bodies))
        deleted = sorted(bodies)[:6]
        live = sorted(bodies)[6:]
        # The batches holding a deleted key (the PUTs may have filled more than one).
        old = _holding(s3, bucket, set(deleted))
        for key in deleted:
            writer.delete_object(Bucket=bucket, Key=key)
        wait_for(lambda: sum(len(d.get("tombstones", [])) for d in indexes(s3, bucket)) == 6)
        # B follows the bucket from its first read: it has learned every batch A uploaded
        # (the writes and the deletes; A's own are in A's catalog already).
        for key in live:
            wait_for(lambda key=key: readable(reader, bucket, key))  # type: ignore[misc]
        uploaded = len(indexes(s3, bucket))
        wait_for(lambda: _known(b, bucket) >= uploaded)
        for key in deleted:
            assert not readable(reader, bucket, key), key
        before = {"a": _learned(a), "b": _learned(b)}

        config = ["--config", str(a.config_path)]
        runner = CliRunner()
        result = runner.invoke(main, ["compact", "--bucket", bucket, *config], env=env)
        assert result.exit_code == 0, result.output
        assert "into 1 new" in result.output
        # Both daemons learn the compacted batch's index by following the bucket (no reindex).
        wait_for(lambda: _learned(a) > before["a"] and _learned(b) > before["b"])
        done = {**env, "S3BATCHD_COMPACTION__GRACE_S": "0"}
        result = runner.invoke(main, ["compact", "--bucket", bucket, *config], env=done)
        assert result.exit_code == 0, result.output
        assert "deleted (did): 0 replaced" not in result.output  # the old batches are gone
        assert not old & set(keys(s3, bucket))
        assert [d["version"] for d in indexes(s3, bucket) if set(deleted) & _keys_of(d)] == []

        for client in (reader, writer):
            for key in live:
                got = client.get_object(Bucket=bucket, Key=key)
                assert got["Body"].read() == bodies[key], key
                assert got["ETag"] == etags[key], key
                assert got["Metadata"] == {"n": key}, key
            for key in deleted:
                with pytest.raises(ClientError):
                    client.get_object(Bucket=bucket, Key=key)


@pytest.mark.parametrize("grace_s", [5, 0])
def test_a_following_daemon_reads_every_live_key_throughout_the_in_daemon_compaction(
    tmp_path: Path, s3_server: LocalS3, s3: S3Client, bucket: str, grace_s: float
) -> None:
    # A compacts in the daemon. With grace_s longer than B's follow rounds (0.3 s, at most
    # 0.6 s when idle) B learns the new batch before the old one goes; with 0 the old tar is
    # gone first, and B's read that finds it missing runs a follow round and reads the key at
    # its new place (before: 404 NoSuchKey for a live key).
    compaction = {
        "enabled": True,
        "interval_s": 0.5,
        "erase_within_s": 0,
        "payback_days": 1e7,
        "min_dead_ratio": 0.01,
        "grace_s": grace_s,
    }
    (tmp_path / "a").mkdir()
    a = DaemonProcess(
        tmp_path / "a",
        s3_server,
        catalog=FOLLOW,
        batch=BATCH,
        compaction=compaction,
    )
    with a, _daemon(tmp_path / "b", s3_server) as b:
        writer, reader = a.client(), b.client()
        bodies = {f"g/{n:02d}": f"daemon body {n} ".encode() * (20 + n) for n in range(10)}
        etags = {
            key: writer.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]
            for key, body in bodies.items()
        }
        wait_for(lambda: sum(len(d["objects"]) for d in indexes(s3, bucket)) == len(bodies))
        deleted = set(sorted(bodies)[:6])
        old = _holding(s3, bucket, deleted)
        live = sorted(bodies)[6:]
        for key in live:
            wait_for(lambda key=key: readable(reader, bucket, key))  # type: ignore[misc]
        for key in deleted:
            writer.delete_object(Bucket=bucket, Key=key)

        def compacted() -> bool:
            return not old & set(keys(s3, bucket))

        # Every live key read through B, again and again, until the old batches are gone.
        failures: list[str] = []
        rounds = 0
        while not compacted():
            rounds += 1
            assert rounds < 2000, "the old batches were not deleted"
            for key in live:
                try:
                    got = reader.get_object(Bucket=bucket, Key=key)
                except ClientError as exc:
                    failures.append(f"{key}: {exc}")
                    continue
                if got["Body"].read() != bodies[key] or got["ETag"] != etags[key]:
                    failures.append(f"{key}: other bytes")
        assert failures == []
        for client in (reader, writer):
            for key in live:
                got = client.get_object(Bucket=bucket, Key=key)
                assert got["Body"].read() == bodies[key], key
                assert got["ETag"] == etags[key], key
