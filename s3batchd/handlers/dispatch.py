"""Which handler serves a request: the daemon's own (PutObject batching, reads of batched
keys, client multipart uploads, merged listings, deletes of batched keys, tags, ACLs and
attributes of batched keys) or forwarding."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from s3batchd.errors import RETRY_SOON, NotImplementedS3, SlowDown, UpstreamFailed
from s3batchd.forward.daemon import Daemon
from s3batchd.forward.passthrough import Call, forward, read_small_body, send_upstream
from s3batchd.forward.proxy import read_all, relay, relay_read, unless_client_leaves
from s3batchd.handlers.copy import copy_object, parse_copy_source
from s3batchd.handlers.deletes import (
    add_errors,
    content_md5,
    decide_conditions,
    decided_delete,
    refused_errors,
)
from s3batchd.handlers.get import get_object
from s3batchd.handlers.listing import list_objects_merged
from s3batchd.handlers.moved import moved
from s3batchd.handlers.multipart import MULTIPART_HANDLERS
from s3batchd.handlers.put import hide_batched, put_object, written_upstream
from s3batchd.handlers.subresources import OPERATIONS as SUBRESOURCE_OPERATIONS
from s3batchd.handlers.subresources import object_subresource
from s3batchd.handlers.uploadlisting import list_multipart_uploads
from s3batchd.s3.addressing import check_bucket, check_host, check_key, parse_target
from s3batchd.s3.api import SUBRESOURCES
from s3batchd.s3.operations import operation_of
from s3batchd.s3.xml import local_name, parse, parse_or_none

logger = logging.getLogger(__name__)

Handler = Callable[[Call], Awaitable[Response]]


def request_headers(scope: Scope) -> dict[str, str]:
    """Lower-cased header names to values; repeated headers joined with commas."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


async def serve(daemon: Daemon, request: Request, request_id: str) -> Response:
    """Parse and authenticate a request once, then hand its context (``Call``, with the
    ``daemon``) to its operation's handler."""
    server = daemon.settings.server
    headers = request_headers(request.scope)
    check_host(headers.get("host"), server.allowed_hosts, server.virtual_host_domains)
    authority = request.scope["state"].get("authority")
    if authority is not None:  # absolute-form target: its host is held to the same list
        check_host(authority, server.allowed_hosts, server.virtual_host_domains)
    target = parse_target(request.scope, headers, server.virtual_host_domains)
    authenticator = daemon.authenticator
    context = authenticator.verify(request.scope, target.bucket, target.key, target.virtual)
    operation = operation_of(request.method, target, headers)
    request.scope["state"]["operation"] = operation
    if target.bucket:
        check_bucket(target.bucket)
    if target.key:
        check_key(target.key)
    if "x-amz-copy-source" in headers:
        source_bucket, source_key, _ = parse_copy_source(headers["x-amz-copy-source"])
        authenticator.check_allowed(context, source_bucket, source_key)
    call = Call(request, target, headers, operation, context, daemon, request_id)
    handler = HANDLERS.get(operation, forward)
    return await handler(call)


async def read_object(call: Call) -> Response:
    """GetObject / HeadObject: a batched key from the spool or its tar, any other from the
    bucket."""
    pipeline = call.pipeline
    target = call.target
    entry = await pipeline.lookup(target.bucket, target.key)
    if entry is None:
        if await catalog_answers(call):
            return await forward(call)
        return await forward_unless_missing(call)
    other = sorted(SUBRESOURCES.intersection(target.query))
    if other:
        raise NotImplementedS3(f"{call.request.method} ?{other[0]} of a batched object.")
    source = pipeline.object_source()
    try:
        return await get_object(
            source, entry, target.key, call.headers, head=call.head, query=target.query
        )
    except UpstreamFailed as exc:
        if exc.code != "NoSuchKey":
            raise
        # The tar the catalog names is gone: compaction may have moved the key after its
        # grace period, before this daemon's follow rounds (if it follows) learned the new
        # batch.
        now = await moved(pipeline, target.bucket, target.key, entry)
        if now is None:
            raise
    if now.entry is None:  # deleted meanwhile
        return await forward(call)
    return await get_object(
        source, now.entry, target.key, call.headers, head=call.head, query=target.query
    )


async def catalog_answers(call: Call) -> bool:
    """Whether the catalog knows every batched key of the bucket (always, unless it follows
    the bucket and its backfill is not done or its last round failed: catalog.follow; a
    bucket's first round is waited for a few seconds)."""
    follower = call.pipeline.follower
    return follower is None or await follower.settle(call.target.bucket)


def _still_learning() -> SlowDown:
    return SlowDown(
        "This daemon's catalog is still learning the bucket's batches (catalog.follow); retry.",
        headers=RETRY_SOON,
    )


async def forward_unless_missing(call: Call) -> Response:
    """GetObject / HeadObject of a key the catalog does not have while it cannot answer for
    the bucket: the bucket's object if it has one, else 503 SlowDown (the key may be in a
    batch the catalog has not learned yet: NoSuchKey could be wrong). A missing bucket is
    still NoSuchBucket."""
    call.allow()
    # As forward() does for a GET or HEAD: a client that hangs up frees its slot at once.
    upstream = await unless_client_leaves(call.request.receive, send_upstream(call))
    if upstream.status_code != 404:
        return relay(upstream, head=call.head)
    if call.head:
        await upstream.aclose()
        raise _still_learning()
    data = await read_all(upstream)
    if b"<Code>NoSuchBucket</Code>" in data:
        return relay_read(upstream, data)
    raise _still_learning()


async def list_objects(call: Call) -> Response:
    """ListObjects (v1/v2): the bucket's listing merged with the batched keys, once the
    catalog can answer for the bucket (else 503 SlowDown: keys would be missing)."""
    if not await catalog_answers(call):
        raise _still_learning()
    return await list_objects_merged(call)


async def delete_object(call: Call) -> Response:
    """DeleteObject: forwarded so an older object of the key in the bucket goes too; once the
    bucket said yes, a batched object of the key is hidden (tombstone)."""
    if "versionId" in call.target.query:
        return await forward(call)  # one version: the batched (latest) object stays
    target = call.target
    if await decided_delete(call.pipeline.lookup, target.bucket, target.key, call.headers):
        headers = {name: value for name, value in call.headers.items() if name != "if-match"}
        call = dataclasses.replace(call, headers=headers)
    if not call.settings.passthrough.allows("DeleteObject"):
        if await hide_batched(call, call.target.bucket, call.target.key, known_only=True):
            return Response(status_code=204)
        return await forward(call)  # AccessDenied
    call.allow()
    upstream = await send_upstream(call)
    return await written_upstream(call, upstream)


async def delete_objects(call: Call) -> Response:
    """DeleteObjects: the request goes to the bucket; the batched keys it deleted (each
    without a VersionId and not listed as an error) are hidden before the answer. ETag
    conditions on batched keys are decided here (deletes.py)."""
    call.allow()
    body = await read_small_body(call)
    keys = _unversioned_keys(body)
    decision = await decide_conditions(call.pipeline.lookup, call.target.bucket, body)
    errors = refused_errors(decision.refused)
    if decision.remaining == 0 and decision.refused:
        return Response(_DELETE_RESULT.format(errors), media_type="application/xml")
    if decision.changed:
        call = dataclasses.replace(call, headers=_redigested(call.headers, decision.body))
    upstream = await send_upstream(call, body=decision.body)
    data = await read_all(upstream)
    if upstream.status_code != 200:
        return relay_read(upstream, data)
    data = add_errors(data, errors)
    # Concurrently: with durability fsync or upload each tombstone waits for its batch.
    await asyncio.gather(
        *(hide_batched(call, call.target.bucket, key) for key in _deleted(keys, data))
    )
    response = relay_read(upstream, data)
    response.raw_headers = [
        (name, value) for name, value in response.raw_headers if name != b"content-length"
    ]
    response.raw_headers.append((b"content-length", str(len(data)).encode()))
    return response


def _redigested(headers: dict[str, str], body: bytes) -> dict[str, str]:
    """The request's headers for a rewritten body: its Content-MD5, no client checksums."""
    kept = {
        name: value
        for name, value in headers.items()
        if name != "content-md5" and not name.startswith(("x-amz-checksum-", "x-amz-sdk-"))
    }
    kept["content-md5"] = content_md5(body)
    return kept


_DELETE_RESULT = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{}</DeleteResult>'
)


def _unversioned_keys(body: bytes) -> list[str]:
    """The keys of a Delete document's objects that name no version."""
    root = parse(body)
    keys = []
    for node in root:
        if local_name(node.tag) != "Object":
            continue
        fields = {local_name(child.tag): child.text or "" for child in node}
        if "Key" in fields and "VersionId" not in fields:
            keys.append(fields["Key"])
    return keys


def _deleted(keys: list[str], answer: bytes) -> list[str]:
    """Those of ``keys`` a DeleteResult does not list under Error (all of them were asked
    for; in quiet mode only errors are listed)."""
    root = parse_or_none(answer)
    if root is None:
        return []  # not a DeleteResult: hide nothing the bucket may not have deleted
    failed: set[str] = set()
    for node in root:
        if local_name(node.tag) == "Error":
            failed.update(c.text or "" for c in node if local_name(c.tag) == "Key")
    return [key for key in keys if key not in failed]


#: Bucket sub-resources whose change changes what bucketmodes knows of the bucket.
MODE_SUBRESOURCES = frozenset({"versioning", "object-lock", "encryption"})


async def configure_bucket(call: Call) -> Response:
    """CreateBucket, DeleteBucket and bucket sub-resource changes: forwarded; once the bucket
    accepted a change of its versioning, object lock or default encryption (or the bucket
    itself), the daemon's cached mode of it is dropped, and after CreateBucket or DeleteBucket
    what it knew of the bucket's existence too (a new bucket takes writes at once)."""
    response = await forward(call)
    bucket_wide = call.operation in ("CreateBucket", "DeleteBucket")
    if response.status_code < 300 and bucket_wide:
        call.daemon.buckets.forget(call.target.bucket)
    if response.status_code < 300 and (bucket_wide or MODE_SUBRESOURCES & call.target.query.keys()):
        call.bucket_modes.invalidate(call.target.bucket)
    return response


HANDLERS: dict[str, Handler] = {
    "PutObject": put_object,
    "GetObject": read_object,
    "HeadObject": read_object,
    "ListObjects": list_objects,
    "ListObjectsV2": list_objects,
    "DeleteObject": delete_object,
    "DeleteObjects": delete_objects,
    "CopyObject": copy_object,
    "ListMultipartUploads": list_multipart_uploads,
    **MULTIPART_HANDLERS,
    **dict.fromkeys(SUBRESOURCE_OPERATIONS, object_subresource),
    "CreateBucket": configure_bucket,
    "DeleteBucket": configure_bucket,
    "PutBucketSubresource": configure_bucket,
    "DeleteBucketSubresource": configure_bucket,
}
