"""Per-bucket decisions: versioned and object-lock buckets, requested and default
server-side encryption, SSE-C headers (docs/passthrough.md#per-bucket-decisions).

boto3 through the daemon against SeaweedFS, which implements versioning, object lock, SSE-S3
and bucket default encryption (not SSE-KMS: it answers InternalError, so KMS is covered by
the pure functions only).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError

from s3batchd.upload.bucketmodes import (
    BucketMode,
    BucketModes,
    Encryption,
    LookupFailedError,
    tar_encryption,
)
from tests.batches import indexed_objects, indexes
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.faultproxy import FaultProxy

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import PutObjectOutputTypeDef

    from s3batchd.cli.seaweed import LocalS3


def _batched(answer: PutObjectOutputTypeDef) -> bool:
    return "x-s3batchd-tar" in answer["ResponseMetadata"]["HTTPHeaders"]


def _versioned_bucket(s3: S3Client) -> str:
    name = f"v-{secrets.token_hex(6)}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def test_versioned_bucket_put_is_forwarded_with_a_version_id(daemon: Daemon, s3: S3Client) -> None:
    bucket = _versioned_bucket(s3)
    client = daemon.client()
    first = client.put_object(Bucket=bucket, Key="k", Body=b"one")
    second = client.put_object(Bucket=bucket, Key="k", Body=b"two")
    assert not _batched(first)
    assert first.get("VersionId")
    assert second.get("VersionId") not in (None, first["VersionId"])
    versions = client.list_object_versions(Bucket=bucket, Prefix="k")["Versions"]
    assert {v["VersionId"] for v in versions} == {first["VersionId"], second["VersionId"]}
    old = client.get_object(Bucket=bucket, Key="k", VersionId=first["VersionId"])
    assert old["Body"].read() == b"one"
    client.delete_object(Bucket=bucket, Key="k", VersionId=second["VersionId"])
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"one"
    assert daemon.pipeline.catalog.count() == 0


def test_suspended_versioning_is_still_a_versioned_bucket(daemon: Daemon, s3: S3Client) -> None:
    """Older versions stay listed and addressable: a batched null version would hide
    behind them in ListObjectVersions, so the PUT is forwarded."""
    bucket = _versioned_bucket(s3)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    answer = daemon.client().put_object(Bucket=bucket, Key="k", Body=b"x")
    assert not _batched(answer)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"


def _lock_bucket(s3: S3Client) -> str:
    name = f"l-{secrets.token_hex(6)}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def test_versioned_bucket_is_batched_when_configured(
    start_daemon: DaemonFactory, s3: S3Client
) -> None:
    """``batch.versioned_buckets = "batch"``; an object-lock bucket is still forwarded."""
    daemon = start_daemon(batch={"versioned_buckets": "batch"})
    bucket = _versioned_bucket(s3)
    client = daemon.client()
    answer = client.put_object(Bucket=bucket, Key="k", Body=b"one")
    assert _batched(answer)
    assert "VersionId" not in answer
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"one"
    locked = client.put_object(Bucket=_lock_bucket(s3), Key="k", Body=b"worm")
    assert not _batched(locked)
    assert locked.get("VersionId")


def test_object_lock_bucket_is_never_batched(daemon: Daemon, s3: S3Client) -> None:
    bucket = _lock_bucket(s3)
    client = daemon.client()
    answer = client.put_object(Bucket=bucket, Key="k", Body=b"worm")
    assert not _batched(answer)
    assert answer.get("VersionId")
    until = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    client.put_object_retention(
        Bucket=bucket, Key="k", Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until}
    )
    client.put_object_legal_hold(Bucket=bucket, Key="k", LegalHold={"Status": "ON"})
    assert client.get_object_retention(Bucket=bucket, Key="k")["Retention"]["Mode"] == "GOVERNANCE"
    assert client.get_object_legal_hold(Bucket=bucket, Key="k")["LegalHold"]["Status"] == "ON"
    assert daemon.pipeline.catalog.count() == 0


def test_versioning_enabled_through_the_daemon_is_noticed(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    """The bucket's configuration is cached; a forwarded PutBucketVersioning drops it."""
    client = daemon.client()
    assert _batched(client.put_object(Bucket=bucket, Key="before", Body=b"x"))
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    after = client.put_object(Bucket=bucket, Key="after", Body=b"y")
    assert not _batched(after)
    assert after.get("VersionId")


def test_requested_sse_s3_is_echoed_and_the_tar_encrypted(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    client = daemon.client()
    answer = client.put_object(
        Bucket=bucket, Key="e", Body=b"secret", ServerSideEncryption="AES256"
    )
    assert _batched(answer)
    assert answer["ServerSideEncryption"] == "AES256"
    assert client.head_object(Bucket=bucket, Key="e")["ServerSideEncryption"] == "AES256"
    got = client.get_object(Bucket=bucket, Key="e")
    assert got["ServerSideEncryption"] == "AES256"
    assert got["Body"].read() == b"secret"
    plain = client.put_object(Bucket=bucket, Key="p", Body=b"plain")
    assert "ServerSideEncryption" not in plain
    tar = answer["ResponseMetadata"]["HTTPHeaders"]["x-s3batchd-tar"].split("/", 3)[3]
    wait_for(lambda: _exists(s3, bucket, tar))
    assert s3.head_object(Bucket=bucket, Key=tar)["ServerSideEncryption"] == "AES256"
    index = tar.removesuffix(".tar") + ".index.json"
    wait_for(lambda: _exists(s3, bucket, index))
    assert s3.head_object(Bucket=bucket, Key=index)["ServerSideEncryption"] == "AES256"
    wait_for(lambda: indexed_objects(s3, bucket) == 2)  # "p" may be in a batch of its own
    # Validated against docs/index.schema.json.
    stored = {o["key"]: o["headers"] for d in indexes(s3, bucket) for o in d["objects"]}
    assert stored == {"e": {"x-amz-server-side-encryption": "AES256"}, "p": {}}


def _exists(s3: S3Client, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return False
    return True


def test_bucket_default_encryption_is_echoed(daemon: Daemon, s3: S3Client, bucket: str) -> None:
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    client = daemon.client()
    answer = client.put_object(Bucket=bucket, Key="d", Body=b"x")
    assert _batched(answer)
    assert answer["ServerSideEncryption"] == "AES256"
    assert client.head_object(Bucket=bucket, Key="d")["ServerSideEncryption"] == "AES256"


def test_sse_c_key_without_its_algorithm_is_refused(daemon: Daemon, bucket: str) -> None:
    client = daemon.client()
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=bucket, Key="c", Body=b"x", SSECustomerKey="k" * 32)
    assert refused.value.response["Error"]["Code"] == "InvalidArgument"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert daemon.pipeline.catalog.count() == 0


def test_tar_encryption_is_the_strongest_a_member_has() -> None:
    aes = {"x-amz-server-side-encryption": "AES256"}
    kms = {
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": "arn:aws:kms:us-east-1:1:key/a",
        "x-amz-server-side-encryption-bucket-key-enabled": "true",
    }
    assert tar_encryption([{}, {}]) == {}
    assert tar_encryption([{}, aes, {}]) == {"ServerSideEncryption": "AES256"}
    assert tar_encryption([aes, kms, aes]) == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "arn:aws:kms:us-east-1:1:key/a",
        "BucketKeyEnabled": True,
    }


def test_encryption_headers_are_the_ones_s3_echoes() -> None:
    assert Encryption("AES256").headers() == {"x-amz-server-side-encryption": "AES256"}
    assert Encryption("aws:kms", "key-1", bucket_key=True).headers() == {
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": "key-1",
        "x-amz-server-side-encryption-bucket-key-enabled": "true",
    }


class _FakeLookup:
    """Answers lookups from a table; blocks until released; counts the calls."""

    def __init__(self) -> None:
        self.modes: dict[str, BucketMode | Exception] = {}
        self.calls: list[str] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, bucket: str) -> BucketMode:
        self.calls.append(bucket)
        self.release.wait(30)
        mode = self.modes.get(bucket, BucketMode())
        if isinstance(mode, Exception):
            raise mode
        return mode


def test_concurrent_first_lookups_share_one_request() -> None:
    asyncio.run(_concurrent_first_lookups_share_one_request())


async def _concurrent_first_lookups_share_one_request() -> None:
    lookup = _FakeLookup()
    lookup.modes["b"] = BucketMode(versioning="Enabled")
    lookup.release.clear()
    async with BucketModes(lookup, refresh_s=300) as modes:
        waiting = [asyncio.ensure_future(modes.get("b")) for _ in range(20)]
        await asyncio.sleep(0)
        lookup.release.set()
        answers = await asyncio.gather(*waiting)
        assert {a.versioning for a in answers} == {"Enabled"}
        assert (await modes.get("b")).versioning == "Enabled"
    assert lookup.calls == ["b"]


def test_an_invalidated_bucket_is_looked_up_again() -> None:
    asyncio.run(_an_invalidated_bucket_is_looked_up_again())


async def _an_invalidated_bucket_is_looked_up_again() -> None:
    lookup = _FakeLookup()
    async with BucketModes(lookup, refresh_s=300) as modes:
        assert not (await modes.get("b")).object_lock
        lookup.modes["b"] = BucketMode(object_lock=True)
        assert not (await modes.get("b")).object_lock  # cached
        modes.invalidate("b")
        assert (await modes.get("b")).object_lock
    assert lookup.calls == ["b", "b"]


def test_a_failed_lookup_keeps_the_last_known_mode() -> None:
    asyncio.run(_a_failed_lookup_keeps_the_last_known_mode())


async def _a_failed_lookup_keeps_the_last_known_mode() -> None:
    """Every use of a stale entry starts a refresh (one at a time); failed ones keep it."""
    lookup = _FakeLookup()
    lookup.modes["b"] = BucketMode(versioning="Enabled")
    async with BucketModes(lookup, refresh_s=1e-9) as modes:
        assert (await modes.get("b")).versioning == "Enabled"
        lookup.modes["b"] = LookupFailedError("unreachable")
        for _ in range(3000):  # until two refreshes failed
            assert (await modes.get("b")).versioning == "Enabled"
            if len(lookup.calls) >= 3:
                break
            await asyncio.sleep(0.01)
        assert len(lookup.calls) >= 3
        assert (await modes.get("b")).versioning == "Enabled"
        lookup.modes["new"] = LookupFailedError("unreachable")
        assert await modes.get("new") == BucketMode(known=False)


def test_the_cache_is_bounded() -> None:
    asyncio.run(_the_cache_is_bounded())


async def _the_cache_is_bounded() -> None:
    lookup = _FakeLookup()
    async with BucketModes(lookup, refresh_s=300, capacity=2) as modes:
        for bucket in ("a", "b", "c", "a"):
            await modes.get(bucket)
    assert lookup.calls == ["a", "b", "c", "a"]


def test_multipart_upload_into_a_versioned_bucket_is_the_buckets(
    daemon: Daemon, s3: S3Client
) -> None:
    bucket = _versioned_bucket(s3)
    client = daemon.client()
    upload = client.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    part = client.upload_part(Bucket=bucket, Key="m", UploadId=upload, PartNumber=1, Body=b"p")
    done = client.complete_multipart_upload(
        Bucket=bucket,
        Key="m",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert done.get("VersionId")
    assert s3.get_object(Bucket=bucket, Key="m")["Body"].read() == b"p"
    assert daemon.pipeline.catalog.count() == 0


def test_held_multipart_upload_echoes_its_encryption(
    daemon: Daemon, bucket: str, s3: S3Client
) -> None:
    client = daemon.client()
    created = client.create_multipart_upload(Bucket=bucket, Key="m", ServerSideEncryption="AES256")
    assert created["ServerSideEncryption"] == "AES256"
    upload = created["UploadId"]
    part = client.upload_part(Bucket=bucket, Key="m", UploadId=upload, PartNumber=1, Body=b"p")
    done = client.complete_multipart_upload(
        Bucket=bucket,
        Key="m",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert "x-s3batchd-tar" in done["ResponseMetadata"]["HTTPHeaders"]
    assert done["ServerSideEncryption"] == "AES256"
    assert client.head_object(Bucket=bucket, Key="m")["ServerSideEncryption"] == "AES256"


def test_copy_of_a_batched_object_into_a_versioned_bucket_is_written_there(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    client = daemon.client()
    source = client.put_object(
        Bucket=bucket, Key="src", Body=b"data", Metadata={"m": "1"}, ContentType="text/plain"
    )
    assert _batched(source)
    target = _versioned_bucket(s3)
    copied = client.copy_object(
        Bucket=target, Key="dst", CopySource={"Bucket": bucket, "Key": "src"}
    )
    assert copied.get("VersionId")
    assert copied["CopyObjectResult"]["ETag"] == source["ETag"]
    [version] = client.list_object_versions(Bucket=target)["Versions"]
    assert version["VersionId"] == copied["VersionId"]
    back = s3.get_object(Bucket=target, Key="dst")
    assert back["Body"].read() == b"data"
    assert back["Metadata"] == {"m": "1"}
    assert back["ContentType"] == "text/plain"


def test_a_first_lookup_without_an_answer_does_not_hold_puts() -> None:
    asyncio.run(_first_lookup_without_an_answer())


async def _first_lookup_without_an_answer() -> None:
    """The bucket does not answer: PUTs go on as into a plain bucket, and the answer, when it
    comes, is used from then on (one lookup in all)."""
    lookup = _FakeLookup()
    lookup.modes["b"] = BucketMode(object_lock=True)
    lookup.release.clear()
    async with BucketModes(lookup, refresh_s=300, first_wait_s=0.01) as modes:
        assert await modes.get("b") == BucketMode(known=False)
        assert await modes.get("b") == BucketMode(known=False)
        lookup.release.set()
        for _ in range(3000):
            if (await modes.get("b")).object_lock:
                break
            await asyncio.sleep(0.01)
        assert (await modes.get("b")).object_lock
    assert lookup.calls == ["b"]


@pytest.fixture
def proxy(s3_server: LocalS3) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's SeaweedFS."""
    fault_proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])).start()
    yield fault_proxy
    fault_proxy.stop()


def test_configuration_reads_denied_leave_the_bucket_plain(
    proxy: FaultProxy,
    start_daemon: DaemonFactory,
    s3: S3Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A policy without s3:GetBucketVersioning etc.: the features are assumed off, and the
    log says which action to grant (docs/operations.md#iam-policy)."""
    daemon = start_daemon(upstream={"endpoint_url": proxy.url})
    bucket = _versioned_bucket(s3)
    proxy.set("error", status=403, code="AccessDenied", only_method="GET")
    with caplog.at_level(logging.WARNING, logger="s3batchd.upload.bucketmodes"):
        answer = daemon.client().put_object(Bucket=bucket, Key="k", Body=b"x")
    proxy.set("pass")
    assert _batched(answer)
    assert "GetBucketVersioning: AccessDenied; assumed off" in caplog.text


def test_without_forwarding_a_versioned_bucket_refuses_puts(
    start_daemon: DaemonFactory, s3: S3Client
) -> None:
    daemon = start_daemon(passthrough={"operations": []})
    bucket = _versioned_bucket(s3)
    with pytest.raises(ClientError) as refused:
        daemon.client().put_object(Bucket=bucket, Key="k", Body=b"x")
    assert refused.value.response["Error"]["Code"] == "NotImplemented"
    assert "Versioning is Enabled" in refused.value.response["Error"]["Message"]
