"""Signed ``aws-chunked`` bodies (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]``): each chunk's
signature chains on the previous one, seeded by the request's SigV4 signature.

Pure: the body reader (:mod:`s3batchd.s3.awschunked`) feeds the chunks as they stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from s3batchd.errors import SignatureDoesNotMatch
from s3batchd.s3.signing import check_hmac_sha256

__all__ = ["EMPTY_SHA256", "ChunkVerifier", "StreamingSigning"]

#: The SHA-256 of no bytes: the final chunk's hash, and the empty hash each chunk signs.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class StreamingSigning:
    """What a signed ``aws-chunked`` body needs to check its chain of chunk signatures."""

    signing_key: bytes = field(repr=False)
    scope: str
    amz_date: str
    seed_signature: str
    #: ``…-PAYLOAD-TRAILER``: a signed trailer follows the final chunk.
    trailer: bool

    def chunk_verifier(self) -> ChunkVerifier:
        """A fresh verifier for this request's chunk chain."""
        return ChunkVerifier(self)


class ChunkVerifier:
    """Checks the signatures of a signed ``aws-chunked`` body, chunk by chunk, as it streams.

    Feed each chunk with :meth:`begin_chunk`, :meth:`update` (any number of times) and
    :meth:`end_chunk`, or hand over a finished chunk's hash to :meth:`verify_chunk`; the final
    empty chunk is signed too. Then :meth:`verify_trailer` for ``…-TRAILER`` uploads and
    :meth:`finish`. The first mismatch raises :class:`SignatureDoesNotMatch`; calls out of
    order (a bug in the caller, not in the client) raise :class:`RuntimeError`.
    """

    def __init__(self, signing: StreamingSigning) -> None:
        self._signing = signing
        self._previous = signing.seed_signature
        self._pending: str | None = None
        self._hash = hashlib.sha256()
        self._final_seen = False
        self._trailer_seen = False

    @property
    def previous_signature(self) -> str:
        """The last verified signature (the seed before the first chunk)."""
        return self._previous

    @property
    def complete(self) -> bool:
        """Whether the final chunk (and the trailer, when one is signed) has been verified."""
        return self._final_seen and (self._trailer_seen or not self._signing.trailer)

    @property
    def expects_trailer(self) -> bool:
        """Whether the body ends with a signed trailer (``…-PAYLOAD-TRAILER``)."""
        return self._signing.trailer

    def begin_chunk(self, signature: str | None) -> None:
        """Start a chunk whose header carried ``chunk-signature=<signature>``."""
        if self._pending is not None or self._final_seen:
            raise RuntimeError("begin_chunk() out of order")
        self._pending = signature or ""
        self._hash = hashlib.sha256()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add payload bytes of the current chunk."""
        if self._pending is None:
            raise RuntimeError("update() outside a chunk")
        self._hash.update(data)

    def end_chunk(self) -> None:
        """Verify the current chunk's signature over the data fed since :meth:`begin_chunk`."""
        if self._pending is None:
            raise RuntimeError("end_chunk() outside a chunk")
        signature, self._pending = self._pending, None
        self.verify_chunk(self._hash.hexdigest(), signature)

    def verify_chunk(self, chunk_data_sha256_hex: str, signature: str | None) -> None:
        """Verify one whole chunk from the hex SHA-256 of its data."""
        if self._final_seen:
            raise RuntimeError("a chunk after the final chunk")
        string_to_sign = "\n".join(
            (
                "AWS4-HMAC-SHA256-PAYLOAD",
                self._signing.amz_date,
                self._signing.scope,
                self._previous,
                EMPTY_SHA256,
                chunk_data_sha256_hex,
            )
        )
        self._previous = check_hmac_sha256(self._signing.signing_key, string_to_sign, signature)
        self._final_seen = chunk_data_sha256_hex == EMPTY_SHA256

    def verify_trailer(
        self, trailer_lines: Sequence[tuple[str, str]], signature: str | None
    ) -> None:
        """Verify ``x-amz-trailer-signature`` over the trailer lines (name, value) as sent."""
        if not self._final_seen or self._trailer_seen:
            raise RuntimeError("verify_trailer() before the final chunk or twice")
        canonical = "".join(f"{name}:{value}\n" for name, value in trailer_lines)
        string_to_sign = "\n".join(
            (
                "AWS4-HMAC-SHA256-TRAILER",
                self._signing.amz_date,
                self._signing.scope,
                self._previous,
                hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest(),
            )
        )
        self._previous = check_hmac_sha256(self._signing.signing_key, string_to_sign, signature)
        self._trailer_seen = True

    def finish(self) -> None:
        """Raise unless the whole chain, final chunk and signed trailer included, was verified."""
        if not self.complete:
            missing = "final chunk" if not self._final_seen else "trailer signature"
            raise SignatureDoesNotMatch(f"The signed aws-chunked body ended without its {missing}.")
