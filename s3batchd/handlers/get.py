"""GET and HEAD for keys this daemon batched (read-your-writes; a listing page: ``listpage``).

An object still in the local spool is read from disk; once its batch is uploaded, with one
ranged GET of the tar. Ranges, conditional headers and checksum mode behave as in S3.

Bytes are verified before any header is sent (bodies are answered from memory): a read from
the spool hashes the whole member against its recorded MD5 (for a range too, keeping only the
range); a read from the bucket checks the length it got and, for the whole object, the MD5.
A mismatch is logged and answered ``500 InternalError`` (``CorruptObject``), never a 200 with
bytes that do not match the ETag.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from functools import partial
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import parse_qsl

from botocore.exceptions import BotoCoreError, ClientError
from starlette.responses import Response

from s3batchd.batching.source import ObjectSource
from s3batchd.catalog.store import CatalogEntry
from s3batchd.concurrency import run_in
from s3batchd.constants import HEADER_PREFIX
from s3batchd.errors import (
    CorruptObject,
    InvalidArgument,
    InvalidRange,
    NoSuchKey,
    PreconditionFailed,
)
from s3batchd.records import byte_range
from s3batchd.spool.files import OPEN_SUFFIX, SEALED_SUFFIX
from s3batchd.upload.upstream import upstream_failed

if TYPE_CHECKING:
    from pathlib import Path


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"

logger = logging.getLogger(__name__)


#: Stored headers a GET or HEAD does not return (GetObjectTagging, GetObjectAcl do).
_NOT_ANSWERED = frozenset({"x-amz-tagging", "x-amz-acl"})


def object_headers(entry: CatalogEntry, headers: dict[str, str]) -> dict[str, str]:
    """The headers S3 returns for an object (and where it lives in its batch)."""
    record = entry.record
    out = {
        "ETag": record.etag,
        "Last-Modified": http_date(record.mtime),
        "Content-Type": record.content_type,
        "Accept-Ranges": "bytes",
        f"{HEADER_PREFIX}tar": f"s3://{entry.bucket}/{entry.tar_key}",
        f"{HEADER_PREFIX}offset": str(entry.offset),
        f"{HEADER_PREFIX}length": str(record.size),
    }
    spanned = byte_range(entry.offset, record.size)
    if spanned is not None:
        out[f"{HEADER_PREFIX}range"] = spanned
    out.update(
        {name.title(): value for name, value in record.headers.items() if name not in _NOT_ANSWERED}
    )
    tags = len(parse_qsl(record.headers.get("x-amz-tagging", ""), keep_blank_values=True))
    if tags:
        out["x-amz-tagging-count"] = str(tags)
    out.update({f"x-amz-meta-{name}": value for name, value in record.metadata.items()})
    if headers.get("x-amz-checksum-mode", "").upper() == "ENABLED" and record.checksums:
        out.update({f"x-amz-checksum-{a}": v for a, v in record.checksums.items()})
        out["x-amz-checksum-type"] = "FULL_OBJECT"
    return out


def http_date(timestamp: float) -> str:
    """RFC 7231 date, as Last-Modified carries it."""
    return format_datetime(datetime.fromtimestamp(int(timestamp), tz=UTC), usegmt=True)


def check_conditions(entry: CatalogEntry, headers: dict[str, str]) -> bool:
    """Apply If-Match / If-Unmodified-Since (412) and If-None-Match / If-Modified-Since.
    Returns False when the answer is 304 Not Modified."""
    etag = entry.record.etag
    modified = int(entry.record.mtime)
    if "if-match" in headers:
        if not etag_matches(headers["if-match"], etag):
            raise PreconditionFailed()
    elif (since := _date(headers.get("if-unmodified-since"))) is not None and modified > since:
        raise PreconditionFailed()
    if "if-none-match" in headers:
        return not etag_matches(headers["if-none-match"], etag)
    since = _date(headers.get("if-modified-since"))
    return since is None or modified > since


def etag_matches(condition: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in condition.split(",")]
    return "*" in tags or etag in tags or etag.strip('"') in tags


def _date(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError):
        return None  # S3 ignores an unparsable date


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """First and last byte of a ``Range: bytes=`` header, or None for the whole object."""
    if not value:
        return None
    match = _RANGE.match(value.strip())
    if match is None or match.groups() == ("", ""):
        return None  # S3 ignores a range it cannot parse
    first_text, last_text = match.groups()
    if first_text == "":
        first, last = max(0, size - int(last_text)), size - 1
    else:
        first = int(first_text)
        last = min(int(last_text), size - 1) if last_text else size - 1
    if first >= size or first > last:
        raise InvalidRange(headers={"Content-Range": f"bytes */{size}"})
    return first, last


async def read_bytes(source: ObjectSource, entry: CatalogEntry, first: int, last: int) -> bytes:
    """Bytes ``first..last`` (inclusive) of an object: from the spool, else from the tar."""
    if last < first:
        return b""
    if not entry.uploaded:
        data = await run_in(
            source.executor, partial(read_local, source.spool_dirs, entry, first, last)
        )
        if data is not None:
            return data
    # Uploaded (or uploaded and deleted locally since the lookup): one ranged GET of the tar.
    span = f"bytes={entry.offset + first}-{entry.offset + last}"

    def fetch() -> bytes:
        answer = source.client.get_object(Bucket=entry.bucket, Key=entry.tar_key, Range=span)
        data = answer["Body"].read()
        # Checked here, on the read thread (hashlib lets go of the GIL), not on the loop.
        if len(data) != last - first + 1:
            _corrupt(entry, f"{len(data)} bytes read from the bucket for {span}")
        if first == 0 and last == entry.record.size - 1 and _md5(data) != entry.record.md5_hex:
            _corrupt(entry, "the bytes read from the bucket do not match its MD5")
        return data

    try:
        return await run_in(source.executor, fetch)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "InvalidRange":
            # The range is inside the object as the catalog knows it: the tar is shorter.
            _corrupt(entry, f"the tar is shorter than the object's end ({exc})")
        logger.warning("reading s3://%s/%s: %s", entry.bucket, entry.tar_key, exc)
        raise upstream_failed(exc) from exc
    except BotoCoreError as exc:
        logger.warning("reading s3://%s/%s: %s", entry.bucket, entry.tar_key, exc)
        raise upstream_failed(exc) from exc


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _corrupt(entry: CatalogEntry, problem: str) -> NoReturn:
    """Log a read whose bytes do not match the object and refuse to serve them."""
    logger.error(
        "s3://%s/%s (member %s of %s, offset %d, %d bytes): %s; answered 500, not served",
        entry.bucket,
        entry.record.key,
        entry.member,
        entry.tar_key,
        entry.offset,
        entry.record.size,
        problem,
    )
    raise CorruptObject("The object's stored bytes do not match its ETag.")


def read_local(
    spool_dirs: tuple[Path, ...], entry: CatalogEntry, first: int, last: int
) -> bytes | None:
    """Bytes ``first..last`` of an object whose batch is still in a spool, else None. The
    whole member is read and checked against its MD5 (``CorruptObject`` if it does not
    match: the spool file was damaged after the PUT)."""
    for spool_dir in spool_dirs:
        directory = spool_dir / entry.bucket
        # Open first: sealing renames .open to .tar, so a file missed under its open name was
        # sealed meanwhile (the other order can miss it under both and read the bucket, which
        # does not have it yet); an open descriptor stays valid across the rename.
        for suffix in (OPEN_SUFFIX, SEALED_SUFFIX):
            try:
                fd = os.open(directory / (entry.batch_id + suffix), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                return _verified_range(fd, entry, first, last)
            finally:
                os.close(fd)
    return None


#: Bytes per read while a member is hashed.
_READ_CHUNK = 1 << 20


def _verified_range(fd: int, entry: CatalogEntry, first: int, last: int) -> bytes:
    size = entry.record.size
    if first == 0 and last == size - 1 and size <= _READ_CHUNK:  # the common case: one read
        data = os.pread(fd, size, entry.offset)
        if len(data) != size or _md5(data) != entry.record.md5_hex:
            _corrupt(entry, "the bytes in the spool do not match its MD5")
        return data
    digest = hashlib.md5(usedforsecurity=False)
    kept: list[bytes] = []
    position = 0
    while position < size:
        chunk = os.pread(fd, min(_READ_CHUNK, size - position), entry.offset + position)
        if not chunk:
            break
        digest.update(chunk)
        end = position + len(chunk)
        if end > first and position <= last:
            kept.append(chunk[max(0, first - position) : last + 1 - position])
        position = end
    if position != size or digest.hexdigest() != entry.record.md5_hex:
        _corrupt(entry, "the bytes in the spool do not match its MD5")
    return b"".join(kept)


#: GetObject query parameters that override response headers.
RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


#: What a header value cannot hold: control characters other than tab (CR and LF would end
#: the header, NUL is refused by HTTP parsers) and anything beyond Latin-1, the wire's
#: encoding of header values.
_NOT_IN_A_HEADER = re.compile(r"[^\t\x20-\x7e\x80-\xff]")


def override_value(parameter: str, value: str) -> str:
    """A ``response-*`` override's value, if a response header can carry it (400
    InvalidArgument otherwise: the answer would be cut short or refused on the way out)."""
    if _NOT_IN_A_HEADER.search(value):
        raise InvalidArgument(
            f"{parameter} holds a character a response header cannot carry "
            "(a control character or one beyond Latin-1)."
        )
    return value


async def get_object(
    source: ObjectSource,
    entry: CatalogEntry | None,
    key: str,
    headers: dict[str, str],
    *,
    head: bool,
    query: dict[str, str] | None = None,
) -> Response:
    """GetObject / HeadObject of the batched object ``entry`` of ``key`` (``Pipeline.lookup``;
    ``query``: the ``response-*`` header overrides)."""
    if entry is None:
        raise NoSuchKey(f"The specified key does not exist: {key}")
    out = object_headers(entry, headers)
    for parameter, header in RESPONSE_OVERRIDES.items():
        if query and parameter in query:
            out[header] = override_value(parameter, query[parameter])
    if not check_conditions(entry, headers):
        keep = ("ETag", "Last-Modified")
        return Response(status_code=304, headers={k: out[k] for k in keep})
    size = entry.record.size
    span = parse_range(headers.get("range"), size)
    first, last = span if span is not None else (0, size - 1)
    status = 200
    if span is not None:
        status = 206
        out["Content-Range"] = f"bytes {first}-{last}/{size}"
        for name in [n for n in out if n.startswith("x-amz-checksum-")]:
            del out[name]  # S3 sends no whole-object checksum with a range
    length = last - first + 1
    if head:
        out["Content-Length"] = str(length)
        return Response(status_code=status, headers=out)
    body = await read_bytes(source, entry, first, last)
    return Response(body, status_code=status, headers=out)
