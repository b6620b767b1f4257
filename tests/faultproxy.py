"""A fault-injecting HTTP/1.1 proxy between s3batchd and SeaweedFS (loopback only).

Each request from the daemon is read whole, then handled by the current mode:

- ``pass``: forwarded on a fresh upstream connection, the answer relayed back;
- ``error``: answered with an S3 XML error (``status``/``code``) without forwarding;
- ``reset``: the connection is reset without an answer;
- ``blackhole``: never answered (the connection stays open);
- ``slow``: forwarded after ``delay_s`` seconds, the answer relayed back;
- ``drop_response``: forwarded (so the upstream commits it), then the connection is reset:
  the ambiguous success a retry must reconcile.

``faults`` limits how many requests get the fault before the proxy passes again; ``None``
keeps it until the mode changes. Every decision is counted.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass

from s3batchd.cli.seaweed import free_ports


@dataclass
class Mode:
    """What the proxy does with the next requests."""

    name: str = "pass"
    status: int = 503
    code: str = "SlowDown"
    faults: int | None = None
    only_method: str | None = None
    """Apply the fault only to requests with this method (others pass)."""
    only_target: str | None = None
    """Apply the fault only to requests whose target (path and query) contains this."""
    delay_s: float = 0.0
    """How long ``slow`` waits before forwarding."""


class FaultProxy:
    """Runs in its own thread with its own event loop."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_ports(1)[0]
        self.mode = Mode()
        self.decisions: Counter[str] = Counter()
        self.request_lines: list[str] = []
        """The request line (method, target, version) of every request, in arrival order."""
        self.parts_in_flight = 0
        """UploadPart requests being handled now (read by tests; changed on the proxy's loop)."""
        self.most_parts_in_flight = 0
        """The most UploadPart requests handled at once since the proxy started."""
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """Endpoint URL to give the daemon."""
        return f"http://127.0.0.1:{self.port}"

    def set(self, name: str, **options: object) -> None:
        """Switch mode (thread-safe)."""
        with self._lock:
            self.mode = Mode(name, **options)  # type: ignore[arg-type]

    def start(self) -> FaultProxy:
        """Start listening."""
        self._thread.start()
        assert self._ready.wait(10), "fault proxy did not start"
        return self

    def stop(self) -> None:
        """Close every connection and stop the loop."""
        self._loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(10)

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._loop.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            # asyncio's default backlog (100) overflows when hundreds of connections arrive
            # at once and the proxy's loop is slow to accept (a loaded machine): the kernel
            # drops the SYNs and the daemon's connect times out after the client's 1 s and
            # 3 s SYN retries. 1024 queues them all (net.core.somaxconn is 4096).
            asyncio.start_server(self._client, "127.0.0.1", self.port, backlog=1024)
        )
        self._ready.set()
        self._loop.run_forever()
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        if self._server is not None:
            self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    def _decide(self, method: str, target: str = "") -> Mode:
        with self._lock:
            mode = self.mode
            if (
                mode.name == "pass"
                or (mode.only_method and mode.only_method != method)
                or (mode.only_target and mode.only_target not in target)
            ):
                self.decisions["pass"] += 1
                return Mode()
            if mode.faults is not None:
                if mode.faults <= 0:
                    self.decisions["pass"] += 1
                    return Mode()
                mode.faults -= 1
            self.decisions[mode.name] += 1
            return mode

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader, writer)
                if request is None:
                    return
                method = request.split(b" ", 1)[0].decode()
                line = request.split(b"\r\n", 1)[0].decode()
                self.request_lines.append(line)
                part = b"partNumber=" in request.split(b"\r\n", 1)[0]
                self.parts_in_flight += part
                self.most_parts_in_flight = max(self.most_parts_in_flight, self.parts_in_flight)
                try:
                    kept = await self._handle(
                        self._decide(method, line.split(" ")[1] if " " in line else ""),
                        request,
                        writer,
                    )
                finally:
                    self.parts_in_flight -= part
                if not kept:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _handle(self, mode: Mode, request: bytes, writer: asyncio.StreamWriter) -> bool:
        if mode.name == "blackhole":
            await asyncio.Event().wait()  # until the proxy stops
        if mode.name == "reset":
            _reset(writer)
            return False
        if mode.name == "error":
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{mode.code}</Code>'
                f"<Message>injected</Message><RequestId>FAULT</RequestId></Error>"
            ).encode()
            writer.write(
                f"HTTP/1.1 {mode.status} Injected\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            return True
        if mode.name == "slow":
            await asyncio.sleep(mode.delay_s)
        answer = await self._forward(request)
        if mode.name == "drop_response":
            _reset(writer)
            return False
        writer.write(answer)
        await writer.drain()
        return False  # upstream answered with Connection: close; let the client reconnect

    async def _forward(self, request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            writer.write(request)
            await writer.drain()
            return await reader.read()  # until the upstream closes (Connection: close)
        finally:
            writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
    """One whole request, rewritten to ``Connection: close`` and without ``Expect``."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head[:-4].split(b"\r\n")
    kept = [lines[0]]
    length = 0
    chunked = expect = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lowered = name.strip().lower()
        if lowered == b"content-length":
            length = int(value)
        elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        if lowered == b"expect":
            expect = True
            continue
        if lowered != b"connection":
            kept.append(line)
    kept.append(b"Connection: close")
    if expect:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    body = await _read_chunked(reader) if chunked else await reader.readexactly(length)
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    raw = b""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        raw += size_line
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            raw += await reader.readuntil(b"\r\n")
            return raw
        raw += await reader.readexactly(size + 2)
