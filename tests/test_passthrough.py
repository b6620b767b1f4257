"""One endpoint for everything: what the daemon does not batch goes to the bucket.

Real clients (aws-cli, boto3's transfer manager, presigned URLs) through the daemon, against
SeaweedFS; every case checks the bytes that come back.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import time
import urllib.request
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.awscli import aws
from tests.batches import indexed_objects
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.daemon_process import DaemonProcess

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import (
        CompletedMultipartUploadTypeDef,
        CompletedPartTypeDef,
        CopySourceTypeDef,
    )

    from s3batchd.cli.seaweed import LocalS3

MiB = 1024 * 1024


def _data(size: int, seed: str) -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * 1024  # 32 KiB, not compressible by accident
    return (block * (size // len(block) + 1))[:size]


def _batched(answer: dict[str, object]) -> bool:
    headers = answer["ResponseMetadata"]["HTTPHeaders"]  # type: ignore[index]
    return "x-s3batchd-tar" in headers


def test_aws_cli_cp_large_file_goes_to_the_bucket_and_back(
    daemon: Daemon, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    """50 MiB: aws-cli uploads in 8 MiB parts; the first part passes batch.passthrough_bytes,
    so the upload becomes a real multipart upload in the bucket."""
    data = _data(50 * MiB, "cp")
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    aws(daemon.url, "s3", "cp", str(source), f"s3://{bucket}/cli/big.bin", timeout=300)
    direct = s3.head_object(Bucket=bucket, Key="cli/big.bin")
    assert direct["ContentLength"] == len(data)
    assert direct["ETag"].endswith('-7"')  # 6 parts of 8 MiB and one of 2 MiB, S3's own ETag
    back = tmp_path / "back.bin"
    aws(daemon.url, "s3", "cp", f"s3://{bucket}/cli/big.bin", str(back), timeout=300)
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert daemon.pipeline.catalog.count() == 0
    # No part is left in the spool; the completed upload's answer is kept for an hour, for a
    # retried Complete.
    kept = list((daemon.settings.spool.dir / "_multipart").rglob("*"))
    assert not [p for p in kept if p.name.startswith("part-")]
    assert sum(p.stat().st_size for p in kept if p.is_file()) < 4096
    assert daemon.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_aws_cli_sync_mixed_sizes_and_ls(
    daemon: Daemon, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    (source / "deep").mkdir(parents=True)
    files = {f"small-{i}.txt": _data(100 + i, f"s{i}") for i in range(12)}
    files["deep/large-a.bin"] = _data(12 * MiB, "a")
    files["large-b.bin"] = _data(9 * MiB, "b")
    written = time.time() - 60  # SeaweedFS keeps whole seconds: files older than the sync
    for name, content in files.items():
        (source / name).write_bytes(content)
        os.utime(source / name, (written, written))
    aws(daemon.url, "s3", "sync", str(source), f"s3://{bucket}/sync/", timeout=300)
    # The small files are batched, the large ones are objects in the bucket.
    assert daemon.pipeline.catalog.count() == 12
    assert s3.head_object(Bucket=bucket, Key="sync/large-b.bin")["ContentLength"] == 9 * MiB
    listed = aws(daemon.url, "s3", "ls", "--recursive", f"s3://{bucket}/sync/", timeout=300)
    names = sorted(line.split()[-1] for line in listed.splitlines())
    assert names == sorted(f"sync/{name}" for name in files)
    top = aws(daemon.url, "s3", "ls", f"s3://{bucket}/sync/", timeout=300)
    assert "PRE deep/" in top
    # A second sync finds nothing to do (sizes and times agree), and a sync back is exact.
    again = aws(daemon.url, "s3", "sync", str(source), f"s3://{bucket}/sync/", timeout=300)
    assert again.strip() == ""
    target = tmp_path / "target"
    aws(daemon.url, "s3", "sync", f"s3://{bucket}/sync/", str(target), timeout=300)
    for name, content in files.items():
        assert (target / name).read_bytes() == content, name


@pytest.mark.parametrize("checksums", ["when_supported", "when_required"])
def test_boto3_transfer_manager_defaults(
    daemon: Daemon, s3: S3Client, bucket: str, tmp_path: Path, checksums: str
) -> None:
    client = daemon.client(checksums)  # type: ignore[arg-type]
    for name, size in (("small.bin", 300 * 1024), ("large.bin", 20 * MiB)):
        data = _data(size, name)
        path = tmp_path / name
        path.write_bytes(data)
        client.upload_file(str(path), bucket, f"tm/{name}")
        back = tmp_path / f"back-{name}"
        client.download_file(bucket, f"tm/{name}", str(back))
        assert back.read_bytes() == data
    assert daemon.pipeline.catalog.get(bucket, "tm/small.bin") is not None
    assert daemon.pipeline.catalog.get(bucket, "tm/large.bin") is None
    assert s3.head_object(Bucket=bucket, Key="tm/large.bin")["ContentLength"] == 20 * MiB


def test_large_put_object_is_forwarded_with_the_bucket_answer(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    data = _data(9 * MiB, "put")
    answer = daemon.client().put_object(
        Bucket=bucket, Key="big", Body=data, Metadata={"color": "blue"}, ContentType="x/y"
    )
    assert not _batched(answer)  # type: ignore[arg-type]
    direct = s3.get_object(Bucket=bucket, Key="big")
    assert direct["Body"].read() == data
    assert direct["Metadata"] == {"color": "blue"}
    assert direct["ContentType"] == "x/y"
    assert answer["ETag"] == direct["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'


def test_forwarded_request_with_a_non_ascii_header_gets_a_clear_error(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="plain", Body=b"x")
    connection = http.client.HTTPConnection("127.0.0.1", daemon.settings.server.port, timeout=30)
    connection.putrequest("GET", f"/{bucket}/plain")
    connection.putheader("x-amz-meta-note", "café".encode())  # raw UTF-8
    connection.endheaders()
    answer = connection.getresponse()
    body = answer.read().decode()
    connection.close()
    assert answer.status == 400
    assert "<Code>InvalidArgument</Code>" in body and "x-amz-meta-note" in body


def test_forwarded_body_failing_verification_is_not_stored(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    """The trailer that completes a forwarded body goes only after verification."""
    client = daemon.client(retries={"total_max_attempts": 1})
    for body in (_data(9 * MiB, "bad"), b""):
        with pytest.raises(ClientError) as caught:
            client.put_object(
                Bucket=bucket,
                Key="bad",
                Body=body,
                ChecksumSHA256="47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",  # of b""
                ContentMD5="AAAAAAAAAAAAAAAAAAAAAA==",
            )
        assert caught.value.response["Error"]["Code"] == "BadDigest"
    with pytest.raises(ClientError) as missing:
        s3.head_object(Bucket=bucket, Key="bad")
    assert missing.value.response["Error"]["Code"] == "404"


def test_presigned_get_of_batched_and_unbatched_keys(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(
        auth={
            "mode": "sigv4",
            "access_keys": [{"access_key_id": "app-key", "secret_access_key": "app-secret"}],
        }
    )
    client = daemon.client()
    client.put_object(Bucket=bucket, Key="batched.txt", Body=b"from the batch")
    s3.put_object(Bucket=bucket, Key="plain.txt", Body=b"from the bucket")
    for key, expected in (("batched.txt", b"from the batch"), ("plain.txt", b"from the bucket")):
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=60
        )
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310  loopback http
            assert answer.read() == expected
    tampered = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "plain.txt"}, ExpiresIn=60
    ).replace("plain.txt", "batched.txt")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(tampered, timeout=10)  # noqa: S310  loopback http
    assert caught.value.code == 403
    caught.value.close()


def test_delete_hides_batched_keys_and_writes_a_tombstone(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    client = daemon.client()
    for key in ("a", "b", "c"):
        client.put_object(Bucket=bucket, Key=f"d/{key}", Body=key.encode())
    s3.put_object(Bucket=bucket, Key="d/plain", Body=b"plain")
    client.delete_object(Bucket=bucket, Key="d/a")
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "d/b"}, {"Key": "d/plain"}]})
    for key in ("d/a", "d/b", "d/plain"):
        with pytest.raises(ClientError) as caught:
            client.get_object(Bucket=bucket, Key=key)
        assert caught.value.response["Error"]["Code"] == "NoSuchKey"
    listed = client.list_objects_v2(Bucket=bucket, Prefix="d/")
    assert [c["Key"] for c in listed["Contents"]] == ["d/c"]
    # The next index records the deletes; the bytes stay in the earlier batch's tar.
    wait_for(lambda: _tombstones(s3, bucket) == {"d/a", "d/b"})
    assert client.get_object(Bucket=bucket, Key="d/c")["Body"].read() == b"c"


def _tombstones(s3: S3Client, bucket: str) -> set[str]:
    found: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            if item["Key"].endswith(".index.json"):
                document = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
                found.update(t["key"] for t in document.get("tombstones", []))
    return found


def test_overwrite_in_the_bucket_hides_the_batched_object(daemon: Daemon, bucket: str) -> None:
    client = daemon.client()
    client.put_object(Bucket=bucket, Key="k", Body=b"small, batched")
    large = _data(9 * MiB, "over")
    client.put_object(Bucket=bucket, Key="k", Body=large)
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == large
    client.put_object(Bucket=bucket, Key="k", Body=b"small again")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"small again"


@pytest.mark.parametrize("v2", [True, False])
@pytest.mark.parametrize("delimiter", ["", "/"])
def test_list_pagination_across_batched_and_unbatched_keys(
    daemon: Daemon, s3: S3Client, bucket: str, v2: bool, delimiter: str
) -> None:
    client = daemon.client()
    batched = ["p/a", "p/c/1", "p/c/2", "p/e", "p/g/x/1", "p/h", "p/z"]
    plain = ["p/b", "p/c/3", "p/d", "p/f/1", "p/g/y", "p/h2", "p/y"]
    for key in batched:
        client.put_object(Bucket=bucket, Key=key, Body=b"batched " + key.encode())
    for key in plain:
        s3.put_object(Bucket=bucket, Key=key, Body=b"plain " + key.encode())
    everything = sorted(batched + plain)
    if delimiter:
        expected = sorted(
            {"/".join(k.split("/")[:2]) + ("/" if k.count("/") > 1 else "") for k in everything}
        )
    else:
        expected = everything
    for page_size in (1, 2, 3, 1000):
        paginator = client.get_paginator("list_objects_v2" if v2 else "list_objects")
        seen: list[str] = []
        pages = paginator.paginate(
            Bucket=bucket,
            Prefix="p/",
            Delimiter=delimiter,
            PaginationConfig={"PageSize": page_size},
        )
        for page in pages:
            keys = [c["Key"] for c in page.get("Contents", [])]
            prefixes = [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            assert len(keys) + len(prefixes) <= page_size
            seen.extend(keys + prefixes)
        assert sorted(seen) == expected, page_size
        assert len(seen) == len(set(seen)), page_size
    listed = client.list_objects_v2(Bucket=bucket, Prefix="p/")["Contents"]
    sizes = {c["Key"]: c["Size"] for c in listed}
    assert sizes["p/a"] == len(b"batched p/a")
    assert sizes["p/b"] == len(b"plain p/b")


def test_copy_object_from_batched_and_unbatched_sources(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    client = daemon.client()
    client.put_object(Bucket=bucket, Key="src", Body=b"batched source", Metadata={"m": "1"})
    s3.put_object(Bucket=bucket, Key="plain-src", Body=b"plain source")
    copied = client.copy_object(
        Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"}
    )
    assert copied["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(b"batched source").hexdigest()}"'
    answer = client.get_object(Bucket=bucket, Key="dst")
    assert answer["Body"].read() == b"batched source"
    assert answer["Metadata"] == {"m": "1"}
    client.copy_object(Bucket=bucket, Key="dst2", CopySource=f"{bucket}/plain-src")
    assert s3.get_object(Bucket=bucket, Key="dst2")["Body"].read() == b"plain source"


def test_copy_of_a_batched_object_keeps_tags_and_refuses_what_it_cannot_apply(
    daemon: Daemon, bucket: str
) -> None:
    client = daemon.client(retries={"total_max_attempts": 1})
    client.put_object(Bucket=bucket, Key="t", Body=b"tagged", Tagging="a=1", Metadata={"m": "1"})
    # New metadata, tags kept (the tagging directive defaults to COPY), as S3 does.
    client.copy_object(
        Bucket=bucket,
        Key="t2",
        CopySource={"Bucket": bucket, "Key": "t"},
        MetadataDirective="REPLACE",
        Metadata={"m": "2"},
    )
    head = client.head_object(Bucket=bucket, Key="t2")
    assert head["Metadata"] == {"m": "2"}
    assert head["ResponseMetadata"]["HTTPHeaders"].get("x-amz-tagging-count") == "1"
    client.copy_object(
        Bucket=bucket,
        Key="t3",
        CopySource={"Bucket": bucket, "Key": "t"},
        TaggingDirective="REPLACE",
        Tagging="b=2&c=3",
    )
    head = client.head_object(Bucket=bucket, Key="t3")
    assert head["Metadata"] == {"m": "1"}
    assert head["ResponseMetadata"]["HTTPHeaders"].get("x-amz-tagging-count") == "2"
    with pytest.raises(ClientError) as refused:
        client.copy_object(
            Bucket=bucket,
            Key="t4",
            CopySource={"Bucket": bucket, "Key": "t"},
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId="arn:aws:kms:us-east-1:111122223333:key/example",
        )
    assert refused.value.response["Error"]["Code"] == "NotImplemented"
    assert "x-amz-server-side-encryption" in refused.value.response["Error"]["Message"]


def test_small_multipart_upload_is_assembled_and_batched(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    """pyarrow / smart_open style: a multipart upload of a few bytes."""
    client = daemon.client()
    upload = client.create_multipart_upload(Bucket=bucket, Key="mpu", ChecksumAlgorithm="CRC32")
    upload_id = upload["UploadId"]
    listing = client.list_multipart_uploads(Bucket=bucket)
    assert [u["UploadId"] for u in listing["Uploads"]] == [upload_id]
    part = client.upload_part(
        Bucket=bucket,
        Key="mpu",
        UploadId=upload_id,
        PartNumber=1,
        Body=b"tiny",
        ChecksumAlgorithm="CRC32",
    )
    parts = client.list_parts(Bucket=bucket, Key="mpu", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in parts] == [(1, part["ETag"], 4)]
    done = client.complete_multipart_upload(
        Bucket=bucket,
        Key="mpu",
        UploadId=upload_id,
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": part["ETag"], "ChecksumCRC32": part["ChecksumCRC32"]}
            ]
        },
    )
    md5 = hashlib.md5(hashlib.md5(b"tiny").digest()).hexdigest()
    assert done["ETag"] == f'"{md5}-1"'
    assert done["ChecksumCRC32"].endswith("-1")
    assert client.get_object(Bucket=bucket, Key="mpu")["Body"].read() == b"tiny"
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    wait_for(lambda: indexed_objects(s3, bucket) == 1)
    with pytest.raises(ClientError) as caught:
        s3.head_object(Bucket=bucket, Key="mpu")
    assert caught.value.response["Error"]["Code"] == "404"  # it lives in a batch


def test_multipart_upload_part_validation_and_abort(daemon: Daemon, bucket: str) -> None:
    client = daemon.client(retries={"total_max_attempts": 1})
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    first = client.upload_part(
        Bucket=bucket, Key="m", UploadId=upload_id, PartNumber=1, Body=b"1" * 100
    )
    second = client.upload_part(
        Bucket=bucket, Key="m", UploadId=upload_id, PartNumber=2, Body=b"2" * 100
    )
    cases: list[tuple[list[CompletedPartTypeDef], str]] = [
        ([{"PartNumber": 1, "ETag": '"00"'}], "InvalidPart"),
        (
            [{"PartNumber": 2, "ETag": second["ETag"]}, {"PartNumber": 1, "ETag": first["ETag"]}],
            "InvalidPartOrder",
        ),
        (
            [{"PartNumber": 1, "ETag": first["ETag"]}, {"PartNumber": 2, "ETag": second["ETag"]}],
            "EntityTooSmall",
        ),
    ]
    for parts, code in cases:
        with pytest.raises(ClientError) as caught:
            client.complete_multipart_upload(
                Bucket=bucket, Key="m", UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        assert caught.value.response["Error"]["Code"] == code
    client.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=upload_id)
    with pytest.raises(ClientError) as gone:
        client.list_parts(Bucket=bucket, Key="m", UploadId=upload_id)
    assert gone.value.response["Error"]["Code"] == "NoSuchUpload"


def test_multipart_parts_are_verified_and_a_completed_upload_takes_no_more(
    daemon: Daemon, bucket: str
) -> None:
    client = daemon.client(retries={"total_max_attempts": 1})
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="v")["UploadId"]
    other_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    other_crc = base64.b64encode(zlib.crc32(b"other").to_bytes(4, "big")).decode()
    wrong_digests: list[Callable[[], object]] = [
        lambda: client.upload_part(
            Bucket=bucket,
            Key="v",
            UploadId=upload_id,
            PartNumber=1,
            Body=b"part",
            ContentMD5=other_md5,
        ),
        lambda: client.upload_part(
            Bucket=bucket,
            Key="v",
            UploadId=upload_id,
            PartNumber=1,
            Body=b"part",
            ChecksumCRC32=other_crc,
        ),
    ]
    for wrong in wrong_digests:
        with pytest.raises(ClientError) as caught:
            wrong()
        assert caught.value.response["Error"]["Code"] == "BadDigest"
    assert client.list_parts(Bucket=bucket, Key="v", UploadId=upload_id).get("Parts", []) == []
    part = client.upload_part(Bucket=bucket, Key="v", UploadId=upload_id, PartNumber=1, Body=b"p")
    parts: list[CompletedPartTypeDef] = [{"PartNumber": 1, "ETag": part["ETag"]}]
    done = client.complete_multipart_upload(
        Bucket=bucket, Key="v", UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    again = client.complete_multipart_upload(  # an SDK retry after a lost answer
        Bucket=bucket, Key="v", UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    assert again["ETag"] == done["ETag"]
    late_calls: list[Callable[[], object]] = [
        lambda: client.upload_part(
            Bucket=bucket, Key="v", UploadId=upload_id, PartNumber=2, Body=b"late"
        ),
        lambda: client.list_parts(Bucket=bucket, Key="v", UploadId=upload_id),
        lambda: client.abort_multipart_upload(Bucket=bucket, Key="v", UploadId=upload_id),
    ]
    for late in late_calls:
        with pytest.raises(ClientError) as gone:
            late()
        assert gone.value.response["Error"]["Code"] == "NoSuchUpload"
    assert client.get_object(Bucket=bucket, Key="v")["Body"].read() == b"p"


def test_conditional_complete_of_a_held_upload(daemon: Daemon, s3: S3Client, bucket: str) -> None:
    client = daemon.client(retries={"total_max_attempts": 1})

    def complete(key: str, *, if_none_match: str = "", if_match: str = "") -> None:
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        part = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"new"
        )
        parts: list[CompletedPartTypeDef] = [{"PartNumber": 1, "ETag": part["ETag"]}]
        document: CompletedMultipartUploadTypeDef = {"Parts": parts}
        if if_none_match:
            client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload=document,
                IfNoneMatch=if_none_match,
            )
        elif if_match:
            client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload=document,
                IfMatch=if_match,
            )
        else:
            client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload=document
            )

    def error_of(call: Callable[[], None]) -> str:
        with pytest.raises(ClientError) as caught:
            call()
        return str(caught.value.response["Error"]["Code"])

    client.put_object(Bucket=bucket, Key="batched", Body=b"old")
    s3.put_object(Bucket=bucket, Key="plain", Body=b"old")  # not batched: the bucket's
    for key in ("batched", "plain"):
        assert error_of(partial(complete, key, if_none_match="*")) == "PreconditionFailed"
        assert error_of(partial(complete, key, if_match='"0"')) == "PreconditionFailed"
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"old"
        complete(key, if_match=client.head_object(Bucket=bucket, Key=key)["ETag"])
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"new"
    complete("fresh", if_none_match="*")
    assert client.get_object(Bucket=bucket, Key="fresh")["Body"].read() == b"new"
    assert error_of(lambda: complete("missing", if_match='"0"')) == "NoSuchKey"


def test_conditional_complete_of_an_upload_moved_to_the_bucket_sees_batched_keys(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(batch={"passthrough_bytes": MiB})
    client = daemon.client(retries={"total_max_attempts": 1})
    batched = client.put_object(Bucket=bucket, Key="k", Body=b"old")["ETag"]
    data = _data(MiB, "moved")
    for condition in ("none-match", "match"):
        upload_id = client.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
        part = client.upload_part(
            Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=1, Body=data
        )  # past batch.passthrough_bytes: the upload is now the bucket's
        document: CompletedMultipartUploadTypeDef = {
            "Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]
        }
        if condition == "none-match":
            with pytest.raises(ClientError) as caught:
                client.complete_multipart_upload(
                    Bucket=bucket,
                    Key="k",
                    UploadId=upload_id,
                    MultipartUpload=document,
                    IfNoneMatch="*",
                )  # the key exists (batched), though the bucket does not hold it
            assert caught.value.response["Error"]["Code"] == "PreconditionFailed"
            assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"old"
        else:
            done = client.complete_multipart_upload(
                Bucket=bucket,
                Key="k",
                UploadId=upload_id,
                MultipartUpload=document,
                IfMatch=batched,
            )
            again = client.complete_multipart_upload(  # an SDK retry after a lost answer
                Bucket=bucket, Key="k", UploadId=upload_id, MultipartUpload=document
            )
            assert again["ETag"] == done["ETag"]
            with pytest.raises(ClientError) as gone:
                client.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id)
            assert gone.value.response["Error"]["Code"] == "NoSuchUpload"
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == data
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == data


def test_list_multipart_uploads_pages_through_the_bucket_and_the_held_ones(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    client = daemon.client()
    theirs = {s3.create_multipart_upload(Bucket=bucket, Key=f"b{i}")["UploadId"] for i in range(5)}
    held = client.create_multipart_upload(Bucket=bucket, Key="a-held")["UploadId"]
    seen: list[str] = []
    page = client.list_multipart_uploads(Bucket=bucket, MaxUploads=2)
    for _ in range(10):
        seen += [u["UploadId"] for u in page.get("Uploads", [])]
        if not page["IsTruncated"]:
            break
        page = client.list_multipart_uploads(
            Bucket=bucket,
            MaxUploads=2,
            KeyMarker=page.get("NextKeyMarker", ""),  # SeaweedFS sends no NextKeyMarker
            UploadIdMarker=page.get("NextUploadIdMarker", ""),
        )
    assert set(seen) == {*theirs, held}
    assert seen.count(held) == 1


def test_upload_part_copy_from_batched_and_unbatched_sources(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    client = daemon.client(retries={"total_max_attempts": 1})
    client.put_object(Bucket=bucket, Key="src", Body=b"0123456789")  # batched
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="joined")["UploadId"]
    source: CopySourceTypeDef = {"Bucket": bucket, "Key": "src"}
    for wrong in ("bytes=0-", "bytes=-3", "bytes=5-2", "2-5"):
        with pytest.raises(ClientError) as refused:
            client.upload_part_copy(
                Bucket=bucket,
                Key="joined",
                UploadId=upload_id,
                PartNumber=1,
                CopySource=source,
                CopySourceRange=wrong,
            )
        assert refused.value.response["Error"]["Code"] == "InvalidArgument", wrong
    with pytest.raises(ClientError) as past_the_end:  # as the bucket answers (test_conformance)
        client.upload_part_copy(
            Bucket=bucket,
            Key="joined",
            UploadId=upload_id,
            PartNumber=1,
            CopySource=source,
            CopySourceRange="bytes=2-10",
        )
    assert past_the_end.value.response["Error"]["Code"] == "InvalidRange"
    copied = client.upload_part_copy(
        Bucket=bucket,
        Key="joined",
        UploadId=upload_id,
        PartNumber=1,
        CopySource=source,
        CopySourceRange="bytes=2-5",
    )
    etag = copied["CopyPartResult"]["ETag"]
    assert etag == f'"{hashlib.md5(b"2345").hexdigest()}"'
    client.complete_multipart_upload(
        Bucket=bucket,
        Key="joined",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )
    assert client.get_object(Bucket=bucket, Key="joined")["Body"].read() == b"2345"
    # An unbatched source: the upload moves to the bucket, which copies server-side.
    s3.put_object(Bucket=bucket, Key="plain", Body=b"abcdef")
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="joined2")["UploadId"]
    copied = client.upload_part_copy(
        Bucket=bucket,
        Key="joined2",
        UploadId=upload_id,
        PartNumber=1,
        CopySource={"Bucket": bucket, "Key": "plain"},
    )
    client.complete_multipart_upload(
        Bucket=bucket,
        Key="joined2",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": copied["CopyPartResult"]["ETag"]}]},
    )
    assert s3.get_object(Bucket=bucket, Key="joined2")["Body"].read() == b"abcdef"


def test_held_parts_go_to_the_bucket_when_the_upload_grows_past_the_threshold(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    client = daemon.client()
    first, second = _data(5 * MiB, "first"), _data(5 * MiB, "second")
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="grown")["UploadId"]
    held = client.upload_part(  # 5 MiB: below batch.passthrough_bytes (8 MiB), kept
        Bucket=bucket, Key="grown", UploadId=upload_id, PartNumber=1, Body=first
    )
    assert held["ETag"] == f'"{hashlib.md5(first).hexdigest()}"'
    sent = client.upload_part(  # 10 MiB in all: the upload moves, part 1 is sent from the spool
        Bucket=bucket, Key="grown", UploadId=upload_id, PartNumber=2, Body=second
    )
    parts = client.list_parts(Bucket=bucket, Key="grown", UploadId=upload_id)["Parts"]
    assert [p["PartNumber"] for p in parts] == [1, 2]
    client.complete_multipart_upload(
        Bucket=bucket,
        Key="grown",
        UploadId=upload_id,
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": held["ETag"]},
                {"PartNumber": 2, "ETag": sent["ETag"]},
            ]
        },
    )
    direct = s3.get_object(Bucket=bucket, Key="grown")
    assert direct["Body"].read() == first + second
    assert direct["ETag"].endswith('-2"')
    assert not list((daemon.settings.spool.dir / "_multipart").rglob("part-*"))


def test_held_parts_count_against_the_spool_quota(start_daemon: DaemonFactory, bucket: str) -> None:
    daemon = start_daemon(spool={"max_bytes": 5 * MiB // 2})
    client = daemon.client(retries={"total_max_attempts": 1})
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="q")["UploadId"]
    for number in (1, 2):  # 2 MiB held: within the 2.5 MiB quota
        client.upload_part(
            Bucket=bucket, Key="q", UploadId=upload_id, PartNumber=number, Body=b"q" * MiB
        )
    with pytest.raises(ClientError) as full:
        client.upload_part(
            Bucket=bucket, Key="q", UploadId=upload_id, PartNumber=3, Body=b"q" * MiB
        )
    assert full.value.response["Error"]["Code"] == "SlowDown"
    assert full.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    client.abort_multipart_upload(Bucket=bucket, Key="q", UploadId=upload_id)
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="q")["UploadId"]
    client.upload_part(  # the aborted upload's parts no longer count
        Bucket=bucket, Key="q", UploadId=upload_id, PartNumber=1, Body=b"q" * MiB
    )


def test_multipart_parts_survive_a_restart(start_daemon: DaemonFactory, bucket: str) -> None:
    first = start_daemon()
    client = first.client()
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="r")["UploadId"]
    part = client.upload_part(Bucket=bucket, Key="r", UploadId=upload_id, PartNumber=1, Body=b"x")
    first.stop()
    second = start_daemon(spool={"dir": str(first.settings.spool.dir)})
    client = second.client()
    client.complete_multipart_upload(
        Bucket=bucket,
        Key="r",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert client.get_object(Bucket=bucket, Key="r")["Body"].read() == b"x"


def test_bucket_calls_are_forwarded(daemon: Daemon, s3: S3Client) -> None:
    client = daemon.client()
    name = f"t-new-{time.time_ns() % 10**9}"
    client.create_bucket(Bucket=name)
    client.head_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert "LocationConstraint" in client.get_bucket_location(Bucket=name)
    client.delete_bucket(Bucket=name)
    with pytest.raises(ClientError) as caught:
        client.head_bucket(Bucket=name)
    assert caught.value.response["Error"]["Code"] == "404"


def _rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _generated(size: int) -> Iterator[bytes]:
    block = _data(MiB, "gib")
    for _ in range(size // MiB):
        yield block


def test_one_gib_passthrough_keeps_the_daemon_memory_bounded(
    tmp_path: Path, s3_server: LocalS3, s3: S3Client, bucket: str
) -> None:
    size = 1024 * MiB
    with DaemonProcess(tmp_path, s3_server) as daemon:
        assert daemon.process is not None
        before = _rss_peak_kib(daemon.process.pid)
        connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=300)
        connection.request(
            "PUT",
            f"/{bucket}/gib.bin",
            body=_generated(size),
            headers={"Content-Length": str(size), "Host": "127.0.0.1"},
        )
        answer = connection.getresponse()
        assert answer.status == 200, answer.read()
        answer.read()
        connection.close()
        peak = _rss_peak_kib(daemon.process.pid)
        print(f"daemon RSS peak before {before} KiB, after 1 GiB passthrough {peak} KiB")
    md5 = hashlib.md5(usedforsecurity=False)
    for block in _generated(size):
        md5.update(block)
    assert answer.getheader("ETag") == f'"{md5.hexdigest()}"'
    assert s3.head_object(Bucket=bucket, Key="gib.bin")["ContentLength"] == size
    # The body streamed through: the daemon grew by far less than what it forwarded.
    assert peak - before < 64 * 1024, (before, peak)
    assert peak < 200 * 1024, peak


def test_passthrough_put_object_only(start_daemon: DaemonFactory, bucket: str) -> None:
    daemon = start_daemon(passthrough={"operations": ["PutObject"]})
    client = daemon.client(retries={"total_max_attempts": 1})
    client.put_object(Bucket=bucket, Key="large", Body=_data(9 * MiB, "only"))
    client.put_object(Bucket=bucket, Key="small", Body=b"small")
    assert client.get_object(Bucket=bucket, Key="small")["Body"].read() == b"small"
    for call in (
        lambda: client.get_object(Bucket=bucket, Key="large"),
        lambda: client.delete_object(Bucket=bucket, Key="large"),
        lambda: client.list_buckets(),
    ):
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.response["Error"]["Code"] == "AccessDenied"
    # Listing is served from the batched keys alone.
    assert [c["Key"] for c in client.list_objects_v2(Bucket=bucket)["Contents"]] == ["small"]


def test_passthrough_allowlist_covers_the_complete_of_a_moved_upload(
    start_daemon: DaemonFactory, bucket: str
) -> None:
    allowed = ["PutObject", "CreateMultipartUpload", "UploadPart", "AbortMultipartUpload"]
    daemon = start_daemon(passthrough={"operations": allowed}, batch={"passthrough_bytes": MiB})
    client = daemon.client(retries={"total_max_attempts": 1})
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    part = client.upload_part(  # past batch.passthrough_bytes: the upload moves to the bucket
        Bucket=bucket, Key="m", UploadId=upload_id, PartNumber=1, Body=_data(MiB, "m")
    )
    with pytest.raises(ClientError) as refused:
        client.complete_multipart_upload(
            Bucket=bucket,
            Key="m",
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    client.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=upload_id)


def test_unsigned_client_boto3_anonymous(daemon: Daemon, s3: S3Client, bucket: str) -> None:
    """An anonymous client (no credentials of its own): the daemon signs as itself."""
    from botocore import UNSIGNED

    client = boto3.client(
        "s3",
        endpoint_url=daemon.url,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED),
    )
    s3.put_object(Bucket=bucket, Key="anon", Body=b"anon")
    assert client.get_object(Bucket=bucket, Key="anon")["Body"].read() == b"anon"


def test_copy_source_is_checked_against_the_key_allowlist(
    start_daemon: DaemonFactory, bucket: str
) -> None:
    daemon = start_daemon(
        auth={
            "mode": "sigv4",
            "access_keys": [
                {"access_key_id": "app-key", "secret_access_key": "app-secret"},
                {
                    "access_key_id": "narrow",
                    "secret_access_key": "narrow-secret",
                    "buckets": [f"{bucket}/mine/"],
                },
            ],
        }
    )
    daemon.client().put_object(Bucket=bucket, Key="secret/k", Body=b"not yours")
    narrow = boto3.client(
        "s3",
        endpoint_url=daemon.url,
        region_name="us-east-1",
        aws_access_key_id="narrow",
        aws_secret_access_key="narrow-secret",
        config=Config(retries={"total_max_attempts": 1}),
    )
    with pytest.raises(ClientError) as caught:
        narrow.copy_object(Bucket=bucket, Key="mine/copy", CopySource=f"{bucket}/secret/k")
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
    narrow.put_object(Bucket=bucket, Key="mine/own", Body=b"own")
    narrow.copy_object(Bucket=bucket, Key="mine/copy", CopySource=f"{bucket}/mine/own")
    assert narrow.get_object(Bucket=bucket, Key="mine/copy")["Body"].read() == b"own"
