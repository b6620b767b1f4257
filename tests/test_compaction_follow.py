"""Compaction with the fleet's SQLite catalogs (catalog.follow): after ``s3batchd compact``,
a second daemon, with its own spool and catalog, and the writing daemon learn the moved keys
from the compacted batch's index by following the bucket, without ``s3batchd reindex``, and
read every live key at its new place once the old batches are gone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from s3batchd.cli.main import main
from s3batchd.cli.seaweed import LocalS3
from tests.batches import indexes, keys
from tests.conftest import wait_for
from tests.daemon_process import DaemonProcess
from tests.test_fleet_postgres import readable, scrape
from tests.test_follow import BATCH, FOLLOW, _daemon

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def _learned(daemon: DaemonProcess) -> float:
    """Indexes of other writers the daemon's follow rounds learned."""
    return scrape(daemon).get(("s3batchd_catalog_follow_indexes_total", ()), 0.0)


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
        assert [d["version"] for d in indexes(s3, bucket) if d["objects"]] == [2]

        for client in (reader, writer):
            for key in live:
                got = client.get_object(Bucket=bucket, Key=key)
                assert got["Body"].read() == bodies[key], key
                assert got["ETag"] == etags[key], key
                assert got["Metadata"] == {"n": key}, key
            for key in deleted:
                with pytest.raises(ClientError):
                    client.get_object(Bucket=bucket, Key=key)


def test_a_following_daemon_reads_every_live_key_throughout_the_in_daemon_compaction(
    tmp_path: Path, s3_server: LocalS3, s3: S3Client, bucket: str
) -> None:
    # A compacts in the daemon; grace_s is longer than B's follow rounds (0.3 s, at most 0.6 s
    # when idle), the condition docs/compaction.md sets for reads through other daemons.
    compaction = {
        "enabled": True,
        "interval_s": 0.5,
        "erase_within_s": 0,
        "payback_days": 1e7,
        "grace_s": 5,
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
        old_tars = {d["tar"]["key"] for d in indexes(s3, bucket)}
        live = sorted(bodies)[6:]
        for key in live:
            wait_for(lambda key=key: readable(reader, bucket, key))  # type: ignore[misc]
        for key in sorted(bodies)[:6]:
            writer.delete_object(Bucket=bucket, Key=key)

        def compacted() -> bool:
            present = set(keys(s3, bucket))
            versions = {d["version"] for d in indexes(s3, bucket) if d["objects"]}
            return versions == {2} and not old_tars & present

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
