"""The S3 PutObject subset: header rules, body decoding and verification.

``PutRequest`` holds what the headers say (``parse_put`` / ``parse_body``), ``read_body`` reads
the body (aws-chunked decoded, stalls detected) and ``verify_body`` checks it against the
declared digests and length. Everything that is wrong raises an ``S3Error``; the server renders
it. What a request addresses (bucket, key, Host) is :mod:`s3batchd.s3.addressing`.

Why one module above 400 lines: the PutObject header rules and the body decoding fill and read
the same ``PutRequest``; split, each half would reach into the other's fields.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.types import Message, Receive

from s3batchd.clock import write_time
from s3batchd.constants import MAX_USER_METADATA_BYTES
from s3batchd.errors import (
    BadDigest,
    ClientDisconnectedError,
    EntityTooLarge,
    IncompleteBody,
    InvalidArgument,
    InvalidRequest,
    MetadataTooLarge,
    MissingContentLength,
    NotImplementedS3,
    RequestTimeout,
    XAmzContentSHA256Mismatch,
)
from s3batchd.records import ObjectRecord
from s3batchd.s3.addressing import Target
from s3batchd.s3.awschunked import AwsChunkedDecoder
from s3batchd.s3.body import BodyBuffer
from s3batchd.s3.checksums import (
    ALGORITHMS,
    Hasher,
    b64,
    decode_checksum,
    decode_content_md5,
    new_hasher,
)
from s3batchd.s3.chunkchain import ChunkVerifier
from s3batchd.s3.stall import BodyPace, StallWatch, Suspended, step

_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
#: Headers stored with the object (besides Content-Type and x-amz-meta-*).
STORED_HEADERS = (
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
    "x-amz-tagging",
    "x-amz-storage-class",
    "x-amz-website-redirect-location",
    "x-amz-acl",
)
#: Sub-resources that make a PUT something other than PutObject. Other query parameters
#: (``x-id=PutObject``, presigned-URL auth parameters) do not change what a PUT means.
SUBRESOURCES = frozenset(
    {
        "acl",
        "attributes",
        "cors",
        "encryption",
        "legal-hold",
        "lifecycle",
        "logging",
        "notification",
        "object-lock",
        "partNumber",
        "policy",
        "replication",
        "restore",
        "retention",
        "select",
        "tagging",
        "torrent",
        "uploadId",
        "uploads",
        "versionId",
        "versioning",
        "website",
    }
)
_STORED = frozenset(STORED_HEADERS)
DEFAULT_CONTENT_TYPE = "binary/octet-stream"


@dataclass(slots=True)
class PutRequest:
    """What a PutObject's headers ask for."""

    target: Target
    content_type: str
    metadata: dict[str, str]
    stored_headers: dict[str, str]
    aws_chunked: bool
    declared_size: int | None
    """Decoded size when the headers state it (Content-Length or x-amz-decoded-content-length)."""
    content_md5: bytes | None = None
    checksums: dict[str, bytes] = field(default_factory=dict)
    """Expected raw digests by algorithm, from headers."""
    trailer_names: tuple[str, ...] = ()
    payload_sha256: str | None = None


def parse_put(target: Target, headers: dict[str, str], *, max_bytes: int) -> PutRequest:
    """Validate a PutObject's headers; raises before any body byte is read. The caller has
    checked the bucket name and the key (dispatch.serve) and that ``unbatchable`` has no
    objection to the headers (ingest.put_object): done twice per PUT, they showed in the
    profile."""
    if not target.key:
        raise NotImplementedS3("Bucket-level PUT operations are not implemented by s3batchd.")
    if target.query:
        unsupported = sorted(SUBRESOURCES.intersection(target.query))
        if unsupported:
            raise NotImplementedS3(f"PUT with ?{unsupported[0]} is not implemented by s3batchd.")
    return parse_body(target, headers, max_bytes=max_bytes)


def parse_body(target: Target, headers: dict[str, str], *, max_bytes: int) -> PutRequest:
    """What the headers of any request with a body say about it: framing, size, digests."""
    aws_chunked = _is_aws_chunked(headers)
    declared = _declared_size(headers, aws_chunked=aws_chunked)
    if declared is not None and declared > max_bytes:
        raise EntityTooLarge(f"Your proposed upload is {declared} bytes; the limit is {max_bytes}.")
    request = PutRequest(
        target=target,
        content_type=headers.get("content-type") or DEFAULT_CONTENT_TYPE,
        metadata=metadata_of(headers),
        stored_headers=stored_headers_of(headers),
        aws_chunked=aws_chunked,
        declared_size=declared,
    )
    _parse_digests(request, headers)
    presigned = target.query.get("X-Amz-Content-Sha256", "") if target.query else ""
    if request.payload_sha256 is None and presigned and _SHA256_HEX.match(presigned):
        # A presigned URL may sign the payload hash as a query parameter: checked the same way.
        request.payload_sha256 = presigned.lower()
    return request


#: Headers asking for what one object inside a shared tar cannot have: conditional writes
#: (the daemon does not know what the bucket holds under the key), per-object encryption
#: keys, object lock, CopyObject. Refused rather than silently ignored.
UNSUPPORTED_HEADERS = (
    "if-match",
    "if-none-match",
    "x-amz-copy-source",
    "x-amz-server-side-encryption-customer-algorithm",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-context",
    "x-amz-object-lock-mode",
    "x-amz-object-lock-retain-until-date",
    "x-amz-object-lock-legal-hold",
    "x-amz-grant-read",
    "x-amz-grant-write-acp",
    "x-amz-grant-read-acp",
    "x-amz-grant-full-control",
)
#: Values that are the bucket's behaviour anyway, so they are accepted. The canned ACL is
#: recorded (GetObjectAcl answers it); others (public-read, ...) cannot be batched: a batched
#: object's bytes are inside a private tar that no object ACL makes readable to others.
ACCEPTED_VALUES = {
    "x-amz-server-side-encryption": ("aes256",),  # SSE-S3, S3's default for every object
    "x-amz-acl": ("private", "bucket-owner-full-control"),
}


SSE_C_KEY_HEADERS = (
    "x-amz-server-side-encryption-customer-key",
    "x-amz-server-side-encryption-customer-key-md5",
)


def check_sse_c(headers: dict[str, str]) -> None:
    """InvalidArgument, as S3 answers, for an SSE-C key without its algorithm header (the key
    would otherwise be dropped and the object stored unencrypted)."""
    if "x-amz-server-side-encryption-customer-algorithm" in headers:
        return
    for name in SSE_C_KEY_HEADERS:
        if name in headers:
            raise InvalidArgument(
                "Requests specifying Server Side Encryption with Customer provided keys must"
                " provide a valid encryption algorithm."
            )


def unbatchable(headers: dict[str, str]) -> str | None:
    """Why a PutObject with these headers cannot be batched (it can still be forwarded), or
    None."""
    for name in UNSUPPORTED_HEADERS:
        if name in headers:
            return f"The {name} header is not supported for batched objects."
    for name, accepted in ACCEPTED_VALUES.items():
        value = headers.get(name)
        if value is not None and value.strip().lower() not in accepted:
            return f"{name}: {value} is not supported for batched objects."
    return None


def _is_aws_chunked(headers: dict[str, str]) -> bool:
    sha = headers.get("x-amz-content-sha256", "")
    if sha.startswith("STREAMING-AWS4-ECDSA"):
        raise NotImplementedS3("SigV4a streaming payloads are not supported.")
    if sha.startswith("STREAMING-"):
        return True
    encoding = headers.get("content-encoding")
    return encoding is not None and "aws-chunked" in (
        part.strip().lower() for part in encoding.split(",")
    )


def _declared_size(headers: dict[str, str], *, aws_chunked: bool) -> int | None:
    length = headers.get("content-length")
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    if length is None and not chunked:
        raise MissingContentLength()
    source = headers.get("x-amz-decoded-content-length") if aws_chunked else length
    if source is None:
        return None
    try:
        value = int(source)
    except ValueError as exc:
        raise InvalidArgument(f"Invalid size: {source!r}") from exc
    if value < 0:
        raise InvalidArgument(f"Invalid size: {source!r}")
    return value


def metadata_of(headers: dict[str, str]) -> dict[str, str]:
    meta = {name[11:]: value for name, value in headers.items() if name.startswith("x-amz-meta-")}
    if sum(len(name) + len(value) for name, value in meta.items()) > MAX_USER_METADATA_BYTES:
        raise MetadataTooLarge()
    return meta


def stored_headers_of(headers: dict[str, str]) -> dict[str, str]:
    if _STORED.isdisjoint(headers):  # most PUTs: one set test, not nine lookups
        return {}
    stored = {name: headers[name] for name in STORED_HEADERS if name in headers}
    if "content-encoding" in stored:
        tokens = [t.strip() for t in stored["content-encoding"].split(",")]
        remaining = [t for t in tokens if t and t.lower() != "aws-chunked"]
        if remaining:
            stored["content-encoding"] = ",".join(remaining)
        else:
            del stored["content-encoding"]
    if "x-amz-acl" in stored:  # one of ACCEPTED_VALUES (unbatchable checked it)
        stored["x-amz-acl"] = stored["x-amz-acl"].strip().lower()
    return stored


#: The request header of each checksum algorithm.
_CHECKSUM_HEADERS = tuple((algorithm, f"x-amz-checksum-{algorithm}") for algorithm in ALGORITHMS)


def _parse_digests(request: PutRequest, headers: dict[str, str]) -> None:
    if "content-md5" in headers:
        request.content_md5 = decode_content_md5(headers["content-md5"])
    for algorithm, name in _CHECKSUM_HEADERS:
        value = headers.get(name)
        if value is not None:
            request.checksums[algorithm] = decode_checksum(algorithm, value)
    sdk_algorithm = headers.get("x-amz-sdk-checksum-algorithm", "").lower()
    if sdk_algorithm and sdk_algorithm not in ALGORITHMS:
        raise InvalidRequest(f"Unsupported checksum algorithm: {sdk_algorithm}")
    trailer = headers.get("x-amz-trailer")
    if trailer is not None:
        names = tuple(name.strip().lower() for name in trailer.split(",") if name.strip())
        for name in names:
            if not name.startswith("x-amz-checksum-") or name[15:] not in ALGORITHMS:
                raise InvalidRequest(f"Unsupported trailer: {name}")
        if names and not request.aws_chunked:
            raise InvalidRequest("x-amz-trailer requires an aws-chunked body.")
        request.trailer_names = names
    sha = headers.get("x-amz-content-sha256", "")
    if _SHA256_HEX.match(sha):
        request.payload_sha256 = sha.lower()


class Digests:
    """Every digest computed while the body streams in."""

    def __init__(self, request: PutRequest) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.hashers: dict[str, Hasher] = {}
        if request.checksums or request.trailer_names:  # most PUTs announce none
            algorithms = set(request.checksums) | {name[15:] for name in request.trailer_names}
            self.hashers = {name: new_hasher(name) for name in algorithms}
        self.sha256 = hashlib.sha256() if request.payload_sha256 else None

    def update(self, data: bytes | memoryview) -> None:
        """Feed a decoded payload piece to every digest."""
        self.md5.update(data)
        for hasher in self.hashers.values():
            hasher.update(data)
        if self.sha256 is not None:
            self.sha256.update(data)


async def read_body(
    request: PutRequest,
    receive: Receive,
    *,
    max_bytes: int,
    memory_limit: int,
    spill_dir: Path,
    pace: BodyPace,
    verifier: ChunkVerifier | None = None,
) -> tuple[BodyBuffer, Digests]:
    """Read and decode the whole body (RequestTimeout when the client stalls longer than
    ``pace.timeout_s`` between two pieces or misses its deadline: stall.py); the caller
    closes the buffer."""
    body = BodyBuffer(memory_limit=memory_limit, spill_dir=spill_dir)
    try:
        digests = await _read(
            request, receive, body, max_bytes=max_bytes, pace=pace, verifier=verifier
        )
    except BaseException:
        body.close()
        raise
    return body, digests


def build_record(request: PutRequest, digests: Digests, size: int) -> ObjectRecord:
    """Verify sizes and digests of a received body and describe the object."""
    checksums = verify_body(request, digests, size)
    return ObjectRecord(
        key=request.target.key,
        size=size,
        md5_hex=digests.md5.hexdigest(),
        content_type=request.content_type,
        metadata=request.metadata,
        headers=request.stored_headers,
        checksums=checksums,
        mtime=write_time(),
    )


async def _read(
    request: PutRequest,
    receive: Receive,
    body: BodyBuffer,
    *,
    max_bytes: int,
    pace: BodyPace,
    verifier: ChunkVerifier | None,
) -> Digests:
    digests = Digests(request)
    if request.aws_chunked:
        async for piece in iter_body(
            request, receive, digests, max_bytes=max_bytes, pace=pace, verifier=verifier
        ):
            body.write(piece)
        return digests
    # A plain body: ``iter_body``'s loop without the async generator between ``receive`` and
    # the buffer (a small PUT's body is one message: the generator's frames cost more).
    size = 0
    watch: StallWatch | None = None  # armed at the body's first wait (stall.step)
    try:
        while True:
            if watch is not None:
                message = await _next_message(receive(), watch)
            else:
                ready = step(receive())
                if isinstance(ready, Suspended):
                    watch = StallWatch(
                        pace.timeout_s, pace=pace, declared=request.declared_size, received=size
                    )
                    message = await _next_message(ready, watch)
                elif ready["type"] == "http.disconnect":
                    raise ClientDisconnectedError()
                else:
                    message = ready
            chunk: bytes = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > max_bytes:
                    raise EntityTooLarge(f"Your upload exceeds the limit of {max_bytes} bytes.")
                digests.update(chunk)
                body.write(bytes(chunk))
            if not message.get("more_body", False):
                return digests
    finally:
        if watch is not None:
            watch.close()


async def iter_body(
    request: PutRequest,
    receive: Receive,
    digests: Digests,
    *,
    max_bytes: int,
    pace: BodyPace,
    verifier: ChunkVerifier | None,
    received: int = 0,
) -> AsyncIterator[bytes]:
    """The decoded body piece by piece, every digest fed; trailing checksums are added to
    ``request.checksums`` at the end (``build_record``/``verify_body`` compare them).
    ``received``: bytes already taken from this body by an earlier reader."""
    decoder = AwsChunkedDecoder(verifier) if request.aws_chunked else None
    size = received
    watch = StallWatch(pace.timeout_s, pace=pace, declared=request.declared_size, received=received)
    try:
        while True:
            message = await _next_message(receive(), watch)
            chunk: bytes = message.get("body", b"")
            pieces = decoder.feed(chunk) if decoder is not None else [chunk]
            for piece in pieces:
                size += len(piece)
                if size > max_bytes:
                    raise EntityTooLarge(f"Your upload exceeds the limit of {max_bytes} bytes.")
                digests.update(piece)
                yield bytes(piece)
            if not message.get("more_body", False):
                break
    finally:
        watch.close()
    if decoder is not None:
        decoder.finish()
        request.checksums.update(_trailer_checksums(request, decoder.trailers))


async def _next_message(pending: Awaitable[Message], watch: StallWatch) -> Message:
    """The next message of a request body (``pending``: a ``receive()``), its bytes counted by
    ``watch``: RequestTimeout when the watch ends the wait (too slow), ClientDisconnectedError
    when the client went away."""
    watch.waiting()
    try:
        message = await pending
    except asyncio.CancelledError as exc:
        if watch.timed_out():
            raise RequestTimeout() from exc
        raise
    watch.arrived(len(message.get("body", b"")))
    if message["type"] == "http.disconnect":
        raise ClientDisconnectedError()
    return message


def _trailer_checksums(request: PutRequest, trailers: dict[str, str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for name in request.trailer_names:
        if name not in trailers:
            raise IncompleteBody(f"The declared trailer {name} was not sent.")
        found[name[15:]] = decode_checksum(name[15:], trailers[name])
    return found


def verify_body(request: PutRequest, digests: Digests, size: int) -> dict[str, str]:
    """Check a received body against every size and digest its request stated; the
    verified checksums by algorithm (base64)."""
    if request.declared_size is not None and size != request.declared_size:
        raise IncompleteBody(f"Received {size} bytes, expected {request.declared_size}.")
    if request.content_md5 is not None and digests.md5.digest() != request.content_md5:
        raise BadDigest("The Content-MD5 you specified did not match what we received.")
    if digests.sha256 is not None and digests.sha256.hexdigest() != request.payload_sha256:
        raise XAmzContentSHA256Mismatch()
    verified: dict[str, str] = {}
    for algorithm, expected in request.checksums.items():
        actual = digests.hashers[algorithm].digest()
        if actual != expected:
            raise BadDigest(
                f"The x-amz-checksum-{algorithm} you specified did not match the calculated "
                f"checksum ({b64(actual)})."
            )
        verified[algorithm] = b64(expected)
    return verified
