"""Real SDKs -> s3batchd -> real S3 (SeaweedFS): batches, indexes and byte ranges."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import tarfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config

from s3batchd.cli.seaweed import LocalS3
from tests.awscli import aws
from tests.batches import Location, fetch, indexed_objects, indexes, keys
from tests.conftest import CHECKSUM_MODES, ChecksumMode, Daemon, DaemonFactory, wait_for
from tests.daemon_process import DaemonProcess
from tests.faultproxy import FaultProxy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def put(client: S3Client, bucket: str, key: str, body: bytes, **extra: Any) -> Location:
    """PutObject through the daemon; checks the ETag and returns the location headers."""
    answer = client.put_object(Bucket=bucket, Key=key, Body=body, **extra)
    assert answer["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    return Location.from_headers(answer["ResponseMetadata"]["HTTPHeaders"])


def download(s3: S3Client, bucket: str, key: str, target: Path) -> Path:
    """Save an object to a local file."""
    target.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return target


@pytest.mark.parametrize("checksums", CHECKSUM_MODES)
def test_concurrent_puts_become_few_batches_with_exact_ranges(
    daemon: Daemon, s3: S3Client, bucket: str, checksums: ChecksumMode, tmp_path: Path
) -> None:
    client = daemon.client(checksums, max_pool_connections=16)
    rng = random.Random(7)
    payloads = {
        f"load/{n:04d}.bin": rng.randbytes(rng.choice([0, 1, 511, 512, 4096, 20_000]))
        for n in range(240)
    }
    payloads["unicode/ü ñ+%!*'()&$@=;:,? ~x.txt"] = b"unicode key"
    payloads["a/../escape"] = b"never extracted outside"

    with ThreadPoolExecutor(8) as pool:
        locations = dict(
            zip(
                payloads,
                pool.map(lambda k: put(client, bucket, k, payloads[k]), payloads),
                strict=True,
            )
        )

    wait_for(lambda: indexed_objects(s3, bucket) == len(payloads))
    for key, location in locations.items():
        assert location.bucket == bucket
        assert fetch(s3, location) == payloads[key], key

    documents = indexes(s3, bucket)
    listed = Counter(obj["key"] for doc in documents for obj in doc["objects"])
    assert listed == Counter(list(payloads))  # every object exactly once
    assert len(documents) < len(payloads) / 10  # batching happened
    for document in documents:
        tar_key = document["tar"]["key"]
        assert tar_key.startswith("s3batchd/")
        head = s3.head_object(Bucket=bucket, Key=tar_key)
        assert head["ContentLength"] == document["tar"]["size"]
        for obj in document["objects"]:
            location = locations[obj["key"]]
            assert (location.tar_key, location.offset, location.length) == (
                tar_key,
                obj["offset"],
                obj["length"],
            )
            assert obj["etag"] == f'"{hashlib.md5(payloads[obj["key"]]).hexdigest()}"'
        local = download(s3, bucket, tar_key, tmp_path / "batch.tar")
        listing = subprocess.run(
            ["tar", "-tvf", str(local)], capture_output=True, text=True, check=True
        )
        assert listing.stderr == ""
        assert len(listing.stdout.splitlines()) == len(document["objects"])
        with tarfile.open(local) as archive:
            assert all(member.isreg() for member in archive.getmembers())
            assert ".s3batchd/" in " ".join(archive.getnames()) or all(
                ".." not in name for name in archive.getnames()
            )


def test_checksum_echo_and_metadata_kept(daemon: Daemon, s3: S3Client, bucket: str) -> None:
    client = daemon.client()
    answer = client.put_object(
        Bucket=bucket,
        Key="doc.json",
        Body=b'{"a": 1}',
        ContentType="application/json",
        Metadata={"origin": "test", "n": "1"},
        CacheControl="max-age=60",
        ChecksumAlgorithm="SHA256",
    )
    expected = base64.b64encode(hashlib.sha256(b'{"a": 1}').digest()).decode()
    assert answer["ChecksumSHA256"] == expected
    wait_for(lambda: indexed_objects(s3, bucket) == 1)
    (obj,) = indexes(s3, bucket)[0]["objects"]
    assert obj["content_type"] == "application/json"
    assert obj["metadata"] == {"origin": "test", "n": "1"}
    assert obj["headers"] == {"cache-control": "max-age=60"}
    assert obj["checksums"] == {"sha256": answer["ChecksumSHA256"]}
    assert obj["member"] == "doc.json"


def test_aws_cli_put_object_and_cp(
    daemon: Daemon, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello from aws-cli\n" * 10)
    answer = aws(
        daemon.url,
        "s3api",
        "put-object",
        "--bucket",
        bucket,
        "--key",
        "cli/api.txt",
        "--body",
        str(small),
    )
    assert json.loads(answer)["ETag"] == f'"{hashlib.md5(small.read_bytes()).hexdigest()}"'
    aws(daemon.url, "s3", "cp", str(small), f"s3://{bucket}/cli/cp.txt")
    wait_for(lambda: indexed_objects(s3, bucket) == 2)
    for obj in (o for doc in indexes(s3, bucket) for o in doc["objects"]):
        location = Location(
            bucket,
            indexes(s3, bucket)[0]["tar"]["key"],
            obj["offset"],
            obj["length"],
            f"bytes={obj['offset']}-{obj['offset'] + obj['length'] - 1}",
        )
        assert fetch(s3, location) == small.read_bytes()


def test_max_records_seals_full_batches(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(batch={"max_records": 5, "linger_ms": 60_000})
    client = daemon.client()
    locations = [put(client, bucket, f"r/{n}", b"x" * n) for n in range(12)]
    wait_for(lambda: indexed_objects(s3, bucket) == 10)
    sizes = sorted(len(doc["objects"]) for doc in indexes(s3, bucket))
    assert sizes == [5, 5]
    assert len({loc.tar_key for loc in locations}) == 3  # the last two wait in an open batch
    daemon.stop()  # shutdown seals and uploads the open batch
    assert sorted(len(doc["objects"]) for doc in indexes(s3, bucket)) == [2, 5, 5]
    assert daemon.pipeline.batcher.sealed_by_reason == {"records": 2, "shutdown": 1}


def test_max_bytes_never_splits_a_record(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(batch={"max_bytes": 16 * 1024, "linger_ms": 60_000})
    client = daemon.client()
    bodies = {f"b/{n}": bytes([n]) * 5000 for n in range(9)}
    locations = {key: put(client, bucket, key, body) for key, body in bodies.items()}
    daemon.stop()
    documents = indexes(s3, bucket)
    assert sum(len(doc["objects"]) for doc in documents) == 9
    for document in documents:
        assert document["tar"]["size"] <= 16 * 1024
    for key, location in locations.items():
        assert fetch(s3, location) == bodies[key]
    assert daemon.pipeline.batcher.sealed_by_reason.get("bytes", 0) >= 3


def test_linger_seals_a_quiet_batch(start_daemon: DaemonFactory, s3: S3Client, bucket: str) -> None:
    daemon = start_daemon(batch={"linger_ms": 200})
    location = put(daemon.client(), bucket, "quiet", b"one lonely object")
    wait_for(lambda: indexed_objects(s3, bucket) == 1, timeout=10)
    assert fetch(s3, location) == b"one lonely object"
    assert daemon.pipeline.batcher.sealed_by_reason == {"linger": 1}


def test_zero_length_object_has_no_range(daemon: Daemon, s3: S3Client, bucket: str) -> None:
    answer = daemon.client().put_object(Bucket=bucket, Key="empty", Body=b"")
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-s3batchd-length"] == "0"
    assert "x-s3batchd-range" not in headers
    assert answer["ETag"] == '"d41d8cd98f00b204e9800998ecf8427e"'


def test_upload_failure_is_retried_until_it_succeeds(
    start_daemon: DaemonFactory, s3_server: LocalS3, s3: S3Client
) -> None:
    # The bucket check before the first write cannot tell (a policy without s3:ListBucket:
    # HeadBucket is 403), so a PUT to a bucket that does not exist yet is accepted, and its
    # upload fails until the bucket is created.
    proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])).start()
    try:
        proxy.set("error", status=403, code="AccessDenied", only_method="HEAD")
        daemon = start_daemon(upstream={"endpoint_url": proxy.url})
        missing = f"t-late-{os.getpid()}-{random.randrange(1 << 30)}"
        location = put(daemon.client(), missing, "k", b"kept until the bucket exists")
        wait_for(lambda: daemon.pipeline.uploader.stats.retries >= 2, timeout=15)
        assert daemon.pipeline.uploader.pending == 1
        s3.create_bucket(Bucket=missing)
        wait_for(lambda: indexed_objects(s3, missing) == 1, timeout=15)
        assert fetch(s3, location) == b"kept until the bucket exists"
        assert daemon.pipeline.uploader.stats.requests["PutObject", "http_404"] >= 2
        assert not list((daemon.settings.spool.dir / missing).iterdir())  # local copy removed
        daemon.stop()
    finally:
        proxy.stop()


def test_virtual_hosted_style(daemon: Daemon, s3: S3Client, bucket: str) -> None:
    # <bucket>.localhost does not resolve on this machine; boto3's proxy setting delivers the
    # request to the daemon with Host: <bucket>.localhost:<port>, as a resolver would.
    client = boto3.client(
        "s3",
        endpoint_url=f"http://localhost:{daemon.settings.server.port}",
        region_name="us-east-1",
        aws_access_key_id="app-key",
        aws_secret_access_key="app-secret",
        config=Config(s3={"addressing_style": "virtual"}, proxies={"http": daemon.url}),
    )
    location = put(client, bucket, "virtual/key.txt", b"virtual hosted")
    assert location.bucket == bucket
    wait_for(lambda: indexed_objects(s3, bucket) == 1)
    assert fetch(s3, location) == b"virtual hosted"


def test_sigterm_seals_and_uploads_open_batches(
    s3_server: LocalS3, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    with DaemonProcess(tmp_path, s3_server, batch={"linger_ms": 600_000}) as process:
        client = process.client()
        locations = [put(client, bucket, f"term/{n}", f"object {n}".encode()) for n in range(5)]
        assert indexed_objects(s3, bucket) == 0
        status = process.terminate()
    assert status == 0
    assert indexed_objects(s3, bucket) == 5
    for n, location in enumerate(locations):
        assert fetch(s3, location) == f"object {n}".encode()
    assert "shutdown: done (all uploaded)" in process.log()
    assert keys(s3, bucket)
