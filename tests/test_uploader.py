"""Uploading sealed batches to a real S3 (SeaweedFS): single PUT, multipart, idempotent retries."""

from __future__ import annotations

import hashlib
import json
import random
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from s3batchd.config import Settings, UploadConfig
from s3batchd.constants import MB
from s3batchd.errors import ConflictError
from s3batchd.index import WriterId, new_batch_id
from s3batchd.records import ObjectRecord, SealedBatch
from s3batchd.s3.body import BodyBuffer
from s3batchd.spool.files import SpoolFile
from s3batchd.upload.uploader import BatchUpload, FileSection, UploadStats
from s3batchd.upload.upstream import make_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3batchd.cli.seaweed import LocalS3


def sealed_batch(directory: Path, bucket: str, bodies: list[bytes]) -> SealedBatch:
    """A real sealed spool file holding ``bodies``."""
    spool = SpoolFile.create(
        directory / bucket,
        bucket=bucket,
        batch_id=new_batch_id(WriterId.generate("test"), random.randrange(1 << 20)),
        prefix="batches/",
    )
    for number, data in enumerate(bodies):
        body = BodyBuffer(memory_limit=1 * MB, spill_dir=directory / "tmp")
        body.write(data)
        record = ObjectRecord(
            key=f"obj/{number}", size=len(data), md5_hex=hashlib.md5(data).hexdigest()
        )
        spool.append(record, body)
        body.close()
    spool.write_end()
    spool.sync()
    return spool.finish("test")


def uploader(client: Any, **config: Any) -> tuple[BatchUpload, UploadStats]:
    stats = UploadStats()
    return BatchUpload(client, UploadConfig(**config), stats), stats


def test_single_put_retry_after_lost_answer_is_idempotent(
    s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    batch = sealed_batch(tmp_path, bucket, [b"a" * 100, b"b" * 700])
    steps, stats = uploader(s3)
    steps.tar(batch)
    steps.index(batch)
    # A retry whose first attempt succeeded (answer lost): 412, then HEAD proves it is ours.
    steps.tar(batch)
    steps.index(batch)
    assert stats.requests["PutObject", "http_412"] == 2
    assert stats.requests["HeadObject", "ok"] == 2
    tar = s3.get_object(Bucket=bucket, Key=batch.tar_key)["Body"].read()
    assert tar == batch.path.read_bytes()
    index = json.loads(s3.get_object(Bucket=bucket, Key=batch.index_key)["Body"].read())
    assert [o["key"] for o in index["objects"]] == ["obj/0", "obj/1"]
    assert index["tar"] == {"bucket": bucket, "key": batch.tar_key, "size": batch.size}


def test_another_object_under_the_key_is_a_conflict(
    s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    batch = sealed_batch(tmp_path, bucket, [b"mine"])
    s3.put_object(Bucket=bucket, Key=batch.tar_key, Body=b"somebody else's")
    steps, _ = uploader(s3)
    with pytest.raises(ConflictError):
        steps.tar(batch)
    assert s3.get_object(Bucket=bucket, Key=batch.tar_key)["Body"].read() == b"somebody else's"


def test_large_batch_uses_parallel_multipart(s3: S3Client, bucket: str, tmp_path: Path) -> None:
    rng = random.Random(3)
    bodies = [rng.randbytes(3 * MB + n) for n in range(4)]  # ~12 MiB tar
    batch = sealed_batch(tmp_path, bucket, bodies)
    steps, stats = uploader(
        s3, multipart_threshold_bytes=5 * MB, part_size_bytes=5 * MB, part_concurrency=3
    )
    steps.tar(batch)
    assert stats.requests["UploadPart", "ok"] == 3
    assert stats.requests["CompleteMultipartUpload", "ok"] == 1
    assert s3.get_object(Bucket=bucket, Key=batch.tar_key)["Body"].read() == batch.path.read_bytes()
    steps.tar(batch)  # the retry of a completed multipart upload settles on the 412 too
    assert stats.requests["HeadObject", "ok"] == 1
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


class CountingParts:
    """The real client, noting how many UploadPart calls were in flight as each began."""

    def __init__(self, client: S3Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._now = 0
        self.at_start: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_part(self, **kwargs: Any) -> Any:
        with self._lock:
            self._now += 1
            self.at_start.append(self._now)
        try:
            return self._client.upload_part(**kwargs)
        finally:
            with self._lock:
                self._now -= 1


def test_parts_at_once_is_asked_again_as_each_part_ends(
    s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    rng = random.Random(5)
    batch = sealed_batch(tmp_path, bucket, [rng.randbytes(5 * MB) for _ in range(8)])
    client = CountingParts(s3)
    answers = iter([1, 1, 1, 1])  # one at a time for the first four parts, then four at once
    stats = UploadStats()
    config = UploadConfig(
        multipart_threshold_bytes=5 * MB, part_size_bytes=5 * MB, part_concurrency=4
    )
    BatchUpload(cast("S3Client", client), config, stats, lambda: next(answers, 4)).tar(batch)
    assert len(client.at_start) == 9  # 40 MiB and eight 512-byte headers: 9 parts
    assert client.at_start[:4] == [1, 1, 1, 1]
    assert max(client.at_start[4:]) > 1
    assert stats.requests["UploadPart", "ok"] == 9
    assert s3.get_object(Bucket=bucket, Key=batch.tar_key)["Body"].read() == batch.path.read_bytes()


class FailingPart:
    """The real client, except that UploadPart number ``fail`` raises a connection error."""

    def __init__(self, client: S3Client, fail: int) -> None:
        self._client = client
        self._fail = fail
        self.aborted: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_part(self, **kwargs: Any) -> Any:
        if kwargs["PartNumber"] == self._fail:
            raise ConnectionResetError("injected: connection reset during part upload")
        return self._client.upload_part(**kwargs)

    def abort_multipart_upload(self, **kwargs: Any) -> Any:
        self.aborted.append(kwargs["UploadId"])
        return self._client.abort_multipart_upload(**kwargs)


def test_failed_multipart_upload_is_aborted(s3: S3Client, bucket: str, tmp_path: Path) -> None:
    batch = sealed_batch(tmp_path, bucket, [bytes(6 * MB), bytes(5 * MB)])
    client = FailingPart(s3, fail=2)
    steps, _ = uploader(client, multipart_threshold_bytes=5 * MB, part_size_bytes=5 * MB)
    with pytest.raises(ConnectionResetError):
        steps.tar(batch)
    assert len(client.aborted) == 1
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    retry, _ = uploader(s3, multipart_threshold_bytes=5 * MB, part_size_bytes=5 * MB)
    retry.tar(batch)  # the next attempt starts over and succeeds
    assert s3.get_object(Bucket=bucket, Key=batch.tar_key)["Body"].read() == batch.path.read_bytes()


def test_the_upload_client_reads_parts_in_large_pieces(
    s3_server: LocalS3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over http botocore signs the payload. awscrt's signer, which botocore takes whenever
    # awscrt is installed, hashed it in 4 KiB reads (2,048 per 8 MiB part, each a trip
    # through the GIL); the daemon's client signs with botocore's own signer (1 MiB reads).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    requested: list[int] = []
    read = FileSection.read

    def counting(self: FileSection, size: int = -1) -> bytes:
        requested.append(size)
        return read(self, size)

    monkeypatch.setattr(FileSection, "read", counting)
    settings = Settings.model_validate({"upstream": {"endpoint_url": s3_server.endpoint_url}})
    client = make_client(settings.upstream, settings.upload)
    rng = random.Random(7)
    batch = sealed_batch(tmp_path, bucket, [rng.randbytes(1 * MB) for _ in range(20)])
    steps, stats = uploader(client, multipart_threshold_bytes=16 * MB, part_size_bytes=8 * MB)
    steps.tar(batch)  # signed, so SeaweedFS checked the signatures
    assert stats.requests[("UploadPart", "ok")] == 3
    assert min(requested) >= 128 * 1024
    assert len(requested) < 3 * 100
