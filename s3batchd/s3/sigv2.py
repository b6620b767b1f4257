"""Verify SigV2 request signatures: ``Authorization: AWS <key>:<signature>`` and presigned
URLs (``AWSAccessKeyId``, ``Signature``, ``Expires`` in the query).

SigV2 is HMAC-SHA1 over ``METHOD``, ``Content-MD5``, ``Content-Type``, the date (or the
presigned ``Expires``), the ``x-amz-*`` headers and the resource (``/bucket/key`` plus the
signed sub-resources, botocore's list). Older clients (s3cmd, boto3 with ``signature_version
= "s3"``) still send it. Pure, no I/O and no clock, like :mod:`s3batchd.s3.sigv4`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from s3batchd.errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
)
from s3batchd.s3.signing import (
    AuthContext,
    Policy,
    SignedRequest,
    as_text,
    check_skew,
    lookup_credentials,
    mismatch,
    parse_amz_date,
    same_signature,
)

__all__ = ["V2_QUERY_AUTH", "verify_header_v2", "verify_presigned_v2"]

#: The query parameters that make a request a presigned SigV2 one.
V2_QUERY_AUTH = ("AWSAccessKeyId", "Signature")
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


def _v2_string_to_sign(
    request: SignedRequest, date_line: str, bucket: str | None, query: bool
) -> str:
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


def _v2_signed_values(request: SignedRequest, query: bool) -> dict[str, str]:
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


def _v2_resource(request: SignedRequest, bucket: str | None) -> str:
    """The path as sent (``/bucket`` first when virtual-hosted), then signed sub-resources."""
    path = as_text(request.raw_path or b"/")
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
    if not same_signature(expected, given):
        raise mismatch(string_to_sign, "")


def _v2_header_date(request: SignedRequest, policy: Policy) -> str:
    """The Date line of the StringToSign (empty with ``x-amz-date``), after the skew check."""
    amz_date = request.header("x-amz-date")
    date = request.header("date")
    moment = _parse_http_date(amz_date if amz_date is not None else date)
    if moment is None:
        raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
    check_skew(moment, policy)
    return "" if amz_date is not None else (date or "")


def _parse_http_date(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return parse_amz_date(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def verify_header_v2(request: SignedRequest, policy: Policy) -> AuthContext:
    value = request.header("authorization") or ""
    access_key_id, sep, signature = value.partition(" ")[2].rpartition(":")
    if not sep or not access_key_id or not signature:
        raise AuthorizationHeaderMalformed(
            "AWS authorization header is invalid. Expected AwsAccessKeyId:signature"
        )
    credentials = lookup_credentials(policy, access_key_id.strip())
    date_line = _v2_header_date(request, policy)
    string_to_sign = _v2_string_to_sign(request, date_line, policy.vhost_bucket, query=False)
    _check_v2(credentials.secret_access_key, string_to_sign, signature.strip())
    return AuthContext(access_key_id=credentials.access_key_id, kind="header-v2")


def verify_presigned_v2(request: SignedRequest, policy: Policy) -> AuthContext:
    error = AuthorizationQueryParametersError
    access_key_id = request.param("AWSAccessKeyId", error)
    signature = request.param("Signature", error)
    expires = request.param("Expires", error)
    if not access_key_id or not signature or expires is None:
        raise AccessDenied(
            "Query-string authentication requires the Signature, Expires and "
            "AWSAccessKeyId parameters"
        )
    credentials = lookup_credentials(policy, access_key_id)
    if not expires.isdigit():
        raise AccessDenied("Invalid date (should be seconds since epoch): " + expires)
    if policy.now.timestamp() > int(expires):
        raise AccessDenied("Request has expired")
    string_to_sign = _v2_string_to_sign(request, expires, policy.vhost_bucket, query=True)
    _check_v2(credentials.secret_access_key, string_to_sign, signature)
    return AuthContext(access_key_id=credentials.access_key_id, kind="presigned-v2")
