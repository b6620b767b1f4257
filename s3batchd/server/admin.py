"""The admin listener: ``/healthz``, ``/readyz`` and ``/metrics`` on their own port (and
``/parked``, for ``s3batchd parked``: ``parkedadmin``).

A separate port means these paths can never collide with a bucket named ``healthz``, and it
may listen on the pod IP for kubelet probes while the S3 port stays on loopback.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from s3batchd.batching.pipeline import Pipeline
from s3batchd.server.parkedadmin import ROUTES as PARKED_ROUTES
from s3batchd.server.workeradmin import WORKER_SCOPE, Peers, all_workers_metrics, all_workers_ready


def _pipeline(request: Request) -> Pipeline | None:
    return getattr(request.app.state, "pipeline", None)


async def healthz(request: Request) -> JSONResponse:
    """The process is alive and its event loop answers."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Whether this daemon can take writes: 503 with ``reasons`` when it cannot (starting,
    draining, spool not writable or near its quota, upload workers dead, a batch stranded, a
    worker not answering), else 200. Either way ``warnings`` lists, when there are any,
    problems that do not stop writes (the upstream or a bucket failing: the spool absorbs
    them). With several workers: every worker's (each line names its worker) unless
    ``?scope=worker`` asks about this worker only."""
    pipeline = _pipeline(request)
    reasons = ["starting"] if pipeline is None else await pipeline.not_ready_reasons()
    warnings = [] if pipeline is None else pipeline.warnings()
    peers: Peers | None = request.app.state.admin_peers
    if peers is not None and request.query_params.get("scope") != WORKER_SCOPE:
        reasons, warnings = await all_workers_ready(peers, reasons, warnings)
    body: dict[str, object] = (
        {"status": "not ready", "reasons": reasons} if reasons else {"status": "ready"}
    )
    if warnings:
        body["warnings"] = warnings
    return JSONResponse(body, status_code=503 if reasons else 200)


async def metrics(request: Request) -> Response:
    """Prometheus text exposition: with several workers, every worker's samples (labelled
    ``worker``) unless ``?scope=worker`` asks for this worker's own. Readiness is evaluated
    first, for ``s3batchd_ready``."""
    pipeline = _pipeline(request)
    if pipeline is not None:
        await pipeline.not_ready_reasons()
    own = generate_latest(request.app.state.metrics.registry)
    peers: Peers | None = request.app.state.admin_peers
    if peers is not None and request.query_params.get("scope") != WORKER_SCOPE:
        own = await all_workers_metrics(peers, own)
    return Response(own, media_type=CONTENT_TYPE_LATEST)


def create_admin_app(state_from: Starlette, *, peers: Peers | None = None) -> Starlette:
    """Admin routes sharing the state (the pipeline, the metrics) of the S3 app; ``peers``:
    the other workers' admin listeners, when there are several workers."""
    routes = [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    routes += PARKED_ROUTES
    app = Starlette(routes=routes)
    app.state = state_from.state
    app.state.admin_peers = peers
    return app


class PortRouter:
    """Sends requests that arrived on an admin port to the admin app, all else to S3."""

    def __init__(self, s3: ASGIApp, admin: ASGIApp, *, admin_ports: frozenset[int]) -> None:
        self.s3 = s3
        self.admin = admin
        self.admin_ports = admin_ports

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] == "http" and server is not None and server[1] in self.admin_ports:
            await self.admin(scope, receive, send)
        else:
            await self.s3(scope, receive, send)
