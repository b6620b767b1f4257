"""Compaction with the fleet's PostgreSQL catalog: after ``s3batchd compact`` and
``s3batchd reindex``, a second daemon reads every moved key at its new place once the old
batches are gone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from s3batchd.cli.main import main
from s3batchd.cli.seaweed import LocalS3
from tests.batches import indexes
from tests.conftest import wait_for
from tests.postgres import LocalPostgres
from tests.test_fleet_postgres import fleet_daemon, readable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def test_a_second_daemon_reads_every_moved_key_from_the_fleet_catalog(
    tmp_path: Path,
    s3_server: LocalS3,
    s3: S3Client,
    postgres_dsn: str,
    postgres_server: LocalPostgres,
    bucket: str,
) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "S3BATCHD_COMPACTION__ERASE_WITHIN_S": "0",
        "S3BATCHD_COMPACTION__PAYBACK_DAYS": "10000000",
        "S3BATCHD_COMPACTION__GRACE_S": "3600",
    }
    with (
        fleet_daemon(tmp_path / "a", s3_server, postgres_dsn) as a,
        fleet_daemon(tmp_path / "b", s3_server, postgres_dsn) as b,
    ):
        writer, reader = a.client(), b.client()
        bodies = {f"f/{n:02d}": f"fleet body {n} ".encode() * (20 + n) for n in range(10)}
        etags = {
            key: writer.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"n": key})["ETag"]
            for key, body in bodies.items()
        }
        wait_for(lambda: sum(len(d["objects"]) for d in indexes(s3, bucket)) == len(bodies))
        deleted = sorted(bodies)[:6]
        for key in deleted:
            writer.delete_object(Bucket=bucket, Key=key)
        wait_for(lambda: sum(len(d.get("tombstones", [])) for d in indexes(s3, bucket)) == 6)
        for key in sorted(bodies)[6:]:
            wait_for(lambda key=key: readable(reader, bucket, key))  # type: ignore[misc]

        config = ["--config", str(a.config_path)]
        runner = CliRunner()
        result = runner.invoke(main, ["compact", "--bucket", bucket, *config], env=env)
        assert result.exit_code == 0, result.output
        assert "into 1 new" in result.output
        result = runner.invoke(main, ["reindex", f"s3://{bucket}/s3batchd/", *config], env=env)
        assert result.exit_code == 0, result.output
        done = {**env, "S3BATCHD_COMPACTION__GRACE_S": "0"}
        result = runner.invoke(main, ["compact", "--bucket", bucket, *config], env=done)
        assert result.exit_code == 0, result.output
        assert "deleted (did): 0 replaced" not in result.output  # the old batches are gone
        assert [d["version"] for d in indexes(s3, bucket) if d["objects"]] == [2]

        for client in (reader, writer):
            for key in sorted(bodies)[6:]:
                got = client.get_object(Bucket=bucket, Key=key)
                assert got["Body"].read() == bodies[key], key
                assert got["ETag"] == etags[key], key
                assert got["Metadata"] == {"n": key}, key
            for key in deleted:
                with pytest.raises(ClientError):
                    client.get_object(Bucket=bucket, Key=key)


def test_the_compact_command_moves_keys_in_the_fleet_catalog_without_a_reindex(
    tmp_path: Path,
    s3_server: LocalS3,
    s3: S3Client,
    postgres_dsn: str,
    postgres_server: LocalPostgres,
    bucket: str,
) -> None:
    # With catalog.backend = "postgres" no daemon follows the bucket: the command itself
    # must write each new batch into the fleet's catalog before the old ones are deleted.
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "S3BATCHD_COMPACTION__ERASE_WITHIN_S": "0",
        "S3BATCHD_COMPACTION__PAYBACK_DAYS": "10000000",
        "S3BATCHD_COMPACTION__GRACE_S": "0",
    }
    with fleet_daemon(tmp_path / "a", s3_server, postgres_dsn) as a:
        client = a.client()
        bodies = {f"g/{n:02d}": f"fleet body {n} ".encode() * (20 + n) for n in range(10)}
        etags = {
            key: client.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]
            for key, body in bodies.items()
        }
        wait_for(lambda: sum(len(d["objects"]) for d in indexes(s3, bucket)) == len(bodies))
        deleted = sorted(bodies)[:6]
        for key in deleted:
            client.delete_object(Bucket=bucket, Key=key)
        wait_for(lambda: sum(len(d.get("tombstones", [])) for d in indexes(s3, bucket)) == 6)

        config = ["--config", str(a.config_path)]
        runner = CliRunner()
        for _ in range(2):  # rewrite, then delete the replaced batches (grace 0)
            result = runner.invoke(main, ["compact", "--bucket", bucket, *config], env=env)
            assert result.exit_code == 0, result.output
        assert [d["version"] for d in indexes(s3, bucket) if d["objects"]] == [2]

        for key in sorted(bodies)[6:]:
            got = client.get_object(Bucket=bucket, Key=key)
            assert got["Body"].read() == bodies[key], key
            assert got["ETag"] == etags[key], key
