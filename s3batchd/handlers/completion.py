"""CompleteMultipartUpload: a held upload is assembled here into one object, batched like a
PutObject with S3's multipart ETag (``<md5 of the parts' md5s>-<parts>``) and checksums; an
upload the bucket holds is completed there, with the ETags of the parts the daemon sent it.
Conditional writes (``If-None-Match: *``, ``If-Match``) are decided against the key's current
object, batched or the bucket's.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import logging
import re
from xml.sax.saxutils import escape, unescape

from starlette.responses import Response

from s3batchd.clock import write_time
from s3batchd.constants import HEADER_PREFIX, MIN_PART_BYTES
from s3batchd.errors import (
    RETRY_SOON,
    BadDigest,
    EntityTooSmall,
    InvalidPart,
    InvalidPartOrder,
    MalformedXML,
    NoSuchUpload,
    ServiceUnavailable,
)
from s3batchd.forward.passthrough import Call, forward, read_small_body, send_upstream
from s3batchd.forward.proxy import read_all, relay_read
from s3batchd.handlers.heldupload import (
    S3_NS,
    held_upload,
    upload_store,
    xml_response,
)
from s3batchd.handlers.put import (
    CONDITIONAL_HEADERS,
    append,
    check_write_conditions,
    decided_here,
    hide_batched,
    put_response_headers,
    requested_durability,
)
from s3batchd.records import ObjectRecord
from s3batchd.s3.api import DEFAULT_CONTENT_TYPE, metadata_of, stored_headers_of
from s3batchd.s3.body import BodyBuffer
from s3batchd.s3.checksums import ALGORITHMS, b64, new_hasher
from s3batchd.s3.xml import local_name, parse
from s3batchd.spool.uploads import Part, Upload
from s3batchd.upload.bucketmodes import ENCRYPTION_HEADERS, encryption_of

__all__ = ["bucket_part_etags", "complete_multipart_upload"]

logger = logging.getLogger(__name__)


async def complete_multipart_upload(call: Call) -> Response:
    """CompleteMultipartUpload."""
    upload = held_upload(call)
    if upload is None:
        return await forward(call)
    body = await read_small_body(call)
    async with upload_store(call).locked(upload.upload_id) as held:
        if held is None:
            raise NoSuchUpload()
        upload = held
        if upload.completed:
            return xml_response(upload.completed)
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
    rest = await decided_here(call.pipeline, call)
    return call if rest is None else dataclasses.replace(call, headers=rest)


async def _current_etag(call: Call) -> str | None:
    """The ETag of the key's current object (batched, else in the bucket), None if none."""
    bucket, key = call.target.bucket, call.target.key
    entry = await call.pipeline.lookup(bucket, key)
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
        upload_store(call).save(upload)
        upload_store(call).drop_parts(upload)
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
    root = parse(body)
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
    store = upload_store(call)
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
        f'<CompleteMultipartUploadResult xmlns="{S3_NS}">'
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
    return xml_response(xml, location)


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
