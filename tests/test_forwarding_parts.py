"""The pieces behind forwarding, without servers: operation names, the re-framed body,
tombstones in the catalog and the tar, and held multipart uploads on disk."""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import NoCredentialsError
from hypothesis import given
from hypothesis import strategies as st

from s3batchd.catalog.store import Catalog, entries_from_index
from s3batchd.config import UpstreamConfig
from s3batchd.errors import BadDigest, ServiceUnavailable
from s3batchd.forward.proxy import Forwarder
from s3batchd.forward.reframe import framed_length, reframe
from s3batchd.handlers.multipart import bucket_part_etags
from s3batchd.index import IndexEntry, index_fragment, render_index
from s3batchd.records import EMPTY_MD5, ObjectRecord
from s3batchd.s3.api import Target
from s3batchd.s3.awschunked import AwsChunkedDecoder
from s3batchd.s3.body import BodyBuffer
from s3batchd.s3.checksums import b64, new_hasher
from s3batchd.s3.operations import operation_of
from s3batchd.spool.tarmember import decode_record, encode_header
from s3batchd.spool.uploads import Part, UploadStore


@pytest.mark.parametrize(
    ("method", "bucket", "key", "query", "headers", "operation"),
    [
        ("GET", "", "", {}, {}, "ListBuckets"),
        ("GET", "b", "", {}, {}, "ListObjects"),
        ("GET", "b", "", {"list-type": "2", "prefix": "p"}, {}, "ListObjectsV2"),
        ("GET", "b", "", {"uploads": ""}, {}, "ListMultipartUploads"),
        ("GET", "b", "", {"location": ""}, {}, "GetBucketLocation"),
        ("GET", "b", "", {"policy": ""}, {}, "GetBucketSubresource"),
        ("HEAD", "b", "", {}, {}, "HeadBucket"),
        ("OPTIONS", "b", "k", {}, {}, "OptionsObjectSubresource"),
        ("PATCH", "b", "", {}, {}, "PatchBucketSubresource"),
        ("PUT", "b", "", {}, {}, "CreateBucket"),
        ("PUT", "b", "", {"lifecycle": ""}, {}, "PutBucketSubresource"),
        ("DELETE", "b", "", {}, {}, "DeleteBucket"),
        ("POST", "b", "", {"delete": ""}, {}, "DeleteObjects"),
        ("PUT", "b", "k", {"x-id": "PutObject"}, {}, "PutObject"),
        ("PUT", "b", "k", {}, {"x-amz-copy-source": "b/s"}, "CopyObject"),
        ("PUT", "b", "k", {"partNumber": "1", "uploadId": "u"}, {}, "UploadPart"),
        (
            "PUT",
            "b",
            "k",
            {"partNumber": "1", "uploadId": "u"},
            {"x-amz-copy-source": "b/s"},
            "UploadPartCopy",
        ),
        ("PUT", "b", "k", {"tagging": ""}, {}, "PutObjectTagging"),
        ("PUT", "b", "k", {"retention": ""}, {}, "PutObjectSubresource"),
        ("GET", "b", "k", {}, {}, "GetObject"),
        ("GET", "b", "k", {"uploadId": "u"}, {}, "ListParts"),
        ("HEAD", "b", "k", {}, {}, "HeadObject"),
        ("POST", "b", "k", {"uploads": ""}, {}, "CreateMultipartUpload"),
        ("POST", "b", "k", {"uploadId": "u"}, {}, "CompleteMultipartUpload"),
        ("DELETE", "b", "k", {"uploadId": "u"}, {}, "AbortMultipartUpload"),
        ("DELETE", "b", "k", {}, {}, "DeleteObject"),
    ],
)
def test_operation_names(
    method: str,
    bucket: str,
    key: str,
    query: dict[str, str],
    headers: dict[str, str],
    operation: str,
) -> None:
    assert operation_of(method, Target(bucket, key, query), headers) == operation


async def _pieces(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in stream])


@given(
    parts=st.lists(st.binary(max_size=70_000), max_size=5),
    algorithm=st.sampled_from(["crc32", "crc32c", "crc64nvme", "sha1", "sha256"]),
)
def test_reframed_body_decodes_to_the_payload_and_its_checksum(
    parts: list[bytes], algorithm: str
) -> None:
    payload = b"".join(parts)
    framed = asyncio.run(_collect(reframe(_pieces(parts), algorithm, dict)))
    assert len(framed) == framed_length(len(payload), algorithm)
    decoder = AwsChunkedDecoder(None)
    decoded = b"".join(bytes(piece) for piece in decoder.feed(framed))
    decoder.finish()
    assert decoded == payload
    hasher = new_hasher(algorithm)
    hasher.update(payload)
    assert decoder.trailers == {f"x-amz-checksum-{algorithm}": b64(hasher.digest())}


def test_reframed_body_ends_only_after_verification() -> None:
    def refuse() -> dict[str, str]:
        raise BadDigest()

    sent: list[bytes] = []

    async def run() -> None:
        async for piece in reframe(_pieces([b"x" * 200_000]), "crc32", refuse):
            sent.append(piece)

    with pytest.raises(BadDigest):
        asyncio.run(run())
    assert b"".join(sent)
    assert not b"".join(sent).endswith(b"\r\n\r\n")  # no final chunk, no trailer


def _record(key: str, mtime: float, *, deleted: bool = False) -> ObjectRecord:
    return ObjectRecord(key=key, size=0, md5_hex=EMPTY_MD5, mtime=mtime, deleted=deleted)


@pytest.mark.parametrize("tombstone_first", [True, False])
def test_catalog_tombstone_hides_older_objects_in_any_order(
    tmp_path: Path, tombstone_first: bool
) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    old = IndexEntry(_record("k", 100.0), "k", 512)
    tombstone = IndexEntry(_record("k", 200.0, deleted=True), "k", 0)
    newer = IndexEntry(_record("k", 300.0), "k", 1024)
    ordered = [tombstone, old] if tombstone_first else [old, tombstone]
    for entry in ordered:
        catalog.put("b", "batch", "tar", entry, uploaded=True)
    assert catalog.get("b", "k") is None
    assert list(catalog.iter_keys("b", "", "")) == []
    catalog.put("b", "batch2", "tar2", newer, uploaded=False)
    found = catalog.get("b", "k")
    assert found is not None and found.offset == 1024


def test_tombstones_and_multipart_etags_travel_through_tar_and_index() -> None:
    assembled = ObjectRecord(
        key="m", size=3, md5_hex="0" * 32, mtime=5.0, multipart_etag="1" * 32 + "-2"
    )
    gone = _record("gone", 6.0, deleted=True)
    for record in (assembled, gone):
        header = encode_header(record, record.key)
        with tarfile.open(fileobj=io.BytesIO(header + b"\0" * 2048), mode="r:") as archive:
            info = archive.next()
            assert info is not None
            assert decode_record(info) == record
    batch_id = "20270115T080000000Z-host-68522f62-000007"
    document = json.loads(
        render_index(
            bucket="b",
            batch_id=batch_id,
            tar_key="p/x.tar",
            tar_size=4096,
            entries=[IndexEntry(assembled, "m", 1536), IndexEntry(gone, "gone", 3072)],
        )
    )
    assert [o["key"] for o in document["objects"]] == ["m"]
    assert document["objects"][0]["etag"] == f'"{"1" * 32}-2"'
    assert document["objects"][0]["md5"] == "0" * 32
    assert document["tombstones"] == [
        {"key": "gone", "member": "gone", "deleted_at": "1970-01-01T00:00:06.000Z"}
    ]
    restored = [entry.record for entry in entries_from_index(document)]
    assert restored[0].etag == assembled.etag and restored[0].md5_hex == "0" * 32
    assert restored[1].deleted and restored[1].key == "gone"


def test_held_upload_and_parts_survive_a_new_store(tmp_path: Path) -> None:
    store = UploadStore(tmp_path, sync=True)
    upload = store.create("b", "k", {"content-type": "x/y"}, checksum_algorithm="crc32")
    body = BodyBuffer(memory_limit=10, spill_dir=tmp_path)
    body.write(b"part one")
    store.write_part(upload, Part(1, 8, "a" * 32, "AAAAAA==", 1.0), body)
    again = UploadStore(tmp_path, sync=True).get(upload.upload_id, "b", "k")
    assert again is not None
    assert again.headers == {"content-type": "x/y"}
    assert again.parts[1].size == 8
    assert UploadStore(tmp_path, sync=True).read_part(again, 1) == b"part one"
    assert UploadStore(tmp_path, sync=True).get(upload.upload_id, "b", "other") is None
    assert UploadStore(tmp_path, sync=True).get("../../etc", "b", "k") is None
    store.remove(upload)
    assert UploadStore(tmp_path, sync=True).get(upload.upload_id, "b", "k") is None


def test_index_from_fragments_is_byte_identical_to_the_index_from_entries() -> None:
    """The spool renders each member's part of the index as it appends; a batch recovered
    after a restart renders it from the tar: a retried index upload must be the same bytes."""
    entries = [
        IndexEntry(
            ObjectRecord(
                key=f"k/é{i}\u2603",
                size=i,
                md5_hex="a" * 32,
                metadata={"m": "v\u00e9"},
                checksums={"crc32": "AAAAAA=="},
                mtime=1.5 + i,
                deleted=i % 7 == 0,
                multipart_etag="b" * 32 + "-2" if i % 5 == 0 else "",
            ),
            f"k/{i}",
            512 * (i + 1),
        )
        for i in range(50)
    ]
    batch = {
        "bucket": "b",
        "batch_id": "20270115T080000000Z-host-68522f62-000007",
        "tar_key": "p/x.tar",
        "tar_size": 4096,
    }
    whole = render_index(**batch, entries=entries)  # type: ignore[arg-type]
    parts = render_index(**batch, fragments=[index_fragment(e) for e in entries])  # type: ignore[arg-type]
    assert whole == parts
    document = json.loads(whole)
    assert len(document["objects"]) + len(document["tombstones"]) == 50


def _expired_credentials(refresh: Callable[[], dict[str, str]]) -> RefreshableCredentials:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    metadata = {"access_key": "old", "secret_key": "old", "token": "t", "expiry_time": past}
    return RefreshableCredentials.create_from_metadata(metadata, refresh, "test")


def test_forwarder_refreshes_temporary_credentials_off_the_event_loop() -> None:
    threads: list[str] = []

    def refresh() -> dict[str, str]:
        threads.append(threading.current_thread().name)
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        return {"access_key": "new", "secret_key": "new", "token": "t", "expiry_time": later}

    async def main() -> None:
        # Temporary credentials (IRSA, instance roles) that expired; nothing listens on port 9.
        upstream = UpstreamConfig(endpoint_url="http://127.0.0.1:9", connect_timeout_s=1)
        forwarder = Forwarder(upstream, _expired_credentials(refresh))
        with pytest.raises(ServiceUnavailable):
            await forwarder.send("GET", "b", "k", [], {})
        assert len(threads) == 1
        assert threads[0] != threading.current_thread().name  # not on the event loop
        await forwarder.aclose()

    asyncio.run(main())


def test_forwarder_answers_503_when_credentials_cannot_be_refreshed() -> None:
    def refresh() -> dict[str, str]:
        raise NoCredentialsError()

    async def main() -> None:
        forwarder = Forwarder(
            UpstreamConfig(endpoint_url="http://127.0.0.1:9"), _expired_credentials(refresh)
        )
        with pytest.raises(ServiceUnavailable, match="credentials could not be refreshed"):
            await forwarder.send("GET", "b", "k", [], {})
        await forwarder.aclose()

    asyncio.run(main())


def test_complete_document_gets_the_bucket_etags_of_parts_the_daemon_sent() -> None:
    # Held parts were answered with MD5 ETags; a bucket with SSE-KMS answers others.
    document = (
        b'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Part><ETag>&quot;aaa&quot;</ETag><PartNumber>1</PartNumber></Part>"
        b'<Part><PartNumber>2</PartNumber><ETag>"bbb"</ETag></Part>'
        b'<Part><ETag>"ccc"</ETag><PartNumber>3</PartNumber></Part>'
        b"</CompleteMultipartUpload>"
    )
    sent = {'1 "aaa"': '"kms-1"', '2 "bbb"': '"bbb"', '3 "old"': '"kms-3"'}
    assert bucket_part_etags(document, sent) == (
        b'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b'<Part><ETag>"kms-1"</ETag><PartNumber>1</PartNumber></Part>'
        b'<Part><PartNumber>2</PartNumber><ETag>"bbb"</ETag></Part>'
        b'<Part><ETag>"ccc"</ETag><PartNumber>3</PartNumber></Part>'
        b"</CompleteMultipartUpload>"
    )
    assert bucket_part_etags(document, {'2 "bbb"': '"bbb"'}) == document


def test_upload_directories_left_without_a_record_are_swept(tmp_path: Path) -> None:
    store = UploadStore(tmp_path, sync=False)
    old, fresh = store.root / ("a" * 32), store.root / ("b" * 32)
    for directory in (old, fresh):
        directory.mkdir(parents=True)
        (directory / "part-00001").write_bytes(b"left by a crash in create")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    kept = store.create("b", "k", {})  # a new upload sweeps the directory
    assert not old.exists()
    assert fresh.exists()  # may still be in the middle of its create
    assert store.get(kept.upload_id, "b", "k") is not None
