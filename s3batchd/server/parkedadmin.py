"""Admin endpoints for parked batches (``parking``), used by ``s3batchd parked``:

- ``GET /parked``: the parked batches of the running daemon, with their state;
- ``POST /parked/retry`` with ``{"batch_ids": [...]}`` or ``{"all": true}``: try them now;
- ``POST /parked/discard`` with ``{"batch_id": "..."}``: delete one from the spool for good.

They change state, so they answer only requests from a loopback address, whatever address
the admin listener is bound to, and the POSTs only with ``Content-Type: application/json``
(415 otherwise): a web page in a browser on the same host may send a ``text/plain`` POST to
loopback without asking first, but a JSON one needs a CORS preflight, which this listener never
allows (cross-site request forgery). With several workers the worker that got the request asks the
others too (on their private loopback admin listeners, ``?scope=worker``) and merges.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from s3batchd.server.workeradmin import WORKER_SCOPE, Peers, ask_others

if TYPE_CHECKING:
    from s3batchd.batching.pipeline import Pipeline


def _refusal(request: Request) -> JSONResponse | None:
    """A 403 unless the request comes from loopback; 503 while the daemon starts."""
    client = request.client
    try:
        loopback = client is not None and ipaddress.ip_address(client.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return JSONResponse({"error": "parked batches are managed from loopback only"}, 403)
    if getattr(request.app.state, "pipeline", None) is None:
        return JSONResponse({"error": "starting"}, 503)
    return None


def _not_json(request: Request) -> JSONResponse | None:
    """A 415 unless the POST says its body is JSON (what the CLI and the workers send)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        return JSONResponse({"error": "send the body as Content-Type: application/json"}, 415)
    return None


def _peers(request: Request) -> Peers | None:
    peers: Peers | None = request.app.state.admin_peers
    return None if request.query_params.get("scope") == WORKER_SCOPE else peers


async def _body(request: Request) -> dict[str, Any]:
    try:
        found = await request.json()
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


async def _others(request: Request, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The other workers' answers to the same request (none with a single worker)."""
    peers = _peers(request)
    if peers is None:
        return []
    answers = await ask_others(peers, request.method, request.url.path, body)
    return [answer for answer in answers if isinstance(answer, dict)]


async def list_parked(request: Request) -> JSONResponse:
    """Every parked batch, with why and when it is tried again."""
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    pipeline: Pipeline = request.app.state.pipeline
    found = [
        {
            "bucket": parked.batch.bucket,
            "batch_id": parked.batch.batch_id,
            "records": parked.batch.records,
            "bytes": parked.batch.size,
            **asdict(parked.state),
        }
        for parked in pipeline.uploader.parked
    ]
    for other in await _others(request):
        found.extend(other.get("parked", []))
    return JSONResponse({"parked": sorted(found, key=lambda p: str(p.get("batch_id")))})


async def retry_parked(request: Request) -> JSONResponse:
    """Queue parked batches for an attempt now; answers the ids queued."""
    refusal = _refusal(request) or _not_json(request)
    if refusal is not None:
        return refusal
    body = await _body(request)
    ids = body.get("batch_ids")
    wanted = [str(i) for i in ids] if isinstance(ids, list) else []
    if not body.get("all") and not wanted:
        return JSONResponse({"error": 'give "batch_ids": [...] or "all": true'}, 400)
    pipeline: Pipeline = request.app.state.pipeline
    retried = pipeline.uploader.retry_parked(None if body.get("all") else wanted)
    for other in await _others(request, body):
        retried.extend(other.get("retried", []))
    return JSONResponse({"retried": sorted(retried)})


async def discard_parked(request: Request) -> JSONResponse:
    """Delete one parked batch from the spool for good (the CLI asks for confirmation)."""
    refusal = _refusal(request) or _not_json(request)
    if refusal is not None:
        return refusal
    body = await _body(request)
    batch_id = body.get("batch_id")
    if not isinstance(batch_id, str) or not batch_id:
        return JSONResponse({"error": 'give "batch_id"'}, 400)
    pipeline: Pipeline = request.app.state.pipeline
    batch = await pipeline.discard_parked(batch_id)
    if batch is not None:
        return JSONResponse({"discarded": batch_id, "bucket": batch.bucket})
    for other in await _others(request, body):
        if other.get("discarded") == batch_id:
            return JSONResponse(other)
    return JSONResponse({"error": f"no parked batch {batch_id} (or it is being tried now)"}, 404)


ROUTES = [
    Route("/parked", list_parked, methods=["GET"]),
    Route("/parked/retry", retry_parked, methods=["POST"]),
    Route("/parked/discard", discard_parked, methods=["POST"]),
]
