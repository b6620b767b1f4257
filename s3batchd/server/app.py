"""The HTTP front: the S3 listener's ASGI app (``S3Front``) and the Starlette app behind it.

Errors become S3 XML in exactly one place, ``render_s3_error``; which S3 error answers a
domain error is decided by errormap.py. Every response carries
``x-amz-request-id``. The lifespan owns the pipeline: on shutdown (after uvicorn stopped
accepting and in-flight requests finished) open batches are sealed and uploaded.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote
from xml.sax.saxutils import escape

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from s3batchd.batching.pipeline import Pipeline
from s3batchd.compaction.loop import CompactionLoop
from s3batchd.concurrency import Pool, Threads
from s3batchd.config import Settings
from s3batchd.errors import (
    RETRY_SOON,
    S3Error,
    ServiceUnavailable,
    SlowDown,
    StartupError,
)
from s3batchd.forward.buckets import BucketCheck, head_bucket
from s3batchd.forward.daemon import Daemon
from s3batchd.forward.proxy import Forwarder
from s3batchd.handlers.dispatch import serve
from s3batchd.handlers.owners import Owners
from s3batchd.handlers.put import Stored
from s3batchd.index import WriterId
from s3batchd.s3.addressing import authority_of
from s3batchd.s3.auth import Authenticator
from s3batchd.s3.stall import BodyPace
from s3batchd.server.errormap import answer_of, s3_error_of
from s3batchd.server.looplag import LoopLagMonitor
from s3batchd.server.metrics import Metrics
from s3batchd.server.workeradmin import Peers
from s3batchd.spool.uploads import UploadStore
from s3batchd.upload.bucketmodes import BucketModes, look_up
from s3batchd.upload.credentials import upstream_credentials

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)


class S3Front:
    """The S3 listener's ASGI app: a lean path in front of the Starlette app (which keeps the
    lifespan and the shared state). Per request: an id (``x-amz-request-id`` on every answer
    the daemon gives; a forwarded answer keeps the bucket's), the absolute-form request target
    (``PUT http://host/key``) that HTTP/1.1 servers must take, dispatch, errors rendered by
    ``render_s3_error``, ``Connection: close`` when the body was not read, and the request
    metrics. Starlette's router and middleware stack cost more per PutObject than the
    daemon's own work (bench/README.md)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = state_of(app)
        self.metrics = self.state.metrics
        self._counted: dict[tuple[str, int], Callable[[], None]] = {}
        """The request counter's child's ``inc`` per operation and status (``labels()`` per
        request showed in the profile)."""
        self._ack_observe = self.metrics.ack_latency.observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        if not scope["path"].startswith("/"):
            state["authority"] = _to_origin_form(scope)
        request_id = new_request_id()
        scope["app"] = self.app
        state["request_id"] = request_id
        request = Request(scope, receive)
        try:
            response = await s3_endpoint(self.state, request, request_id)
        except S3Error as exc:
            response = render_s3_error(request, exc)
        raw = response.raw_headers
        status = response.status_code
        operation = state.get("operation", scope["method"])
        try:
            if type(response) is Stored:
                # A stored PutObject: its headers are the daemon's own (no request id, server
                # or connection among them) and its body was read; two messages, as
                # Response.__call__ would send them, without the header scan.
                raw.append((b"x-amz-request-id", request_id.encode()))
                raw.append(_SERVER)
                await send({"type": "http.response.start", "status": 200, "headers": raw})
                await send({"type": "http.response.body", "body": b""})
            else:
                _complete_headers(raw, request_id, scope)
                await response(scope, receive, send)
        finally:
            count = self._counted.get((operation, status))
            if count is None:
                count = self.metrics.requests.labels(operation, str(status)).inc
                self._counted[(operation, status)] = count
            count()
            if status == 200 and operation == "PutObject":
                self._ack_observe(time.perf_counter() - started)
        if logger.isEnabledFor(logging.DEBUG):
            # The path only: a query string may carry a presigned signature.
            logger.debug("%s %s %s -> %d", request_id, scope["method"], scope["path"], status)


_SERVER = (b"server", b"s3batchd")


def _complete_headers(raw: list[tuple[bytes, bytes]], request_id: str, scope: Scope) -> None:
    """Add what every answer the daemon gives carries, unless the response has it:
    ``x-amz-request-id``, ``Server``, and ``Connection: close`` when the body was not read."""
    present = {name for name, _ in raw}
    if b"x-amz-request-id" not in present:
        raw.append((b"x-amz-request-id", request_id.encode()))
    if b"server" not in present:
        raw.append(_SERVER)
    if _body_unread(scope) and b"connection" not in present:
        # uvicorn would read the unsent body of an Expect: 100-continue request as the
        # next request on this connection (notes/wire.md §8): close it.
        raw.append((b"connection", b"close"))


def new_request_id() -> str:
    """16 hex digits naming one request, as S3's ``x-amz-request-id``: unique, not secret, so
    not from ``secrets`` (a getrandom() call per request showed in the profile; ``random``
    is seeded anew in every forked worker)."""
    return f"{random.getrandbits(64):016X}"


def _to_origin_form(scope: Scope) -> str:
    """Reduce an absolute-form target (``http://host/path``) to its path; its authority
    (``host[:port]``), which dispatch.serve holds to ``server.allowed_hosts`` as a Host."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    authority = authority_of(raw)
    _, _, rest = raw.partition(b"://")
    path = rest[len(authority.encode("latin-1")) :].partition(b"?")[0]
    scope["raw_path"] = path if path.startswith(b"/") else b"/" + path
    scope["path"] = unquote(scope["raw_path"].decode("latin-1"))
    return authority


async def s3_endpoint(state: AppState, request: Request, request_id: str) -> Response:
    """Every S3 request (dispatch.py decides who serves it)."""
    daemon = state.daemon
    if daemon is None:  # uvicorn takes requests only after the lifespan started it
        raise ServiceUnavailable("The daemon is starting.")
    if state.active_requests >= state.settings.server.max_concurrent_requests:
        raise SlowDown("Too many requests in flight.", headers=RETRY_SOON)
    state.active_requests += 1
    try:
        return await serve(daemon, request, request_id)
    except S3Error:
        raise
    except Exception as exc:
        answer = answer_of(exc)  # a domain error: errormap.py says how it is answered
        if answer is None:
            # Never a traceback on the wire: log it, answer InternalError (clients retry it).
            logger.exception("unexpected error serving %s %s", request.method, request.url.path)
        elif answer.logged:
            logger.error("%s %s: %s", request.method, request.url.path, exc)  # noqa: TRY400  the cause is in the message
        raise s3_error_of(exc) from exc
    finally:
        state.active_requests -= 1


def error_xml(exc: S3Error, *, resource: str, request_id: str) -> bytes:
    """The S3 XML body of an error."""
    details = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in exc.details.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{exc.code}</Code><Message>{escape(exc.message)}</Message>{details}"
        f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()


def render_s3_error(request: Request, exc: S3Error) -> Response:
    """The one place where errors become wire responses."""
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


@dataclass(slots=True, kw_only=True)
class AppState:
    """What the S3 and admin listeners of one process share: the one object on the Starlette
    app's ``state`` (``state_of``). ``daemon`` is None until the lifespan started the pipeline
    (and after a failed start, which sets ``startup_error``)."""

    settings: Settings
    metrics: Metrics
    authenticator: Authenticator
    body_pace: BodyPace
    active_requests: int = 0
    """S3 requests in flight (``server.max_concurrent_requests``)."""
    daemon: Daemon | None = None
    startup_error: StartupError | None = None
    admin_peers: Peers | None = None
    """The other workers' admin listeners, when there are several workers."""

    @property
    def pipeline(self) -> Pipeline | None:
        """The started daemon's pipeline, None before the start."""
        return None if self.daemon is None else self.daemon.pipeline


def state_of(app: Starlette) -> AppState:
    """The ``AppState`` of an app made by ``create_app``."""
    state: AppState = app.state.s3batchd
    return state


def create_app(
    settings: Settings,
    *,
    client: S3Client | None = None,
    writer: WriterId | None = None,
    spools: tuple[Path, ...] = (),
) -> Starlette:
    """The ASGI app of one daemon process (``spools``: every worker's spool directory, the
    shared one first, when ``server.workers`` > 1)."""
    metrics = Metrics(put_price_per_1000_usd=settings.metrics.put_price_per_1000_usd)
    pace = BodyPace.of(
        settings.server, on_timeout=lambda reason: metrics.body_timeouts.labels(reason).inc()
    )
    metrics.slow_bodies.set_function(lambda: pace.slow)
    state = AppState(
        settings=settings,
        metrics=metrics,
        authenticator=Authenticator(settings.auth),
        body_pace=pace,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # One credential lookup for the process: the uploads' client and the forwarder.
        credentials = upstream_credentials()
        # The process's thread pools: made here, shut down last (concurrency.py).
        threads = Threads({Pool.UPLOAD: settings.upload.concurrency})
        threads.install(asyncio.get_running_loop())
        try:
            pipeline = Pipeline(
                settings, client=client, writer=writer, credentials=credentials, threads=threads
            )
            pipeline.on_uploaded = metrics.observe_upload
            metrics.watch(pipeline)
            await pipeline.start()
        except StartupError as exc:
            # Printed as one line by the CLI (cli.serve_on); server.DrainingServer keeps
            # uvicorn from logging it as a traceback.
            state.startup_error = exc
            threads.close()
            raise
        except BaseException:
            threads.close()
            raise
        compaction = CompactionLoop(
            settings,
            pipeline.client,
            pipeline.catalog,
            threads=threads,
            shared=lambda: None if pipeline.shared is None else pipeline.shared.catalog,
        )
        if settings.compaction.enabled:
            config = settings.compaction
            promise = config.erase_within_s + config.interval_s + config.grace_s
            deadline = promise if config.erase_within_s else None
            metrics.watch_compaction(compaction.stats, erase_deadline_s=deadline)
            compaction.start()
        lag = LoopLagMonitor(metrics.loop_lag, interval_s=settings.metrics.loop_lag_interval_s)
        if settings.metrics.loop_lag_interval_s > 0:
            lag.start()
        forwarder = Forwarder(settings.upstream, credentials, threads=threads)
        buckets = BucketCheck(
            partial(head_bucket, forwarder, timeout_s=settings.upstream.bucket_check_timeout_s),
            ttl_s=settings.upstream.bucket_check_ttl_s,
            missing_ttl_s=settings.upstream.bucket_missing_ttl_s,
            on_answer=lambda answer: metrics.bucket_checks.labels(answer.value).inc(),
        )
        bucket_modes = BucketModes(
            partial(look_up, pipeline.client),
            threads=threads,
            refresh_s=settings.batch.bucket_modes_refresh_s,
        )
        pipeline.bucket_missing = buckets.missing
        if spools:
            pipeline.spools = (settings.spool.dir, *(d for d in spools if d != settings.spool.dir))
        uploads = UploadStore(
            spools[0] if spools else settings.spool.dir,
            sync=settings.spool.durability != "none",
            threads=threads,
        )
        state.daemon = Daemon(
            settings=settings,
            pipeline=pipeline,
            forwarder=forwarder,
            buckets=buckets,
            bucket_modes=bucket_modes,
            uploads=uploads,
            owners=Owners(),
            authenticator=state.authenticator,
            body_pace=pace,
            received_bytes=metrics.received_bytes,
        )
        try:
            yield
        finally:
            await compaction.close()
            await buckets.close()
            await forwarder.aclose()
            await bucket_modes.close()
            await pipeline.close()
            await lag.stop()
            threads.close()

    app = Starlette(lifespan=lifespan)  # HTTP goes through S3Front
    app.state.s3batchd = state
    return app
