"""Client multipart uploads (CreateMultipartUpload, UploadPart, UploadPartCopy,
CompleteMultipartUpload, AbortMultipartUpload, ListParts, ListMultipartUploads).

Many clients upload even tiny objects in parts. While an upload's parts stay below
``batch.passthrough_bytes`` in total they are kept in the spool (uploads.py) and, on
completion, assembled into one object that is batched like a PutObject, with S3's multipart
ETag. Once they pass it, the daemon creates the real multipart upload in the bucket, sends the
parts it holds, and forwards the rest. The client keeps the upload id the daemon gave it
either way.

CompleteMultipartUpload is :mod:`~s3batchd.handlers.completion`, ListParts and
ListMultipartUploads :mod:`~s3batchd.handlers.uploadlisting`; what they share with these
handlers is :mod:`~s3batchd.handlers.heldupload`.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from xml.sax.saxutils import escape

from starlette.responses import Response

from s3batchd.concurrency import Pool
from s3batchd.constants import HEADER_PREFIX, MAX_PART_BYTES
from s3batchd.errors import EntityTooLarge, InvalidArgument, S3Error
from s3batchd.forward.passthrough import Call, forward, receive_body, send_upstream, streamed
from s3batchd.forward.proxy import forward_headers, read_all, relay_read
from s3batchd.handlers.completion import complete_multipart_upload
from s3batchd.handlers.copy import batched_source, read_source
from s3batchd.handlers.heldupload import (
    S3_NS,
    find_text,
    open_upload,
    still_open,
    upload_store,
    upstream_error,
    xml_response,
)
from s3batchd.handlers.put import check_quota, forward_threshold, require_bucket
from s3batchd.handlers.uploadlisting import list_parts
from s3batchd.index import iso_time
from s3batchd.s3.api import check_sse_c, metadata_of, parse_body, unbatchable, verify_body
from s3batchd.s3.body import BodyBuffer
from s3batchd.s3.checksums import ALGORITHMS, b64, new_hasher
from s3batchd.spool.uploads import Part, Upload
from s3batchd.upload.bucketmodes import decide

Handler = Callable[[Call], Awaitable[Response]]


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
    upload = upload_store(call).create(
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
    return xml_response(
        f'<InitiateMultipartUploadResult xmlns="{S3_NS}"><Bucket>{escape(upload.bucket)}'
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
    upload = open_upload(call)
    if upload is None:
        return await forward(call)
    number = _part_number(call)
    put = parse_body(call.target, call.headers, max_bytes=MAX_PART_BYTES)
    upstream_id = await _goes_upstream(call, upload.upload_id, put.declared_size)
    if upstream_id:
        return await forward(call, query=call.query(uploadId=upstream_id))
    store = upload_store(call)
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
    store = upload_store(call)
    async with store.locked(upload_id) as locked:
        upload = still_open(locked)
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
    store = upload_store(call)
    async with store.locked(upload_id) as locked:
        upload = still_open(locked)
        threshold = forward_threshold(call.settings)
        if not upload.upstream_id and upload.size + part.size >= threshold and _can_promote(call):
            await _promote(call, upload)
        if upload.upstream_id:
            etag = await _send_part(call, upload, part, body.chunks())
        else:
            if upload.size + part.size > call.settings.limits.max_object_bytes:
                raise EntityTooLarge("The parts exceed limits.max_object_bytes.")
            held = await store.threads.run(Pool.PARTS, store.held_bytes)  # a directory scan
            check_quota(call.pipeline, part.size + held)
            await store.threads.run(Pool.PARTS, store.write_part, upload, part, body)
            etag = f'"{part.md5_hex}"'
    headers = {}
    if part.checksum:
        headers[f"x-amz-checksum-{upload.checksum_algorithm}"] = part.checksum
    if not copy:
        return Response(status_code=200, headers={"ETag": etag, **headers})
    return xml_response(
        f'<CopyPartResult xmlns="{S3_NS}"><LastModified>{iso_time(part.mtime)}</LastModified>'
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
    upstream_id = find_text(body, "UploadId")
    if not upstream_id:
        raise upstream_error(502, body)
    upload.upstream_id = upstream_id
    store = upload_store(call)
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
    upload = open_upload(call)
    if upload is None:
        return await forward(call)
    number = _part_number(call)
    entry = await batched_source(call)
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
    async with upload_store(call).locked(upload_id) as locked:
        upload = still_open(locked)
        if not upload.upstream_id:
            await _promote(call, upload)
        return upload.upstream_id


async def abort_multipart_upload(call: Call) -> Response:
    """AbortMultipartUpload."""
    upload = open_upload(call)
    if upload is None:
        return await forward(call)
    async with upload_store(call).locked(upload.upload_id) as locked:
        held = still_open(locked)
        if not held.upstream_id:
            upload_store(call).remove(held)
            return Response(status_code=204)
        call.allow()
        answer = await send_upstream(call, query=call.query(uploadId=held.upstream_id))
        data = await read_all(answer)
        if answer.status_code < 300 or answer.status_code == 404:
            upload_store(call).remove(held)  # gone in the bucket too (or already)
        # Otherwise (403, 503) the record stays, so a retry can still reach the bucket's upload.
        return relay_read(answer, data)


MULTIPART_HANDLERS: dict[str, Handler] = {
    "CreateMultipartUpload": create_multipart_upload,
    "UploadPart": upload_part,
    "UploadPartCopy": upload_part_copy,
    "CompleteMultipartUpload": complete_multipart_upload,
    "AbortMultipartUpload": abort_multipart_upload,
    "ListParts": list_parts,
}
