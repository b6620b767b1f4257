"""The body of a forwarded write, re-framed as ``aws-chunked`` with a trailing checksum.

A client's body is forwarded while it is still arriving, so its verification (Content-MD5,
payload hash, chunk signatures, checksums) ends only after most of it went upstream. Plain
``Content-Length`` framing cannot take that back: a server may store a truncated body when the
connection drops. ``aws-chunked`` can: the body is complete only with its final zero-length
chunk and trailer, which are sent after verification succeeded, and the trailer carries the
verified checksum (``STREAMING-UNSIGNED-PAYLOAD-TRAILER``), so the bucket checks the bytes
end to end as well. Chunks are a fixed size, so the framed length is known up front.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from s3batchd.s3.checksums import b64, new_hasher

#: Payload hash of a re-framed body.
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
CHUNK = 64 * 1024
#: Length of a base64 checksum value by algorithm.
_VALUE_LENGTH = {"crc32": 8, "crc32c": 8, "crc64nvme": 12, "sha1": 28, "sha256": 44}


def framed_length(size: int, algorithm: str) -> int:
    """Bytes on the wire for ``size`` payload bytes and a trailer of ``algorithm``."""
    full, rest = divmod(size, CHUNK)
    length = full * (len(f"{CHUNK:x}") + 4 + CHUNK)
    if rest:
        length += len(f"{rest:x}") + 4 + rest
    trailer = len(f"x-amz-checksum-{algorithm}:") + _VALUE_LENGTH[algorithm] + 2
    return length + 3 + trailer + 2


async def reframe(
    pieces: AsyncIterator[bytes], algorithm: str, verified: Callable[[], dict[str, str]]
) -> AsyncIterator[bytes]:
    """``pieces`` as aws-chunked chunks; the end (zero chunk and checksum trailer) only after
    ``verified()`` (which raises when the body is bad) returned the checksums by algorithm;
    one of ``algorithm`` is computed here when the client sent none."""
    hasher = new_hasher(algorithm)
    buffer = bytearray()
    async for piece in pieces:
        hasher.update(piece)
        buffer += piece
        while len(buffer) >= CHUNK:
            yield _chunk(bytes(buffer[:CHUNK]))
            del buffer[:CHUNK]
    checksums = verified()
    value = checksums.get(algorithm) or b64(hasher.digest())
    tail = _chunk(bytes(buffer)) if buffer else b""
    yield tail + b"0\r\n" + f"x-amz-checksum-{algorithm}:{value}\r\n\r\n".encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"
