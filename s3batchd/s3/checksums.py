"""Payload checksums S3 clients send: Content-MD5 and ``x-amz-checksum-<algorithm>``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from typing import Protocol

from awscrt import checksums as crt

from s3batchd.errors import InvalidDigest, InvalidRequest

#: Algorithm name -> digest length in bytes.
ALGORITHMS: dict[str, int] = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32}


class Hasher(Protocol):
    """Incremental digest."""

    def update(self, data: bytes | memoryview, /) -> None:
        """Feed more payload."""

    def digest(self) -> bytes:
        """The digest so far."""


class _Crc:
    def __init__(self, algorithm: str) -> None:
        self._width = ALGORITHMS[algorithm]
        self._func = {"crc32": zlib.crc32, "crc32c": crt.crc32c, "crc64nvme": crt.crc64nvme}[
            algorithm
        ]
        self._value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self._value = self._func(data, self._value)  # type: ignore[arg-type]  # buffer is fine

    def digest(self) -> bytes:
        return self._value.to_bytes(self._width, "big")


def new_hasher(algorithm: str) -> Hasher:
    """An incremental hasher for a lower-case algorithm name."""
    if algorithm in ("sha1", "sha256"):
        return hashlib.new(algorithm)
    if algorithm in ALGORITHMS:
        return _Crc(algorithm)
    raise InvalidRequest(f"Unsupported checksum algorithm: {algorithm}")


def decode_checksum(algorithm: str, value: str) -> bytes:
    """The raw digest of a base64 checksum header; InvalidDigest if malformed."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidDigest(f"The x-amz-checksum-{algorithm} value is not valid base64.") from exc
    if len(raw) != ALGORITHMS[algorithm]:
        raise InvalidDigest(f"The x-amz-checksum-{algorithm} value has the wrong length.")
    return raw


def decode_content_md5(value: str) -> bytes:
    """The raw digest of a Content-MD5 header; InvalidDigest if malformed or empty."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidDigest("The Content-MD5 you specified was invalid.") from exc
    if len(raw) != 16:
        raise InvalidDigest("The Content-MD5 you specified was invalid.")
    return raw


def b64(raw: bytes) -> str:
    """Base64 text of a digest, as S3 headers carry it."""
    return base64.b64encode(raw).decode("ascii")
