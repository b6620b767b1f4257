"""The HTTP front: a Starlette app speaking the S3 PutObject subset.

Errors become S3 XML in exactly one place, ``render_s3_error``. Every response carries
``x-amz-request-id``. The lifespan owns the pipeline: on shutdown (after uvicorn stopped
accepting and in-flight requests finished) open batches are sealed and uploaded.
"""

from __future__ import annotations

import errno
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from urllib.parse import unquote
from xml.sax.saxutils import escape

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from s3batchd.auth import Authenticator, chunk_verifier
from s3batchd.config import DURABILITY_ORDER, Durability, Settings
from s3batchd.constants import HEADER_PREFIX
from s3batchd.errors import (
    InternalError,
    InvalidArgument,
    NotImplementedS3,
    S3Error,
    SlowDown,
    SpoolError,
)
from s3batchd.index import WriterId
from s3batchd.metrics import Metrics, MetricsMiddleware
from s3batchd.objects import ObjectSource, get_object, list_objects, parse_list_query
from s3batchd.pipeline import Pipeline
from s3batchd.records import ObjectRecord, SpoolEntry
from s3batchd.s3api import (
    SUBRESOURCES,
    Target,
    build_record,
    check_bucket,
    check_host,
    parse_put,
    parse_target,
    read_body,
)
from s3batchd.spool import TMP_DIR

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

_METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"]


class RequestIdMiddleware:
    """Gives every request an id and every response ``x-amz-request-id``; accepts the
    absolute-form request target (``PUT http://host/key``) that HTTP/1.1 servers must take."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not scope["path"].startswith("/"):
            _to_origin_form(scope)
        request_id = secrets.token_hex(8).upper()
        scope.setdefault("state", {})["request_id"] = request_id
        extra = [(b"x-amz-request-id", request_id.encode()), (b"server", b"s3batchd")]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
                if logger.isEnabledFor(logging.DEBUG):
                    # The path only: a query string may carry a presigned signature.
                    logger.debug(
                        "%s %s %s -> %d",
                        request_id,
                        scope["method"],
                        scope["path"],
                        message["status"],
                    )
            await send(message)

        await self.app(scope, receive, send_with_id)


def _to_origin_form(scope: Scope) -> None:
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    _, _, rest = raw.partition(b"://")
    _, slash, path = rest.partition(b"/")
    scope["raw_path"] = slash + path or b"/"
    scope["path"] = unquote(scope["raw_path"].decode("latin-1"))


def request_headers(scope: Scope) -> dict[str, str]:
    """Lower-cased header names to values; repeated headers joined with commas."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


async def s3_endpoint(request: Request) -> Response:
    """Every S3 request: PutObject, GetObject, HeadObject and ListObjects are served."""
    state = request.app.state
    if state.active_requests >= state.settings.server.max_concurrent_requests:
        raise SlowDown("Too many requests in flight.", headers=RETRY_SOON)
    state.active_requests += 1
    try:
        return await _serve(request)
    except S3Error:
        raise
    except Exception as exc:
        # Never a traceback on the wire: log it, answer InternalError (clients retry it).
        logger.exception("unexpected error serving %s %s", request.method, request.url.path)
        raise InternalError() from exc
    finally:
        state.active_requests -= 1


async def _serve(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    headers = request_headers(request.scope)
    server = settings.server
    check_host(headers.get("host", ""), server.allowed_hosts, server.virtual_host_domains)
    target = parse_target(request.scope, headers, server.virtual_host_domains)
    authenticator: Authenticator = request.app.state.authenticator
    context = authenticator.verify(request.scope, target.bucket, target.key, target.virtual)
    if request.method in ("GET", "HEAD"):
        return await _read(request, target, headers)
    if request.method != "PUT":
        raise NotImplementedS3(f"{request.method} is not implemented by s3batchd yet.")
    put = parse_put(target, headers, max_bytes=settings.limits.max_object_bytes)
    durability = requested_durability(headers, settings.spool.durability)
    pipeline: Pipeline = request.app.state.pipeline
    if pipeline.draining:
        raise SlowDown("The daemon is shutting down.", headers=RETRY_SOON)
    if pipeline.over_quota(put.declared_size or 0):
        # Backpressure instead of loss: every S3 client retries 503 SlowDown.
        raise SlowDown("The local spool is full; uploads are catching up.", headers=RETRY_SOON)
    body, digests = await read_body(
        put,
        request.receive,
        max_bytes=settings.limits.max_object_bytes,
        memory_limit=settings.limits.memory_buffer_bytes,
        spill_dir=settings.spool.dir / TMP_DIR,
        timeout_s=settings.server.body_timeout_s,
        verifier=chunk_verifier(context),
    )
    request.state.body_consumed = True
    request.app.state.metrics.received_bytes.inc(body.size)
    try:
        record = build_record(put, digests, body.size)
        entry = await pipeline.batcher.add(target.bucket, record, body, durability=durability)
        pipeline.written(record, entry, uploaded=durability == "upload")
    except SpoolError as exc:
        logger.error("spool failure for s3://%s/%s: %s", target.bucket, target.key, exc)  # noqa: TRY400  the cause is in the message
        if isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.ENOSPC:
            raise SlowDown("The local spool's disk is full.", headers=RETRY_SOON) from exc
        raise InternalError("The object could not be stored; please retry.") from exc
    finally:
        body.close()
    return Response(status_code=200, headers=put_response_headers(record, entry))


RETRY_SOON = {"Retry-After": "1"}
#: ListBuckets: the daemon owns no buckets (it writes into the client's), so the list is empty.
EMPTY_BUCKET_LIST = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Owner><ID>s3batchd</ID><DisplayName>s3batchd</DisplayName></Owner><Buckets/>"
    b"</ListAllMyBucketsResult>"
)
#: Query parameters of ListObjects / ListObjectsV2 (anything else on a bucket GET is another
#: operation).
LIST_PARAMETERS = frozenset(
    {
        "list-type",
        "prefix",
        "delimiter",
        "max-keys",
        "continuation-token",
        "start-after",
        "encoding-type",
        "fetch-owner",
        "marker",
        "x-id",
        "optional-object-attributes",
    }
)


async def _read(request: Request, target: Target, headers: dict[str, str]) -> Response:
    """GetObject, HeadObject and ListObjects for what this daemon wrote."""
    if not target.bucket and request.method == "GET":
        return Response(EMPTY_BUCKET_LIST, media_type="application/xml")
    check_bucket(target.bucket)
    pipeline: Pipeline = request.app.state.pipeline
    head = request.method == "HEAD"
    if target.key:
        other = sorted(SUBRESOURCES.intersection(target.query))
        if other:
            raise NotImplementedS3(f"{request.method} ?{other[0]} is not implemented by s3batchd.")
        source = ObjectSource(
            pipeline.catalog, pipeline.settings.spool.dir, pipeline.client, pipeline.read_executor
        )
        return await get_object(
            source, target.bucket, target.key, headers, head=head, query=target.query
        )
    other = sorted(set(target.query) - LIST_PARAMETERS)
    if head or other:
        what = f"?{other[0]}" if other else "HeadBucket"
        raise NotImplementedS3(f"{request.method} {what} is not implemented by s3batchd yet.")
    return list_objects(pipeline.catalog, target.bucket, parse_list_query(target.query))


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
    return headers


def error_xml(exc: S3Error, *, resource: str, request_id: str) -> bytes:
    """The S3 XML body of an error."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{exc.code}</Code><Message>{escape(exc.message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()


async def render_s3_error(request: Request, exc: Exception) -> Response:
    """The one place where errors become wire responses."""
    if not isinstance(exc, S3Error):  # pragma: no cover - only registered for S3Error
        raise exc
    request_id = request.scope.get("state", {}).get("request_id", "")
    headers = {"Content-Type": "application/xml", **exc.headers}
    if _body_unread(request):
        # uvicorn would read the unsent body of an Expect: 100-continue request as the next
        # request on this connection (notes/wire.md §8): close it instead.
        headers["Connection"] = "close"
    logger.debug("%s %s -> %d %s", request.method, request.url.path, exc.status_code, exc.code)
    body = (
        b""
        if request.method == "HEAD"
        else error_xml(exc, resource=request.url.path, request_id=request_id)
    )
    return Response(body, status_code=exc.status_code, headers=headers)


def _body_unread(request: Request) -> bool:
    if getattr(request.state, "body_consumed", False):
        return False
    headers = request.headers
    has_body = "transfer-encoding" in headers or headers.get("content-length", "0") != "0"
    return has_body


class _KeyConvertor(Convertor[str]):
    """Any path, newlines included (an S3 key may contain them; ``path`` stops at one)."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("key", _KeyConvertor())


def create_app(
    settings: Settings, *, client: S3Client | None = None, writer: WriterId | None = None
) -> Starlette:
    """The ASGI app of one daemon process."""
    metrics = Metrics(put_price_per_1000_usd=settings.metrics.put_price_per_1000_usd)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pipeline = Pipeline(settings, client=client, writer=writer)
        pipeline.metrics = metrics
        metrics.watch(pipeline)
        await pipeline.start()
        app.state.pipeline = pipeline
        try:
            yield
        finally:
            await pipeline.close()

    app = Starlette(
        routes=[Route("/{path:key}", s3_endpoint, methods=_METHODS)],
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(MetricsMiddleware, metrics=metrics),
        ],
        exception_handlers={S3Error: render_s3_error},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.active_requests = 0
    app.state.authenticator = Authenticator(settings.auth)
    return app
