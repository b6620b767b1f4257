"""One page of ListObjects (v1) / ListObjectsV2 as the daemon answers it for batched keys: the
query's parameters (``ListQuery``, continuation tokens of the daemon's own), the items, common
prefixes, and the XML S3 answers with. The merge with the bucket's own listing is
``handlers/listing.py``'s."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import quote
from xml.sax.saxutils import escape

from s3batchd.errors import InvalidArgument
from s3batchd.index import iso_time
from s3batchd.records import ObjectRecord

_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The parameters of ListObjects (v1) / ListObjectsV2."""

    v2: bool
    prefix: str
    delimiter: str
    max_keys: int
    after: str
    """Exclusive lower bound: start-after, marker or the continuation token's key."""
    url_encoded: bool
    token: str | None
    start_after: str
    marker: str
    foreign_token: bool = False
    """The continuation token is not the daemon's: the bucket gave it for a listing that
    was forwarded, and only the bucket can continue it."""
    fetch_owner: bool = False
    """Objects are listed with their Owner (always in v1, with ``fetch-owner=true`` in v2)."""


#: Starts every continuation token the daemon gives (``~`` is not in the URL-safe base64
#: alphabet of the rest), so a token the bucket gave is told apart.
TOKEN_MARK = "~"  # noqa: S105  a marker, not a secret


def parse_list_query(query: dict[str, str]) -> ListQuery:
    """Validate the query string of a List request."""
    try:
        max_keys = min(int(query.get("max-keys", "1000")), 1000)
    except ValueError as exc:
        raise InvalidArgument("max-keys must be an integer.") from exc
    if max_keys < 0:
        raise InvalidArgument("max-keys must not be negative.")
    v2 = query.get("list-type") == "2"
    token = query.get("continuation-token")
    after = query.get("start-after", "") if v2 else query.get("marker", "")
    foreign = False
    if v2 and token and not token.startswith(TOKEN_MARK):
        foreign = True
    elif v2 and token:
        try:
            after = base64.urlsafe_b64decode(token[len(TOKEN_MARK) :].encode()).decode("utf-8")
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument("The continuation token provided is incorrect.") from exc
    return ListQuery(
        v2=v2,
        prefix=query.get("prefix", ""),
        delimiter=query.get("delimiter", ""),
        max_keys=max_keys,
        after=after,
        url_encoded=query.get("encoding-type") == "url",
        token=token,
        start_after=query.get("start-after", ""),
        marker=query.get("marker", ""),
        foreign_token=foreign,
        fetch_owner=not v2 or query.get("fetch-owner", "").lower() == "true",
    )


@dataclass(frozen=True, slots=True)
class ListItem:
    """One element of a listing: an object, or a common prefix."""

    name: str
    prefix: bool = False
    last_modified: str = ""
    etag: str = ""
    size: int = 0
    storage_class: str = "STANDARD"
    owner: tuple[str, str] | None = None
    """``(ID, DisplayName)``, when the listing shows owners and it is known."""

    @classmethod
    def of_record(cls, record: ObjectRecord) -> ListItem:
        """The listing element of a batched object."""
        return cls(
            record.key,
            last_modified=iso_time(record.mtime),
            etag=record.etag,
            size=record.size,
            storage_class=record.headers.get("x-amz-storage-class", "STANDARD"),
        )


def common_prefix(key: str, prefix: str, delimiter: str) -> str | None:
    """The common prefix ``key`` rolls up into, or None."""
    if not delimiter:
        return None
    position = key.find(delimiter, len(prefix))
    return None if position < 0 else key[: position + len(delimiter)]


def _owner_xml(owner: tuple[str, str] | None) -> str:
    if owner is None:
        return ""
    return (
        f"<Owner><ID>{escape(owner[0])}</ID><DisplayName>{escape(owner[1])}</DisplayName></Owner>"
    )


def list_xml(bucket: str, query: ListQuery, items: list[ListItem], truncated: bool) -> bytes:
    """The ListBucketResult of one page (``items`` in key order)."""
    enc = (lambda text: quote(text, safe="/")) if query.url_encoded else (lambda text: text)
    last = items[-1].name if items else ""
    parts = [
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{_S3_NS}">',
        f"<Name>{escape(bucket)}</Name><Prefix>{escape(enc(query.prefix))}</Prefix>",
        f"<MaxKeys>{query.max_keys}</MaxKeys>",
    ]
    if query.delimiter:
        parts.append(f"<Delimiter>{escape(enc(query.delimiter))}</Delimiter>")
    if query.url_encoded:
        parts.append("<EncodingType>url</EncodingType>")
    parts.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
    if query.v2:
        parts.append(f"<KeyCount>{len(items)}</KeyCount>")
        if query.token:
            parts.append(f"<ContinuationToken>{escape(query.token)}</ContinuationToken>")
        if query.start_after:
            parts.append(f"<StartAfter>{escape(enc(query.start_after))}</StartAfter>")
        if truncated:
            token = TOKEN_MARK + base64.urlsafe_b64encode(last.encode()).decode()
            parts.append(f"<NextContinuationToken>{token}</NextContinuationToken>")
    else:
        parts.append(f"<Marker>{escape(enc(query.marker))}</Marker>")
        if truncated and query.delimiter:
            parts.append(f"<NextMarker>{escape(enc(last))}</NextMarker>")
    parts.extend(
        f"<Contents><Key>{escape(enc(item.name))}</Key>"
        f"<LastModified>{item.last_modified}</LastModified>"
        f"<ETag>{escape(item.etag)}</ETag><Size>{item.size}</Size>"
        f"{_owner_xml(item.owner) if query.fetch_owner else ''}"
        f"<StorageClass>{escape(item.storage_class)}</StorageClass></Contents>"
        for item in items
        if not item.prefix
    )
    parts.extend(
        f"<CommonPrefixes><Prefix>{escape(enc(item.name))}</Prefix></CommonPrefixes>"
        for item in items
        if item.prefix
    )
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()
