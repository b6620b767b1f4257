"""Forwarding a client's request to the bucket: checked against ``passthrough``, verified as a
PUT is, re-signed and streamed both ways (the response is the bucket's, unchanged)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from s3batchd.constants import HEADER_PREFIX, MAX_SINGLE_PUT_BYTES
from s3batchd.errors import AccessDenied
from s3batchd.forward.proxy import Query, forward_headers, relay, unless_client_leaves
from s3batchd.forward.reframe import STREAMING_UNSIGNED_TRAILER, framed_length, reframe
from s3batchd.s3.addressing import Target
from s3batchd.s3.api import (
    Digests,
    PutRequest,
    iter_body,
    parse_body,
    read_body,
    verify_body,
)
from s3batchd.s3.auth import chunk_verifier
from s3batchd.s3.body import BodyBuffer
from s3batchd.s3.operations import AUTH_PARAMETERS

#: Methods without side effects in the bucket: given up when their client hangs up.
SAFE_METHODS = frozenset({"GET", "HEAD"})
#: Largest XML request body read whole (DeleteObjects of 1,000 keys, a part list of 10,000).
MAX_XML_BODY = 4 * 1024 * 1024

if TYPE_CHECKING:
    import httpx

    from s3batchd.batching.pipeline import Pipeline
    from s3batchd.config import Settings
    from s3batchd.forward.daemon import Daemon, Upstream
    from s3batchd.s3.signing import AuthContext
    from s3batchd.upload.bucketmodes import BucketModes


@dataclass(slots=True)
class Call:
    """One client request as the handlers see it: its context, parsed once by
    ``handlers/dispatch.serve``, and the daemon that serves it (passed in, not looked up).
    A value, never changed (``dataclasses.replace`` makes a changed copy); not ``frozen``,
    one being built per request (records.ObjectRecord says why)."""

    request: Request
    target: Target
    """The bucket, the key and the query, addressing resolved."""
    headers: dict[str, str]
    """Lower-cased names; repeated headers joined with commas."""
    operation: str
    """The S3 operation name (``s3/operations.py``)."""
    context: AuthContext | None
    """What the signature verified (None without authentication)."""
    daemon: Daemon
    request_id: str
    """``x-amz-request-id`` of the answer."""

    @property
    def settings(self) -> Settings:
        """The daemon's settings."""
        return self.daemon.settings

    @property
    def pipeline(self) -> Pipeline:
        """The daemon's batcher, uploader and catalog."""
        return self.daemon.pipeline

    @property
    def bucket_modes(self) -> BucketModes:
        """Each bucket's versioning, object lock and default encryption."""
        return self.daemon.bucket_modes

    @property
    def forwarder(self) -> Upstream:
        """The way to the bucket."""
        return self.daemon.forwarder

    @property
    def head(self) -> bool:
        """Whether this is a HEAD request (no body in the answer)."""
        return self.request.method == "HEAD"

    def query(self, **replace: str) -> Query:
        """The client's query without its authentication parameters (``replace``: values
        to substitute, e.g. an upload id)."""
        items = {k: v for k, v in self.target.query.items() if k not in AUTH_PARAMETERS}
        items.update(replace)
        return list(items.items())

    def allow(self, operation: str | None = None) -> None:
        """AccessDenied unless ``operation`` (default: this request's) may be forwarded."""
        name = operation or self.operation
        if not self.settings.passthrough.allows(name):
            raise AccessDenied(f"{name} is not forwarded by this s3batchd (passthrough setting).")

    def has_body(self) -> bool:
        """Whether the client sends a request body."""
        return "transfer-encoding" in self.headers or self.headers.get(
            "content-length", "0"
        ) not in ("", "0")


async def forward(
    call: Call, *, operation: str | None = None, query: Query | None = None
) -> Response:
    """Forward the request as it is (its body streamed, verified on the way) and relay the
    bucket's answer."""
    call.allow(operation)
    sending = send_upstream(call, query=query)
    if call.request.method in SAFE_METHODS and not call.has_body():
        # A client that hangs up frees its slot and pooled connection now, not when a slow
        # bucket answers. A PUT, POST or DELETE runs on: the bucket may apply it all the
        # same, and the daemon's own records must follow what the bucket did.
        upstream = await unless_client_leaves(call.request.receive, sending)
    else:
        upstream = await sending
    return relay(upstream, head=call.head)


async def send_upstream(
    call: Call,
    *,
    query: Query | None = None,
    body: bytes | None = None,
    put: PutRequest | None = None,
) -> httpx.Response:
    """Send the client's request (``body``: already read; ``put``: its parsed body headers)
    to the bucket; the open upstream response. Object data (PutObject, UploadPart) streams
    through re-framed (reframe.py); other bodies are small documents, read whole first."""
    target = call.target
    method = call.request.method
    headers = forward_headers(call.headers, HEADER_PREFIX)
    args = (method, target.bucket, target.key, call.query() if query is None else query)
    if body is None and call.has_body() and call.operation not in STREAMED:
        body = await read_small_body(call)
    if body is not None or not call.has_body():
        return await call.forwarder.send(*args, headers, body or b"")
    put = put or parse_body(target, call.headers, max_bytes=MAX_SINGLE_PUT_BYTES)
    if put.declared_size is None:
        # Unknown length (Transfer-Encoding: chunked): the length must be known before the
        # first byte goes upstream, so the body is received to the spool's temporary
        # directory (verified) first.
        received, digests = await receive_body(call, put, max_bytes=MAX_SINGLE_PUT_BYTES)
        try:
            checksums = verify_body(put, digests, received.size)
        except BaseException:
            received.close()
            raise
        return await send_buffer(call, received, put, checksums, query=query)
    digests = Digests(put)
    pieces = iter_body(
        put,
        call.request.receive,
        digests,
        max_bytes=put.declared_size,
        pace=call.daemon.body_pace,
        verifier=chunk_verifier(call.context),
    )
    counted = _Counted(pieces)
    algorithm = _algorithm(put)
    stream = reframe(counted, algorithm, lambda: verify_body(put, digests, counted.size))
    return await call.forwarder.send(
        *args,
        _reframed_headers(headers, put.declared_size, algorithm),
        _consumed(call, stream),
        framed_length(put.declared_size, algorithm),
        STREAMING_UNSIGNED_TRAILER,
    )


#: Operations whose body is object data, streamed through rather than read whole.
STREAMED = frozenset({"PutObject", "UploadPart"})


class _Counted:
    """An async iterator of byte pieces that counts them."""

    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces
        self.size = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        piece = await anext(self._pieces)
        self.size += len(piece)
        return piece


def _algorithm(put: PutRequest) -> str:
    """The checksum algorithm the client used (the trailer carries its verified value), or
    CRC32 (computed by the daemon) when it used none."""
    for algorithm in put.checksums:
        return algorithm
    for name in put.trailer_names:
        return name.removeprefix("x-amz-checksum-")
    return "crc32"


def _reframed_headers(headers: dict[str, str], size: int, algorithm: str) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if not k.startswith("x-amz-checksum-")}
    encodings = ["aws-chunked"] + ([out["content-encoding"]] if "content-encoding" in out else [])
    out["content-encoding"] = ",".join(encodings)
    out["x-amz-decoded-content-length"] = str(size)
    out["x-amz-trailer"] = f"x-amz-checksum-{algorithm}"
    out["x-amz-sdk-checksum-algorithm"] = algorithm.upper()  # the trailer's, whatever was asked
    return out


async def receive_body(
    call: Call, put: PutRequest, *, max_bytes: int, memory_limit: int | None = None
) -> tuple[BodyBuffer, Digests]:
    """Receive the client's body (decoded, digests computed; not yet verified: see
    ``verify_body``) into memory or the spool's temporary directory."""
    settings = call.settings
    call.request.state.body_consumed = True
    return await read_body(
        put,
        call.request.receive,
        max_bytes=max_bytes,
        memory_limit=settings.limits.memory_buffer_bytes if memory_limit is None else memory_limit,
        spill_dir=call.pipeline.spill_dir,
        pace=call.daemon.body_pace,
        verifier=chunk_verifier(call.context),
    )


async def read_small_body(call: Call, limit: int = MAX_XML_BODY) -> bytes:
    """The whole, verified body of a request that carries an XML document."""
    headers = call.headers
    if call.operation == "CompleteMultipartUpload":
        # Its x-amz-checksum-<algorithm> is the object's checksum (S3), not the document's.
        headers = {k: v for k, v in headers.items() if not k.startswith("x-amz-checksum-")}
    put = parse_body(call.target, headers, max_bytes=limit)
    received, digests = await receive_body(call, put, max_bytes=limit, memory_limit=limit)
    try:
        verify_body(put, digests, received.size)
        return received.getvalue()
    finally:
        received.close()


async def send_buffer(
    call: Call,
    body: BodyBuffer,
    put: PutRequest,
    checksums: dict[str, str],
    *,
    query: Query | None = None,
) -> httpx.Response:
    """Send a received, verified body upstream as the client's object data; closes
    ``body``."""
    target = call.target
    headers = forward_headers(call.headers, HEADER_PREFIX)
    algorithm = _algorithm(put)
    stream = reframe(streamed(body.chunks()), algorithm, lambda: checksums)
    try:
        return await call.forwarder.send(
            call.request.method,
            target.bucket,
            target.key,
            call.query() if query is None else query,
            _reframed_headers(headers, body.size, algorithm),
            stream,
            framed_length(body.size, algorithm),
            STREAMING_UNSIGNED_TRAILER,
        )
    finally:
        body.close()


async def _consumed(call: Call, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``stream``, noting when the client's body has been read to its end (a body left
    unread closes the connection after the answer)."""
    async for piece in stream:
        yield piece
    call.request.state.body_consumed = True


async def streamed(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    """``pieces`` as an async iterator (what the forwarder sends)."""
    for piece in pieces:
        yield piece
