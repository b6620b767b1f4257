"""The HTTP front: a Starlette app speaking the S3 PutObject subset.

Errors become S3 XML in exactly one place, ``render_s3_error``. Every response carries
``x-amz-request-id``. The lifespan owns the pipeline: on shutdown (after uvicorn stopped
accepting and in-flight requests finished) open batches are sealed and uploaded.
"""

from __future__ import annotations

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

from s3batchd.auth import Authenticator
from s3batchd.config import Settings
from s3batchd.dispatch import serve
from s3batchd.errors import (
    InternalError,
    S3Error,
    SlowDown,
)
from s3batchd.index import WriterId
from s3batchd.metrics import Metrics, MetricsMiddleware
from s3batchd.pipeline import Pipeline
from s3batchd.proxy import RETRY_SOON, Forwarder
from s3batchd.uploads import UploadStore

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
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                # A forwarded answer keeps the bucket's request id (what its support asks for).
                headers.extend(item for item in extra if item[0] not in present)
                if _body_unread(scope) and b"connection" not in present:
                    # uvicorn would read the unsent body of an Expect: 100-continue request
                    # as the next request on this connection (notes/wire.md §8): close it.
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
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


async def s3_endpoint(request: Request) -> Response:
    """Every S3 request (dispatch.py decides who serves it)."""
    state = request.app.state
    if state.active_requests >= state.settings.server.max_concurrent_requests:
        raise SlowDown("Too many requests in flight.", headers=RETRY_SOON)
    state.active_requests += 1
    try:
        return await serve(request)
    except S3Error:
        raise
    except Exception as exc:
        # Never a traceback on the wire: log it, answer InternalError (clients retry it).
        logger.exception("unexpected error serving %s %s", request.method, request.url.path)
        raise InternalError() from exc
    finally:
        state.active_requests -= 1




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
    logger.debug("%s %s -> %d %s", request.method, request.url.path, exc.status_code, exc.code)
    body = (
        b""
        if request.method == "HEAD"
        else error_xml(exc, resource=request.url.path, request_id=request_id)
    )
    return Response(body, status_code=exc.status_code, headers=headers)


def _body_unread(scope: Scope) -> bool:
    """Whether the request has a body the app did not read to its end."""
    if scope.get("state", {}).get("body_consumed", False):
        return False
    for name, value in scope["headers"]:
        lower = name.lower()
        if lower == b"transfer-encoding" or (lower == b"content-length" and value != b"0"):
            return True
    return False


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
        app.state.forwarder = Forwarder(settings.upstream)
        app.state.uploads = UploadStore(
            settings.spool.dir, sync=settings.spool.durability != "none"
        )
        try:
            yield
        finally:
            await app.state.forwarder.aclose()
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
