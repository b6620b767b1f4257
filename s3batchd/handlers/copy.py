"""CopyObject (and the source side of UploadPartCopy): a batched source is read through the
daemon (the bucket does not hold it as an object); any other source is the bucket's business
and the request is forwarded."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import replace
from urllib.parse import unquote
from xml.sax.saxutils import escape

from starlette.responses import Response

from s3batchd.catalog.store import CatalogEntry
from s3batchd.clock import write_time
from s3batchd.constants import HEADER_PREFIX
from s3batchd.errors import (
    InternalError,
    InvalidArgument,
    InvalidRange,
    InvalidRequest,
    NoSuchKey,
    NotImplementedS3,
    PreconditionFailed,
    UpstreamFailed,
)
from s3batchd.forward.passthrough import Call, send_upstream
from s3batchd.forward.proxy import forward_headers, read_all, relay_read
from s3batchd.handlers.get import (
    check_conditions,
    http_date,
    read_bytes,
)
from s3batchd.handlers.moved import moved
from s3batchd.handlers.put import (
    check_refusals,
    hide_batched,
    requested_durability,
    require_bucket,
    store,
    written_upstream,
)
from s3batchd.index import iso_time
from s3batchd.records import ObjectRecord
from s3batchd.s3.addressing import check_bucket
from s3batchd.s3.api import (
    DEFAULT_CONTENT_TYPE,
    STORED_HEADERS,
    check_sse_c,
    metadata_of,
    stored_headers_of,
    unbatchable,
)
from s3batchd.s3.body import BodyBuffer
from s3batchd.upload.bucketmodes import ENCRYPTION_HEADERS, decide

_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_COPY_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")
#: Headers of a CopyObject that are about the copy itself, not the new object.
_COPY_ONLY = frozenset({"x-amz-copy-source", "if-match", "if-none-match"})


def parse_copy_source(value: str) -> tuple[str, str, str | None]:
    """Bucket, key and version id of ``x-amz-copy-source``."""
    path, _, query = value.partition("?")
    bucket, _, key = unquote(path).lstrip("/").partition("/")
    if not bucket or not key:
        raise InvalidArgument("Copy Source must mention the source bucket and key: bucket/key.")
    check_bucket(bucket)
    version = None
    if query.startswith("versionId="):
        version = unquote(query.removeprefix("versionId="))
    return bucket, key, version


async def batched_source(call: Call) -> CatalogEntry | None:
    """The catalog entry of the copy source when the daemon batched it (and no version is
    asked for), else None."""
    bucket, key, version = parse_copy_source(call.headers["x-amz-copy-source"])
    if version is not None:
        return None
    return await call.pipeline.lookup(bucket, key)


def copy_range(value: str, size: int) -> tuple[int, int]:
    """First and last byte of ``x-amz-copy-source-range``: stricter than a GET's Range (no
    suffix or open ranges, nothing past the end), as S3 is."""
    match = _COPY_RANGE.match(value.strip())
    if match is None:
        raise InvalidArgument(
            "The x-amz-copy-source-range value must be of the form bytes=first-last where "
            "first and last are the zero-based offsets of the first and last bytes to copy"
        )
    first, last = int(match[1]), int(match[2])
    if first > last:
        raise InvalidArgument(f"Range specified is not valid for source object of size: {size}")
    if last >= size:
        raise InvalidRange(f"Range specified is not valid for source object of size: {size}")
    return first, last


async def read_source(call: Call, entry: CatalogEntry, byte_range: str | None) -> bytes:
    """The bytes of a batched copy source (``byte_range``: ``bytes=first-last``), after the
    ``x-amz-copy-source-if-*`` conditions; whole objects are checked against their MD5."""
    conditions = {
        name.removeprefix("x-amz-copy-source-"): value
        for name, value in call.headers.items()
        if name.startswith("x-amz-copy-source-if-")
    }
    if not check_conditions(entry, conditions):
        # S3 answers a failed copy-source If-None-Match / If-Modified-Since with 412.
        raise PreconditionFailed()
    source = call.pipeline.object_source()
    size = entry.record.size
    span = copy_range(byte_range, size) if byte_range is not None else None
    first, last = span if span is not None else (0, size - 1)
    try:
        data = await read_bytes(source, entry, first, last)
    except UpstreamFailed as exc:
        if exc.code != "NoSuchKey":
            raise
        # The source's tar is gone: compaction may have moved it (handlers/moved.py).
        now = await moved(call.pipeline, entry.bucket, entry.record.key, entry)
        if now is None:
            raise
        if now.entry is None:
            raise NoSuchKey() from exc  # deleted meanwhile, as S3 answers a missing source
        data = await read_bytes(source, now.entry, first, last)
    if (
        span is None
        and hashlib.md5(data, usedforsecurity=False).hexdigest() != entry.record.md5_hex
    ):
        raise InternalError("The copy source failed its integrity check; please retry.")
    return data


async def copy_object(call: Call) -> Response:
    """CopyObject."""
    entry = await batched_source(call)
    if entry is None:
        call.allow()
        upstream = await send_upstream(call)
        return await written_upstream(call, upstream)
    headers = call.headers
    check_sse_c(headers)
    # Into a bucket whose objects are not batched (object lock, versioning), the copy is
    # written to the bucket; otherwise it is batched too, and what a batched object cannot
    # have (SSE-C/KMS, object lock, grants) is refused, never dropped.
    mode = await call.bucket_modes.get(call.target.bucket)
    to_bucket, encryption = decide(
        mode, headers, versioned_buckets=call.settings.batch.versioned_buckets
    )
    reason = unbatchable({k: v for k, v in headers.items() if k not in _COPY_ONLY})
    if reason is not None and to_bucket is None:
        raise NotImplementedS3(f"The copy source is a batched object: {reason}")
    directive = headers.get("x-amz-metadata-directive", "COPY").upper()
    tagging = headers.get("x-amz-tagging-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE") or tagging not in ("COPY", "REPLACE"):
        raise InvalidArgument("Unknown metadata or tagging directive.")
    await require_bucket(call)
    check_refusals(call.pipeline, call.target.bucket)
    data = await read_source(call, entry, None)
    source_key = entry.record.key
    if directive == "COPY" and (entry.bucket, source_key) == (call.target.bucket, call.target.key):
        raise InvalidRequest(
            "This copy request is illegal because it is trying to copy an object to itself "
            "without changing the object's metadata, storage class, website redirect location "
            "or encryption attributes."
        )
    record = replace(entry.record, key=call.target.key, mtime=write_time())
    if directive == "REPLACE":
        record = replace(
            record,
            content_type=headers.get("content-type") or DEFAULT_CONTENT_TYPE,
            metadata=metadata_of(headers),
            headers=stored_headers_of(headers),
        )
    # Tags follow their own directive (S3 keeps the source's unless told to replace them);
    # the ACL is never copied: the copy's is the request's (default private).
    kept = {k: v for k, v in record.headers.items() if k not in ("x-amz-tagging", "x-amz-acl")}
    tags = (headers if tagging == "REPLACE" else entry.record.headers).get("x-amz-tagging")
    record = replace(record, headers=kept | ({"x-amz-tagging": tags} if tags else {}))
    if "x-amz-acl" in headers:
        record = replace(
            record, headers=record.headers | {"x-amz-acl": headers["x-amz-acl"].strip().lower()}
        )
    # The copy's encryption is the target's (asked for, or the bucket's default), as in S3.
    plain = {k: v for k, v in record.headers.items() if k not in ENCRYPTION_HEADERS}
    record = replace(record, headers=plain | encryption)
    if to_bucket is not None:
        return await _copy_to_bucket(call, record, data)
    pipeline = call.pipeline
    body = BodyBuffer(memory_limit=len(data), spill_dir=pipeline.spill_dir)
    body.write(data)
    durability = requested_durability(headers, pipeline.settings.spool.durability)
    try:
        stored = await store(call, pipeline, record, body, durability)
    finally:
        body.close()
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<CopyObjectResult xmlns="{_S3_NS}">'
        f"<LastModified>{iso_time(record.mtime)}</LastModified><ETag>{record.etag}</ETag>"
        "</CopyObjectResult>"
    ).encode()
    out = {k: v for k, v in stored.headers.items() if k.lower() != "content-length"}
    out["Last-Modified"] = http_date(record.mtime)
    return Response(xml, media_type="application/xml", headers=out)


#: Copy request headers that say how to copy, not what the new object is.
_COPY_DIRECTIVES = frozenset({"x-amz-metadata-directive", "x-amz-tagging-directive"})


async def _copy_to_bucket(call: Call, record: ObjectRecord, data: bytes) -> Response:
    """A copy of a batched object into a bucket whose objects are not batched: a PutObject
    of the bytes and of the new object's headers (the copy request's own, such as object
    lock, ACL or encryption, reach the bucket), answered as a CopyObject."""
    call.allow("PutObject")
    headers = {
        name: value
        for name, value in forward_headers(call.headers, HEADER_PREFIX).items()
        if not name.startswith(("x-amz-copy-source", "x-amz-meta-", "x-amz-checksum-"))
        and name not in _COPY_DIRECTIVES
        and name not in STORED_HEADERS
        and name not in ("content-type", "content-md5")
    }
    headers.update({f"x-amz-meta-{name}": value for name, value in record.metadata.items()})
    headers.update({k: v for k, v in record.headers.items() if k not in ENCRYPTION_HEADERS})
    headers["content-type"] = record.content_type
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    headers["content-md5"] = base64.b64encode(digest).decode()
    target = call.target
    upstream = await call.forwarder.send("PUT", target.bucket, target.key, [], headers, data)
    answer = await read_all(upstream)
    if upstream.status_code >= 300:
        return relay_read(upstream, answer)
    await hide_batched(call, target.bucket, target.key)
    now = time.time()
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<CopyObjectResult xmlns="{_S3_NS}">'
        f"<LastModified>{iso_time(now)}</LastModified>"
        f"<ETag>{escape(upstream.headers.get('etag', record.etag))}</ETag></CopyObjectResult>"
    ).encode()
    out = {
        name: upstream.headers[name]
        for name in ("x-amz-version-id", *ENCRYPTION_HEADERS)
        if name in upstream.headers
    }
    return Response(xml, media_type="application/xml", headers=out)
