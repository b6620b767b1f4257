"""What a request addresses: the bucket and key (path-style or ``<bucket>.<domain>``
virtual-hosted), the Host it names (checked against ``server.allowed_hosts``), and S3's naming
rules for buckets and keys. Everything wrong raises an ``S3Error``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_to_bytes

from starlette.types import Scope

from s3batchd.constants import MAX_KEY_BYTES
from s3batchd.errors import InvalidArgument, InvalidBucketName, InvalidRequest, KeyTooLongError

__all__ = ["Target", "authority_of", "check_bucket", "check_host", "check_key", "parse_target"]

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


@dataclass(slots=True)
class Target:
    """What a request addresses (a value, never changed; not ``frozen``: one is built per
    request, and a frozen dataclass's ``__init__`` costs five times as much,
    records.ObjectRecord)."""

    bucket: str
    key: str
    """Empty for bucket-level requests."""
    query: dict[str, str]
    virtual: bool = False
    """Whether the bucket came from the Host header (virtual-hosted style)."""


def parse_target(scope: Scope, headers: dict[str, str], domains: tuple[str, ...]) -> Target:
    """Bucket and key of a request, path-style or ``<bucket>.<domain>`` virtual-hosted."""
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    raw_path = raw_path.split(b"?", 1)[0]
    path = _decode_path(raw_path)
    query_string: bytes = scope.get("query_string", b"")
    query = (
        dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
        if query_string
        else {}
    )
    bucket = _virtual_bucket(headers.get("host", ""), domains)
    virtual = bucket is not None
    if bucket is None:
        bucket, _, key = path.lstrip("/").partition("/")
    else:
        key = path[1:] if path.startswith("/") else path
    return Target(bucket=bucket, key=key, query=query, virtual=virtual)


def _decode_path(raw_path: bytes) -> str:
    try:
        if b"%" not in raw_path:  # nothing to unquote (most keys): unquote_to_bytes is Python
            return raw_path.decode("utf-8")
        return unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument("Object keys must be valid UTF-8.") from exc


@functools.lru_cache(maxsize=256)
def _virtual_bucket(host: str, domains: tuple[str, ...]) -> str | None:
    """The bucket a virtual-hosted Host names (None: path-style). Remembered per Host, as
    ``_check_named_host`` remembers it: a client sends the same one every time."""
    name = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else ""
    for domain in domains:
        if name.endswith("." + domain):
            return name[: -len(domain) - 1]
    return None


#: ``host[:port]`` of a Host header or an absolute-form target's authority: a bracketed IPv6
#: literal or a name (no userinfo, no spaces), then an optional port, and nothing else.
_HOST = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^\[\]:@/?#\s]+))(?::\d*)?$")


def authority_of(target: bytes) -> str:
    """The ``host[:port]`` of an absolute-form request target (empty when it has none)."""
    _, _, rest = target.partition(b"://")
    end = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    return rest[:end].decode("latin-1")


def check_host(host: str | None, allowed: tuple[str, ...], domains: tuple[str, ...]) -> None:
    """Refuse a request whose Host header (or absolute-form authority) is missing, empty,
    malformed or names none of the allowed hosts (DNS-rebinding defence): 400 InvalidRequest,
    as S3 answers an HTTP/1.1 request without Host. ``["*"]`` allows any well-formed name."""
    if not host:
        raise InvalidRequest("The request has no Host (or an empty one).")
    _check_named_host(host, allowed, domains)


@functools.lru_cache(maxsize=256)
def _check_named_host(host: str, allowed: tuple[str, ...], domains: tuple[str, ...]) -> None:
    """check_host for a non-empty Host. A client sends the same Host on every request, so an
    accepted one is remembered (a refusal raises, and is not); the regular expression per
    request showed as 1 us in the PUT path."""
    if not host:
        raise InvalidRequest("The request has no Host (or an empty one).")
    match = _HOST.match(host)
    if match is None:
        raise InvalidRequest(f"Host {host!r} is not a host name with an optional port.")
    if "*" in allowed:
        return
    name = (match[1] or match[2]).lower()
    if name in allowed or any(name.endswith("." + domain) for domain in domains):
        return
    raise InvalidRequest(f"Host {name!r} is not served here (server.allowed_hosts).")


@functools.lru_cache(maxsize=256)
def check_bucket(bucket: str) -> None:
    """S3 bucket naming rules (3-63 chars of a-z 0-9 . -, not an IP address). A valid name
    is remembered (a daemon serves few buckets; a refusal raises, and is not)."""
    if not _BUCKET.match(bucket) or ".." in bucket or _IPV4.match(bucket):
        raise InvalidBucketName(f"The specified bucket is not valid: {bucket!r}")


def check_key(key: str) -> None:
    """S3 key rules: 1 to 1,024 bytes of UTF-8."""
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise KeyTooLongError()
