"""uvicorn's h11 protocol with a header read timeout.

uvicorn bounds the idle time between requests (``timeout_keep_alive``) but not the time a
client may take to send a request's headers: a client trickling header bytes would hold its
connection forever. Here every request's headers must be complete within
``server.header_timeout_s`` of the connection opening or the previous response ending;
otherwise the connection is closed (before any request exists, so there is nothing to answer).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderTimeoutProtocol(H11Protocol):
    """H11Protocol that closes connections whose request headers arrive too slowly."""

    header_timeout_s = 10.0

    _header_timer: asyncio.TimerHandle | None = None
    _waiting_cycle: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request's headers."""
        super().connection_made(transport)
        self._start_header_timer()

    def data_received(self, data: bytes) -> None:
        """Stop the clock once a request's headers are complete (a new cycle exists)."""
        super().data_received(data)
        if self._header_timer is not None and self.cycle is not self._waiting_cycle:
            self._header_timer.cancel()
            self._header_timer = None

    def on_response_complete(self) -> None:
        """Start the clock for the next request's headers."""
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the clock."""
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._waiting_cycle = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing() and self.cycle is self._waiting_cycle:
            self.transport.close()


def protocol_with_timeout(header_timeout_s: float) -> type[HeaderTimeoutProtocol]:
    """A protocol class carrying the configured timeout (uvicorn instantiates it)."""
    return type(
        "ConfiguredHeaderTimeoutProtocol",
        (HeaderTimeoutProtocol,),
        {"header_timeout_s": header_timeout_s},
    )
