"""Client multipart uploads (CreateMultipartUpload, UploadPart, UploadPartCopy,
CompleteMultipartUpload, AbortMultipartUpload, ListParts, ListMultipartUploads).

Many clients upload even tiny objects in parts. While an upload's parts stay below
``batch.passthrough_bytes`` in total they are kept in the spool (uploads.py) and, on
completion, assembled into one object that is batched like a PutObject, with S3's multipart
ETag. Once they pass it, the daemon creates the real multipart upload in the bucket, sends the
parts it holds, and forwards the rest. The client keeps the upload id the daemon gave it
either way.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from xml.etree import ElementTree
from xml.sax.saxutils import escape, unescape

from starlette.responses import Response

from s3batchd.clock import write_time
from s3batchd.concurrency import run_in
from s3batchd.constants import HEADER_PREFIX, MAX_PART_BYTES, MIN_PART_BYTES
from s3batchd.errors import (
    RETRY_SOON,
    BadDigest,
    EntityTooLarge,
    EntityTooSmall,
    InvalidArgument,
    InvalidPart,
    InvalidPartOrder,
    MalformedXML,
    NoSuchUpload,
    S3Error,
    ServiceUnavailable,
)
from s3batchd.forward.passthrough import (
    Call,
    forward,
    read_small_body,
    receive_body,
    send_upstream,
    streamed,
)
from s3batchd.forward.proxy import forward_headers, read_all, relay_read
from s3batchd.handlers.copy import batched_source, read_source
from s3batchd.handlers.put import (
    CONDITIONAL_HEADERS,
    append,
    check_quota,
    check_write_conditions,
    decided_here,
    forward_threshold,
    hide_batched,
    put_response_headers,
    requested_durability,
    require_bucket,
)
from s3batchd.index import iso_time
from s3batchd.records import ObjectRecord
from s3batchd.s3.api import (
    DEFAULT_CONTENT_TYPE,
    check_sse_c,
    metadata_of,
    parse_body,
    stored_headers_of,
    unbatchable,
    verify_body,
)
from s3batchd.s3.body import BodyBuffer
from s3batchd.s3.checksums import ALGORITHMS, b64, new_hasher
from s3batchd.s3.xml import local_name
from s3batchd.spool.uploads import Part, Upload, UploadStore
from s3batchd.upload.bucketmodes import ENCRYPTION_HEADERS, decide, encryption_of

logger = logging.getLogger(__name__)

_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
Handler = Callable[[Call], Awaitable[Response]]


def _store(call: Call) -> UploadStore:
    store: UploadStore = call.request.app.state.uploads
    return store


def _held(call: Call) -> Upload | None:
    upload_id = call.target.query.get("uploadId", "")
    return _store(call).get(upload_id, call.target.bucket, call.target.key)


def _open(call: Call) -> Upload | None:
    """The held upload the request names, None when the bucket holds it; NoSuchUpload once
    it was completed (its record is kept for a while only to answer a retried Complete)."""
    upload = _held(call)
    if upload is not None and upload.completed:
        raise NoSuchUpload()
    return upload


def _still_open(upload: Upload | None) -> Upload:
    """The upload read again under its lock: NoSuchUpload if it went away or was completed."""
    if upload is None or upload.completed:
        raise NoSuchUpload()
    return upload


def _xml(body: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        (_XML_HEAD + body).encode(), media_type="application/xml", headers=headers or {}
    )


async def create_multipart_upload(call: Call) -> Response:
    """CreateMultipartUpload: held by the daemon unless its headers ask for what a batched
    object cannot have (then the bucket's own upload from the start)."""
    headers = call.headers
    check_sse_c(headers)
    if unbatchable(headers) is not None:
        return await forward(call)
    mode = await call.bucket_modes.get(call.target.bucket)
    reason, encryption = decide(
        mode, headers, versioned_buckets=call.settings.batch.versioned_buckets
    )
    if reason is not None:
        return await forward(call)
    algorithm = headers.get("x-amz-checksum-algorithm", "").lower()
    if algorithm and algorithm not in ALGORITHMS:
        raise InvalidArgument(f"Unsupported checksum algorithm: {algorithm}")
    checksum_type = headers.get("x-amz-checksum-type", "").upper()
    if checksum_type not in ("", "COMPOSITE", "FULL_OBJECT"):
        raise InvalidArgument(f"Unsupported checksum type: {checksum_type}")
    metadata_of(headers)  # MetadataTooLarge before anything is kept
    await require_bucket(call)
    upload = _store(call).create(
        call.target.bucket,
        call.target.key,
        forward_headers(headers, HEADER_PREFIX),
        checksum_algorithm=algorithm,
        checksum_type=checksum_type or ("COMPOSITE" if algorithm else ""),
    )
    out = dict(encryption)  # S3 echoes the upload's encryption
    if algorithm:
        out["x-amz-checksum-algorithm"] = algorithm.upper()
        out["x-amz-checksum-type"] = upload.checksum_type
    return _xml(
        f'<InitiateMultipartUploadResult xmlns="{_S3_NS}"><Bucket>{escape(upload.bucket)}'
        f"</Bucket><Key>{escape(upload.key)}</Key><UploadId>{upload.upload_id}</UploadId>"
        "</InitiateMultipartUploadResult>",
        out,
    )


def _part_number(call: Call) -> int:
    try:
        number = int(call.target.query.get("partNumber", ""))
    except ValueError as exc:
        raise InvalidArgument("Part number must be an integer between 1 and 10000.") from exc
    if not 1 <= number <= 10_000:
        raise InvalidArgument("Part number must be an integer between 1 and 10000.")
    return number


async def upload_part(call: Call) -> Response:
    """UploadPart."""
    upload = _open(call)
    if upload is None:
        return await forward(call)
    number = _part_number(call)
    put = parse_body(call.target, call.headers, max_bytes=MAX_PART_BYTES)
    upstream_id = await _goes_upstream(call, upload.upload_id, put.declared_size)
    if upstream_id:
        return await forward(call, query=call.query(uploadId=upstream_id))
    store = _store(call)
    store.receiving(upload.upload_id, put.declared_size or 0)
    try:
        body, digests = await receive_body(call, put, max_bytes=MAX_PART_BYTES)
    finally:
        store.receiving(upload.upload_id, -(put.declared_size or 0))
    try:
        verify_body(put, digests, body.size)  # Content-MD5, checksums, payload SHA-256, length
        part = _part(upload, number, body, digests.md5.hexdigest())
        return await _keep_part(call, upload.upload_id, part, body, copy=False)
    finally:
        body.close()


async def _goes_upstream(call: Call, upload_id: str, size: int | None) -> str:
    """The bucket's upload id when a part of ``size`` bytes goes to the bucket (moving the
    upload there first when the parts pass ``batch.passthrough_bytes``), else empty."""
    store = _store(call)
    async with store.locked(upload_id) as locked:
        upload = _still_open(locked)
        if upload.upstream_id:
            return upload.upstream_id
        threshold = forward_threshold(call.settings)
        held = upload.size + store.receiving(upload_id, 0)
        if size is not None and held + size >= threshold and _can_promote(call):
            await _promote(call, upload)
            return upload.upstream_id
        return ""


def _can_promote(call: Call) -> bool:
    passthrough = call.settings.passthrough
    return passthrough.allows("CreateMultipartUpload") and passthrough.allows("UploadPart")


def _part(upload: Upload, number: int, body: BodyBuffer, md5_hex: str) -> Part:
    checksum = ""
    if upload.checksum_algorithm:
        hasher = new_hasher(upload.checksum_algorithm)
        for chunk in body.chunks():
            hasher.update(chunk)
        checksum = b64(hasher.digest())
    return Part(number, body.size, md5_hex, checksum, time.time())


async def _keep_part(
    call: Call, upload_id: str, part: Part, body: BodyBuffer, *, copy: bool
) -> Response:
    """Keep a received part in the spool, or send it to the bucket if the upload moved there
    (or the parts now pass the threshold) while it was received."""
    store = _store(call)
    async with store.locked(upload_id) as locked:
        upload = _still_open(locked)
        threshold = forward_threshold(call.settings)
        if not upload.upstream_id and upload.size + part.size >= threshold and _can_promote(call):
            await _promote(call, upload)
        if upload.upstream_id:
            etag = await _send_part(call, upload, part, body.chunks())
        else:
            if upload.size + part.size > call.settings.limits.max_object_bytes:
                raise EntityTooLarge("The parts exceed limits.max_object_bytes.")
            held = await run_in(store.executor, store.held_bytes)  # a directory scan
            check_quota(call.pipeline, part.size + held)
            await run_in(store.executor, partial(store.write_part, upload, part, body))
            etag = f'"{part.md5_hex}"'
    headers = {}
    if part.checksum:
        headers[f"x-amz-checksum-{upload.checksum_algorithm}"] = part.checksum
    if not copy:
        return Response(status_code=200, headers={"ETag": etag, **headers})
    return _xml(
        f'<CopyPartResult xmlns="{_S3_NS}"><LastModified>{iso_time(part.mtime)}</LastModified>'
        f"<ETag>{escape(etag)}</ETag></CopyPartResult>",
        headers,
    )


async def _promote(call: Call, upload: Upload) -> None:
    """Create the upload in the bucket and send it the parts the daemon holds (called with
    the upload's lock held)."""
    call.allow("CreateMultipartUpload")
    forwarder = call.forwarder
    target = call.target
    answer = await forwarder.send(
        "POST", target.bucket, target.key, [("uploads", "")], dict(upload.headers), b""
    )
    body = await read_all(answer)
    if answer.status_code != 200:
        raise upstream_error(answer.status_code, body)
    upstream_id = _find(body, "UploadId")
    if not upstream_id:
        raise upstream_error(502, body)
    upload.upstream_id = upstream_id
    store = _store(call)
    try:
        for number in sorted(upload.parts):
            part = upload.parts[number]
            etag = await _send_part(call, upload, part, store.iter_part(upload, number))
            upload.bucket_etags[f'{number} "{part.md5_hex}"'] = etag
    except BaseException:
        upload.upstream_id = ""
        await _abort_upstream(call, upstream_id)
        raise
    store.save(upload)
    store.drop_parts(upload)


async def _send_part(call: Call, upload: Upload, part: Part, pieces: Iterable[bytes]) -> str:
    """UploadPart of bytes the daemon holds (``part.size`` bytes in ``pieces``, streamed, not
    read whole) to the bucket's upload; the part's ETag. Content-MD5 makes the bucket refuse
    a part that arrives cut or changed."""
    headers = {"content-md5": base64.b64encode(bytes.fromhex(part.md5_hex)).decode()}
    if part.checksum:
        headers[f"x-amz-checksum-{upload.checksum_algorithm}"] = part.checksum
    query = [("partNumber", str(part.number)), ("uploadId", upload.upstream_id)]
    answer = await call.forwarder.send(
        "PUT", upload.bucket, upload.key, query, headers, streamed(pieces), part.size
    )
    body = await read_all(answer)
    if answer.status_code != 200:
        raise upstream_error(answer.status_code, body)
    return str(answer.headers.get("etag", f'"{part.md5_hex}"'))


async def _abort_upstream(call: Call, upstream_id: str) -> None:
    target = call.target
    try:
        answer = await call.forwarder.send(
            "DELETE", target.bucket, target.key, [("uploadId", upstream_id)], {}, b""
        )
        await answer.aclose()
    except S3Error:
        pass  # unreachable: the bucket's lifecycle rule or a later abort cleans it up


async def upload_part_copy(call: Call) -> Response:
    """UploadPartCopy: a batched source is read through the daemon; the bucket copies any
    other source itself (the upload moves to the bucket for that)."""
    upload = _open(call)
    if upload is None:
        return await forward(call)
    number = _part_number(call)
    entry = batched_source(call)
    if entry is None:
        call.allow()
        upstream_id = await _promote_locked(call, upload.upload_id)
        return await forward(call, query=call.query(uploadId=upstream_id))
    data = await read_source(call, entry, call.headers.get("x-amz-copy-source-range"))
    body = BodyBuffer(memory_limit=len(data), spill_dir=call.pipeline.spill_dir)
    body.write(data)
    try:
        part = _part(upload, number, body, hashlib.md5(data, usedforsecurity=False).hexdigest())
        return await _keep_part(call, upload.upload_id, part, body, copy=True)
    finally:
        body.close()


async def _promote_locked(call: Call, upload_id: str) -> str:
    async with _store(call).locked(upload_id) as locked:
        upload = _still_open(locked)
        if not upload.upstream_id:
            await _promote(call, upload)
        return upload.upstream_id


async def complete_multipart_upload(call: Call) -> Response:
    """CompleteMultipartUpload."""
    upload = _held(call)
    if upload is None:
        return await forward(call)
    body = await read_small_body(call)
    async with _store(call).locked(upload.upload_id) as held:
        if held is None:
            raise NoSuchUpload()
        upload = held
        if upload.completed:
            return _xml(upload.completed)
        if upload.upstream_id:
            return await _complete_upstream(await _batched_conditions(call), upload, body)
        await _write_conditions(call)
        return await _complete_here(call, upload, _listed_parts(body))


async def _write_conditions(call: Call) -> None:
    """``If-None-Match: *`` / ``If-Match`` of a Complete the daemon assembles, against the
    key's current object: the batched one, else the bucket's."""
    if CONDITIONAL_HEADERS & call.headers.keys():
        etag = await _current_etag(call)
        check_write_conditions(call.headers, etag)


async def _batched_conditions(call: Call) -> Call:
    """A Complete the bucket assembles: conditions on a key whose current object is batched
    are decided here (the bucket does not hold it) and not sent on; else the bucket decides."""
    rest = decided_here(call.pipeline, call)
    return call if rest is None else dataclasses.replace(call, headers=rest)


async def _current_etag(call: Call) -> str | None:
    """The ETag of the key's current object (batched, else in the bucket), None if none."""
    bucket, key = call.target.bucket, call.target.key
    entry = call.pipeline.catalog.get(bucket, key)
    if entry is not None:
        return entry.record.etag
    answer = await call.forwarder.send("HEAD", bucket, key, [], {})
    await answer.aclose()
    if answer.status_code == 404:
        return None
    if answer.status_code != 200:
        logger.warning(
            "HEAD s3://%s/%s for a conditional write: %d", bucket, key, answer.status_code
        )
        raise ServiceUnavailable(headers=RETRY_SOON)
    return str(answer.headers.get("etag", ""))


async def _complete_upstream(call: Call, upload: Upload, body: bytes) -> Response:
    call.allow()
    body = bucket_part_etags(body, upload.bucket_etags)
    answer = await send_upstream(call, query=call.query(uploadId=upload.upstream_id), body=body)
    data = await read_all(answer)
    if answer.status_code == 200 and b"<Error>" not in data:
        await hide_batched(call, upload.bucket, upload.key)
        # Kept (COMPLETED_KEEP_S) like a completed held upload: an SDK's retry after a lost
        # answer gets the same answer, not the bucket's NoSuchUpload.
        upload.completed = _without_declaration(data.decode())
        _store(call).save(upload)
        _store(call).drop_parts(upload)
    return relay_read(answer, data)


_PART_XML = re.compile(rb"<Part>(.*?)</Part>", re.DOTALL)
_NUMBER_XML = re.compile(rb"<PartNumber>\s*(\d+)\s*</PartNumber>")
_ETAG_XML = re.compile(rb"<ETag>(.*?)</ETag>", re.DOTALL)


def bucket_part_etags(document: bytes, bucket_etags: dict[str, str]) -> bytes:
    """A client's CompleteMultipartUpload document with the ETags of parts the daemon sent
    to the bucket replaced by the bucket's own (when they differ)."""
    changed = {k: v for k, v in bucket_etags.items() if k.split(" ", 1)[1] != v}
    if not changed:
        return document

    def part(match: re.Match[bytes]) -> bytes:
        inner = match.group(1)
        number = _NUMBER_XML.search(inner)
        etag = _ETAG_XML.search(inner)
        if number is None or etag is None:
            return match.group(0)
        given = unescape(etag.group(1).decode(), {"&quot;": '"'}).strip().strip('"')
        bucket = changed.get(f'{int(number.group(1))} "{given}"')
        if bucket is None:
            return match.group(0)
        replaced = inner[: etag.start(1)] + escape(bucket).encode() + inner[etag.end(1) :]
        return b"<Part>" + replaced + b"</Part>"

    return _PART_XML.sub(part, document)


def _without_declaration(document: str) -> str:
    if document.startswith("<?xml"):
        document = document.split("?>", 1)[1]
    return document.strip()


def _listed_parts(body: bytes) -> list[tuple[int, str, dict[str, str]]]:
    try:
        root = ElementTree.fromstring(body)  # noqa: S314  expat expands no entities
    except ElementTree.ParseError as exc:
        raise MalformedXML() from exc
    listed = []
    for node in root:
        if local_name(node.tag) != "Part":
            continue
        fields = {local_name(child.tag): (child.text or "").strip() for child in node}
        try:
            number = int(fields.get("PartNumber", ""))
        except ValueError as exc:
            raise MalformedXML() from exc
        checksums = {
            name.removeprefix("Checksum").lower(): value
            for name, value in fields.items()
            if name.startswith("Checksum") and name != "ChecksumType"
        }
        listed.append((number, fields.get("ETag", ""), checksums))
    if not listed:
        raise MalformedXML("The XML you provided lists no parts.")
    return listed


async def _complete_here(
    call: Call, upload: Upload, listed: list[tuple[int, str, dict[str, str]]]
) -> Response:
    store = _store(call)
    parts, listed_checksums = _chosen_parts(upload, listed)
    if any(part.size < MIN_PART_BYTES for part in parts[:-1]):
        raise EntityTooSmall()
    body = BodyBuffer(
        memory_limit=call.settings.limits.memory_buffer_bytes, spill_dir=call.pipeline.spill_dir
    )
    try:
        md5 = hashlib.md5(usedforsecurity=False)
        full = new_hasher(upload.checksum_algorithm) if upload.checksum_algorithm else None
        for part in parts:
            data = store.read_part(upload, part.number)
            if hashlib.md5(data, usedforsecurity=False).hexdigest() != part.md5_hex:
                raise InvalidPart("A part's bytes changed on disk; upload it again.")
            _check_listed_checksums(data, listed_checksums[part.number])
            md5.update(data)
            if full is not None:
                full.update(data)
            body.write(data)
        multipart_etag = _multipart_etag([part.md5_hex for part in parts])
        checksums = {upload.checksum_algorithm: b64(full.digest())} if full else {}
        _check_object_checksum(call.headers, upload, parts, checksums)
        headers = upload.headers
        mode = await call.bucket_modes.get(upload.bucket)
        record = ObjectRecord(
            key=upload.key,
            size=body.size,
            md5_hex=md5.hexdigest(),
            content_type=headers.get("content-type") or DEFAULT_CONTENT_TYPE,
            metadata=metadata_of(headers),
            headers=stored_headers_of(headers) | encryption_of(mode, headers),
            checksums=checksums,
            mtime=write_time(),
            multipart_etag=multipart_etag,
        )
        pipeline = call.pipeline
        durability = requested_durability(call.headers, call.settings.spool.durability)
        entry = await append(call, pipeline, record, body, durability)
    finally:
        body.close()
    checksum_xml = ""
    if upload.checksum_algorithm:
        name = "Checksum" + upload.checksum_algorithm.upper()
        value = checksums[upload.checksum_algorithm]
        if upload.checksum_type == "COMPOSITE":
            value = _composite(upload.checksum_algorithm, [p.checksum for p in parts])
        checksum_xml = (
            f"<{name}>{value}</{name}><ChecksumType>{upload.checksum_type}</ChecksumType>"
        )
    host = call.headers.get("host", "localhost")
    xml = (
        f'<CompleteMultipartUploadResult xmlns="{_S3_NS}">'
        f"<Location>http://{escape(host)}/{escape(upload.bucket)}/{escape(upload.key)}</Location>"
        f"<Bucket>{escape(upload.bucket)}</Bucket><Key>{escape(upload.key)}</Key>"
        f"<ETag>{escape(record.etag)}</ETag>{checksum_xml}</CompleteMultipartUploadResult>"
    )
    upload.completed = xml
    store.save(upload)
    store.drop_parts(upload)
    location = {
        name: value.decode("latin-1")
        for name, value in (
            (raw_name.decode("latin-1"), raw_value)
            for raw_name, raw_value in put_response_headers(entry)
        )
        if name.startswith(HEADER_PREFIX) or name in ENCRYPTION_HEADERS
    }
    return _xml(xml, location)


def _chosen_parts(
    upload: Upload, listed: list[tuple[int, str, dict[str, str]]]
) -> tuple[list[Part], dict[int, dict[str, str]]]:
    """The parts a Complete's list names, in order, with the checksums listed for each.

    A part number may be listed once per upload of it (a client that sent a part again
    lists both ETags, in a row): the part is the upload that finished last, the one kept,
    and one of the ETags listed for it must be its. Only the latest upload of a part number
    is kept, so listing an earlier one alone is InvalidPart, as in S3."""
    parts: list[Part] = []
    checksums: dict[int, dict[str, str]] = {}
    for number, entries in itertools.groupby(listed, key=lambda entry: entry[0]):
        if parts and number <= parts[-1].number:
            raise InvalidPartOrder()
        part = upload.parts.get(number)
        if part is None:
            raise InvalidPart()
        matching = [sums for _, etag, sums in entries if etag.strip('"') == part.md5_hex]
        if not matching:
            raise InvalidPart()
        parts.append(part)
        checksums[number] = matching[-1]
    return parts, checksums


def _check_listed_checksums(data: bytes, listed: dict[str, str]) -> None:
    """BadDigest unless each checksum listed for a part (of an algorithm S3 knows) is that
    of its bytes, as the bucket answers."""
    for algorithm, value in listed.items():
        if algorithm not in ALGORITHMS:
            continue
        hasher = new_hasher(algorithm)
        hasher.update(data)
        if value != b64(hasher.digest()):
            name = algorithm.upper()
            raise BadDigest(f"The {name} listed for a part is not the part's checksum.")


def _check_object_checksum(
    headers: dict[str, str], upload: Upload, parts: list[Part], checksums: dict[str, str]
) -> None:
    """BadDigest unless Complete's ``x-amz-checksum-<algorithm>`` (of the upload's algorithm)
    is the object's checksum: the composite one (``<checksum of checksums>-<parts>``) or the
    full-object one, by the upload's checksum type. Without an algorithm it is ignored, as
    the bucket ignores it."""
    algorithm = upload.checksum_algorithm
    given = headers.get(f"x-amz-checksum-{algorithm}") if algorithm else None
    if given is None:
        return
    if upload.checksum_type == "COMPOSITE":
        expected = _composite(algorithm, [part.checksum for part in parts])
    else:
        expected = checksums[algorithm]
    if given.strip() != expected:
        raise BadDigest(
            f"The {algorithm.upper()} you specified did not match the calculated checksum."
        )


def _multipart_etag(md5s: list[str]) -> str:
    joined = b"".join(bytes.fromhex(md5) for md5 in md5s)
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(md5s)}"


def _composite(algorithm: str, checksums: list[str]) -> str:
    hasher = new_hasher(algorithm)
    for value in checksums:
        hasher.update(base64.b64decode(value))
    return f"{b64(hasher.digest())}-{len(checksums)}"


async def abort_multipart_upload(call: Call) -> Response:
    """AbortMultipartUpload."""
    upload = _open(call)
    if upload is None:
        return await forward(call)
    async with _store(call).locked(upload.upload_id) as locked:
        held = _still_open(locked)
        if not held.upstream_id:
            _store(call).remove(held)
            return Response(status_code=204)
        call.allow()
        answer = await send_upstream(call, query=call.query(uploadId=held.upstream_id))
        data = await read_all(answer)
        if answer.status_code < 300 or answer.status_code == 404:
            _store(call).remove(held)  # gone in the bucket too (or already)
        # Otherwise (403, 503) the record stays, so a retry can still reach the bucket's upload.
        return relay_read(answer, data)


async def list_parts(call: Call) -> Response:
    """ListParts."""
    upload = _open(call)
    if upload is None:
        return await forward(call)
    if upload.upstream_id:
        call.allow()
        answer = await send_upstream(call, query=call.query(uploadId=upload.upstream_id))
        data = await read_all(answer)
        data = data.replace(upload.upstream_id.encode(), upload.upload_id.encode())
        return Response(data, status_code=answer.status_code, media_type="application/xml")
    query = call.target.query
    try:
        marker = int(query.get("part-number-marker", "0") or 0)
        max_parts = min(int(query.get("max-parts", "1000") or 1000), 1000)
    except ValueError as exc:
        raise InvalidArgument("part-number-marker and max-parts must be integers.") from exc
    numbers = [n for n in sorted(upload.parts) if n > marker]
    page, truncated = numbers[:max_parts], len(numbers) > max_parts
    items = []
    for number in page:
        part = upload.parts[number]
        checksum = ""
        if part.checksum:
            name = "Checksum" + upload.checksum_algorithm.upper()
            checksum = f"<{name}>{part.checksum}</{name}>"
        items.append(
            f"<Part><PartNumber>{number}</PartNumber><LastModified>{iso_time(part.mtime)}"
            f'</LastModified><ETag>"{part.md5_hex}"</ETag><Size>{part.size}</Size>'
            f"{checksum}</Part>"
        )
    next_marker = page[-1] if page else marker
    return _xml(
        f'<ListPartsResult xmlns="{_S3_NS}"><Bucket>{escape(upload.bucket)}</Bucket>'
        f"<Key>{escape(upload.key)}</Key><UploadId>{upload.upload_id}</UploadId>"
        f"<PartNumberMarker>{marker}</PartNumberMarker>"
        f"<NextPartNumberMarker>{next_marker}</NextPartNumberMarker>"
        f"<MaxParts>{max_parts}</MaxParts>"
        f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
        f"<StorageClass>STANDARD</StorageClass>{''.join(items)}</ListPartsResult>"
    )


async def list_multipart_uploads(call: Call) -> Response:
    """ListMultipartUploads: the bucket's uploads with the daemon's ids, plus the uploads the
    daemon holds."""
    store = _store(call)
    held = store.in_bucket(call.target.bucket)
    if not held:
        return await forward(call)
    query = call.target.query
    prefix = query.get("prefix", "")
    moved = {u.upstream_id: u.upload_id for u in held if u.upstream_id}
    first_page = not (query.get("key-marker") or query.get("upload-id-marker"))
    entries: list[tuple[str, float, str]] = [
        (u.key, u.initiated, _upload_xml(u.key, u.upload_id, iso_time(u.initiated)))
        for u in held
        if first_page and not u.upstream_id and u.key.startswith(prefix)
    ]
    paging = "<IsTruncated>false</IsTruncated>"
    prefixes = ""
    if call.settings.passthrough.allows(call.operation):
        theirs = {daemon_id: upstream_id for upstream_id, daemon_id in moved.items()}
        marker = query.get("upload-id-marker", "")
        answer = await send_upstream(
            call,
            query=call.query(**{"upload-id-marker": theirs[marker]}) if marker in theirs else None,
        )
        data = await read_all(answer)
        if answer.status_code != 200:
            return Response(data, status_code=answer.status_code, media_type="application/xml")
        root = _parse_listing(data)
        entries.extend(_their_uploads(root, moved))
        paging, prefixes = _their_paging(root, moved)
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return _xml(
        f'<ListMultipartUploadsResult xmlns="{_S3_NS}"><Bucket>{escape(call.target.bucket)}'
        f"</Bucket><KeyMarker>{escape(query.get('key-marker', ''))}</KeyMarker>"
        f"<UploadIdMarker>{escape(query.get('upload-id-marker', ''))}</UploadIdMarker>"
        f"<Prefix>{escape(prefix)}</Prefix><MaxUploads>{escape(query.get('max-uploads', '1000'))}"
        f"</MaxUploads>{paging}{''.join(e[2] for e in entries)}{prefixes}"
        "</ListMultipartUploadsResult>"
    )


def _their_paging(root: ElementTree.Element, moved: dict[str, str]) -> tuple[str, str]:
    """The bucket's truncation and next markers (upload ids as the client knows them), and
    its common prefixes, as XML."""
    fields = {local_name(node.tag): node.text or "" for node in root if len(node) == 0}
    paging = f"<IsTruncated>{escape(fields.get('IsTruncated', 'false'))}</IsTruncated>"
    if fields.get("NextKeyMarker"):
        paging += f"<NextKeyMarker>{escape(fields['NextKeyMarker'])}</NextKeyMarker>"
    if fields.get("NextUploadIdMarker"):
        marker = moved.get(fields["NextUploadIdMarker"], fields["NextUploadIdMarker"])
        paging += f"<NextUploadIdMarker>{escape(marker)}</NextUploadIdMarker>"
    prefixes = "".join(
        f"<CommonPrefixes><Prefix>{escape(child.text or '')}</Prefix></CommonPrefixes>"
        for node in root
        if local_name(node.tag) == "CommonPrefixes"
        for child in node
        if local_name(child.tag) == "Prefix"
    )
    return paging, prefixes


def _upload_xml(key: str, upload_id: str, initiated: str) -> str:
    return (
        f"<Upload><Key>{escape(key)}</Key><UploadId>{escape(upload_id)}</UploadId>"
        f"<StorageClass>STANDARD</StorageClass><Initiated>{initiated}</Initiated></Upload>"
    )


def _parse_listing(data: bytes) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(data)  # noqa: S314  expat expands no entities
    except ElementTree.ParseError as exc:
        raise MalformedXML("The bucket's upload listing could not be parsed.") from exc


def _their_uploads(
    root: ElementTree.Element, moved: dict[str, str]
) -> list[tuple[str, float, str]]:
    found = []
    for node in root:
        if local_name(node.tag) != "Upload":
            continue
        fields = {local_name(child.tag): child.text or "" for child in node}
        upload_id = moved.get(fields.get("UploadId", ""), fields.get("UploadId", ""))
        initiated = fields.get("Initiated", "")
        found.append(
            (fields.get("Key", ""), 0.0, _upload_xml(fields.get("Key", ""), upload_id, initiated))
        )
    return found


def upstream_error(status: int, body: bytes) -> S3Error:
    """The bucket's error answer as an S3Error the client gets unchanged (code, message,
    status)."""
    code = _find(body, "Code") or "InternalError"
    message = _find(body, "Message") or "The bucket refused the request."
    error = S3Error(message)
    error.code = code
    error.status_code = status if status >= 400 else 502
    return error


def _find(body: bytes, name: str) -> str:
    try:
        root = ElementTree.fromstring(body)  # noqa: S314  expat expands no entities
    except ElementTree.ParseError:
        return ""
    for node in root.iter():
        if local_name(node.tag) == name:
            return node.text or ""
    return ""


MULTIPART_HANDLERS: dict[str, Handler] = {
    "CreateMultipartUpload": create_multipart_upload,
    "UploadPart": upload_part,
    "UploadPartCopy": upload_part_copy,
    "CompleteMultipartUpload": complete_multipart_upload,
    "AbortMultipartUpload": abort_multipart_upload,
    "ListParts": list_parts,
}
