"""Verify a request's signature, whichever scheme it carries: SigV4 header or presigned
(:mod:`s3batchd.s3.sigv4`, with :mod:`s3batchd.s3.chunkchain` for signed bodies) or SigV2
header or presigned (:mod:`s3batchd.s3.sigv2`).

Pure: the caller passes ``now`` and a credential ``lookup``. A request carrying two schemes is
refused as S3 refuses it (InvalidArgument), one carrying none with AccessDenied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from s3batchd.errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    InvalidArgument,
    NotImplementedS3,
)
from s3batchd.s3.signing import (
    MAX_SKEW,
    AuthContext,
    AuthKind,
    CredentialLookup,
    Policy,
    SignedRequest,
)
from s3batchd.s3.sigv2 import V2_QUERY_AUTH, verify_header_v2, verify_presigned_v2
from s3batchd.s3.sigv4 import (
    ALGORITHM,
    SIGV4A,
    V4_QUERY_AUTH,
    verify_header_v4,
    verify_presigned_v4,
)

__all__ = ["is_anonymous", "verify_request"]


def is_anonymous(query_string: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a request carries no authentication at all (no header, no presign parameters)."""
    request = SignedRequest.parse("GET", b"/", query_string, headers)
    names = request.param_names()
    return "authorization" not in request.headers and not names.intersection(
        V4_QUERY_AUTH + V2_QUERY_AUTH
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
    request = SignedRequest.parse(method, raw_path, query_string, headers)
    policy = Policy(lookup, now.astimezone(UTC), max_skew, region, vhost_bucket)
    kind = _auth_kind(request)
    if kind is None:
        raise AccessDenied("Anonymous access is not allowed; the request carries no signature.")
    return _VERIFIERS[kind](request, policy)


def _auth_kind(request: SignedRequest) -> AuthKind | None:
    """Which authentication a request carries; InvalidArgument when it carries several."""
    names = request.param_names()
    found: list[AuthKind] = []
    if "authorization" in request.headers:
        found.append(_header_kind(request))
    if names.intersection(V4_QUERY_AUTH):
        found.append("presigned-v4")
    if names.intersection(V2_QUERY_AUTH):
        found.append("presigned-v2")
    if len(found) > 1:
        raise InvalidArgument(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified"
        )
    return found[0] if found else None


def _header_kind(request: SignedRequest) -> AuthKind:
    if len(request.headers["authorization"]) > 1:
        raise AuthorizationHeaderMalformed("More than one Authorization header.")
    value = request.header("authorization") or ""
    scheme = value.split(" ", 1)[0]
    if scheme == ALGORITHM:
        return "header-v4"
    if scheme == "AWS":
        return "header-v2"
    if scheme == SIGV4A:
        raise NotImplementedS3("SigV4a (AWS4-ECDSA-P256-SHA256) signatures are not supported.")
    raise InvalidArgument("Unsupported Authorization Type")


_VERIFIERS: dict[AuthKind, Callable[[SignedRequest, Policy], AuthContext]] = {
    "header-v4": verify_header_v4,
    "presigned-v4": verify_presigned_v4,
    "header-v2": verify_header_v2,
    "presigned-v2": verify_presigned_v2,
}
