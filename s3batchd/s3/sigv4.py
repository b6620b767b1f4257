"""Verify SigV4 request signatures: the ``Authorization: AWS4-HMAC-SHA256`` header and
presigned URLs (``X-Amz-Algorithm`` in the query).

Pure functions, no I/O and no clock: the caller passes ``now`` and a credential ``lookup`` (in
:class:`~s3batchd.s3.signing.Policy`). The rules follow ``shared/notes/wire.md`` §9, checked
against every recorded real client:

- canonical URI = the wire path decoded once, re-encoded with ``quote(safe='-_.~/')``;
- canonical query = every parameter re-encoded, sorted, ``k=`` for valueless ones;
- canonical headers = the signed headers' raw values (repeats joined with ``,``), trimmed and
  with inner whitespace collapsed, ``host`` exactly as sent;
- payload hash = the literal ``x-amz-content-sha256`` (``UNSIGNED-PAYLOAD`` for presigned URLs
  unless the query carries ``X-Amz-Content-Sha256``). Comparing a hex value with the body is the
  body reader's job, as is feeding streaming chunks to a
  :class:`~s3batchd.s3.chunkchain.ChunkVerifier`.

Errors are :mod:`s3batchd.errors` classes; a bad signature raises
:class:`~s3batchd.errors.SignatureDoesNotMatch` whose ``string_to_sign`` and
``canonical_request`` attributes say what the server computed (never the secret).
:mod:`s3batchd.s3.signatures` decides which scheme a request carries; SigV2 is
:mod:`s3batchd.s3.sigv2`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote, unquote_to_bytes

from s3batchd.errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    InvalidArgument,
    InvalidRequest,
    NotImplementedS3,
    S3Error,
    SignatureDoesNotMatch,
)
from s3batchd.s3.chunkchain import StreamingSigning
from s3batchd.s3.signing import (
    AuthContext,
    AuthKind,
    Policy,
    SignedRequest,
    as_text,
    check_hmac_sha256,
    check_skew,
    lookup_credentials,
    parse_amz_date,
    unquote_once,
)

__all__ = [
    "ALGORITHM",
    "MAX_PRESIGN_EXPIRES",
    "SIGV4A",
    "V4_QUERY_AUTH",
    "derive_signing_key",
    "verify_header_v4",
    "verify_presigned_v4",
]

#: Largest ``X-Amz-Expires`` a presigned SigV4 URL may carry (7 days).
MAX_PRESIGN_EXPIRES = 604800
#: The SigV4 algorithm name, in the ``Authorization`` scheme and ``X-Amz-Algorithm``.
ALGORITHM = "AWS4-HMAC-SHA256"
#: SigV4a, recognised only to refuse it with NotImplemented.
SIGV4A = "AWS4-ECDSA-P256-SHA256"
#: The query parameters that make a request a presigned SigV4 one.
V4_QUERY_AUTH = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature")

_TERMINATOR = "aws4_request"
_SERVICE = "s3"
_UNSIGNED = "UNSIGNED-PAYLOAD"
_STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
_STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
_PAYLOAD_LITERALS = frozenset(
    {_UNSIGNED, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", _STREAMING_SIGNED, _STREAMING_SIGNED_TRAILER}
)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def derive_signing_key(secret: str, date: str, region: str, service: str = _SERVICE) -> bytes:
    """The SigV4 signing key: HMAC chain ``AWS4``+secret → date → region → service → terminator."""
    key = ("AWS4" + secret).encode("utf-8")
    for part in (date, region, service, _TERMINATOR):
        key = hmac.new(key, part.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
    return key


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
        if drop is not None and unquote_once(key) == drop:
            continue
        pairs.append((_quote_query(key), _quote_query(value)))
    return "&".join(f"{key}={value}" for key, value in sorted(pairs))


def _quote_query(raw: bytes) -> str:
    return quote(unquote_to_bytes(raw), safe="-_.~")


def _canonical_headers(request: SignedRequest, signed: Sequence[str]) -> str:
    """``name:value\\n`` per signed header: raw values trimmed, inner whitespace collapsed."""
    lines = []
    for name in signed:
        values = request.headers.get(name.lower())
        if values is None:
            raise SignatureDoesNotMatch(f"The signed header {name!r} is not in the request.")
        joined = b",".join(b" ".join(value.split()) for value in values)
        lines.append(f"{name.lower()}:{as_text(joined)}\n")
    return "".join(lines)


def _check_unsigned_amz_headers(request: SignedRequest, signed: Sequence[str]) -> None:
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


def _check_v4(request: SignedRequest, signed: _V4Signed, secret: str) -> bytes:
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
    string_to_sign = f"{ALGORITHM}\n{signed.amz_date}\n{signed.scope.text}\n{digest}"
    key = derive_signing_key(secret, signed.scope.date, signed.scope.region)
    check_hmac_sha256(key, string_to_sign, signed.signature, canonical_request)
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


def _header_date(request: SignedRequest, policy: Policy) -> str:
    """The ``x-amz-date`` (or ``Date``) value, checked for format and skew."""
    text = request.header("x-amz-date") or request.header("date")
    moment = parse_amz_date(text)
    if text is None or moment is None:
        raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
    check_skew(moment, policy)
    return text


def verify_header_v4(request: SignedRequest, policy: Policy) -> AuthContext:
    fields = _parse_v4_authorization(request.header("authorization") or "")
    scope = _parse_scope(fields["Credential"], AuthorizationHeaderMalformed, policy.region)
    signed_headers = _parse_signed_headers(fields["SignedHeaders"], AuthorizationHeaderMalformed)
    signature = _check_signature_format(fields["Signature"], AuthorizationHeaderMalformed)
    credentials = lookup_credentials(policy, scope.access_key_id)
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


def _required_param(request: SignedRequest, name: str) -> str:
    value = request.param(name, AuthorizationQueryParametersError)
    if value is None:
        raise AuthorizationQueryParametersError(
            f"Query-string authentication version 4 requires the {name} parameter."
        )
    return value


def _presign_window(request: SignedRequest, policy: Policy) -> str:
    """``X-Amz-Date``, checked against ``X-Amz-Expires`` and the clock."""
    amz_date = _required_param(request, "X-Amz-Date")
    expires_text = _required_param(request, "X-Amz-Expires")
    moment = parse_amz_date(amz_date)
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


def verify_presigned_v4(request: SignedRequest, policy: Policy) -> AuthContext:
    algorithm = _required_param(request, "X-Amz-Algorithm")
    if algorithm == SIGV4A:
        raise NotImplementedS3("SigV4a (AWS4-ECDSA-P256-SHA256) signatures are not supported.")
    if algorithm != ALGORITHM:
        raise AuthorizationQueryParametersError(f"X-Amz-Algorithm only supports {ALGORITHM}.")
    error = AuthorizationQueryParametersError
    scope = _parse_scope(_required_param(request, "X-Amz-Credential"), error, policy.region)
    signed_headers = _parse_signed_headers(_required_param(request, "X-Amz-SignedHeaders"), error)
    signature = _check_signature_format(_required_param(request, "X-Amz-Signature"), error)
    credentials = lookup_credentials(policy, scope.access_key_id)
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
