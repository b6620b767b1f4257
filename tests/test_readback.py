"""Every object read back four ways with identical bytes and headers: through the daemon
before and after the flush, with the reader library, and with ``s3batchd get``."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from click.testing import CliRunner

from s3batchd.cli.main import main
from s3batchd.cli.seaweed import LocalS3
from s3batchd.reader import Location, get
from tests.batches import indexed_objects
from tests.conftest import DaemonFactory, wait_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

KEYS = {
    "plain.txt": b"hello",
    "dir/sub/ü ñ+%&=.bin": bytes(range(256)) * 9,
    "line\nbreak": b"a key with a newline",
    "empty": b"",
}
HEADERS = ("ETag", "ContentType", "ContentLength", "Metadata", "CacheControl")


def summary(answer: Any) -> dict[str, Any]:
    return {name: answer.get(name) for name in HEADERS}


def cli_get(settings_dir: Path, s3_server: LocalS3, url: str, out: Path) -> bytes:
    env = {
        "S3BATCHD_SPOOL__DIR": str(settings_dir),
        "S3BATCHD_UPSTREAM__ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    result = CliRunner().invoke(main, ["get", url, "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    return out.read_bytes()


def test_four_ways_give_identical_bytes_and_headers(
    start_daemon: DaemonFactory, s3_server: LocalS3, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    daemon = start_daemon(batch={"linger_ms": 60_000})
    client = daemon.client()
    put: dict[str, Any] = {}
    before: dict[str, tuple[bytes, dict[str, Any]]] = {}
    for key, body in KEYS.items():
        put[key] = client.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType="text/x-test",
            Metadata={"n": str(len(body))},
            CacheControl="no-cache",
        )
        answer = client.get_object(Bucket=bucket, Key=key)  # 1: from the spool
        before[key] = (answer["Body"].read(), summary(answer))
    assert indexed_objects(s3, bucket) == 0
    spool = daemon.settings.spool.dir
    for key, body in KEYS.items():
        assert cli_get(spool, s3_server, f"s3://{bucket}/{key}", tmp_path / "spooled") == body
    daemon.stop()
    wait_for(lambda: indexed_objects(s3, bucket) == len(KEYS))

    daemon = start_daemon(batch={"linger_ms": 60_000})
    client = daemon.client()
    for key, body in KEYS.items():
        after = client.get_object(Bucket=bucket, Key=key)  # 2: one ranged GET of the tar
        headers = put[key]["ResponseMetadata"]["HTTPHeaders"]
        location = Location.from_headers(headers)
        via_reader = get(s3, location)  # 3: the reader library, straight from the bucket
        via_cli = cli_get(spool, s3_server, f"s3://{bucket}/{key}", tmp_path / "out")  # 4
        assert before[key][0] == after["Body"].read() == via_reader == via_cli == body, key
        assert before[key][1] == summary(after), key
        assert after["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'


def test_reindex_rebuilds_the_catalog_from_index_objects(
    start_daemon: DaemonFactory, s3_server: LocalS3, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    daemon = start_daemon()
    client = daemon.client()
    for key, body in KEYS.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    daemon.stop()
    assert indexed_objects(s3, bucket) == len(KEYS)
    fresh = tmp_path / "other-host"  # a machine that never wrote these objects
    env = {
        "S3BATCHD_SPOOL__DIR": str(fresh),
        "S3BATCHD_UPSTREAM__ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    missing = CliRunner().invoke(main, ["get", f"s3://{bucket}/plain.txt"], env=env)
    assert missing.exit_code == 1
    assert "not in the catalog" in missing.output
    result = CliRunner().invoke(main, ["reindex", f"s3://{bucket}/s3batchd/"], env=env)
    assert result.exit_code == 0, result.output
    assert f"{len(KEYS)} objects" in result.output
    for key, body in KEYS.items():
        assert cli_get(fresh, s3_server, f"s3://{bucket}/{key}", tmp_path / "x") == body
    bad = CliRunner().invoke(main, ["get", "not-a-url"], env=env)
    assert bad.exit_code == 2
    assert "not an s3:// URL" in bad.output
