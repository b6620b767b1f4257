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


async def put_object(call: Call) -> Response:
    """PutObject."""
    settings = call.settings
    pipeline = call.pipeline
    headers = call.headers
    check_sse_c(headers)
    can_forward = settings.passthrough.allows("PutObject")
    reason = unbatchable(headers)
    if reason is not None:
        headers, reason = await _conditions(pipeline, call, reason)
    encryption: dict[str, str] = {}
    if reason is None:
        mode = await call.bucket_modes.get(call.target.bucket)
        reason, encryption = decide(
            mode, headers, versioned_buckets=settings.batch.versioned_buckets
        )
    if reason is not None:
        if not can_forward:
            raise NotImplementedS3(reason)
        return await forward_write(call)
    limit = MAX_SINGLE_PUT_BYTES if can_forward else settings.limits.max_object_bytes
    put = parse_put(call.target, headers, max_bytes=limit)
    put.stored_headers.update(encryption)
    threshold = forward_threshold(settings)
    if can_forward and put.declared_size is not None and put.declared_size >= threshold:
        return await forward_write(call, put)
    durability = requested_durability(headers, settings.spool.durability)
    if pipeline.draining:
        raise Draining
    check_quota(pipeline, put.declared_size or 0)
    buckets = call.daemon.buckets
    if not buckets.accepts(call.target.bucket):  # not known to exist: may wait for HeadBucket
        await buckets.require(call.target.bucket)
    check_refusals(pipeline, call.target.bucket)
    body, digests = await read_body(
        put,
        call.request.receive,
        max_bytes=limit if put.declared_size is None else settings.limits.max_object_bytes,
        memory_limit=settings.limits.memory_buffer_bytes,
        spill_dir=pipeline.spill_dir,
        pace=call.daemon.body_pace,
        verifier=chunk_verifier(call.context),
    )
    call.request.state.body_consumed = True
    call.daemon.received_bytes.inc(body.size)
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
    return Response(status_code=200, headers=put_response_headers(record, entry))


async def append(
    call: Call, pipeline: Pipeline, record: ObjectRecord, body: BodyBuffer, durability: Durability
) -> SpoolEntry:
    """Append a verified object to its bucket's batch and make it readable by key."""
    bucket = call.target.bucket
    try:
        entry = await pipeline.batcher.add(bucket, record, body, durability=durability)
    except UploadRefused as exc:
        # Parked, not lost: readable by key while it waits in the spool.
        if exc.entry is not None:
            await pipeline.written(record, exc.entry, uploaded=False)
        raise
    await pipeline.written(record, entry, uploaded=durability == "upload")
    return entry


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


def put_response_headers(record: ObjectRecord, entry: SpoolEntry) -> dict[str, str]:
    """ETag, checksum echo and the ``x-s3batchd-*`` location of a stored object."""
    headers = {
        "ETag": record.etag,
        f"{HEADER_PREFIX}tar": f"s3://{entry.bucket}/{entry.tar_key}",
        f"{HEADER_PREFIX}offset": str(entry.offset),
        f"{HEADER_PREFIX}length": str(entry.length),
    }
    if entry.byte_range is not None:
        headers[f"{HEADER_PREFIX}range"] = entry.byte_range
    for algorithm, value in record.checksums.items():
        headers[f"x-amz-checksum-{algorithm}"] = value
    if record.checksums:
        headers["x-amz-checksum-type"] = "FULL_OBJECT"
    headers.update({n: record.headers[n] for n in ENCRYPTION_HEADERS if n in record.headers})
    return headers
