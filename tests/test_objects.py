"""Reading back through the daemon: GET, HEAD, ranges, conditions, List, and the catalog."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from s3batchd import clock
from s3batchd.catalog.store import CatalogEntry
from s3batchd.cli.seaweed import LocalS3
from s3batchd.handlers import get as objects
from s3batchd.records import ObjectRecord
from tests.awscli import aws
from tests.batches import indexed_objects
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.daemon_process import DaemonProcess

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BODY = bytes(range(256)) * 40  # 10,240 bytes


def put_doc(client: S3Client, bucket: str, key: str = "docs/a.bin", body: bytes = BODY) -> Any:
    return client.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ContentType="application/x-test",
        Metadata={"owner": "reader"},
        CacheControl="max-age=60",
        ContentDisposition="attachment",
    )


def assert_object(answer: Any, put: Any, body: bytes | None) -> None:
    assert answer["ETag"] == put["ETag"]
    assert answer["ContentType"] == "application/x-test"
    assert answer["Metadata"] == {"owner": "reader"}
    assert answer["CacheControl"] == "max-age=60"
    assert answer["ContentDisposition"] == "attachment"
    assert answer["ContentLength"] == len(BODY)
    assert abs(answer["LastModified"].timestamp() - time.time()) < 120
    if body is not None:
        assert answer["Body"].read() == body


def test_get_and_head_before_and_after_upload(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(batch={"linger_ms": 60_000})
    client = daemon.client()
    put = put_doc(client, bucket)
    # Still in the local spool (the batch is open).
    assert indexed_objects(s3, bucket) == 0
    assert_object(client.get_object(Bucket=bucket, Key="docs/a.bin"), put, BODY)
    assert_object(client.head_object(Bucket=bucket, Key="docs/a.bin"), put, None)
    daemon.pipeline.catalog.get(bucket, "docs/a.bin")
    # After the batch is uploaded: served with a ranged GET of the tar.
    client.put_object(Bucket=bucket, Key="x", Body=b"x")
    daemon.stop()
    daemon = start_daemon(batch={"linger_ms": 60_000})
    assert indexed_objects(s3, bucket) == 2
    entry = daemon.pipeline.catalog.get(bucket, "docs/a.bin")
    assert entry is not None and entry.uploaded
    client = daemon.client()
    assert_object(client.get_object(Bucket=bucket, Key="docs/a.bin"), put, BODY)


def test_ranges(daemon: Daemon, bucket: str) -> None:
    client = daemon.client()
    put_doc(client, bucket)
    part = client.get_object(Bucket=bucket, Key="docs/a.bin", Range="bytes=100-199")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["ContentRange"] == f"bytes 100-199/{len(BODY)}"
    assert part["Body"].read() == BODY[100:200]
    tail = client.get_object(Bucket=bucket, Key="docs/a.bin", Range="bytes=-10")
    assert tail["Body"].read() == BODY[-10:]
    open_end = client.get_object(Bucket=bucket, Key="docs/a.bin", Range="bytes=10000-")
    assert open_end["Body"].read() == BODY[10000:]
    with pytest.raises(ClientError) as caught:
        client.get_object(Bucket=bucket, Key="docs/a.bin", Range=f"bytes={len(BODY)}-")
    assert caught.value.response["Error"]["Code"] == "InvalidRange"


def test_conditional_requests(daemon: Daemon, bucket: str) -> None:
    client = daemon.client()
    put = put_doc(client, bucket)
    etag = put["ETag"]
    later = datetime.now(tz=UTC) + timedelta(hours=1)
    earlier = datetime.now(tz=UTC) - timedelta(hours=1)
    assert client.get_object(Bucket=bucket, Key="docs/a.bin", IfMatch=etag)["Body"].read() == BODY
    for kwargs, status in (
        ({"IfNoneMatch": etag}, 304),
        ({"IfModifiedSince": later}, 304),
        ({"IfMatch": '"0123"'}, 412),
        ({"IfUnmodifiedSince": earlier}, 412),
    ):
        with pytest.raises(ClientError) as caught:
            client.get_object(Bucket=bucket, Key="docs/a.bin", **kwargs)
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status, kwargs
    assert client.get_object(Bucket=bucket, Key="docs/a.bin", IfModifiedSince=earlier)


def test_checksum_mode_and_latest_put_wins(daemon: Daemon, bucket: str) -> None:
    client = daemon.client()
    client.put_object(Bucket=bucket, Key="k", Body=b"first")
    second = client.put_object(Bucket=bucket, Key="k", Body=b"second", ChecksumAlgorithm="CRC32C")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"second"
    plain = client.head_object(Bucket=bucket, Key="k")
    assert "ChecksumCRC32C" not in plain
    checked = client.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert checked["ChecksumCRC32C"] == second["ChecksumCRC32C"]
    with pytest.raises(ClientError) as caught:
        client.head_object(Bucket=bucket, Key="never-written")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_list_objects_v2_pagination_and_delimiter(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    client = daemon.client()
    keys = sorted([f"dir{d}/file{n:02d}" for d in range(3) for n in range(9)] + ["top", "ü/x"])
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    # Once uploaded, the batch's tar and index are objects of the bucket too, listed only
    # when the listing asks for upstream.prefix (tests/test_listing.py).
    wait_for(lambda: indexed_objects(s3, bucket) == len(keys))
    batch_objects = [c["Key"] for c in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert all(key.startswith("s3batchd/") for key in batch_objects)
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 7}
    )
    listed = [item["Key"] for page in pages for item in page.get("Contents", [])]
    assert listed == sorted(keys)
    mine = client.list_objects_v2(Bucket=bucket, Prefix="s3batchd/")
    assert [c["Key"] for c in mine["Contents"]] == batch_objects
    top = client.list_objects_v2(Bucket=bucket, Delimiter="/")
    prefixes = ["dir0/", "dir1/", "dir2/", "ü/"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == prefixes
    assert [c["Key"] for c in top["Contents"]] == ["top"]
    small = client.list_objects_v2(Bucket=bucket, Delimiter="/", MaxKeys=2)
    assert small["IsTruncated"] and small["KeyCount"] == 2
    rest = client.list_objects_v2(
        Bucket=bucket, Delimiter="/", ContinuationToken=small["NextContinuationToken"]
    )
    assert [p["Prefix"] for p in rest["CommonPrefixes"]] == ["dir2/", "ü/"]
    inside = client.list_objects_v2(Bucket=bucket, Prefix="dir1/", StartAfter="dir1/file04")
    assert [c["Key"] for c in inside["Contents"]] == [f"dir1/file{n:02d}" for n in range(5, 9)]
    v1 = client.list_objects(Bucket=bucket, Prefix="dir0/", MaxKeys=100)
    assert len(v1["Contents"]) == 9


def test_aws_cli_ls_and_cp_back(daemon: Daemon, bucket: str, tmp_path: Path) -> None:
    client = daemon.client()
    client.put_object(Bucket=bucket, Key="logs/one two.txt", Body=b"spaced key")
    client.put_object(Bucket=bucket, Key="logs/b+c.txt", Body=b"plus key")
    listing = aws(daemon.url, "s3", "ls", f"s3://{bucket}/logs/")
    assert "one two.txt" in listing and "b+c.txt" in listing
    target = tmp_path / "back.txt"
    aws(daemon.url, "s3", "cp", f"s3://{bucket}/logs/one two.txt", str(target))
    assert target.read_bytes() == b"spaced key"


def test_catalog_survives_restarts_and_is_rebuilt_from_the_spool(
    s3_server: LocalS3, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    with DaemonProcess(tmp_path, s3_server, batch={"linger_ms": 600_000}) as process:
        client = process.client()
        client.put_object(Bucket=bucket, Key="kept", Body=b"survives kill -9")
        process.kill()
        # Lose the catalog too: it is rebuilt from the recovered batch.
        for path in (tmp_path / "spool" / "_catalog").iterdir():
            path.unlink()
        process.start()
        answer = client.get_object(Bucket=bucket, Key="kept")
        assert answer["Body"].read() == b"survives kill -9"
        wait_for(lambda: indexed_objects(s3, bucket) == 1)
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(60) == 0
        process.start()  # the catalog file persisted: served from the uploaded tar
        assert client.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"survives kill -9"
        assert process.terminate() == 0


def test_catalog_retention_forgets_old_objects(start_daemon: DaemonFactory, bucket: str) -> None:
    daemon = start_daemon(catalog={"retention_s": 0.5})
    daemon.client().put_object(Bucket=bucket, Key="old", Body=b"x")
    daemon.stop()
    time.sleep(0.6)
    daemon = start_daemon(catalog={"retention_s": 0.5})
    with pytest.raises(ClientError) as caught:
        daemon.client().get_object(Bucket=bucket, Key="old")
    assert caught.value.response["Error"]["Code"] == "NoSuchKey"


def test_overrides_list_buckets_and_odd_keys(daemon: Daemon, bucket: str) -> None:
    client = daemon.client()
    put = client.put_object(Bucket=bucket, Key="nul\x00key", Body=b"odd key")
    answer = client.get_object(
        Bucket=bucket,
        Key="nul\x00key",
        ResponseContentType="text/html",
        ResponseContentDisposition="inline",
    )
    assert answer["ContentType"] == "text/html"
    assert answer["ContentDisposition"] == "inline"
    assert answer["Body"].read() == b"odd key"
    listed = client.list_objects_v2(Bucket=bucket, Prefix="nul\x00")
    assert [c["Key"] for c in listed["Contents"]] == ["nul\x00key"]
    head = client.head_object(Bucket=bucket, Key="nul\x00key")["ResponseMetadata"]["HTTPHeaders"]
    assert head["x-s3batchd-range"] == put["ResponseMetadata"]["HTTPHeaders"]["x-s3batchd-range"]
    # ListBuckets is forwarded: the bucket's own answer.
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]


@pytest.mark.parametrize(
    "value",
    ["text/html%0D%0AX-Injected:%201", "text/html%0Aevil", "a%00b", "%E2%82%AC", "%FF"],
)
def test_response_override_a_header_cannot_carry_is_invalid_argument(
    daemon: Daemon, bucket: str, value: str
) -> None:
    """CR, LF, NUL or a character beyond Latin-1 in a ``response-*`` override: 400, and the
    connection keeps serving (it was dropped with a traceback, or answered 500)."""
    client = daemon.client()
    client.put_object(Bucket=bucket, Key="doc", Body=b"odd override")
    port = daemon.settings.server.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for query in (f"response-content-type={value}", f"response-expires={value}"):
            sock.sendall(f"GET /{bucket}/doc?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            answer = http.client.HTTPResponse(sock, method="GET")
            answer.begin()
            body = answer.read()
            assert answer.status == 400, body
            assert b"<Code>InvalidArgument</Code>" in body
            assert answer.getheader("X-Injected") is None
        sock.sendall(f"GET /{bucket}/doc HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        answer = http.client.HTTPResponse(sock, method="GET")
        answer.begin()
        assert (answer.status, answer.read()) == (200, b"odd override")


def test_a_read_racing_the_seal_finds_the_batch_under_one_of_its_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batch is sealed (renamed .open -> .tar) right after the reader's first open.
    directory = tmp_path / "spool" / "bkt"
    directory.mkdir(parents=True)
    batch_id = "20261122T000000000Z-test-000001"
    (directory / f"{batch_id}.open").write_bytes(b"x" * 512 + b"the object")
    real_open = os.open
    opened: list[str] = []

    def open_then_seal(path: Any, flags: int, mode: int = 0o777) -> int:
        opened.append(Path(path).name)
        try:
            return real_open(path, flags, mode)
        finally:
            if len(opened) == 1:
                (directory / f"{batch_id}.open").rename(directory / f"{batch_id}.tar")

    monkeypatch.setattr(os, "open", open_then_seal)
    entry = CatalogEntry(
        bucket="bkt",
        batch_id=batch_id,
        tar_key=f"s3batchd/{batch_id}.tar",
        member="k",
        offset=512,
        record=ObjectRecord(key="k", size=10, md5_hex=hashlib.md5(b"the object").hexdigest()),
        uploaded=False,
    )
    assert objects.read_local((tmp_path / "spool",), entry, 0, 9) == b"the object"


def test_a_corrupt_catalog_is_moved_aside_and_rebuilt_from_the_spool(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    with DaemonProcess(tmp_path, s3_server, batch={"linger_ms": 600_000}) as process:
        client = process.client()
        client.put_object(Bucket=bucket, Key="kept", Body=b"in the spool")
        process.kill()
        catalog = tmp_path / "spool" / "_catalog" / "catalog.sqlite3"
        for path in catalog.parent.iterdir():
            path.unlink()
        catalog.write_bytes(os.urandom(100_000))

        process.start()

        answer = client.get_object(Bucket=bucket, Key="kept")
        assert answer["Body"].read() == b"in the spool"
        [aside] = catalog.parent.glob("catalog.sqlite3.corrupt-*")
        assert aside.stat().st_size == 100_000
        assert process.terminate() == 0


def _error_of(call: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_spool_read_never_serves_bytes_that_do_not_match_the_etag(
    start_daemon: DaemonFactory, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = start_daemon(batch={"linger_ms": 600_000})
    client = daemon.client(retries={"total_max_attempts": 1})
    large = os.urandom(3 * 1024 * 1024)  # hashed in several reads
    puts = {
        key: client.put_object(Bucket=bucket, Key=key, Body=body)
        for key, body in (("small", BODY), ("large", large), ("intact", b"intact"))
    }
    [spool_file] = (daemon.settings.spool.dir / bucket).iterdir()
    for key, position in (("small", 5000), ("large", 2_500_000)):
        offset = int(puts[key]["ResponseMetadata"]["HTTPHeaders"]["x-s3batchd-offset"])
        _flip(spool_file, offset + position)

    for key in ("small", "large"):
        whole = partial(client.get_object, Bucket=bucket, Key=key)
        assert _error_of(whole) == (500, "InternalError")
        # A range away from the damage is refused too: the object no longer matches its ETag.
        ranged = partial(client.get_object, Bucket=bucket, Key=key, Range="bytes=0-99")
        assert _error_of(ranged) == (500, "InternalError")
    assert client.get_object(Bucket=bucket, Key="intact")["Body"].read() == b"intact"
    part = client.get_object(Bucket=bucket, Key="intact", Range="bytes=1-3")
    assert part["Body"].read() == b"nta"
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(f"s3://{bucket}/small" in m and "not served" in m for m in logged), logged


@pytest.mark.parametrize("damage", ["flipped-byte", "shorter-tar"])
def test_a_bucket_read_never_serves_bytes_that_do_not_match_the_etag(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, damage: str
) -> None:
    daemon = start_daemon(batch={"linger_ms": 600_000})
    put = daemon.client().put_object(Bucket=bucket, Key="k", Body=BODY)
    daemon.stop()  # uploads the batch
    daemon = start_daemon(batch={"linger_ms": 600_000})
    client = daemon.client(retries={"total_max_attempts": 1})
    entry = daemon.pipeline.catalog.get(bucket, "k")
    assert entry is not None and entry.uploaded
    tar = s3.get_object(Bucket=bucket, Key=entry.tar_key)["Body"].read()
    offset = int(put["ResponseMetadata"]["HTTPHeaders"]["x-s3batchd-offset"])
    if damage == "flipped-byte":
        position = offset + 5000
        tar = tar[:position] + bytes([tar[position] ^ 0xFF]) + tar[position + 1 :]
    else:
        tar = tar[: offset + 5000]
    s3.put_object(Bucket=bucket, Key=entry.tar_key, Body=tar)

    assert _error_of(lambda: client.get_object(Bucket=bucket, Key="k")) == (500, "InternalError")
    past_the_cut = partial(client.get_object, Bucket=bucket, Key="k", Range="bytes=4990-5009")
    if damage == "shorter-tar":
        assert _error_of(past_the_cut) == (500, "InternalError")
        beyond = partial(client.get_object, Bucket=bucket, Key="k", Range="bytes=6000-6009")
        assert _error_of(beyond) == (500, "InternalError")


def test_the_latest_write_wins_after_the_clock_steps_back(
    start_daemon: DaemonFactory, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The system clock steps back 5 s (NTP, a resumed VM): the daemon's later writes still win,
    before and after the upload, and across a restart."""
    daemon = start_daemon(batch={"linger_ms": 600_000})
    client = daemon.client()
    client.put_object(Bucket=bucket, Key="overwritten", Body=b"older")
    client.put_object(Bucket=bucket, Key="deleted", Body=b"before the delete")
    client.delete_object(Bucket=bucket, Key="deleted")
    client.put_object(Bucket=bucket, Key="restarted", Body=b"before the restart")
    real_time = time.time
    # In-process daemon: this is its system clock (the test's client signs with it too).
    monkeypatch.setattr(time, "time", lambda: real_time() - 5.0)

    client.put_object(Bucket=bucket, Key="overwritten", Body=b"newer")
    client.put_object(Bucket=bucket, Key="deleted", Body=b"after the delete")

    def body(key: str) -> bytes:
        data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return data

    assert body("overwritten") == b"newer"
    assert body("deleted") == b"after the delete"
    daemon.stop()  # uploads; the catalog remembers the rows
    monkeypatch.setattr(clock, "_CLOCK", clock.WriteClock())  # as a new process starts
    daemon = start_daemon(batch={"linger_ms": 600_000})
    client = daemon.client()
    assert body("overwritten") == b"newer"
    assert body("deleted") == b"after the delete"
    client.put_object(Bucket=bucket, Key="restarted", Body=b"after the restart")
    assert body("restarted") == b"after the restart"
