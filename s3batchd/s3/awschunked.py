"""Incremental decoder of ``aws-chunked`` bodies (SigV4 streaming uploads).

Framing: ``<hex size>[;chunk-signature=<sig>]\\r\\n<data>\\r\\n`` repeated, a final
zero-size chunk, then optional trailer lines ``name:value\\r\\n`` and an empty line. Chunk
boundaries do not line up with ASGI message boundaries, so the decoder keeps state between
``feed()`` calls and returns payload slices without copying more than it must.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from s3batchd.errors import IncompleteBody, InvalidRequest

if TYPE_CHECKING:
    from s3batchd.s3.sigv4 import ChunkVerifier

_MAX_LINE = 4096
_HEX = frozenset("0123456789abcdefABCDEF")


class AwsChunkedDecoder:
    """Feed raw body bytes, receive decoded payload pieces and, at the end, the trailers."""

    def __init__(self, verifier: ChunkVerifier | None = None) -> None:
        self._verifier = verifier
        """Checks chunk and trailer signatures as the body streams (signed SigV4 uploads)."""
        self._line = bytearray()
        self._state = "size"  # size | data | data_crlf | trailer | done
        self._remaining = 0
        self.trailers: dict[str, str] = {}
        self.trailer_lines: list[tuple[str, str]] = []
        """Trailer lines in order, name and value as sent (what a trailer signature covers)."""
        self.chunk_signatures: list[str] = []
        self.trailer_signature: str | None = None

    @property
    def done(self) -> bool:
        """Whether the final chunk and the trailer section have been read."""
        return self._state == "done"

    def feed(self, data: bytes) -> list[memoryview]:
        """Decode more input; returns the payload bytes it contained."""
        out: list[memoryview] = []
        view = memoryview(data)
        while view:
            if self._state == "data":
                take = min(self._remaining, len(view))
                out.append(view[:take])
                if self._verifier is not None:
                    self._verifier.update(view[:take])
                view = view[take:]
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "data_crlf"
                    if self._verifier is not None:
                        self._verifier.end_chunk()
                continue
            if self._state == "done":
                if bytes(view).strip(b"\r\n"):
                    raise InvalidRequest("Unexpected data after the final aws-chunked chunk.")
                return out
            line, view = self._take_line(view)
            if line is not None:
                self._on_line(line)
        return out

    def _take_line(self, view: memoryview) -> tuple[bytes | None, memoryview]:
        raw = bytes(view[: _MAX_LINE + 2])  # a line never needs more; avoid copying the payload
        end = raw.find(b"\n")
        if end < 0:
            self._line += raw
            self._check_line_length()
            return None, view[len(view) :]
        self._line += raw[: end + 1]
        self._check_line_length()
        line = bytes(self._line)
        self._line.clear()
        if not line.endswith(b"\r\n"):
            raise IncompleteBody("Malformed aws-chunked framing: lines must end with CRLF.")
        return line[:-2], view[end + 1 :]

    def _check_line_length(self) -> None:
        if len(self._line) > _MAX_LINE:
            raise IncompleteBody("Malformed aws-chunked framing: header line too long.")

    def _on_line(self, line: bytes) -> None:
        if self._state == "size":
            self._on_size(line)
        elif self._state == "data_crlf":
            if line:
                raise IncompleteBody("Malformed aws-chunked framing: chunk longer than its size.")
            self._state = "size"
        elif self._state == "trailer":
            self._on_trailer(line)

    def _on_size(self, line: bytes) -> None:
        text = line.decode("ascii", "replace")
        size_text, _, extension = text.partition(";")
        size_text = size_text.strip()
        if not size_text or not _HEX.issuperset(size_text) or len(size_text) > 16:
            raise IncompleteBody("Malformed aws-chunked framing: bad chunk size.")
        signature = None
        if extension:
            name, _, value = extension.partition("=")
            if name.strip() == "chunk-signature":
                signature = value.strip()
                self.chunk_signatures.append(signature)
        self._remaining = int(size_text, 16)
        self._state = "data" if self._remaining else "trailer"
        if self._verifier is not None:
            self._verifier.begin_chunk(signature)
            if not self._remaining:
                self._verifier.end_chunk()

    def _on_trailer(self, line: bytes) -> None:
        if not line:
            self._state = "done"
            if self._verifier is not None and self._verifier.expects_trailer:
                self._verifier.verify_trailer(self.trailer_lines, self.trailer_signature)
            return
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise IncompleteBody("Malformed aws-chunked trailer line.")
        if name.strip().lower() != "x-amz-trailer-signature":
            self.trailer_lines.append((name, value))
        name = name.strip().lower()
        if name == "x-amz-trailer-signature":
            self.trailer_signature = value.strip()
        else:
            self.trailers[name] = value.strip()

    def finish(self) -> None:
        """Check that the body ended exactly at the end of the aws-chunked stream."""
        if self._state != "done":
            raise IncompleteBody("The aws-chunked body ended before its final chunk.")
        if self._verifier is not None:
            self._verifier.finish()
