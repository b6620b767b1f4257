"""The PutObject front door: recorded real-client requests, and S3 XML errors."""

from __future__ import annotations

import hashlib
import socket
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError

from tests.batches import Location, fetch, indexed_objects
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.wire import Recorded, put_object_requests, retarget, send_raw

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

RECORDED = put_object_requests()


def test_recorded_clients_cover_every_body_framing() -> None:
    framings = {
        ("TE" if r.header("transfer-encoding") else "CL", r.header("x-amz-content-sha256") or "-")
        for r in RECORDED
    }
    assert ("TE", "STREAMING-UNSIGNED-PAYLOAD-TRAILER") in framings  # boto3 https, JS streams
    assert ("CL", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD") in framings  # minio-go / restic
    assert ("CL", "UNSIGNED-PAYLOAD") in framings  # rclone, polars
    assert len(RECORDED) > 40


def test_every_recorded_put_object_is_stored_byte_exact(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    port = daemon.settings.server.port
    stored: list[tuple[Recorded, Location]] = []
    forwarded: list[tuple[Recorded, str]] = []
    for record in RECORDED:
        response = send_raw(port, retarget(record.raw, bucket, port))
        if record.header("if-match"):
            # Decided against the batched object of the key: "abc" is not its ETag.
            assert (response.status, _xml(response.body)["Code"]) == (412, "PreconditionFailed")
            continue
        if record.header("if-none-match"):
            # A key the daemon never batched: the bucket decides; the object is stored there.
            assert response.status == 200, (record.case, response.body)
            assert "x-s3batchd-tar" not in response.headers
            key = record.raw.split(b" ")[1].split(b"?")[0].lstrip(b"/").partition(b"/")[2].decode()
            forwarded.append((record, key))
            continue
        analysis = record.meta["analysis"]
        if False in analysis.get("client_checksums_valid", {}).values():
            # The capture server accepted a wrong checksum; S3 (and s3batchd) refuse it.
            assert (response.status, _xml(response.body)["Code"]) == (400, "BadDigest")
            continue
        assert response.status == 200, (record.case, response.body)
        assert response.headers["etag"] == f'"{record.md5_hex}"', record.case
        stored.append((record, Location.from_headers(response.headers)))
    wait_for(lambda: indexed_objects(s3, bucket) == len(stored))
    for record, location in stored:
        assert hashlib.md5(fetch(s3, location)).hexdigest() == record.md5_hex, record.case
    for record, key in forwarded:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.md5(data).hexdigest() == record.md5_hex, record.case
        again = send_raw(port, retarget(record.raw, bucket, port))
        assert (again.status, _xml(again.body)["Code"]) == (412, "PreconditionFailed")
        assert location.length == record.meta["analysis"]["decoded_payload_len"]


def _error(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


def _raw(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    response = send_raw(port, head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
    return response.status, response.headers, response.body


def _xml(body: bytes) -> dict[str, str]:
    root = ET.fromstring(body)  # noqa: S314  our own daemon's answer
    assert root.tag == "Error"
    return {child.tag: child.text or "" for child in root}


def assert_nothing_spooled(daemon: Daemon) -> None:
    spool = daemon.settings.spool.dir
    stored = [
        p for p in spool.rglob("*") if p.is_file() and p.relative_to(spool).parts[0][0] != "_"
    ]
    assert not stored, "a rejected request left data"
    assert daemon.pipeline.batcher.open_batches == 0
    assert daemon.pipeline.catalog.count() == 0


@pytest.mark.parametrize(
    ("call", "status", "code"),
    [
        # Forwarded: the bucket's own error reaches the client unchanged.
        (lambda c, b: c.get_object(Bucket=b, Key="k"), 404, "NoSuchKey"),
        (lambda c, b: c.head_bucket(Bucket="no-such-bucket-s3b"), 404, "404"),
        (
            lambda c, b: c.put_object(Bucket="Bad_Bucket", Key="k", Body=b"x"),
            400,
            "InvalidBucketName",
        ),
        (lambda c, b: c.put_object(Bucket=b, Key="k" * 1025, Body=b"x"), 400, "KeyTooLongError"),
        (
            lambda c, b: c.put_object(
                Bucket=b, Key="k", Body=b"x", ContentMD5="1B2M2Y8AsgTpgAmY7PhCfg=="
            ),
            400,
            "BadDigest",
        ),
        (
            lambda c, b: c.put_object(Bucket=b, Key="k", Body=b"x", ContentMD5="short"),
            400,
            "InvalidDigest",
        ),
        (
            lambda c, b: c.put_object(Bucket=b, Key="k", Body=b"x", ChecksumCRC32="AAAAAA=="),
            400,
            "BadDigest",
        ),
        (  # above max_object_bytes: forwarded, and verified on the way
            lambda c, b: c.put_object(
                Bucket=b, Key="k", Body=b"x" * 2048, ChecksumCRC32="AAAAAA=="
            ),
            400,
            "BadDigest",
        ),
    ],
)
def test_sdk_sees_s3_errors(
    start_daemon: DaemonFactory, bucket: str, call: object, status: int, code: str
) -> None:
    daemon = start_daemon(limits={"max_object_bytes": 1024})
    client = daemon.client(retries={"total_max_attempts": 1})
    with pytest.raises(ClientError) as caught:
        call(client, bucket)  # type: ignore[operator]
    assert _error(caught.value) == (status, code)
    assert caught.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    assert_nothing_spooled(daemon)
    client.head_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as missing:
        daemon.client().head_object(Bucket=bucket, Key="k")
    assert _error(missing.value) == (404, "404")  # nothing reached the bucket either


@pytest.mark.parametrize(
    ("call", "status", "code"),
    [
        (lambda c, b: c.get_object(Bucket=b, Key="k"), 403, "AccessDenied"),
        (lambda c, b: c.delete_object(Bucket=b, Key="k"), 403, "AccessDenied"),
        (lambda c, b: c.put_object_acl(Bucket=b, Key="k", ACL="private"), 403, "AccessDenied"),
        (lambda c, b: c.get_object_acl(Bucket=b, Key="k"), 403, "AccessDenied"),
        (lambda c, b: c.get_bucket_location(Bucket=b), 403, "AccessDenied"),
        (lambda c, b: c.list_buckets(), 403, "AccessDenied"),
        (
            lambda c, b: c.put_object(
                Bucket=b, Key="k", Body=b"x", ServerSideEncryption="aws:kms", SSEKMSKeyId="key"
            ),
            501,
            "NotImplemented",
        ),
        (
            lambda c, b: c.put_object(Bucket=b, Key="k", Body=b"x", ACL="public-read"),
            501,
            "NotImplemented",
        ),
        (
            lambda c, b: c.put_object(
                Bucket=b,
                Key="k",
                Body=b"x",
                ObjectLockMode="GOVERNANCE",
                ObjectLockRetainUntilDate="2030-01-01T00:00:00Z",
            ),
            501,
            "NotImplemented",
        ),
        (
            lambda c, b: c.put_object(
                Bucket=b, Key="k", Body=b"x", SSECustomerAlgorithm="AES256", SSECustomerKey="k" * 32
            ),
            501,
            "NotImplemented",
        ),
        (lambda c, b: c.put_object(Bucket=b, Key="k", Body=b"x" * 2048), 400, "EntityTooLarge"),
    ],
)
def test_without_passthrough_only_batching_is_served(
    start_daemon: DaemonFactory, bucket: str, call: object, status: int, code: str
) -> None:
    """``passthrough = []``: what would need the bucket is refused, saying why."""
    daemon = start_daemon(limits={"max_object_bytes": 1024}, passthrough={"operations": []})
    client = daemon.client(retries={"total_max_attempts": 1})
    with pytest.raises(ClientError) as caught:
        call(client, bucket)  # type: ignore[operator]
    assert _error(caught.value) == (status, code)
    message = caught.value.response["Error"]["Message"]
    assert "passthrough" in message if code == "AccessDenied" else message
    assert_nothing_spooled(daemon)


def test_error_body_is_s3_xml(start_daemon: DaemonFactory, bucket: str) -> None:
    daemon = start_daemon(passthrough={"operations": ["PutObject"]})
    status, headers, body = _raw(
        daemon.settings.server.port,
        f"DELETE /{bucket}/some/key HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 0",
    )
    assert status == 403
    assert headers["content-type"] == "application/xml"
    fields = _xml(body)
    assert fields["Code"] == "AccessDenied"
    assert fields["Resource"] == f"/{bucket}/some/key"
    assert fields["RequestId"] == headers["x-amz-request-id"]
    assert "DeleteObject" in fields["Message"]


def test_put_without_length_is_411(daemon: Daemon, bucket: str) -> None:
    status, _, body = _raw(
        daemon.settings.server.port, f"PUT /{bucket}/k HTTP/1.1\nHost: 127.0.0.1"
    )
    assert status == 411
    assert _xml(body)["Code"] == "MissingContentLength"
    assert_nothing_spooled(daemon)


def test_http_chunked_body_without_length_is_stored(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    status, headers, _ = _raw(
        daemon.settings.server.port,
        f"PUT /{bucket}/chunked HTTP/1.1\nHost: 127.0.0.1\nTransfer-Encoding: chunked",
        chunked,
    )
    assert status == 200
    wait_for(lambda: indexed_objects(s3, bucket) == 1)
    assert fetch(s3, Location.from_headers(headers)) == b"hello world"


def test_absolute_form_request_target_is_served_by_its_path(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    """HTTP/1.1 servers must take ``PUT http://host/path`` (what a client configured with
    the daemon as an HTTP proxy sends)."""
    port = daemon.settings.server.port
    status, headers, _ = _raw(
        port,
        f"PUT http://127.0.0.1:{port}/{bucket}/abs%20form?x-id=PutObject HTTP/1.1\n"
        "Host: 127.0.0.1\nContent-Length: 5",
        b"hello",
    )
    assert status == 200
    assert headers["x-s3batchd-tar"].startswith(f"s3://{bucket}/")
    wait_for(lambda: indexed_objects(s3, bucket) == 1)
    assert fetch(s3, Location.from_headers(headers)) == b"hello"
    assert daemon.pipeline.catalog.get(bucket, "abs form") is not None


def test_aws_chunked_length_mismatch_is_incomplete_body(daemon: Daemon, bucket: str) -> None:
    body = b"5\r\nhello\r\n0\r\n\r\n"
    status, _, answer = _raw(
        daemon.settings.server.port,
        f"PUT /{bucket}/k HTTP/1.1\nHost: 127.0.0.1\nContent-Encoding: aws-chunked\n"
        f"x-amz-decoded-content-length: 6\nContent-Length: {len(body)}",
        body,
    )
    assert status == 400
    assert _xml(answer)["Code"] == "IncompleteBody"
    assert_nothing_spooled(daemon)


def test_early_rejection_closes_the_connection(start_daemon: DaemonFactory, bucket: str) -> None:
    """A 100-continue request refused before its body must not desync the connection."""
    daemon = start_daemon(limits={"max_object_bytes": 10}, passthrough={"operations": []})
    with socket.create_connection(("127.0.0.1", daemon.settings.server.port), timeout=10) as sock:
        sock.sendall(
            f"PUT /{bucket}/big HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        reply = b""
        while b"</Error>" not in reply:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the error arrived"
            reply += chunk
        assert sock.recv(65536) == b"", "the server must close the connection"
    assert reply.startswith(b"HTTP/1.1 400")
    assert b"connection: close" in reply.lower()
    assert b"EntityTooLarge" in reply
    assert_nothing_spooled(daemon)


def test_spool_dir_is_per_bucket(daemon: Daemon, s3: S3Client, bucket: str, tmp_path: Path) -> None:
    other = bucket + "-b"
    s3.create_bucket(Bucket=other)
    client = daemon.client()
    first = client.put_object(Bucket=bucket, Key="k", Body=b"1")
    second = client.put_object(Bucket=other, Key="k", Body=b"2")
    tars = {
        answer["ResponseMetadata"]["HTTPHeaders"]["x-s3batchd-tar"] for answer in (first, second)
    }
    assert {t.split("/")[2] for t in tars} == {bucket, other}
    wait_for(lambda: indexed_objects(s3, bucket) == 1 and indexed_objects(s3, other) == 1)
