"""Verify S3 request signatures: SigV4 (header, presigned, chunk chains) and SigV2.

Pure functions, no I/O and no clock: the caller passes ``now`` and a credential ``lookup``.
The rules follow ``shared/notes/wire.md`` §9, checked against every recorded real client:

- canonical URI = the wire path decoded once, re-encoded with ``quote(safe='-_.~/')``;
- canonical query = every parameter re-encoded, sorted, ``k=`` for valueless ones;
- canonical headers = the signed headers' raw values (repeats joined with ``,``), trimmed and
  with inner whitespace collapsed, ``host`` exactly as sent;
- payload hash = the literal ``x-amz-content-sha256`` (``UNSIGNED-PAYLOAD`` for presigned URLs
  unless the query carries ``X-Amz-Content-Sha256``). Comparing a hex value with the body is the
  body reader's job, as is feeding streaming chunks to a :class:`ChunkVerifier`.

Errors are :mod:`s3batchd.errors` classes; a bad signature raises
:class:`~s3batchd.errors.SignatureDoesNotMatch` whose ``string_to_sign`` and
``canonical_request`` attributes say what the server computed (never the secret).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import quote, unquote, unquote_to_bytes

from s3batchd.errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    InvalidAccessKeyId,
    InvalidArgument,
    InvalidRequest,
    NotImplementedS3,
    RequestTimeTooSkewed,
    S3Error,
    SignatureDoesNotMatch,
)

__all__ = [
    "MAX_PRESIGN_EXPIRES",
    "MAX_SKEW",
    "AuthContext",
    "AuthKind",
    "ChunkVerifier",
    "CredentialLookup",
    "Credentials",
    "StreamingSigning",
    "derive_signing_key",
    "is_anonymous",
    "verify_request",
]

#: Largest accepted difference between a request's date and the server clock.
MAX_SKEW = timedelta(minutes=15)
#: Largest ``X-Amz-Expires`` a presigned SigV4 URL may carry (7 days).
MAX_PRESIGN_EXPIRES = 604800

AuthKind = Literal["header-v4", "presigned-v4", "header-v2", "presigned-v2"]

_ALGORITHM = "AWS4-HMAC-SHA256"
_SIGV4A = "AWS4-ECDSA-P256-SHA256"
_TERMINATOR = "aws4_request"
_SERVICE = "s3"
_UNSIGNED = "UNSIGNED-PAYLOAD"
_STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
_STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
_PAYLOAD_LITERALS = frozenset(
    {_UNSIGNED, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", _STREAMING_SIGNED, _STREAMING_SIGNED_TRAILER}
)
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_V4_QUERY_AUTH = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature")
_V2_QUERY_AUTH = ("AWSAccessKeyId", "Signature")
#: Query parameters that SigV2 signs as part of the resource (botocore's list).
_V2_SUBRESOURCES = frozenset(
    {
        "accelerate", "acl", "analytics", "cors", "defaultObjectAcl", "delete", "inventory",
        "lifecycle", "location", "logging", "metrics", "notification", "object-lock",
        "partNumber", "policy", "replication", "requestPayment", "response-cache-control",
        "response-content-disposition", "response-content-encoding", "response-content-language",
        "response-content-type", "response-expires", "restore", "select", "select-type",
        "storageClass", "tagging", "torrent", "uploadId", "uploads", "versionId", "versioning",
        "versions", "website",
    }
)  # fmt: skip


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Credentials:
    """An access key and its secret."""

    access_key_id: str
    secret_access_key: str = field(repr=False)


#: Returns the credentials of an access key id, or ``None`` when the key is unknown.
CredentialLookup = Callable[[str], Credentials | None]


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


# --------------------------------------------------------------------------- chunk chain


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
                _EMPTY_SHA256,
                chunk_data_sha256_hex,
            )
        )
        self._previous = _check_hmac_sha256(self._signing.signing_key, string_to_sign, signature)
        self._final_seen = chunk_data_sha256_hex == _EMPTY_SHA256

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
        self._previous = _check_hmac_sha256(self._signing.signing_key, string_to_sign, signature)
        self._trailer_seen = True

    def finish(self) -> None:
        """Raise unless the whole chain, final chunk and signed trailer included, was verified."""
        if not self.complete:
            missing = "final chunk" if not self._final_seen else "trailer signature"
            raise SignatureDoesNotMatch(f"The signed aws-chunked body ended without its {missing}.")


# --------------------------------------------------------------------------- entry points


def derive_signing_key(secret: str, date: str, region: str, service: str = _SERVICE) -> bytes:
    """The SigV4 signing key: HMAC chain ``AWS4``+secret → date → region → service → terminator."""
    key = ("AWS4" + secret).encode("utf-8")
    for part in (date, region, service, _TERMINATOR):
        key = hmac.new(key, part.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
    return key


def is_anonymous(query_string: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a request carries no authentication at all (no header, no presign parameters)."""
    request = _Request.parse("GET", b"/", query_string, headers)
    names = request.param_names()
    return "authorization" not in request.headers and not names.intersection(
        _V4_QUERY_AUTH + _V2_QUERY_AUTH
    )


def verify_request(
    method: str,
    raw_path: bytes,
    query_string: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    lookup: CredentialLookup,
    now: datetime,
    max_skew: timedelta = MAX_SKEW,
    region: str | None = None,
    vhost_bucket: str | None = None,
) -> AuthContext:
    """Verify a request's signature and return who signed it.

    ``raw_path`` and ``query_string`` are the ASGI ``raw_path`` / ``query_string`` (as sent),
    ``headers`` the raw ASGI list (lower-case names, duplicates kept). ``now`` must be
    timezone-aware. ``region``, when given, is the only region accepted in a SigV4 scope.
    ``vhost_bucket`` is the bucket a virtual-hosted ``Host`` names (SigV2 signs ``/bucket/key``).
    Raises :class:`AccessDenied` when the request carries no authentication.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    request = _Request.parse(method, raw_path, query_string, headers)
    policy = _Policy(lookup, now.astimezone(UTC), max_skew, region, vhost_bucket)
    kind = _auth_kind(request)
    if kind is None:
        raise AccessDenied("Anonymous access is not allowed; the request carries no signature.")
    return _VERIFIERS[kind](request, policy)


# --------------------------------------------------------------------------- request model


@dataclass(frozen=True)
class _Request:
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
    ) -> _Request:
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
        return ",".join(_text(value).strip() for value in values)

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
class _Policy:
    """The verification settings passed down to each verifier."""

    lookup: CredentialLookup
    now: datetime
    max_skew: timedelta
    region: str | None
    vhost_bucket: str | None


def _text(value: bytes) -> str:
    """Bytes as text that encodes back to the same bytes."""
    return value.decode("utf-8", "surrogateescape")


def _parse_query(query_string: bytes) -> tuple[tuple[str, str | None], ...]:
    pairs: list[tuple[str, str | None]] = []
    for part in query_string.split(b"&"):
        if not part:
            continue
        key, sep, value = part.partition(b"=")
        pairs.append((_unquote(key), _unquote(value) if sep else None))
    return tuple(pairs)


def _unquote(value: bytes) -> str:
    """Percent-decode once; ``+`` stays literal."""
    return unquote(_text(value), errors="surrogateescape")


def _auth_kind(request: _Request) -> AuthKind | None:
    """Which authentication a request carries; InvalidArgument when it carries several."""
    names = request.param_names()
    found: list[AuthKind] = []
    if "authorization" in request.headers:
        found.append(_header_kind(request))
    if names.intersection(_V4_QUERY_AUTH):
        found.append("presigned-v4")
    if names.intersection(_V2_QUERY_AUTH):
        found.append("presigned-v2")
    if len(found) > 1:
        raise InvalidArgument(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified"
        )
    return found[0] if found else None


def _header_kind(request: _Request) -> AuthKind:
    if len(request.headers["authorization"]) > 1:
        raise AuthorizationHeaderMalformed("More than one Authorization header.")
    value = request.header("authorization") or ""
    scheme = value.split(" ", 1)[0]
    if scheme == _ALGORITHM:
        return "header-v4"
    if scheme == "AWS":
        return "header-v2"
    if scheme == _SIGV4A:
        raise NotImplementedS3("SigV4a (AWS4-ECDSA-P256-SHA256) signatures are not supported.")
    raise InvalidArgument("Unsupported Authorization Type")


# --------------------------------------------------------------------------- SigV4 pieces


@dataclass(frozen=True)
class _Scope:
    """A parsed ``Credential`` value: ``<AK>/<yyyymmdd>/<region>/s3/aws4_request``."""

    access_key_id: str
    date: str
    region: str

    @property
    def text(self) -> str:
        """The credential scope as signed."""
        return f"{self.date}/{self.region}/{_SERVICE}/{_TERMINATOR}"


def _parse_scope(value: str, error: type[S3Error], region: str | None) -> _Scope:
    parts = value.rsplit("/", 4)
    if len(parts) != 5 or not parts[0] or not parts[2]:
        raise error(
            "The Credential is mal-formed; expecting "
            '"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'
        )
    access_key_id, date, scope_region, service, terminator = parts
    if not (len(date) == 8 and date.isdigit()):
        raise error(f"Invalid credential date {date!r}.")
    if service != _SERVICE:
        raise error(f"The credential scope names service {service!r}; expecting 's3'.")
    if terminator != _TERMINATOR:
        raise error(f"The credential scope must end with {_TERMINATOR!r}.")
    if region is not None and scope_region != region:
        raise error(f"The region {scope_region!r} is wrong; expecting {region!r}.")
    return _Scope(access_key_id, date, scope_region)


def _parse_signed_headers(value: str, error: type[S3Error]) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    if not value or not all(names):
        raise error("SignedHeaders is empty or has an empty name.")
    return names


def _check_signature_format(value: str, error: type[S3Error]) -> str:
    if not _HEX64.fullmatch(value):
        raise error("The signature must be 64 hexadecimal characters.")
    return value  # compared as sent: S3 refuses upper-case hex with SignatureDoesNotMatch


def _parse_amz_date(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, _AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        return None


def _credentials(policy: _Policy, access_key_id: str) -> Credentials:
    credentials = policy.lookup(access_key_id)
    if credentials is None:
        raise InvalidAccessKeyId()
    return credentials


def _canonical_uri(raw_path: bytes) -> str:
    """The path decoded once and re-encoded with upper-case hex, ``/`` kept."""
    return quote(unquote_to_bytes(raw_path or b"/"), safe="-_.~/")


def _canonical_query(query_string: bytes, *, drop: str | None = None) -> str:
    """Every parameter re-encoded, sorted by key then value, ``k=`` when valueless."""
    pairs: list[tuple[str, str]] = []
    for part in query_string.split(b"&"):
        if not part:
            continue
        key, _, value = part.partition(b"=")
        if drop is not None and _unquote(key) == drop:
            continue
        pairs.append((_quote_query(key), _quote_query(value)))
    return "&".join(f"{key}={value}" for key, value in sorted(pairs))


def _quote_query(raw: bytes) -> str:
    return quote(unquote_to_bytes(raw), safe="-_.~")


def _canonical_headers(request: _Request, signed: Sequence[str]) -> str:
    """``name:value\\n`` per signed header: raw values trimmed, inner whitespace collapsed."""
    lines = []
    for name in signed:
        values = request.headers.get(name.lower())
        if values is None:
            raise SignatureDoesNotMatch(f"The signed header {name!r} is not in the request.")
        joined = b",".join(b" ".join(value.split()) for value in values)
        lines.append(f"{name.lower()}:{_text(joined)}\n")
    return "".join(lines)


def _check_unsigned_amz_headers(request: _Request, signed: Sequence[str]) -> None:
    signed_lower = {name.lower() for name in signed}
    if "host" not in signed_lower:
        raise AccessDenied("The Host header must be signed.")
    unsigned = sorted(
        name for name in request.headers if name.startswith("x-amz-") and name not in signed_lower
    )
    if unsigned:
        raise AccessDenied(
            "There were headers present in the request which were not signed: "
            + ", ".join(unsigned)
        )


def _check_payload_hash(value: str) -> str:
    if value in _PAYLOAD_LITERALS or _HEX64.fullmatch(value):
        return value
    if value.startswith("STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"):
        raise NotImplementedS3("SigV4a streaming signatures are not supported.")
    raise InvalidArgument(
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER "
        "or a valid sha256 value."
    )


@dataclass(frozen=True)
class _V4Signed:
    """Everything a SigV4 signature covers, from either the header or the query."""

    scope: _Scope
    amz_date: str
    signed_headers: tuple[str, ...]
    signature: str
    payload_hash: str
    canonical_query: str


def _check_v4(request: _Request, signed: _V4Signed, secret: str) -> bytes:
    """Compare the signature; return the signing key (needed for chunk chains)."""
    canonical_request = "\n".join(
        (
            request.method,
            _canonical_uri(request.raw_path),
            signed.canonical_query,
            _canonical_headers(request, signed.signed_headers),
            ";".join(signed.signed_headers),
            signed.payload_hash,
        )
    )
    digest = hashlib.sha256(canonical_request.encode("utf-8", "surrogateescape")).hexdigest()
    string_to_sign = f"{_ALGORITHM}\n{signed.amz_date}\n{signed.scope.text}\n{digest}"
    key = derive_signing_key(secret, signed.scope.date, signed.scope.region)
    _check_hmac_sha256(key, string_to_sign, signed.signature, canonical_request)
    return key


def _v4_context(kind: AuthKind, signed: _V4Signed, key: bytes) -> AuthContext:
    streaming = None
    if signed.payload_hash in (_STREAMING_SIGNED, _STREAMING_SIGNED_TRAILER):
        streaming = StreamingSigning(
            signing_key=key,
            scope=signed.scope.text,
            amz_date=signed.amz_date,
            seed_signature=signed.signature,
            trailer=signed.payload_hash == _STREAMING_SIGNED_TRAILER,
        )
    return AuthContext(
        access_key_id=signed.scope.access_key_id,
        kind=kind,
        payload_hash=signed.payload_hash,
        region=signed.scope.region,
        streaming=streaming,
    )


# --------------------------------------------------------------------------- SigV4 header


def _parse_v4_authorization(value: str) -> dict[str, str]:
    """``Credential``, ``SignedHeaders`` and ``Signature`` of an ``AWS4-HMAC-SHA256`` header."""
    _, _, rest = value.partition(" ")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, item = part.strip().partition("=")
        if not sep or name in fields:
            raise AuthorizationHeaderMalformed(
                f"Malformed Authorization component {part.strip()!r}."
            )
        fields[name] = item.strip()
    missing = {"Credential", "SignedHeaders", "Signature"} - fields.keys()
    if missing:
        raise AuthorizationHeaderMalformed(
            f"The Authorization header lacks {', '.join(sorted(missing))}."
        )
    return fields


def _header_date(request: _Request, policy: _Policy) -> str:
    """The ``x-amz-date`` (or ``Date``) value, checked for format and skew."""
    text = request.header("x-amz-date") or request.header("date")
    moment = _parse_amz_date(text)
    if text is None or moment is None:
        raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
    _check_skew(moment, policy)
    return text


def _check_skew(moment: datetime, policy: _Policy) -> None:
    if abs(policy.now - moment) > policy.max_skew:
        raise RequestTimeTooSkewed(
            "The difference between the request time "
            f"({moment:%Y-%m-%dT%H:%M:%SZ}) and the current time is too large."
        )


def _verify_header_v4(request: _Request, policy: _Policy) -> AuthContext:
    fields = _parse_v4_authorization(request.header("authorization") or "")
    scope = _parse_scope(fields["Credential"], AuthorizationHeaderMalformed, policy.region)
    signed_headers = _parse_signed_headers(fields["SignedHeaders"], AuthorizationHeaderMalformed)
    signature = _check_signature_format(fields["Signature"], AuthorizationHeaderMalformed)
    credentials = _credentials(policy, scope.access_key_id)
    amz_date = _header_date(request, policy)
    if amz_date[:8] != scope.date:
        raise AuthorizationHeaderMalformed(
            "Invalid credential date. Date is not the same as X-Amz-Date."
        )
    payload_hash = request.header("x-amz-content-sha256")
    if payload_hash is None:
        raise InvalidRequest("Missing required header for this request: x-amz-content-sha256")
    _check_unsigned_amz_headers(request, signed_headers)
    signed = _V4Signed(
        scope,
        amz_date,
        signed_headers,
        signature,
        _check_payload_hash(payload_hash),
        _canonical_query(request.query_string),
    )
    key = _check_v4(request, signed, credentials.secret_access_key)
    return _v4_context("header-v4", signed, key)


# --------------------------------------------------------------------------- SigV4 presigned


def _required_param(request: _Request, name: str) -> str:
    value = request.param(name, AuthorizationQueryParametersError)
    if value is None:
        raise AuthorizationQueryParametersError(
            f"Query-string authentication version 4 requires the {name} parameter."
        )
    return value


def _presign_window(request: _Request, policy: _Policy) -> str:
    """``X-Amz-Date``, checked against ``X-Amz-Expires`` and the clock."""
    amz_date = _required_param(request, "X-Amz-Date")
    expires_text = _required_param(request, "X-Amz-Expires")
    moment = _parse_amz_date(amz_date)
    if moment is None:
        raise AuthorizationQueryParametersError("X-Amz-Date must be in the ISO8601 Long Format.")
    if not expires_text.isdigit() or int(expires_text) > MAX_PRESIGN_EXPIRES:
        raise AuthorizationQueryParametersError(
            f"X-Amz-Expires must be a number of seconds from 0 to {MAX_PRESIGN_EXPIRES}."
        )
    if int(expires_text) == 0:
        raise AccessDenied("Request has expired")  # as S3: valid for no time at all
    if moment - policy.now > policy.max_skew:
        raise AccessDenied("Request is not yet valid")
    if policy.now > moment + timedelta(seconds=int(expires_text)):
        raise AccessDenied("Request has expired")
    return amz_date


def _verify_presigned_v4(request: _Request, policy: _Policy) -> AuthContext:
    algorithm = _required_param(request, "X-Amz-Algorithm")
    if algorithm == _SIGV4A:
        raise NotImplementedS3("SigV4a (AWS4-ECDSA-P256-SHA256) signatures are not supported.")
    if algorithm != _ALGORITHM:
        raise AuthorizationQueryParametersError(f"X-Amz-Algorithm only supports {_ALGORITHM}.")
    error = AuthorizationQueryParametersError
    scope = _parse_scope(_required_param(request, "X-Amz-Credential"), error, policy.region)
    signed_headers = _parse_signed_headers(_required_param(request, "X-Amz-SignedHeaders"), error)
    signature = _check_signature_format(_required_param(request, "X-Amz-Signature"), error)
    credentials = _credentials(policy, scope.access_key_id)
    amz_date = _presign_window(request, policy)
    if amz_date[:8] != scope.date:
        raise error("Invalid credential date. Date is not the same as X-Amz-Date.")
    payload_hash = request.param("X-Amz-Content-Sha256", error) or _UNSIGNED
    _check_unsigned_amz_headers(request, signed_headers)
    signed = _V4Signed(
        scope,
        amz_date,
        signed_headers,
        signature,
        _check_payload_hash(payload_hash),
        _canonical_query(request.query_string, drop="X-Amz-Signature"),
    )
    key = _check_v4(request, signed, credentials.secret_access_key)
    return _v4_context("presigned-v4", signed, key)


# --------------------------------------------------------------------------- SigV2


def _v2_string_to_sign(request: _Request, date_line: str, bucket: str | None, query: bool) -> str:
    """``METHOD\\nContent-MD5\\nContent-Type\\nDate\\n<x-amz-* lines><resource>``.

    For presigned URLs (``query``) a header that is absent may come from the query string,
    where botocore's ``generate_presigned_url`` puts Content-Type and ``x-amz-*`` values.
    """
    values = _v2_signed_values(request, query)
    lines = [request.method, values.get("content-md5", ""), values.get("content-type", "")]
    amz = "".join(
        f"{name}:{values[name]}\n" for name in sorted(values) if name.startswith("x-amz-")
    )
    return "\n".join([*lines, date_line]) + "\n" + amz + _v2_resource(request, bucket)


def _v2_signed_values(request: _Request, query: bool) -> dict[str, str]:
    values: dict[str, str] = {}
    if query:
        for name, value in request.params:
            lower = name.lower()
            if lower.startswith("x-amz-") or lower in ("content-md5", "content-type"):
                values[lower] = (value or "").strip()
    for name in request.headers:
        if name.startswith("x-amz-") or name in ("content-md5", "content-type"):
            values[name] = request.header(name) or ""
    return values


def _v2_resource(request: _Request, bucket: str | None) -> str:
    """The path as sent (``/bucket`` first when virtual-hosted), then signed sub-resources."""
    path = _text(request.raw_path or b"/")
    if bucket is not None:
        path = f"/{bucket}{path}"
    subresources = sorted(
        ((name, value) for name, value in request.params if name in _V2_SUBRESOURCES),
        key=lambda item: (item[0], item[1] or ""),
    )
    if not subresources:
        return path
    items = (name if value is None else f"{name}={value}" for name, value in subresources)
    return path + "?" + "&".join(items)


def _v2_signature(secret: str, string_to_sign: str) -> str:
    mac = hmac.new(
        secret.encode("utf-8"), string_to_sign.encode("utf-8", "surrogateescape"), hashlib.sha1
    )
    return base64.b64encode(mac.digest()).decode("ascii")


def _check_v2(secret: str, string_to_sign: str, given: str) -> None:
    expected = _v2_signature(secret, string_to_sign)
    if not _same(expected, given):
        raise _mismatch(string_to_sign, "")


def _v2_header_date(request: _Request, policy: _Policy) -> str:
    """The Date line of the StringToSign (empty with ``x-amz-date``), after the skew check."""
    amz_date = request.header("x-amz-date")
    date = request.header("date")
    moment = _parse_http_date(amz_date if amz_date is not None else date)
    if moment is None:
        raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
    _check_skew(moment, policy)
    return "" if amz_date is not None else (date or "")


def _parse_http_date(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return _parse_amz_date(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _verify_header_v2(request: _Request, policy: _Policy) -> AuthContext:
    value = request.header("authorization") or ""
    access_key_id, sep, signature = value.partition(" ")[2].rpartition(":")
    if not sep or not access_key_id or not signature:
        raise AuthorizationHeaderMalformed(
            "AWS authorization header is invalid. Expected AwsAccessKeyId:signature"
        )
    credentials = _credentials(policy, access_key_id.strip())
    date_line = _v2_header_date(request, policy)
    string_to_sign = _v2_string_to_sign(request, date_line, policy.vhost_bucket, query=False)
    _check_v2(credentials.secret_access_key, string_to_sign, signature.strip())
    return AuthContext(access_key_id=credentials.access_key_id, kind="header-v2")


def _verify_presigned_v2(request: _Request, policy: _Policy) -> AuthContext:
    error = AuthorizationQueryParametersError
    access_key_id = request.param("AWSAccessKeyId", error)
    signature = request.param("Signature", error)
    expires = request.param("Expires", error)
    if not access_key_id or not signature or expires is None:
        raise AccessDenied(
            "Query-string authentication requires the Signature, Expires and "
            "AWSAccessKeyId parameters"
        )
    credentials = _credentials(policy, access_key_id)
    if not expires.isdigit():
        raise AccessDenied("Invalid date (should be seconds since epoch): " + expires)
    if policy.now.timestamp() > int(expires):
        raise AccessDenied("Request has expired")
    string_to_sign = _v2_string_to_sign(request, expires, policy.vhost_bucket, query=True)
    _check_v2(credentials.secret_access_key, string_to_sign, signature)
    return AuthContext(access_key_id=credentials.access_key_id, kind="presigned-v2")


# --------------------------------------------------------------------------- shared helpers


def _same(expected: str, given: str | None) -> bool:
    """Constant-time comparison that tolerates any text."""
    return hmac.compare_digest(
        expected.encode("utf-8"), (given or "").encode("utf-8", "surrogateescape")
    )


def _mismatch(string_to_sign: str, canonical_request: str) -> SignatureDoesNotMatch:
    error = SignatureDoesNotMatch()
    error.string_to_sign = _printable(string_to_sign)
    error.canonical_request = _printable(canonical_request)
    return error


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _check_hmac_sha256(
    key: bytes, string_to_sign: str, given: str | None, canonical_request: str = ""
) -> str:
    """Return the expected hex signature, or raise SignatureDoesNotMatch if ``given`` differs."""
    message = string_to_sign.encode("utf-8", "surrogateescape")
    expected = hmac.new(key, message, hashlib.sha256).hexdigest()
    if not _same(expected, given):
        raise _mismatch(string_to_sign, canonical_request)
    return expected


_VERIFIERS: dict[AuthKind, Callable[[_Request, _Policy], AuthContext]] = {
    "header-v4": _verify_header_v4,
    "presigned-v4": _verify_presigned_v4,
    "header-v2": _verify_header_v2,
    "presigned-v2": _verify_presigned_v2,
}
