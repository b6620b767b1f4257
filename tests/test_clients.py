"""Real S3 client libraries against s3batchd and a real SeaweedFS: each upload comes back
byte-exact, through the range the PUT response names or through a GET via the daemon.

Every test here runs with ``auth.mode = "sigv4"``, so each client's signature is verified too.
docs/compatibility.md is the summary of what passes and what does not (and why).
"""

from __future__ import annotations

import base64
import hashlib
import io
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import boto3
import pytest
from awscrt import checksums as crt
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from minio import Minio

from tests.batches import Location, fetch, indexed_objects
from tests.conftest import CHECKSUM_MODES, ChecksumMode, Daemon, DaemonFactory, wait_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY = "app-key"  # what Daemon.client() signs with
SECRET_KEY = "app-secret"
Algorithm = Literal["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"]
ALGORITHMS: tuple[Algorithm, ...] = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")


@pytest.fixture
def signed(start_daemon: DaemonFactory) -> Daemon:
    """A daemon that verifies every request's signature (SigV4, SigV2, presigned)."""
    keys = [{"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}]
    return start_daemon(auth={"mode": "sigv4", "access_keys": keys})


def expected_checksum(algorithm: Algorithm, data: bytes) -> str:
    """The base64 checksum S3 echoes, computed here independently of s3batchd and botocore."""
    if algorithm == "SHA1":
        digest = hashlib.sha1(data).digest()
    elif algorithm == "SHA256":
        digest = hashlib.sha256(data).digest()
    elif algorithm == "CRC32":
        digest = zlib.crc32(data).to_bytes(4, "big")
    elif algorithm == "CRC32C":
        digest = crt.crc32c(data).to_bytes(4, "big")
    else:
        digest = crt.crc64nvme(data).to_bytes(8, "big")
    return base64.b64encode(digest).decode()


def etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def where(answer: Mapping[str, Any]) -> Location:
    """The location headers of a boto3 PutObject answer."""
    return Location.from_headers(answer["ResponseMetadata"]["HTTPHeaders"])


def assert_uploaded(s3: S3Client, bucket: str, stored: Mapping[Location, bytes]) -> None:
    """Once every batch is indexed, each object's range in its tar holds exactly its bytes."""
    wait_for(lambda: indexed_objects(s3, bucket) == len(stored))
    for location, data in stored.items():
        assert location.bucket == bucket
        assert fetch(s3, location) == data


class NonSeekable(io.RawIOBase):
    """A pipe-like stream: readable once, no seek, no tell, no length."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


# --- boto3 -------------------------------------------------------------------------------


@pytest.mark.parametrize("checksums", CHECKSUM_MODES)
def test_boto3_put_object_with_every_checksum_algorithm(
    signed: Daemon, s3: S3Client, bucket: str, checksums: ChecksumMode
) -> None:
    client = signed.client(checksums)
    stored: dict[Location, bytes] = {}
    for algorithm in ALGORITHMS:
        body = f"checksummed with {algorithm}\n".encode() * 50
        answer = client.put_object(
            Bucket=bucket, Key=f"sum/{algorithm}", Body=body, ChecksumAlgorithm=algorithm
        )
        echoed: Mapping[str, Any] = answer
        assert echoed[f"Checksum{algorithm}"] == expected_checksum(algorithm, body)
        assert answer["ChecksumType"] == "FULL_OBJECT"
        assert answer["ETag"] == etag(body)
        stored[where(answer)] = body
    # Without ChecksumAlgorithm: CRC32 by default (when_supported), no checksum when_required.
    body = b"no algorithm named"
    answer = client.put_object(Bucket=bucket, Key="sum/default", Body=body)
    if checksums == "when_supported":
        assert answer["ChecksumCRC32"] == expected_checksum("CRC32", body)
    else:
        assert "ChecksumCRC32" not in answer
        assert "ChecksumType" not in answer
    stored[where(answer)] = body
    assert_uploaded(s3, bucket, stored)


@pytest.mark.parametrize("checksums", CHECKSUM_MODES)
def test_boto3_file_bodies_and_transfers(
    signed: Daemon, s3: S3Client, bucket: str, checksums: ChecksumMode, tmp_path: Path
) -> None:
    client = signed.client(checksums)
    small = tmp_path / "small.bin"
    small.write_bytes(bytes(range(256)) * 40)
    stored: dict[Location, bytes] = {}

    with small.open("rb") as handle:  # put_object with a file object as Body
        answer = client.put_object(Bucket=bucket, Key="file/put_object", Body=handle)
    assert answer["ETag"] == etag(small.read_bytes())
    stored[where(answer)] = small.read_bytes()

    # s3transfer returns nothing from upload_*: the location comes from a HEAD via the daemon,
    # which names the tar, offset and length (not the range: that is a PUT response header).
    def head_location(key: str) -> Location:
        found = where(client.head_object(Bucket=bucket, Key=key))
        last = found.offset + found.length - 1
        return replace(found, range=f"bytes={found.offset}-{last}" if found.length else None)

    piped = b"from a pipe, length unknown to the client\n" * 100
    pipe = io.BufferedReader(NonSeekable(piped))  # as subprocess stdout would be
    assert not pipe.seekable()
    client.upload_fileobj(pipe, bucket, "file/nonseekable")  # below the multipart threshold
    stored[head_location("file/nonseekable")] = piped

    client.upload_file(str(small), bucket, "file/upload_file")
    stored[head_location("file/upload_file")] = small.read_bytes()

    for key, data in (("file/nonseekable", piped), ("file/upload_file", small.read_bytes())):
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert_uploaded(s3, bucket, stored)


def test_boto3_small_multipart_upload_is_batched(
    signed: Daemon, bucket: str, tmp_path: Path
) -> None:
    """upload_file above multipart_threshold (8 MiB by default; 1 MiB here) uploads in parts;
    below batch.passthrough_bytes the daemon assembles them into one batched object with
    S3's multipart ETag."""
    data = bytes(range(256)) * (2 * 4096)
    large = tmp_path / "large.bin"
    large.write_bytes(data)
    client = signed.client()
    # s3transfer's parts are at least 5 MiB: one part here.
    client.upload_file(
        str(large), bucket, "mpu/large", Config=TransferConfig(multipart_threshold=1024 * 1024)
    )
    head = client.head_object(Bucket=bucket, Key="mpu/large")
    one_part = hashlib.md5(hashlib.md5(data).digest()).hexdigest()
    assert head["ETag"] == f'"{one_part}-1"'
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-s3batchd-tar"].startswith(f"s3://{bucket}/")
    back = tmp_path / "back.bin"
    client.download_file(bucket, "mpu/large", str(back))
    assert back.read_bytes() == data
    assert signed.pipeline.catalog.count() == 1


@pytest.mark.parametrize("version", ["s3v4", "s3"])
def test_boto3_presigned_put_sent_with_urllib(
    signed: Daemon, s3: S3Client, bucket: str, version: str
) -> None:
    """generate_presigned_url: SigV4 query auth (s3v4) and boto3's default, SigV2 (s3)."""
    presigner = boto3.client(
        "s3",
        endpoint_url=signed.url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(signature_version=version),
    )
    key = f"presigned/{version}/ü b+c.txt"
    url = presigner.generate_presigned_url(
        "put_object",
        Params={"Bucket": bucket, "Key": key, "ContentType": "text/plain"},
        ExpiresIn=60,
    )
    assert ("X-Amz-Signature=" in url) == (version == "s3v4")
    body = b"sent by urllib to a presigned URL"
    request = urllib.request.Request(  # noqa: S310  a local http:// URL
        url, body, {"Content-Type": "text/plain"}, method="PUT"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        assert answer.status == 200
        assert answer.headers["ETag"] == etag(body)
        location = Location.from_headers({k.lower(): v for k, v in answer.headers.items()})
    got = signed.client().get_object(Bucket=bucket, Key=key)
    assert (got["Body"].read(), got["ContentType"]) == (body, "text/plain")
    assert_uploaded(s3, bucket, {location: body})


# --- minio-py ------------------------------------------------------------------------------


def minio_client(daemon: Daemon, **extra: Any) -> Minio:
    return Minio(
        f"127.0.0.1:{daemon.settings.server.port}",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        secure=False,
        **extra,
    )


def test_minio_put_fput_and_get(signed: Daemon, s3: S3Client, bucket: str, tmp_path: Path) -> None:
    client = minio_client(signed, region="us-east-1")
    data = b"minio-py put_object with a known length\n" * 30
    first = client.put_object(bucket, "minio/put.bin", io.BytesIO(data), length=len(data))
    assert first.etag == hashlib.md5(data).hexdigest()
    path = tmp_path / "fput.txt"
    path.write_bytes(b"minio-py fput_object\n" * 12)
    second = client.fput_object(bucket, "minio/fput.txt", str(path), content_type="text/plain")
    assert second.etag == hashlib.md5(path.read_bytes()).hexdigest()
    stored = {
        Location.from_headers(first.http_headers): data,
        Location.from_headers(second.http_headers): path.read_bytes(),
    }

    answer = client.get_object(bucket, "minio/fput.txt")
    try:
        assert answer.data == path.read_bytes()
        assert answer.headers["Content-Type"] == "text/plain"
    finally:
        answer.close()
        answer.release_conn()
    info = client.stat_object(bucket, "minio/put.bin")
    assert (info.size, info.etag) == (len(data), first.etag)
    listed = [o.object_name for o in client.list_objects(bucket, prefix="minio/", recursive=True)]
    assert listed == ["minio/fput.txt", "minio/put.bin"]
    assert_uploaded(s3, bucket, stored)


def test_minio_without_region_asks_get_bucket_location(signed: Daemon, bucket: str) -> None:
    """Without region= minio-py first asks GET /bucket?location: forwarded to the bucket."""
    client = minio_client(signed)
    client.put_object(bucket, "minio/no-region", io.BytesIO(b"x"), length=1)
    assert client.get_object(bucket, "minio/no-region").read() == b"x"
    assert signed.pipeline.catalog.count() == 1


# --- any key, byte-exact -------------------------------------------------------------------

# Printable Unicode (str.isprintable: no control, format, surrogate, private-use, unassigned
# or separator characters other than the ASCII space). S3 allows "." and ".." segments, "//",
# "?", "#", "%", "+" and the like; botocore sends each key percent-encoded as it is (no
# dot-segment or slash normalisation, checked for "a/./b", "a/../b", "a//b", "./x", "x/.."),
# so no key needs to be filtered out. Keys starting with "/" are left out only because the
# key would then begin the URL path with "//", which is not what an application means.
PRINTABLE = st.characters(
    codec="utf-8",
    exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
    include_characters=" ",
)
KEYS = st.text(PRINTABLE, min_size=1, max_size=200).filter(lambda key: not key.startswith("/"))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one daemon for all examples
)
@given(key=KEYS, data=st.binary(max_size=2048))
def test_any_printable_key_round_trips(
    signed: Daemon, bucket: str, key: str, data: bytes, written: dict[str, bytes]
) -> None:
    client = signed.client()
    answer = client.put_object(Bucket=bucket, Key=key, Body=data)
    assert answer["ETag"] == etag(data)
    written[key] = data  # the latest PUT of a key wins
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    listed = client.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
    names = [item["Key"] for item in listed]
    # The bucket also holds the daemon's own batches (<upstream.prefix>...tar / .index.json):
    # a key such as "s3" lists those uploaded so far too.
    batches = [n for n in names if n not in written]
    prefix = signed.settings.upstream.prefix
    assert all(n.startswith(prefix) and n.endswith((".tar", ".index.json")) for n in batches)
    assert sorted(n for n in names if n in written) == sorted(
        k for k in written if k.startswith(key)
    )
    assert {item["Key"]: item["Size"] for item in listed}[key] == len(data)


@pytest.fixture
def written() -> dict[str, bytes]:
    """Every key the property test wrote (across its examples) with its latest body."""
    return {}
