"""The ceiling: a do-nothing ASGI app that reads the request body and answers 200, served by
uvicorn with the same settings s3batchd's server uses (httptools with the header timeout protocol,
keep-alive, connection limit, no access log, no server header).

    python -m bench.ceiling --port 9999
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.types import Message, Receive, Scope, Send

from s3batchd.config import ServerConfig, ShutdownConfig
from s3batchd.server.protocol import protocol_with_timeout


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer every request 200 with an empty body once its body is read."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False) and message["type"] == "http.request"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
    )
    await send({"type": "http.response.body", "body": b""})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def config(port: int) -> uvicorn.Config:
    """uvicorn settings as in ``s3batchd.server.serve.build_server``, with the daemon's defaults."""
    server, shutdown = ServerConfig(), ShutdownConfig()
    return uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=server.keep_alive_s,
        limit_concurrency=server.max_connections,
        http=protocol_with_timeout(server.header_timeout_s),
        timeout_graceful_shutdown=max(1, int(shutdown.drain_timeout_s)),
        lifespan="on",
        proxy_headers=False,
    )


def main() -> None:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.Server(config(args.port)).run()


if __name__ == "__main__":
    main()
