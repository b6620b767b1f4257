"""PutObject: batched into the spool when small, forwarded to the bucket when large or when
its headers ask for what a batched object cannot have."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.responses import Response

from s3batchd.batching.pipeline import Pipeline
from s3batchd.config import DURABILITY_ORDER, Durability, Settings
from s3batchd.constants import HEADER_PREFIX, MAX_SINGLE_PUT_BYTES
from s3batchd.errors import (
    RETRY_SOON,
    Draining,
    InvalidArgument,
    NoSuchKey,
    NotImplementedS3,
    PreconditionFailed,
    SlowDown,
    UploadRefused,
)
from s3batchd.forward.passthrough import Call, send_buffer, send_upstream
from s3batchd.forward.proxy import relay
from s3batchd.handlers.get import etag_matches
from s3batchd.records import ObjectRecord, SpoolEntry
from s3batchd.s3.api import (
    ACCEPTED_VALUES,
    SSE_C_KEY_HEADERS,
    UNSUPPORTED_HEADERS,
    PutRequest,
    build_record,
    check_sse_c,
    parse_put,
    read_body,
    unbatchable,
    verify_body,
)
from s3batchd.s3.auth import chunk_verifier
from s3batchd.s3.body import BodyBuffer
from s3batchd.upload.bucketmodes import ENCRYPTION_HEADERS, decide

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)


#: Headers that take a PutObject off the plain path (each checked by ``check_sse_c``,
#: ``unbatchable`` and ``decide``): one set test when none is present, as in most PUTs.
_SPECIAL_HEADERS = frozenset(
    (*UNSUPPORTED_HEADERS, *ACCEPTED_VALUES, *SSE_C_KEY_HEADERS, *ENCRYPTION_HEADERS)
)


async def put_object(call: Call) -> Response:
    """PutObject. A small body is read, verified and appended to its bucket's open batch
    without any other await (``Batcher.append_now``); with durability ``fsync`` the request
    then awaits the group commit's one future."""
    daemon = call.daemon
    settings = daemon.settings
    pipeline = daemon.pipeline
    headers = call.headers
    bucket = call.target.bucket
    can_forward = settings.passthrough.allows("PutObject")
    reason = None
    if not _SPECIAL_HEADERS.isdisjoint(headers):
        check_sse_c(headers)
        reason = unbatchable(headers)
        if reason is not None:
            headers, reason = await _conditions(pipeline, call, reason)
    encryption: dict[str, str] = {}
    if reason is None:
        modes = daemon.bucket_modes
        mode = modes.cached(bucket) or await modes.get(bucket)
        reason, encryption = decide(
            mode, headers, versioned_buckets=settings.batch.versioned_buckets
        )
    if reason is not None:
        if not can_forward:
            raise NotImplementedS3(reason)
        return await forward_write(call)
    limits = settings.limits
    limit = MAX_SINGLE_PUT_BYTES if can_forward else limits.max_object_bytes
    put = parse_put(call.target, headers, max_bytes=limit)
    if encryption:
        put.stored_headers.update(encryption)
    threshold = forward_threshold(settings)
    if can_forward and put.declared_size is not None and put.declared_size >= threshold:
        return await forward_write(call, put)
    durability = requested_durability(headers, settings.spool.durability)
    if pipeline.draining:
        raise Draining
    check_quota(pipeline, put.declared_size or 0)
    buckets = daemon.buckets
    if not buckets.accepts(bucket):  # not known to exist: may wait for HeadBucket
        await buckets.require(bucket)
    check_refusals(pipeline, bucket)
    body, digests = await read_body(
        put,
        call.request.receive,
        max_bytes=limit if put.declared_size is None else limits.max_object_bytes,
        memory_limit=limits.memory_buffer_bytes,
        spill_dir=pipeline.spill_dir,
        pace=daemon.body_pace,
        verifier=chunk_verifier(call.context),
    )
    call.request.scope["state"]["body_consumed"] = True
    daemon.received_bytes.inc(body.size)
    if can_forward and body.size >= threshold:
        # A body of unknown size that grew past the threshold: verified, then forwarded.
        try:
            checksums = verify_body(put, digests, body.size)
        except BaseException:
            body.close()
            raise
        upstream = await send_buffer(call, body, put, checksums)
        return await written_upstream(call, upstream)
    try:
        record = build_record(put, digests, body.size)
        return await store(call, pipeline, record, body, durability)
    finally:
        body.close()


async def require_bucket(call: Call) -> None:
    """404 NoSuchBucket, before anything is read or spooled, when the upstream says the
    request's bucket does not exist (buckets.py: cached, one HeadBucket per bucket)."""
    buckets = call.daemon.buckets
    if not buckets.accepts(call.target.bucket):
        await buckets.require(call.target.bucket)


def check_quota(pipeline: Pipeline, incoming: int) -> None:
    """503 SlowDown if ``incoming`` more bytes would take the spool past ``spool.max_bytes``:
    backpressure instead of loss (every S3 client retries it)."""
    if pipeline.over_quota(incoming):
        raise SlowDown("The local spool is full; uploads are catching up.", headers=RETRY_SOON)


def check_refusals(pipeline: Pipeline, bucket: str) -> None:
    """503 SlowDown if ``bucket``'s parked batches take more than their share of the spool
    (``upload.parked_max_bucket_fraction``): the other buckets keep being served."""
    refusal = pipeline.refusal(bucket)
    if refusal is not None:
        raise SlowDown(
            f"Uploads to this bucket are refused upstream ({refusal}); see `s3batchd parked list`.",
            headers=RETRY_SOON,
        )


async def store(
    call: Call, pipeline: Pipeline, record: ObjectRecord, body: BodyBuffer, durability: Durability
) -> Response:
    """Append a verified object to its bucket's batch; the PutObject answer."""
    entry = await append(call, pipeline, record, body, durability)
    return Stored(put_response_headers(entry))


async def append(
    call: Call, pipeline: Pipeline, record: ObjectRecord, body: BodyBuffer, durability: Durability
) -> SpoolEntry:
    """Append a verified object to its bucket's batch and make it readable by key: at once
    when it is small and in memory (``Batcher.append_now``; then at most the group commit's
    future is awaited), else through ``Batcher.add``."""
    bucket = call.target.bucket
    batcher = pipeline.batcher
    try:
        appended = (
            batcher.append_now(bucket, record, body.getvalue(), durability)
            if body.in_memory
            else None
        )
        if appended is None:
            entry = await batcher.add(bucket, record, body, durability=durability)
        else:
            entry, durable = appended
            if durable is not None:
                await batcher.settle(entry, durable)
    except UploadRefused as exc:
        # Parked, not lost: readable by key while it waits in the spool.
        if exc.entry is not None:
            await pipeline.written(exc.entry, uploaded=False)
        raise
    if pipeline.catalog_writer is None:
        pipeline.queue_row(entry, uploaded=durability == "upload")
    else:
        await pipeline.written(entry, uploaded=durability == "upload")
    return entry


class Stored(Response):
    """The answer to a stored PutObject: 200, no body, headers already rendered as the raw
    pairs the server sends (no header dict converted)."""

    def __init__(self, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = 200
        self.background = None
        self.body = b""
        self.raw_headers = raw_headers


async def forward_write(call: Call, put: PutRequest | None = None) -> Response:
    """Send a PutObject to the bucket as it is; a batched copy of the key is hidden."""
    upstream = await send_upstream(call, put=put)
    return await written_upstream(call, upstream)


async def written_upstream(call: Call, upstream: httpx.Response) -> Response:
    """Relay the bucket's answer to a forwarded write, after hiding an older batched object
    of the same key when the write succeeded."""
    if upstream.status_code < 300:
        if "x-amz-version-id" in upstream.headers:
            # The bucket keeps versions: if it was thought not to, it changed since.
            call.bucket_modes.noticed_versions(call.target.bucket)
        try:
            await hide_batched(call, call.target.bucket, call.target.key)
        except BaseException:
            await upstream.aclose()
            raise
    return relay(upstream)


async def hide_batched(call: Call, bucket: str, key: str, *, known_only: bool = False) -> bool:
    """A newer object (or a delete) of ``key`` went to the bucket: the batched one must no
    longer be served (by any daemon following the bucket: ``Pipeline.hide``). False if
    nothing was batched under ``key``."""
    return await call.pipeline.hide(bucket, key, known_only=known_only)


async def _conditions(
    pipeline: Pipeline, call: Call, reason: str
) -> tuple[dict[str, str], str | None]:
    """Conditional writes against a batched key are decided here (the bucket does not hold
    it yet): ``If-None-Match`` and ``If-Match`` compare the batched ETag and, when they
    hold, the object is batched. Otherwise the bucket decides (the PUT is forwarded)."""
    rest = await decided_here(pipeline, call)
    if rest is None:
        return call.headers, reason
    return rest, unbatchable(rest)


CONDITIONAL_HEADERS = frozenset({"if-match", "if-none-match"})


async def decided_here(pipeline: Pipeline, call: Call) -> dict[str, str] | None:
    """A write's conditional headers when the key's current object is batched (the bucket
    does not hold it): checked against that object, and the headers without them returned.
    None when the bucket decides (no condition, or nothing batched under the key)."""
    headers = call.headers
    if not CONDITIONAL_HEADERS & headers.keys():
        return None
    entry = await pipeline.lookup(call.target.bucket, call.target.key)
    if entry is None:
        return None
    check_write_conditions(headers, entry.record.etag)
    return {k: v for k, v in headers.items() if k not in CONDITIONAL_HEADERS}


def check_write_conditions(headers: dict[str, str], etag: str | None) -> None:
    """``If-None-Match`` (``*`` or a list of ETags) and ``If-Match`` of a write against the
    ETag of the key's current object (None: there is none), as S3 decides them: 412 when
    If-None-Match names the current ETag (``*``: any), or If-Match does not."""
    none_match = headers.get("if-none-match")
    if none_match is not None and etag is not None and etag_matches(none_match, etag):
        raise PreconditionFailed()
    if "if-match" in headers:
        if etag is None:
            raise NoSuchKey()
        if not etag_matches(headers["if-match"], etag):
            raise PreconditionFailed()


def forward_threshold(settings: Settings) -> int:
    """Objects of this many bytes or more are forwarded rather than batched (when
    ``passthrough`` allows PutObject)."""
    return min(settings.batch.passthrough_bytes, settings.limits.max_object_bytes + 1)


def requested_durability(headers: dict[str, str], default: Durability) -> Durability:
    """The stronger of the configured level and ``x-s3batchd-durability`` (none, fsync,
    upload); a weaker request than the configured level is ignored."""
    value = headers.get(f"{HEADER_PREFIX}durability")
    if value is None:
        return default
    value = value.strip().lower()
    if value not in DURABILITY_ORDER:
        raise InvalidArgument(
            f"{HEADER_PREFIX}durability must be one of {', '.join(DURABILITY_ORDER)}."
        )
    asked = DURABILITY_ORDER[DURABILITY_ORDER.index(value)]  # the Literal, for the type checker
    return max(asked, default, key=DURABILITY_ORDER.index)


_TAR = f"{HEADER_PREFIX}tar".encode()
_OFFSET = f"{HEADER_PREFIX}offset".encode()
_LENGTH = f"{HEADER_PREFIX}length".encode()
_RANGE = f"{HEADER_PREFIX}range".encode()
_CHECKSUM_TYPE = (b"x-amz-checksum-type", b"FULL_OBJECT")
_NO_BODY = (b"content-length", b"0")


def put_response_headers(entry: SpoolEntry) -> list[tuple[bytes, bytes]]:
    """ETag, checksum echo, encryption and the ``x-s3batchd-*`` location of a stored object,
    as raw header pairs (lower-case names), ending with ``Content-Length: 0``."""
    record = entry.record
    headers = [
        (b"etag", record.etag.encode("latin-1")),
        (_TAR, f"s3://{entry.bucket}/{entry.tar_key}".encode("latin-1")),
        (_OFFSET, b"%d" % entry.offset),
        (_LENGTH, b"%d" % entry.length),
    ]
    byte_range = entry.byte_range
    if byte_range is not None:
        headers.append((_RANGE, byte_range.encode()))
    if record.checksums:
        for algorithm, value in record.checksums.items():
            headers.append((f"x-amz-checksum-{algorithm}".encode(), value.encode("latin-1")))
        headers.append(_CHECKSUM_TYPE)
    stored = record.headers
    if stored:
        for name in ENCRYPTION_HEADERS:
            if name in stored:
                headers.append((name.encode(), stored[name].encode("latin-1")))
    headers.append(_NO_BODY)
    return headers
