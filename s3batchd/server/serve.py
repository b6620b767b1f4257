"""Running the app under uvicorn: two listeners (S3 and admin) and a draining shutdown.

Shutdown order on SIGTERM/SIGINT (notes/reliability.md §1.8): readiness fails and new PUTs get
``503 SlowDown`` at once; open batches are sealed and uploaded within
``shutdown.drain_timeout_s``; then uvicorn stops accepting, finishes requests in progress and
runs the lifespan exit (which uploads whatever the drain left, within the remaining time). A
second signal stops at once; what is not uploaded stays in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

from s3batchd.batching.pipeline import Pipeline
from s3batchd.config import Settings
from s3batchd.server.admin import PortRouter, create_admin_app
from s3batchd.server.app import S3Front, create_app
from s3batchd.server.protocol import protocol_with_timeout
from s3batchd.server.workeradmin import Peers

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first signal drains the pipeline before stopping."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._app = app
        self._drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain, then exit. Second signal: exit now."""
        pipeline = getattr(self._app.state, "pipeline", None)
        if self._drain is not None or pipeline is None or not self.started:
            super().handle_exit(sig, frame)
            return
        logger.info("signal %d: draining (new PUTs get 503 SlowDown)", sig)
        self._drain = asyncio.get_event_loop().create_task(self._drain_then_exit(pipeline))

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve; uvicorn's report of a ``StartupError`` in the lifespan is left out."""
        quiet = _QuietStartupError(self._app)
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.addFilter(quiet)
        try:
            await super().serve(sockets)
        finally:
            uvicorn_log.removeFilter(quiet)

    async def _drain_then_exit(self, pipeline: Pipeline) -> None:
        try:
            await pipeline.drain()
        finally:
            self.should_exit = True


class _QuietStartupError(logging.Filter):
    """Drops what uvicorn logs once the lifespan failed with a ``StartupError`` (its traceback,
    "Application startup failed. Exiting."): the CLI prints the error as one line."""

    def __init__(self, app: Starlette) -> None:
        super().__init__()
        self._app = app

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(self._app.state, "startup_error", None) is None


def _bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"{host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def bind_loopback() -> socket.socket:
    """A listening socket on a free port of 127.0.0.1 (a worker's private admin listener)."""
    return _bind("127.0.0.1", 0)


def _bind_setting(setting: str, host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    try:
        return _bind(host, port, reuse_port=reuse_port)
    except OSError as exc:  # the message names the setting to change
        raise OSError(exc.errno, f"{exc.strerror} ({setting})") from exc


def bind_sockets(settings: Settings) -> list[socket.socket]:
    """The listening sockets: S3 first, then admin (when ``server.admin_port`` is set).

    With ``server.workers`` = N > 1 there are N S3 sockets on one port (SO_REUSEPORT), one per
    worker: the kernel spreads new connections evenly over them. On one shared socket the
    worker that woke first accepted whole bursts of connections and the other sat idle.

    Raises:
        OSError: a port cannot be bound; ``strerror`` names the address and the setting."""
    server = settings.server
    sockets: list[socket.socket] = []
    try:
        port = server.port
        for _ in range(server.workers):
            reuse = server.workers > 1
            sockets.append(_bind_setting("server.port", server.host, port, reuse_port=reuse))
            port = sockets[0].getsockname()[1]  # port 0: the others join the one it got
        if server.admin_port:
            sockets.append(_bind_setting("server.admin_port", server.admin_host, server.admin_port))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def build_server(
    settings: Settings,
    sockets: list[socket.socket] | None = None,
    *,
    spools: tuple[Path, ...] = (),
    peers: Peers | None = None,
) -> tuple[DrainingServer, list[socket.socket], Starlette]:
    """The server, its sockets (bound here unless given) and the S3 app. ``spools``: every
    worker's spool directory, ``peers``: every worker's private admin listener, when there are
    several (server.workers; this worker's is among ``sockets``)."""
    app = create_app(settings, spools=spools)
    sockets = sockets if sockets is not None else bind_sockets(settings)
    asgi: ASGIApp = S3Front(app)
    if settings.server.admin_port:
        admin = create_admin_app(app, peers=peers)
        ports = {settings.server.admin_port, *([peers.own_port] if peers else [])}
        asgi = PortRouter(asgi, admin, admin_ports=frozenset(ports))
    config = uvicorn.Config(
        asgi,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=settings.server.keep_alive_s,
        limit_concurrency=settings.server.max_connections,
        http=protocol_with_timeout(
            settings.server.header_timeout_s,
            idle_closed=app.state.metrics.idle_connections_closed,
        ),
        timeout_graceful_shutdown=max(1, int(settings.shutdown.drain_timeout_s)),
        lifespan="on",
        proxy_headers=False,  # X-Forwarded-* are not trusted: the S3 port is not behind a proxy
    )
    return DrainingServer(config, app), sockets, app
