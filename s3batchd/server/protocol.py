"""uvicorn's httptools protocol with a header read timeout and a header size limit.

httptools (llhttp, the C parser of Node.js) rather than h11: h11 parses HTTP in Python and was
most of the cost of a request here, the daemon's own work included (bench/README.md).

uvicorn bounds the idle time between requests (``timeout_keep_alive``) but not the time a
client may take to send a request's headers: a client trickling header bytes would hold its
connection forever. Here every request's headers must be complete within
``server.header_timeout_s`` of the connection opening or the previous response ending;
otherwise the connection is closed (before any request exists, so there is nothing to answer).
The deadline is checked by the loop's sweeper (sweeper.py), not by a timer per request, so a
connection is closed between ``header_timeout_s`` and a quarter of it later.

Nor does uvicorn's httptools protocol bound the size of the header section (h11 did, at
16 KiB): a longer one is answered ``400 RequestHeaderSectionTooLarge`` and the connection
closed, as S3 does.

uvicorn answers every request ``503`` while ``server.max_connections`` connections are open
(``limit_concurrency``), even when most of them are idle keep-alive connections: a client that
opens connections and keeps them idle denied service to all. Here a new connection that
reaches the limit closes the longest-idle connections first (no request in flight, nothing
left to send; a connection that has not sent a request yet is idle since it opened; HTTP lets
a server close an idle persistent connection, and clients retry on a new one). Only when
every connection is busy are requests refused as before. The idle connections of a server
are an insertion-ordered dict (longest idle first): a request costs one delete when it
begins and one insert when its answer ends, no scan.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar, Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from s3batchd.errors import RequestHeaderSectionTooLarge
from s3batchd.s3.addressing import authority_of
from s3batchd.server.app import error_xml, new_request_id
from s3batchd.sweeper import Sweeper, sweeper

logger = logging.getLogger(__name__)

MAX_HEADER_SECTION_BYTES = 16 * 1024
"""Longest request line plus headers taken (h11's limit, which the daemon had before)."""


class Count(Protocol):
    """A counter (prometheus_client's ``Counter``)."""

    def inc(self, amount: float = 1) -> None:
        """Add ``amount``."""


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes connections whose request headers arrive too slowly and
    refuses header sections longer than ``MAX_HEADER_SECTION_BYTES``."""

    header_timeout_s = 10.0

    _header_deadline: float | None = None
    """Loop time by which the current request's headers must be complete (None: not waiting
    for headers)."""
    _sweeper: Sweeper | None = None
    _in_headers = False
    """Between a request's first byte and the end of its headers."""
    _counted = 0
    """Header bytes of the current request seen in complete URL pieces and headers."""
    _whole_chunks = 0
    """Bytes of the reads that fell entirely inside the current request's header section."""
    _too_large = False
    _began = False
    """A request began during the current read."""
    _idle: ClassVar[dict[HeaderTimeoutProtocol, None]] = {}
    """The server's idle connections, longest idle first (each configured class has its own,
    see ``protocol_with_timeout``)."""
    idle_closed: ClassVar[Count | None] = None
    """Counts the idle connections closed to make room (a metric)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request's headers."""
        super().connection_made(transport)
        self._sweeper = sweeper(self.loop)
        self._sweeper.watch(self, self.header_timeout_s)
        self._start_header_clock()
        self._idle[self] = None
        limit = self.limit_concurrency
        if limit is not None and len(self.connections) >= limit:
            self._make_room(len(self.connections) - limit + 1)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a read that starts and ends inside one header section counts
        whole towards its size (the parser buffers a header until it is complete)."""
        inside, self._began = self._in_headers, False
        super().data_received(data)
        if inside and self._in_headers and not self._began and not self.transport.is_closing():
            self._whole_chunks += len(data)
            if self._whole_chunks > MAX_HEADER_SECTION_BYTES:
                self._refuse_header_section()

    def on_message_begin(self) -> None:
        """A request begins: its header section is counted from here."""
        super().on_message_begin()
        self._idle.pop(self, None)
        self._in_headers = self._began = True
        self._counted = 0
        self._whole_chunks = 0

    def on_url(self, url: bytes) -> None:
        """Count the request target."""
        super().on_url(url)
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count a header line."""
        super().on_header(name, value)
        self._count(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        """Stop the clock once a request's headers are complete."""
        self._in_headers = False
        self._header_deadline = None
        if not self.url.startswith(b"/"):
            # Absolute form (``PUT http://host/key``): uvicorn keeps only the path, but the
            # host it names is held to ``server.allowed_hosts`` like a Host (dispatch.serve).
            self.scope["state"]["authority"] = authority_of(self.url)
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser refused, or S3's to a header section
        over the limit."""
        if self._too_large:
            self._refuse_header_section()
        else:
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        """Start the clock for the next request's headers."""
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_header_clock()
            if self.cycle.response_complete and not self._in_headers:
                # Not when a pipelined request started (it is the cycle now) or begun.
                self._idle[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the clock."""
        self._header_deadline = None
        self._idle.pop(self, None)
        if self._sweeper is not None:
            self._sweeper.forget(self)
        super().connection_lost(exc)

    def _make_room(self, count: int) -> None:
        """Close up to ``count`` idle connections, the longest idle first (uvicorn refuses
        every request while the limit is reached)."""
        closing: list[HeaderTimeoutProtocol] = []
        for other in self._idle:
            if len(closing) == count:
                break
            transport = other.transport
            # A closing one goes anyway; one with an answer left to send is not idle.
            if other is self or transport.is_closing() or transport.get_write_buffer_size():
                continue
            closing.append(other)
        for other in closing:
            del self._idle[other]
            other.transport.close()
            # It no longer counts against the limit: uvicorn forgets it in connection_lost,
            # which uvloop calls only in a later loop iteration, after the new connection's
            # first request may have been checked against the limit (and refused).
            self.connections.discard(other)
        if closing:
            logger.debug("%d connections open: closed %d idle", len(self.connections), len(closing))
            if self.idle_closed is not None:
                self.idle_closed.inc(len(closing))

    def _count(self, size: int) -> None:
        self._counted += size
        if self._counted > MAX_HEADER_SECTION_BYTES:
            self._too_large = True
            # The parser stops (httptools wraps what a callback raises); uvicorn then calls
            # send_400_response, which answers it.
            raise RequestHeaderSectionTooLarge()

    def _refuse_header_section(self) -> None:
        # No request exists yet for the app to answer: the same XML, written here.
        request_id = new_request_id()
        body = error_xml(RequestHeaderSectionTooLarge(), resource="", request_id=request_id)
        logger.warning("request header section over %d bytes refused", MAX_HEADER_SECTION_BYTES)
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\n"
            b"content-type: application/xml\r\n"
            b"content-length: %d\r\n"
            b"x-amz-request-id: %s\r\n"
            b"server: s3batchd\r\n"
            b"connection: close\r\n\r\n%s" % (len(body), request_id.encode(), body)
        )
        self.transport.close()

    def _start_header_clock(self) -> None:
        self._header_deadline = self.loop.time() + self.header_timeout_s

    def check(self, now: float) -> bool:
        """The sweeper's look: close the connection if the current request's headers are
        late. True once the connection is closed (nothing more to watch)."""
        if self.transport.is_closing():
            return True
        deadline = self._header_deadline
        if deadline is None or now < deadline:
            return False
        self._header_deadline = None
        # Only while waiting for a request's headers: a pipelined request started by the
        # previous response's end has its headers already.
        waiting = self.cycle is None or self.cycle.response_complete or self._in_headers
        if waiting:
            self.transport.close()
            return True
        return False


def protocol_with_timeout(
    header_timeout_s: float, *, idle_closed: Count | None = None
) -> type[HeaderTimeoutProtocol]:
    """A protocol class carrying the configured timeout, its own idle connections and the
    count of those closed to make room (uvicorn instantiates it)."""
    return type(
        "ConfiguredHeaderTimeoutProtocol",
        (HeaderTimeoutProtocol,),
        {
            "header_timeout_s": header_timeout_s,
            "_idle": {},
            "idle_closed": idle_closed,
        },
    )
