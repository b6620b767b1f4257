"""What every S3 signature scheme shares: credentials, the verified request's context, the
request as signatures see it, the clock check and the constant-time comparison.

Pure, no I/O and no clock: the caller passes ``now`` (in :class:`Policy`) and a credential
``lookup``. The schemes themselves live in :mod:`s3batchd.s3.sigv4` (header and presigned),
:mod:`s3batchd.s3.chunkchain` (signed ``aws-chunked`` bodies) and :mod:`s3batchd.s3.sigv2`;
:mod:`s3batchd.s3.signatures` picks the one a request carries.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote

from s3batchd.errors import (
    InvalidAccessKeyId,
    RequestTimeTooSkewed,
    S3Error,
    SignatureDoesNotMatch,
)

if TYPE_CHECKING:
    from s3batchd.s3.chunkchain import StreamingSigning

__all__ = [
    "MAX_SKEW",
    "AuthContext",
    "AuthKind",
    "CredentialLookup",
    "Credentials",
    "Policy",
    "SignedRequest",
]

#: Largest accepted difference between a request's date and the server clock.
MAX_SKEW = timedelta(minutes=15)
#: The ISO 8601 basic format of ``x-amz-date`` / ``X-Amz-Date``.
AMZ_DATE = "%Y%m%dT%H%M%SZ"

AuthKind = Literal["header-v4", "presigned-v4", "header-v2", "presigned-v2"]


@dataclass(frozen=True)
class Credentials:
    """An access key and its secret."""

    access_key_id: str
    secret_access_key: str = field(repr=False)


#: Returns the credentials of an access key id, or ``None`` when the key is unknown.
CredentialLookup = Callable[[str], Credentials | None]


@dataclass(frozen=True)
class AuthContext:
    """Who signed a verified request, how, and what the body reader must still check."""

    access_key_id: str
    kind: AuthKind
    #: SigV4 only: the signed payload hash (hex, ``UNSIGNED-PAYLOAD`` or ``STREAMING-…``).
    payload_hash: str | None = None
    #: SigV4 only: the region of the credential scope.
    region: str | None = None
    #: Set for ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`` bodies.
    streaming: StreamingSigning | None = None


# --------------------------------------------------------------------------- request model


@dataclass(frozen=True)
class SignedRequest:
    """The parts of a request that signatures cover."""

    method: str
    raw_path: bytes
    query_string: bytes
    #: Decoded query parameters in order; ``None`` for a parameter without ``=``.
    params: tuple[tuple[str, str | None], ...]
    #: Lower-case header name → raw values in received order.
    headers: dict[str, list[bytes]]

    @classmethod
    def parse(
        cls,
        method: str,
        raw_path: bytes,
        query_string: bytes,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> SignedRequest:
        """Index the headers and decode the query string."""
        by_name: dict[str, list[bytes]] = {}
        for name, value in headers:
            by_name.setdefault(name.decode("latin-1").lower(), []).append(value)
        return cls(method.upper(), raw_path, query_string, _parse_query(query_string), by_name)

    def header(self, name: str) -> str | None:
        """A header's value(s), stripped and joined with ``,``; ``None`` when absent."""
        values = self.headers.get(name)
        if values is None:
            return None
        return ",".join(as_text(value).strip() for value in values)

    def param_names(self) -> set[str]:
        """The names of all query parameters."""
        return {name for name, _ in self.params}

    def param(self, name: str, error: type[S3Error]) -> str | None:
        """The value of a query parameter given at most once (``error`` when repeated)."""
        values = [value for key, value in self.params if key == name]
        if len(values) > 1:
            raise error(f"The query parameter {name} appears more than once.")
        return (values[0] or "") if values else None


@dataclass(frozen=True)
class Policy:
    """The verification settings passed down to each verifier."""

    lookup: CredentialLookup
    now: datetime
    max_skew: timedelta
    region: str | None
    vhost_bucket: str | None


def as_text(value: bytes) -> str:
    """Bytes as text that encodes back to the same bytes."""
    return value.decode("utf-8", "surrogateescape")


def _parse_query(query_string: bytes) -> tuple[tuple[str, str | None], ...]:
    pairs: list[tuple[str, str | None]] = []
    for part in query_string.split(b"&"):
        if not part:
            continue
        key, sep, value = part.partition(b"=")
        pairs.append((unquote_once(key), unquote_once(value) if sep else None))
    return tuple(pairs)


def unquote_once(value: bytes) -> str:
    """Percent-decode once; ``+`` stays literal."""
    return unquote(as_text(value), errors="surrogateescape")


# --------------------------------------------------------------------------- shared checks


def parse_amz_date(value: str | None) -> datetime | None:
    """An ``x-amz-date`` value as an aware datetime; ``None`` when absent or malformed."""
    if value is None:
        return None
    try:
        return datetime.strptime(value, AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        return None


def lookup_credentials(policy: Policy, access_key_id: str) -> Credentials:
    """The credentials of ``access_key_id``; InvalidAccessKeyId when the key is unknown."""
    credentials = policy.lookup(access_key_id)
    if credentials is None:
        raise InvalidAccessKeyId()
    return credentials


def check_skew(moment: datetime, policy: Policy) -> None:
    """RequestTimeTooSkewed when ``moment`` is further than ``max_skew`` from ``now``."""
    if abs(policy.now - moment) > policy.max_skew:
        raise RequestTimeTooSkewed(
            "The difference between the request time "
            f"({moment:%Y-%m-%dT%H:%M:%SZ}) and the current time is too large."
        )


def same_signature(expected: str, given: str | None) -> bool:
    """Constant-time comparison that tolerates any text."""
    return hmac.compare_digest(
        expected.encode("utf-8"), (given or "").encode("utf-8", "surrogateescape")
    )


def mismatch(string_to_sign: str, canonical_request: str) -> SignatureDoesNotMatch:
    """SignatureDoesNotMatch carrying what the server computed (never the secret)."""
    error = SignatureDoesNotMatch()
    error.string_to_sign = _printable(string_to_sign)
    error.canonical_request = _printable(canonical_request)
    return error


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def check_hmac_sha256(
    key: bytes, string_to_sign: str, given: str | None, canonical_request: str = ""
) -> str:
    """Return the expected hex signature, or raise SignatureDoesNotMatch if ``given`` differs."""
    message = string_to_sign.encode("utf-8", "surrogateescape")
    expected = hmac.new(key, message, hashlib.sha256).hexdigest()
    if not same_signature(expected, given):
        raise mismatch(string_to_sign, canonical_request)
    return expected
